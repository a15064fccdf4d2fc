"""Stage: hurd-modules, the one ramdisk Xen hands GNU Mach, from the Hurd binaries of one libc version.

The format and the module checks live in `ramdisk`, the five sources in `sources`; this module turns the recipe into
a spec and publishes `artifacts/hurd-modules/<variant>/` (the ramdisk, the modules as files, its one manifest).

"The ramdisk for a kernel" (what a pv-grub2 image embeds, a root disk's GRUB menu lists, Plan.hurd_modules_for) is
`ramdisk_for`: the first variant that lists the kernel and is a `default_ramdisk`. A stand-in never is one: only a
boot case that names it boots it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hurdxen.core import fsutil
from hurdxen.core.errors import HurdxenError, labelled
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.fetch import DebPin, Pin
from hurdxen.stages.hurd_modules import ramdisk, sources
from hurdxen.stages.hurd_modules.elf import STANDIN_LIBC
from hurdxen.stages.toolchain.chain import TreeSpec, UpstreamFile

STAGE = "hurd-modules"
LIBC_PACKAGE = "libc0.3"
Source = Literal["build", "debian", "disk", "standin", "files"]


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
    libc_version: str | None  # None only for a disk that pins none: the image's own is read
    kernels: tuple[str, ...]
    source: Source
    modules: tuple[ramdisk.ModuleSpec, ...]
    debs: tuple[DebPin, ...] = ()
    files: tuple[tuple[str, str, str], ...] = ()  # (module name, path, sha256)
    upstream: tuple[UpstreamFile, ...] = ()  # build: each module as the producer's output of its name
    disk: sources.DiskSource | None = None
    standin: sources.StandinSource | None = None
    opt_in: bool = False  # built only when asked for by name, not by `doit build` (no byte depends on it)
    # the ramdisk that images, disks and the plan take for its kernels (ramdisk_for); never a stand-in
    default_ramdisk: bool = True

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        if self.source == "standin":
            return f"stand-ins, {self.bits}-bit, for {', '.join(self.kernels)}: gcc-built, not the Hurd (no glibc)"
        libc = f"libc {self.libc_version}" if self.libc_version else "the disk's libc"
        origin = {
            "build": "the Hurd built here",
            "debian": "Debian's packages",
            "disk": "a disk image",
            "files": "local files",
        }
        return f"{libc}, {self.bits}-bit, for {', '.join(self.kernels)}, from {origin[self.source]}"

    def identity(self, ctx: Context) -> str:
        own: dict[str, Any] = {
            k: getattr(self, k) for k in ("name", "bits", "libc_version", "kernels", "debs", "files", "modules")
        }
        # The writer is hurdxen's own code (ramdisk.FORMAT names its layout); a build adds its producer's identity,
        # a disk its step (script and image). Added only when used: the other sources' identities stay put.
        if self.upstream:
            own["upstream"] = [(u.env, u.producer.task, u.output, u.producer.identity(ctx)) for u in self.upstream]
        if self.disk is not None:
            own["disk"] = self.disk
            return fsutil.identity(STAGE, own, ctx.image_tag(self.disk.image), sources.DISK_SCRIPT)
        if self.standin is not None:  # each source's sha256 and gcc words, the image gcc runs in, the step
            own["standin"] = self.standin.modules
            return fsutil.identity(STAGE, own, ctx.image_tag(self.standin.image), sources.STANDIN_SCRIPT)
        return fsutil.identity(STAGE, own)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = out_dir(ctx, self.name)
        return {"ramdisk": d / ramdisk.RAMDISK_NAME, **{module_output(m): d / module_file(m) for m in self.modules}}

    def pins(self) -> tuple[Pin, ...]:
        return self.debs

    def deps(self, ctx: Context) -> stage.Deps:
        tasks = [*stage.pin_tasks(self.pins()), *dict.fromkeys(u.producer.task for u in self.upstream)]
        files = [Path(p) for _, p, _ in self.files]
        if self.disk is not None:
            tasks += stage.image_deps(ctx, self.disk.image)
            files.append(Path(self.disk.path))
        if self.standin is not None:
            tasks += stage.image_deps(ctx, self.standin.image)
            files += [sources.STANDIN_DIR / m.source for m in self.standin.modules]
        return stage.Deps(tuple(tasks), tuple(files))

    def boot_modules(self) -> tuple[BootModule, ...]:
        """The ramdisk's modules as a boot loader loads them one by one (pv-grub2): path, words, output name."""
        return boot_modules_of(self.modules)


