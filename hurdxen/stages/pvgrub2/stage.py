"""Stage: pv-grub2, GRUB's Xen PV ports (i386-xen, x86_64-xen) as a guest's `kernel=` to boot GNU Mach.

This module turns recipes/pvgrub2.toml into specs and runs the stage; `config` says what an image is and renders
its grub.cfg, `image` makes one image, `elf` says what GRUB's loader makes of an ELF file. Kernels (their bits and PAE)
come from the gnumach stage's specs, the Hurd's boot modules (paths and command lines) from the hurd-modules spec
made for the kernel: the recipe names a kernel, nothing else about it.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Step, StepResult
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources import deb as sources_deb
from hurdxen.sources import fetch as sources
from hurdxen.sources.fetch import DebPin, Pin
from hurdxen.stages.gnumach import stage as gnumach
from hurdxen.stages.hurd_modules import ramdisk
from hurdxen.stages.hurd_modules import stage as hurdmodules
from hurdxen.stages.pvgrub2.config import (
    STANDALONE_KERNEL_GZ,
    BootModule,
    KernelFacts,
    PvGrubImageSpec,
    check_kernel_variants,
    render_config,
)
from hurdxen.stages.pvgrub2.image import BUILD_SCRIPT, STAGE, Inputs, PvGrubResult, make_image, output_files

SCHEMA = "pvgrub2"
Kernel = gnumach.VariantSpec | gnumach.PrebuiltSpec


# ---------------------------------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class Producers:
    """What pv-grub2 takes from other stages' specs."""

    kernels: tuple[Kernel, ...]
    hurd_modules: tuple[hurdmodules.HurdModulesSpec, ...]

    @classmethod
    def of(cls, recipes: Recipes) -> Producers:
        kernels: list[Kernel] = []
        if "gnumach" in recipes:
            kernels = [*gnumach.variant_specs(recipes), *gnumach.prebuilt_specs(recipes)]
        hms = hurdmodules.specs(recipes) if "hurd-modules" in recipes else []
        return cls(tuple(kernels), tuple(hms))

    def kernel(self, name: str) -> Kernel | None:
        return next((k for k in self.kernels if k.name == name), None)

    def ramdisk_for(self, kernel: str) -> hurdmodules.HurdModulesSpec | None:
        return hurdmodules.ramdisk_for(self.hurd_modules, kernel)

    def boot_modules(
        self, kernel: KernelFacts, named: hurdmodules.HurdModulesSpec | None = None
    ) -> tuple[BootModule, ...]:
        """The Hurd's boot modules for `kernel`: those of the ramdisk an image names, else of the hurd-modules spec
        made for it, else the stage's default layout for the kernel's word size (a `hurd` image reads them from the
        guest disk)."""
        hm = named or self.ramdisk_for(kernel.name)
        made = hm.boot_modules() if hm else hurdmodules.boot_modules_of(ramdisk.default_modules(kernel.bits))
        return tuple(BootModule(m.path, m.args) for m in made)

    def named_ramdisk(
        self, img: Mapping[str, Any], kernel: KernelFacts, where: str
    ) -> hurdmodules.HurdModulesSpec | None:
        """The hurd-modules variant an image's `ramdisk` names (a standalone image's only: a stand-in, which is
        never the ramdisk for a kernel, is embedded only so), checked against its kernel; None when it names none."""
        name = img.get("ramdisk")
        if name is None:
            return None
        hm = next((h for h in self.hurd_modules if h.name == name), None)
        if img["flavour"] != "standalone":
            raise HurdxenError(f"{where}: ramdisk: only a standalone image embeds one", hint="drop `ramdisk`")
        if hm is None:
            raise HurdxenError(
                f"{where}: ramdisk: no hurd-modules variant named {name!r}",
                hint=f"one of: {', '.join(h.name for h in self.hurd_modules) or '(none)'}",
            )
        if kernel.name not in hm.kernels:
            raise HurdxenError(
                f"{where}: ramdisk: {name} is not made for kernel {kernel.name!r} (its kernels: "
                f"{', '.join(hm.kernels)})",
                hint="name a variant that lists the image's kernel",
            )
        return hm


@dataclass(frozen=True)
class PvGrubRecipe:
    image: str  # builder image name
    grub: DebPin
    images: tuple[PvGrubImageSpec, ...]

    def get(self, name: str) -> PvGrubImageSpec:
        for i in self.images:
            if i.name == name:
                return i
        raise HurdxenError(
            f"pvgrub2: no image named {name!r}", hint=f"recipes/pvgrub2.toml has {', '.join(self.names)}"
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.images)


