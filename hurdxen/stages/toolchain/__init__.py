"""The i686-gnu cross toolchain built from source (binutils from Debian's package, gcc, GNU Mach's headers, glibc),
and the order of every from-source stage, the Hurd's included (`specs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline.recipes import Recipes
from hurdxen.stages.hurd import root, system
from hurdxen.stages.toolchain import gcc, glibc
from hurdxen.stages.toolchain.chain import TreeSpec


def specs(recipes: Recipes, migs: Sequence[Any], gnumach_source: Any) -> list[TreeSpec]:
    """Every from-source stage in build order (none without recipes/toolchain.toml and recipes/hurd.toml)."""
    if "toolchain" not in recipes or "hurd" not in recipes:
        return []
    target = recipes["toolchain"]["target"]
    mig = next((m for m in migs if m.target == target), None)
    if mig is None:
        raise HurdxenError(
            f"{recipes.where('toolchain', 'target')}: recipes/mig.toml builds no MIG for {target}",
            hint=f"add [targets.{target}] to recipes/mig.toml",
        )
    if gnumach_source is None:
        raise HurdxenError(
            f"{recipes.files['toolchain']}: GNU Mach's headers need recipes/gnumach.toml's source",
            hint="restore recipes/gnumach.toml",
        )
    gcc1 = gcc.stage1_spec(recipes)
    mach = glibc.mach_headers_spec(recipes, gnumach_source)
    hurd_headers = system.headers_spec(recipes, mig)
    libc = glibc.glibc_spec(recipes, gcc1, (mach, hurd_headers), mig)
    sysroot = (mach, hurd_headers, libc)
    hurd = system.system_spec(recipes, gcc1, sysroot, mig)
    dash = root.dash_spec(recipes, gcc1, sysroot)
    tree = root.root_spec(recipes, gcc1, (libc, hurd, dash))
    final = gcc.final_spec(recipes, gcc1, sysroot)
    return [gcc1, mach, hurd_headers, libc, hurd, dash, tree, final]
