"""The targets the from-source stages are built for: recipes/toolchain.toml's `[targets.<triplet>]` tables.

Each target sees the toolchain and Hurd recipes as their shared keys with its own table merged over them (tables
merged key by key, lists replaced): recipes/toolchain.toml's `[targets.<triplet>]` and recipes/hurd.toml's
`[per_target.<triplet>]` (hurd.toml's `targets` are the Hurd's make targets). A target's stages are named
`<stage>:<name><suffix>`: the first target keeps the plain names (`toolchain:gcc1`, …, `hurd:root`), another adds
its `suffix` (`hurd:root-amd64`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.recipes import Recipes, deep_merge


@dataclass(frozen=True)
class Target:
    triplet: str  # the GNU triplet: i686-gnu, x86_64-gnu
    suffix: str  # appended to each stage's name ("" for the plain names)
    toolchain: Mapping[str, Any]  # recipes/toolchain.toml as this target sees it (with `target` = the triplet)
    hurd: Mapping[str, Any]  # recipes/hurd.toml as this target sees it

    def name(self, base: str) -> str:
        return base + self.suffix

    def fill(self, script: str) -> str:
        """A step script with this target's facts in place of its @MARKERS@ (the compilers configure probes with,
        ld.so's file name): scripts name no target, and the same template gives each target its own script."""
        ldso = str(self.toolchain["ldso"])
        values = {
            "@PROBE_CC@": str(self.toolchain["probe_cc"]),
            "@PROBE_LD@": str(self.toolchain["probe_ld"]),
            "@LDSO@": ldso,
            "@LDSO_GLOB@": ldso.split(".so", 1)[0] + ".so*",
        }
        for marker, value in values.items():
            script = script.replace(marker, value)
        return script


def targets(recipes: Recipes) -> list[Target]:
    """Every target of recipes/toolchain.toml, in the file's order."""
    tc, hd = recipes["toolchain"], recipes["hurd"]
    shared_tc = {k: v for k, v in tc.items() if k != "targets"}
    shared_hd = {k: v for k, v in hd.items() if k != "per_target"}
    hurd_tables: Mapping[str, Any] = hd.get("per_target", {})
    unknown = sorted(set(hurd_tables) - set(tc["targets"]))
    if unknown:
        raise HurdxenError(
            f"{recipes.where('hurd', f'per_target.{unknown[0]}')}: recipes/toolchain.toml has no target {unknown[0]}",
            hint=f"one of: {', '.join(tc['targets'])}",
        )
    out: list[Target] = []
    for triplet, table in tc["targets"].items():
        suffix = str(table.get("suffix", ""))
        clash = next((t for t in out if t.suffix == suffix), None)
        if clash is not None:
            raise HurdxenError(
                f"{recipes.where('toolchain', f'targets.{triplet}.suffix')}: {suffix!r}, as {clash.triplet}'s: "
                "their stages would have the same names",
                hint="give each target its own suffix (one target may have none)",
            )
        out.append(
            Target(
                triplet=triplet,
                suffix=suffix,
                toolchain={**deep_merge(shared_tc, table), "target": triplet},
                hurd=deep_merge(shared_hd, hurd_tables.get(triplet, {})),
            )
        )
    return out