def validate_recipe(data: Mapping[str, Any], shown: str = "recipes/pvgrub2.toml") -> None:
    """The same schema check every recipe gets (recipes.load has done it already for loaded recipes)."""
    from hurdxen.pipeline import recipes

    recipes.validate(data, SCHEMA, shown)


def spec_from_recipe(
    data: Mapping[str, Any], producers: Producers, shown: str = "recipes/pvgrub2.toml"
) -> PvGrubRecipe:
    """Validate recipes/pvgrub2.toml's content and resolve each image against `defaults` and the producers."""
    validate_recipe(data, shown)
    d = data["defaults"]
    for opt in ("locales", "fonts", "themes"):
        if d.get(opt):
            raise HurdxenError(
                f"{shown}: defaults.{opt} = true is not supported",
                hint=f"pv-grub2 runs on Xen's plain-text PV console: {opt} only add megabytes; set it to false",
            )
    pin = DebPin.from_recipe(data["grub"], "pvgrub2.grub")
    images = []
    seen: set[str] = set()
    for n, img in enumerate(data["images"]):
        where = f"{shown}: images[{n}] ({img['name']})"
        if img["name"] in seen:
            raise HurdxenError(f"{where}: the name is used twice", hint="give each image its own name")
        seen.add(img["name"])

        def pick(key: str, default: Any, img: Mapping[str, Any] = img) -> Any:
            return img.get(key, d.get(key, default))

        kernels = tuple(_kernel(producers, name, f"{where}: kernels") for name in img["kernels"])
        named = producers.named_ramdisk(img, kernels[0], where)
        spec = PvGrubImageSpec(
            name=img["name"],
            platform=img["platform"],
            flavour=img["flavour"],
            kernels=kernels,
            root=pick("root", None),
            kernel_path=pick("kernel_path", "/boot/gnumach.gz"),
            kernel_args=tuple(pick("kernel_args", ["console=hyp0"])),
            boot_modules=producers.boot_modules(kernels[0], named) if img["flavour"] != "disk" else (),
            modules=tuple(dict.fromkeys([*d.get("modules", []), *img.get("modules", [])])),
            module_limit=int(pick("module_limit", 40)),
            search_disks=tuple(pick("search_disks", ["xen/xvda"])),
            config_path=pick("config_path", "/boot/grub/grub.cfg"),
            extra_config=img.get("extra_config", ""),
            description=img.get("description", ""),
        )
        check_kernel_variants(spec, where)
        if spec.flavour == "standalone" and (named or producers.ramdisk_for(kernels[0].name)) is None:
            raise HurdxenError(
                f"{where}: no hurd-modules variant lists kernel {kernels[0].name!r}",
                hint="a standalone image embeds that ramdisk's modules: add the kernel to its `kernels`",
            )
        images.append(spec)
    return PvGrubRecipe(str(data.get("image", "builder")), pin, tuple(images))


def _kernel(producers: Producers, name: str, where: str) -> KernelFacts:
    k = producers.kernel(name)
    if k is None:
        known = ", ".join(sorted(k.name for k in producers.kernels)) or "(none)"
        raise HurdxenError(
            f"{where}: no gnumach kernel named {name!r}",
            hint=f"one of: {known} (recipes/gnumach.toml variants or prebuilt)",
        )
    return KernelFacts(k.name, k.bits, k.pae if k.bits == 32 else None)


def recipe(recipes: Recipes) -> PvGrubRecipe:
    return spec_from_recipe(recipes["pvgrub2"], Producers.of(recipes), recipes.files["pvgrub2"])


def load_recipe(path: Path) -> PvGrubRecipe:
    """A pvgrub2 recipe file, resolved against the recipes of the project it lies in (`<project>/recipes/`)."""
    from hurdxen.pipeline import recipes

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise HurdxenError(f"{path}: not valid TOML: {e}", hint="fix the syntax at the line named") from e
    return spec_from_recipe(data, Producers.of(recipes.load(path.resolve().parent.parent)), str(path))


def fetch_grub_tree(recipe: PvGrubRecipe | PvGrubSpec, cache: sources.Cache) -> Path:
    """The extracted grub-xen-bin package (verified against the suite's signed index)."""
    return sources_deb.extract_deb(sources_deb.fetch_deb(recipe.grub, cache), cache)