def ramdisk_for(variants: Sequence[HurdModulesSpec], kernel: str) -> HurdModulesSpec | None:
    """The ramdisk made for `kernel`: the first default ramdisk (never a stand-in) whose `kernels` list it."""
    return next((h for h in variants if h.default_ramdisk and kernel in h.kernels), None)


def specs(recipes: Recipes, system: Sequence[TreeSpec] | None = None) -> list[HurdModulesSpec]:
    """One spec per variant. `system`: the from-source stages a `build` variant reads (the plan's; made from the
    same recipes when not given)."""
    r = recipes["hurd-modules"]
    if system is None:
        system = _system(recipes) if any(v.get("source") == "build" for v in r["variants"].values()) else ()
    out = []
    for name, v in sorted(r["variants"].items()):
        bits: Literal[32, 64] = 64 if v["bits"] == 64 else 32
        if "modules" in v:
            modules = tuple(
                ramdisk.ModuleSpec(m["name"], m["path"], m["cmdline"], m.get("role", ramdisk.role_for(m["name"])))
                for m in v["modules"]
            )
        else:
            modules = ramdisk.default_modules(bits)
        # Pinned local files win over every source: an overlay adds them to switch a variant to the user's own build.
        source = "files" if "files" in v else v.get("source", "debian")
        at = f"variants.{name}"
        base: dict[str, Any] = {
            "name": name, "bits": bits, "kernels": tuple(v["kernels"]), "modules": modules,
            "opt_in": bool(v.get("opt_in", False)),
            "default_ramdisk": _default_ramdisk(recipes, at, v, source),
        }  # fmt: skip
        if source != "files" and source not in v:
            raise HurdxenError(
                f"{recipes.where('hurd-modules', f'{at}.source')}: {source!r}, but there is no [{at}.{source}]",
                hint=f"add the [{at}.{source}] table or choose another source",
            )
        if source == "files":
            spec = HurdModulesSpec(
                **base, source="files", libc_version=_needs_libc(recipes, at, v, "pinned local files"),
                files=tuple((m, f["path"], f["sha256"]) for m, f in sorted(v["files"].items())),
            )  # fmt: skip
        elif source == "debian":
            spec = HurdModulesSpec(**base, source="debian", **_debian(recipes, at, v))
        elif source == "build":
            spec = HurdModulesSpec(**base, source="build", **_build(recipes, at, v, modules, system))
        elif source == "standin":
            standin = _standin(recipes, at, v, modules)
            spec = HurdModulesSpec(**base, source="standin", libc_version=STANDIN_LIBC, standin=standin)
        else:
            disk = _disk(recipes, at, v)
            spec = HurdModulesSpec(**base, source="disk", libc_version=v.get("libc_version"), disk=disk)
        out.append(spec)
    return out


def _default_ramdisk(recipes: Recipes, at: str, v: dict[str, Any], source: str) -> bool:
    """A real source's variant is its kernels' ramdisk unless it says otherwise; a stand-in never is."""
    if source != "standin":
        return bool(v.get("default_ramdisk", True))
    if v.get("default_ramdisk", False):
        raise HurdxenError(
            f"{recipes.where('hurd-modules', f'{at}.default_ramdisk')}: true, but a stand-in is never the ramdisk of "
            "a real image or disk",
            hint="set default_ramdisk = false: boot cases that name this variant boot it",
        )
    return False


