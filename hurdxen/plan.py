"""Every stage's specs, made from the recipes once, before any task is generated: the cross-recipe checks (a
variant's MIG target, a pv-grub2 image's kernel and boot modules, a boot case's names) all fail here, as one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hurdxen.boot import stage as boot_stage
from hurdxen.pipeline.recipes import Recipes
from hurdxen.release import stage as release_stage
from hurdxen.stages import rootdisk, toolchain
from hurdxen.stages.gnumach import source as gnumach_source
from hurdxen.stages.gnumach import stage as gnumach
from hurdxen.stages.hurd_modules import stage as hurdmodules
from hurdxen.stages.mig import stage as mig
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.stages.toolchain.chain import TreeSpec

Kernel = gnumach.VariantSpec | gnumach.PrebuiltSpec


@dataclass(frozen=True)
class Plan:
    mig: tuple[mig.MigSpec, ...]
    gnumach_source: gnumach_source.SourceSpec | None
    kernels: tuple[Kernel, ...]  # compiled variants, then prebuilt kernels
    hurd_modules: tuple[hurdmodules.HurdModulesSpec, ...]
    pvgrub2: tuple[pvgrub.PvGrubSpec, ...]
    system: tuple[TreeSpec, ...] = ()  # the from-source toolchain and Hurd, in build order
    rootdisks: tuple[TreeSpec, ...] = ()  # the Hurd's root disk images
    boot: tuple[boot_stage.BootSpec, ...] = ()  # the hypervisor, the dom0 and the check of every case
    release: tuple[release_stage.BundleStageSpec, ...] = ()  # the bundle (one: recipes/release.toml)

    def kernel(self, name: str) -> Kernel | None:
        return next((k for k in self.kernels if k.name == name), None)

    def hurd_modules_for(self, kernel: str) -> hurdmodules.HurdModulesSpec | None:
        """The ramdisk made for `kernel` (hurd-modules' `kernels`)."""
        return next((h for h in self.hurd_modules if kernel in h.kernels), None)


def make_plan(recipes: Recipes) -> Plan:
    kernels: list[Kernel] = []
    source = None
    if "gnumach" in recipes:
        source = gnumach_source.source_spec(recipes)
        kernels = [*gnumach.variant_specs(recipes), *gnumach.prebuilt_specs(recipes)]
    migs = tuple(mig.specs(recipes))
    system = tuple(toolchain.specs(recipes, migs, source))
    hms = tuple(hurdmodules.specs(recipes, system)) if "hurd-modules" in recipes else ()
    sde = int(recipes["base"]["base"]["source_date_epoch"])
    pvgrubs = pvgrub.specs(recipes, pvgrub.Producers(tuple(kernels), hms), sde) if "pvgrub2" in recipes else []
    hms_for = {k: h for h in hms for k in h.kernels}
    disks = tuple(rootdisk.specs(recipes, system, kernels, hms_for.get))
    boots = tuple(boot_stage.specs(recipes, kernels, hms, pvgrubs, disks, boot_stage.only_from_env()))
    return Plan(
        mig=migs,
        gnumach_source=source,
        kernels=tuple(kernels),
        hurd_modules=hms,
        pvgrub2=tuple(pvgrubs),
        system=system,
        rootdisks=disks,
        boot=boots,
        release=tuple(release_stage.specs(recipes, sde, os.environ.get("HURDXEN_SIGNING_KEY"))),
    )
