"""The cross toolchains built from source, one per target of recipes/toolchain.toml (binutils from Debian's package
or its source, gcc, GNU Mach's headers, glibc), and the order of every from-source stage, the Hurd's included
(`specs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.recipes import Recipes
from hurdxen.stages.hurd import root, system
from hurdxen.stages.toolchain import gcc, glibc
from hurdxen.stages.toolchain.chain import TreeSpec
from hurdxen.stages.toolchain.target import Target, targets


def specs(recipes: Recipes, migs: Sequence[Any], gnumach_source: Any) -> list[TreeSpec]:
    """Every from-source stage in build order, target after target (none without recipes/toolchain.toml and
    recipes/hurd.toml)."""
    if "toolchain" not in recipes or "hurd" not in recipes:
        return []
    if gnumach_source is None:
        raise HurdxenError(
            f"{recipes.files['toolchain']}: GNU Mach's headers need recipes/gnumach.toml's source",
            hint="restore recipes/gnumach.toml",
        )
    out: list[TreeSpec] = []
    for t in targets(recipes):
        mig = next((m for m in migs if m.target == t.triplet), None)
        if mig is None:
            raise HurdxenError(
                f"{recipes.where('toolchain', f'targets.{t.triplet}')}: recipes/mig.toml builds no MIG for {t.triplet}",
                hint=f"add [targets.{t.triplet}] to recipes/mig.toml",
            )
        out += target_specs(recipes, t, mig, gnumach_source)
    return out


def target_specs(recipes: Recipes, t: Target, mig: Any, gnumach_source: Any) -> list[TreeSpec]:
    """One target's stages in build order."""
    gcc1 = gcc.stage1_spec(t)
    mach = glibc.mach_headers_spec(t, gnumach_source)
    hurd_headers = system.headers_spec(recipes, t, mig)
    libc = glibc.glibc_spec(t, gcc1, (mach, hurd_headers), mig)
    sysroot = (mach, hurd_headers, libc)
    hurd = system.system_spec(recipes, t, gcc1, sysroot, mig)
    dash = root.dash_spec(t, gcc1, sysroot)
    tree = root.root_spec(t, gcc1, (libc, hurd, dash))
    final = gcc.final_spec(t, gcc1, sysroot)
    return [gcc1, mach, hurd_headers, libc, hurd, dash, tree, final]