def _standin(
    recipes: Recipes, at: str, v: dict[str, Any], modules: tuple[ramdisk.ModuleSpec, ...]
) -> sources.StandinSource:
    """Each module's C source in hurdxen/data/standins/ (its sha256 now: the identity covers its bytes) and gcc's
    words (the recipe's, with -m32/-m64 from `bits`); the libc version is STANDIN_LIBC, never a glibc's."""
    where = recipes.where("hurd-modules", f"{at}.standin")
    if "libc_version" in v:
        raise HurdxenError(
            f"{recipes.where('hurd-modules', f'{at}.libc_version')}: a stand-in has no glibc (its ld.so says "
            f"{STANDIN_LIBC!r})",
            hint="drop libc_version",
        )
    given = v["standin"]["modules"]
    names = [m.name for m in modules]
    odd = sorted(set(given) ^ set(names))
    if odd:
        raise HurdxenError(
            f"{where}.modules: {', '.join(odd)}: the stand-ins must be the variant's modules, one each",
            hint=f"give exactly {', '.join(names)}",
        )
    out = []
    for m in modules:
        g = given[m.name]
        path = sources.STANDIN_DIR / g["source"]
        if not path.is_file():
            known = ", ".join(sorted(p.name for p in sources.STANDIN_DIR.glob("*.c")))
            raise HurdxenError(
                f"{where}.modules.{m.name}.source: no {sources.STANDIN_REL}/{g['source']}", hint=f"one of: {known}"
            )
        flags = (f"-m{v['bits']}", *g["flags"])
        out.append(sources.StandinModule(m.name, g["source"], fsutil.sha256_file(path), flags))
    return sources.StandinSource(tuple(out), recipes["hurd-modules"].get("image", "builder"))


def _system(recipes: Recipes) -> list[TreeSpec]:
    """The from-source stages, as the plan makes them (for callers without a plan: pv-grub2's recipe, pins)."""
    from hurdxen.stages import toolchain
    from hurdxen.stages.gnumach import source as gnumach_source
    from hurdxen.stages.mig import stage as mig

    if "toolchain" not in recipes or "hurd" not in recipes or "mig" not in recipes:
        return []
    src = gnumach_source.source_spec(recipes) if "gnumach" in recipes else None
    return toolchain.specs(recipes, tuple(mig.specs(recipes)), src)


def _needs_libc(recipes: Recipes, at: str, v: dict[str, Any], what: str) -> str:
    if "libc_version" not in v:
        raise HurdxenError(
            f"{recipes.where('hurd-modules', at)}: {what} need libc_version (the glibc version in ld.so's banner)",
            hint=f'add libc_version = "..." to [{at}]',
        )
    return str(v["libc_version"])


def _debian(recipes: Recipes, at: str, v: dict[str, Any]) -> dict[str, Any]:
    d = v["debian"]
    pkgs = d["packages"]
    libc = str(
        v.get("libc_version") or pkgs.get(LIBC_PACKAGE) or _needs_libc(recipes, at, v, "packages without libc0.3")
    )
    if LIBC_PACKAGE in pkgs and pkgs[LIBC_PACKAGE] != libc:
        raise HurdxenError(
            f"{recipes.files['hurd-modules']}: {at}.debian.packages.{LIBC_PACKAGE}: {pkgs[LIBC_PACKAGE]} is not the "
            f"pinned libc_version {libc}",
            hint="the libc0.3 package is the pin: make the two versions the same",
        )
    debs = tuple(DebPin.from_recipe(d, f"hurd-modules.{at}.debian", package=pkg) for pkg in sorted(pkgs))
    return {"libc_version": libc, "debs": debs}


