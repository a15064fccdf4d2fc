"""Every stage's specs, made from the recipes once, before any task is generated: the cross-recipe checks (a
variant's MIG target, a pv-grub2 image's kernel and boot modules, a boot case's names) all fail here, as one line.

The sources stage is derived here too: one `PinSpec` per pin that the other specs list (`pins()`), so no stage's pins
are listed by hand anywhere else (`pins update` and the canary read the Debian ones from the plan as well).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from hurdxen.boot import stage as boot_stage
from hurdxen.pipeline import containers
from hurdxen.pipeline.containers import BaseSpec, ImageSpec
from hurdxen.pipeline.recipes import Recipes
from hurdxen.release import stage as release_stage
from hurdxen.sources.fetch import DebPin, Pin
from hurdxen.stages import rootdisk, toolchain
from hurdxen.stages.gnumach import source as gnumach_source
from hurdxen.stages.gnumach import stage as gnumach
from hurdxen.stages.hurd_modules import stage as hurdmodules
from hurdxen.stages.mig import stage as mig
from hurdxen.stages.pvgrub2 import stage as pvgrub
from hurdxen.stages.sources import stage as sources
from hurdxen.stages.toolchain.chain import TreeSpec

Kernel = gnumach.VariantSpec | gnumach.PrebuiltSpec


class Pinned(Protocol):
    """What the plan holds: every spec (and the boot recipe) lists the pinned inputs it fetches itself."""

    def pins(self) -> tuple[Pin, ...]: ...


@dataclass(frozen=True)
class Plan:
    base: BaseSpec
    images: tuple[ImageSpec, ...]  # the builder images, by name
    mig: tuple[mig.MigSpec, ...]
    gnumach_source: gnumach_source.SourceSpec | None
    kernels: tuple[Kernel, ...]  # compiled variants, then prebuilt kernels
    hurd_modules: tuple[hurdmodules.HurdModulesSpec, ...]
    pvgrub2: tuple[pvgrub.PvGrubSpec, ...]
    system: tuple[TreeSpec, ...] = ()  # the from-source toolchain and Hurd, in build order
    rootdisks: tuple[TreeSpec, ...] = ()  # the Hurd's root disk images
    boot: tuple[boot_stage.BootSpec, ...] = ()  # the hypervisor, the dom0 and the check of every case
    release: tuple[release_stage.BundleStageSpec, ...] = ()  # the bundle (one: recipes/release.toml)
    sources: tuple[sources.PinSpec, ...] = ()  # one per pin of every other spec, made by make_plan

    def kernel(self, name: str) -> Kernel | None:
        return next((k for k in self.kernels if k.name == name), None)

    def hurd_modules_for(self, kernel: str) -> hurdmodules.HurdModulesSpec | None:
        """The ramdisk made for `kernel` (hurd-modules' `kernels`; never a stand-in: `default_ramdisk`)."""
        return hurdmodules.ramdisk_for(self.hurd_modules, kernel)

    def opt_in(self) -> frozenset[str]:
        """The tasks `doit build` and `doit boot` leave out unless asked for by name: the opt-in ramdisks and the
        pv-grub2 images that hold one."""
        return opt_in_tasks(self.hurd_modules, self.pvgrub2)

    def specs(self) -> Iterator[Pinned]:
        """Every spec of the plan (and the boot recipe), in build order."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            yield from (cast(Pinned, s) for s in (value if isinstance(value, tuple) else (value,)) if s is not None)

    def pins(self) -> list[Pin]:
        """Every pinned input the plan's specs fetch: each spec's own `pins()`, in build order."""
        return [p for s in self.specs() for p in s.pins()]

    def debian_pins(self) -> list[tuple[str, DebPin]]:
        """Every Debian pin of the plan with the recipe it is pinned in, keyring pins included, each once: what
        `hurdxen pins update` moves and the canary floats."""
        out: dict[str, tuple[str, DebPin]] = {}
        for p in self.pins():
            if isinstance(p, DebPin):
                for q in (p.keyring_pin, p):
                    if q is not None:
                        out.setdefault(q.version_key, (q.key.split(".", 1)[0], q))
        return sorted(out.values(), key=lambda sp: sp[1].version_key)


def opt_in_tasks(
    hurd_modules: Sequence[hurdmodules.HurdModulesSpec], pvgrubs: Sequence[pvgrub.PvGrubSpec]
) -> frozenset[str]:
    """The opt-in ramdisks and the pv-grub2 images that hold one."""
    ramdisks = {h.task for h in hurd_modules if h.opt_in}
    images = {s.task for s in pvgrubs if s.ramdisk is not None and s.ramdisk.task in ramdisks}
    return frozenset(ramdisks | images)


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
    disks = tuple(rootdisk.specs(recipes, system, kernels, lambda kernel: hurdmodules.ramdisk_for(hms, kernel)))
    boots = tuple(
        boot_stage.specs(recipes, kernels, hms, pvgrubs, disks, boot_stage.only_from_env(), opt_in_tasks(hms, pvgrubs))
    )
    base = containers.base_spec(recipes)
    plan = Plan(
        base=base,
        images=containers.image_specs(recipes, base),
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
    return dataclasses.replace(plan, sources=tuple(sources.specs(plan.pins())))