# ---------------------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class PvGrubSpec:
    image: PvGrubImageSpec
    grub: DebPin
    builder: str  # the builder image's name
    source_date_epoch: int
    kernel: Kernel | None  # standalone: the gnumach spec whose kernel the memdisk holds
    ramdisk: hurdmodules.HurdModulesSpec | None  # standalone: the hurd-modules spec whose module files it holds

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.image.name}"

    @property
    def doc(self) -> str:
        return f"{self.image.platform} {self.image.flavour}: {self.image.description}"

    def identity(self, ctx: Context) -> str:
        # The rendered config too: a change in how it is rendered rebuilds the image.
        return fsutil.identity(
            STAGE,
            self.image.identity,
            asdict(self.grub),
            ctx.image_tag(self.builder),
            self.source_date_epoch,
            BUILD_SCRIPT,
            render_config(self.image, STANDALONE_KERNEL_GZ),
            [s.task for s in (self.kernel, self.ramdisk) if s is not None],
        )

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = stage.out_dir(ctx, self.task)
        return {name: d / f for name, f in output_files(self.image.name).items()}

    def pins(self) -> tuple[Pin, ...]:
        return (self.grub,)

    def deps(self, ctx: Context) -> stage.Deps:
        tasks = [*stage.image_deps(ctx, self.builder), *stage.pin_tasks(self.pins())]
        files: list[Path] = []
        if self.kernel is not None:
            tasks.append(self.kernel.task)
            files.append(self.kernel.outputs(ctx)["kernel.gz"])
        if self.ramdisk is not None:
            tasks.append(self.ramdisk.task)
            outs = self.ramdisk.outputs(ctx)
            files += [outs[m.output] for m in self.ramdisk.boot_modules()]
        return stage.Deps(tuple(tasks), tuple(files))


def specs(recipes: Recipes, producers: Producers, source_date_epoch: int) -> list[PvGrubSpec]:
    r = spec_from_recipe(recipes["pvgrub2"], producers, recipes.files["pvgrub2"])
    raw = {i["name"]: i for i in recipes["pvgrub2"]["images"]}
    out = []
    for img in r.images:
        standalone = img.flavour == "standalone"
        named = producers.named_ramdisk(raw[img.name], img.kernels[0], img.name) if standalone else None
        out.append(
            PvGrubSpec(
                image=img,
                grub=r.grub,
                builder=r.image,
                source_date_epoch=source_date_epoch,
                kernel=producers.kernel(img.kernels[0].name) if standalone else None,
                ramdisk=(named or producers.ramdisk_for(img.kernels[0].name)) if standalone else None,
            )
        )
    return out


def read_inputs(spec: PvGrubSpec, ctx: Context) -> tuple[Inputs, dict[str, Any]]:
    """The image's inputs (the grub tree; the kernel and boot modules by name from their producers' manifests) and
    their record for the manifest."""
    pin = spec.grub
    deb = sources_deb.fetch_deb(pin, ctx.cache)
    record: dict[str, Any] = {"grub": sources_deb.manifest_record(pin, deb, ctx.cache)}
    kernel: Path | None = None
    modules: dict[str, Path] = {}
    if spec.kernel is not None:
        k = manifest.read_task(ctx.artifacts, spec.kernel.task)
        kernel = k.output("kernel.gz")
        record["kernel"] = {"task": k.task, "identity": k.identity, "sha256": k.outputs["kernel.gz"].sha256}
    if spec.ramdisk is not None:
        hm = manifest.read_task(ctx.artifacts, spec.ramdisk.task)
        bms = spec.ramdisk.boot_modules()
        modules = {m.path: hm.output(m.output) for m in bms}
        record["boot_modules"] = {m.path: {"task": hm.task, "sha256": hm.outputs[m.output].sha256} for m in bms}
    return Inputs(sources_deb.extract_deb(deb, ctx.cache), kernel, modules), record


def build(spec: PvGrubSpec, ctx: Context) -> PvGrubResult:
    """Entry point: one image into artifacts/pvgrub2/<image>/ (atomically), its inputs read from the producers'
    manifests."""
    start = time.monotonic()
    inputs, record = read_inputs(spec, ctx)
    image_tag = ctx.image_tag(spec.builder)
    final = stage.out_dir(ctx, spec.task)

    def run(step: Step) -> StepResult:
        return ctx.executor().run(step, ctx.log(spec.task), ctx.monitor())

    with fsutil.scratch_dir(ctx.artifacts / "work", spec.task) as work, fsutil.atomic_dir(final) as out:
        made = make_image(spec.image, inputs, spec.source_date_epoch, image_tag, work, run)
        made.write(out)
        manifest.write(
            out, spec, ctx, inputs=record, step=made.step, extra=made.facts(image_tag, spec.source_date_epoch)
        )
    return PvGrubResult(made, final, time.monotonic() - start)


def by_name(specs: Sequence[PvGrubSpec]) -> dict[str, PvGrubSpec]:
    return {s.image.name: s for s in specs}