def _build(
    recipes: Recipes, at: str, v: dict[str, Any], modules: tuple[ramdisk.ModuleSpec, ...], system: Sequence[TreeSpec]
) -> dict[str, Any]:
    """The producer's outputs named as the modules; the libc version is its glibc layer's (recipes/toolchain.toml)."""
    task = v["build"]["root"]
    producer = next((t for t in system if t.task == task), None)
    where = recipes.where("hurd-modules", f"{at}.build.root")
    if producer is None:
        raise HurdxenError(
            f"{where}: no stage publishes {task}",
            hint=f"one of: {', '.join(t.task for t in system) or 'none (add recipes/toolchain.toml and hurd.toml)'}",
        )
    lacking = [m.name for m in modules if m.name not in dict(producer.files)]
    if lacking:
        raise HurdxenError(
            f"{where}: {task} publishes no {', '.join(lacking)}",
            hint=f"it publishes {', '.join(n for n, _ in producer.files)} (recipes/hurd.toml's root.files)",
        )
    glibc = sorted(
        {
            dict(la.producer.facts)["glibc_version"]
            for la in producer.layers
            if "glibc_version" in dict(la.producer.facts)
        }
    )
    if len(glibc) != 1:
        raise HurdxenError(f"{where}: {task} is built on {len(glibc)} glibc layers", hint="it needs exactly one")
    given = v.get("libc_version")
    if given is not None and given != glibc[0]:
        raise HurdxenError(
            f"{recipes.where('hurd-modules', f'{at}.libc_version')}: {given}, but {task} has glibc {glibc[0]}",
            hint="drop libc_version: a build takes its glibc's version from recipes/toolchain.toml",
        )
    upstream = tuple(UpstreamFile(m.name, producer, m.name) for m in modules)
    return {"libc_version": glibc[0], "upstream": upstream}


def _disk(recipes: Recipes, at: str, v: dict[str, Any]) -> sources.DiskSource:
    r = recipes["hurd-modules"]
    d, defaults = v["disk"], r.get("disk", {})
    return sources.DiskSource(
        path=d["path"],
        sha256=d["sha256"],
        partition=d.get("partition"),
        libc_paths=tuple(d.get("libc", defaults.get("libc", ()))),
        max_bytes=int(d.get("max_bytes", defaults.get("max_bytes", 64 << 20))),
        image=r.get("image", "builder"),
        # the file that names the disk (an overlay, usually): where() knows who set each leaf key
        where=recipes.where("hurd-modules", f"{at}.disk.path").removesuffix(".path"),
    )


def out_dir(ctx: Context, name: str) -> Path:
    return ctx.artifacts / STAGE / name


def build(spec: HurdModulesSpec, ctx: Context) -> ramdisk.RamdiskResult:
    """Entry point: the inputs of the variant's source, every module checked against the libc version, then the
    ramdisk, the modules as files and the one manifest, published together."""
    final = out_dir(ctx, spec.name)
    with fsutil.scratch_dir(ctx.artifacts / "work", spec.task) as work:
        libc = spec.libc_version
        if spec.source == "build":
            inputs, described = sources.build_inputs(spec.upstream, ctx, spec.task)
        elif spec.source == "debian":
            inputs, described = sources.debian_inputs(spec.debs, ctx)
        elif spec.source == "files":
            inputs, described = sources.files_inputs(spec.files)
        elif spec.source == "standin":
            assert spec.standin is not None
            inputs, described = sources.standin_inputs(spec.standin, ctx, spec.task, work)
        else:
            assert spec.disk is not None
            inputs, libc, described = sources.disk_inputs(spec.disk, spec.modules, libc, ctx, spec.task, work)
        assert libc is not None
        with labelled(spec.task):
            built = ramdisk.make(ramdisk.RamdiskSpec(spec.bits, libc, spec.modules), inputs)
        with fsutil.atomic_dir(final) as out:
            fsutil.write_atomic(out / ramdisk.RAMDISK_NAME, built.image)
            (out / "modules").mkdir()
            for ms, m in zip(spec.modules, built.modules, strict=True):
                shutil.copyfile(m.source, out / module_file(ms))
            facts = dict(built.facts)
            manifest.write(
                out,
                spec,
                ctx,
                inputs={"source": spec.source, **described},
                step=manifest.in_process("hurdxen.stages.hurd_modules.ramdisk.make", format=facts.pop("format")),
                extra={**facts, "kernels": list(spec.kernels)},
            )
    return ramdisk.result_of(built, final / ramdisk.RAMDISK_NAME, libc)
