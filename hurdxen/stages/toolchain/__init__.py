"""The i686-gnu cross toolchain built from source: binutils (Debian's package), gcc, GNU Mach's headers, glibc."""

from __future__ import annotations

from hurdxen.recipes import Recipes
from hurdxen.stages.toolchain import gcc
from hurdxen.stages.toolchain.chain import TreeSpec


def specs(recipes: Recipes) -> list[TreeSpec]:
    """The toolchain's stages in build order (empty without recipes/toolchain.toml)."""
    if "toolchain" not in recipes:
        return []
    return [gcc.stage1_spec(recipes)]
