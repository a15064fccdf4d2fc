"""Stage: hurd-modules, the one ramdisk Xen hands GNU Mach, from the Hurd binaries of a pinned libc version.

The format and the module checks live in `ramdisk`; this module turns the recipe into inputs (verified Debian
packages or pinned local files) and publishes `artifacts/hurd-modules/<variant>/`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.deb import extract_deb, fetch_deb
from hurdxen.sources.fetch import DebPin
from hurdxen.stages.hurd_modules import ramdisk

STAGE = "hurd-modules"
LIBC_PACKAGE = "libc0.3"


@dataclass(frozen=True)
class BootModule:
    path: str  # where the Hurd has the file (/hurd/ext2fs.static); a memdisk holds it at the same path
    args: tuple[str, ...]  # its command line as words (Hurd boot-script variables unexpanded)
    output: str  # the name of the file among the stage's outputs


def boot_modules_of(modules: tuple[ramdisk.ModuleSpec, ...]) -> tuple[BootModule, ...]:
    return tuple(BootModule("/" + m.path.lstrip("/"), tuple(m.cmdline.split(" ")), module_output(m)) for m in modules)


def module_output(m: ramdisk.ModuleSpec) -> str:
    return f"module:{m.name}"


def module_file(m: ramdisk.ModuleSpec) -> str:
    # The modules as files too: pv-grub2's standalone memdisk and users' own setups take them from here.
    return f"modules/{Path(m.path).name}"


@dataclass(frozen=True)
class HurdModulesSpec:
    name: str
    bits: Literal[32, 64]
    libc_version: str
    kernels: tuple[str, ...]
    debs: tuple[DebPin, ...]
    files: tuple[tuple[str, str, str], ...]  # (module name, path, sha256)
    modules: tuple[ramdisk.ModuleSpec, ...]

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        return f"libc0.3 {self.libc_version}, {self.bits}-bit, for {', '.join(self.kernels)}"

    def identity(self, ctx: Context | None = None) -> str:
        # No container step: the ramdisk writer is hurdxen's own code (ramdisk.FORMAT names its layout).
        return fsutil.identity(STAGE, self.__dict__)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = out_dir(ctx, self.name)
        return {"ramdisk": d / ramdisk.RAMDISK_NAME, **{module_output(m): d / module_file(m) for m in self.modules}}

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps(tuple(stage.pin_task(p) for p in self.debs), tuple(Path(p) for _, p, _ in self.files))

    def boot_modules(self) -> tuple[BootModule, ...]:
        """The ramdisk's modules as a boot loader loads them one by one (pv-grub2): path, words, output name."""
        return boot_modules_of(self.modules)

    def ramdisk_spec(self) -> ramdisk.RamdiskSpec:
        return ramdisk.RamdiskSpec(self.bits, self.libc_version, self.modules)


def specs(recipes: Recipes) -> list[HurdModulesSpec]:
    r = recipes["hurd-modules"]
    where = recipes.files["hurd-modules"]
    out = []
    for name, v in sorted(r["variants"].items()):
        bits: Literal[32, 64] = 64 if v["bits"] == 64 else 32
        debs: list[DebPin] = []
        # Pinned local files win over packages: an overlay adds them to switch a variant to the user's own build.
        if "debian" in v and "files" not in v:
            d = v["debian"]
            pkgs = d["packages"]
            if LIBC_PACKAGE in pkgs and pkgs[LIBC_PACKAGE] != v["libc_version"]:
                raise HurdxenError(
                    f"{where}: variants.{name}.debian.packages.{LIBC_PACKAGE}: {pkgs[LIBC_PACKAGE]} is not the pinned "
                    f"libc_version {v['libc_version']}",
                    hint="the libc0.3 package is the pin: make the two versions the same",
                )
            for pkg in sorted(pkgs):
                debs.append(DebPin.from_recipe(d, f"hurd-modules.variants.{name}.debian", package=pkg))
        files = tuple((m, f["path"], f["sha256"]) for m, f in sorted(v.get("files", {}).items()))
        if "modules" in v:
            modules = tuple(
                ramdisk.ModuleSpec(m["name"], m["path"], m["cmdline"], m.get("role", ramdisk.role_for(m["name"])))
                for m in v["modules"]
            )
        else:
            modules = ramdisk.default_modules(bits)
        out.append(HurdModulesSpec(name, bits, v["libc_version"], tuple(v["kernels"]), tuple(debs), files, modules))
    return out


def out_dir(ctx: Context, name: str) -> Path:
    return ctx.artifacts / STAGE / name


def build(spec: HurdModulesSpec, ctx: Context) -> ramdisk.RamdiskResult:
    """Entry point: fetch and verify the inputs, check every module against the libc pin, write the ramdisk."""
    inputs: ramdisk.Inputs
    deb_info = []
    if spec.debs:
        trees = []
        for pin in spec.debs:
            deb = fetch_deb(pin, ctx.cache)
            trees.append(extract_deb(deb, ctx.cache))
            deb_info.append(
                {
                    "package": pin.package,
                    "version": pin.version,
                    "arch": pin.arch,
                    "suite": pin.suite,
                    "archive": pin.archive,
                    "sha256": fsutil.sha256_file(deb),
                }
            )
        inputs = trees
    else:
        inputs = {m: ramdisk.PinnedFile(Path(p), sha) for m, p, sha in spec.files}
    final = out_dir(ctx, spec.name)
    with fsutil.atomic_dir(final) as out:
        staging = out / "ramdisk"
        try:
            result = ramdisk.build_hurd_modules(spec.ramdisk_spec(), inputs, staging)
        except HurdxenError as e:
            raise HurdxenError(f"{spec.task}: {e.message}", hint=e.hint) from e
        for f in staging.iterdir():
            f.rename(out / f.name)
        staging.rmdir()
        (out / "modules").mkdir()
        for ms, m in zip(spec.modules, result.modules, strict=True):
            shutil.copyfile(m.source, out / module_file(ms))
        facts = json.loads((out / manifest.MANIFEST).read_text())  # the ramdisk writer's: format, bits, modules
        inputs_desc: dict[str, object] = (
            {"debian": deb_info} if deb_info else {"files": [{"name": m, "sha256": s} for m, _, s in spec.files]}
        )
        manifest.write(
            out,
            spec,
            ctx,
            inputs=inputs_desc,
            step=manifest.in_process("hurdxen.ramdisk.build_hurd_modules", format=facts.pop("format", None)),
            extra={**facts, "kernels": list(spec.kernels)},
        )
    return dataclasses.replace(result, path=final / ramdisk.RAMDISK_NAME, manifest_path=final / manifest.MANIFEST)
