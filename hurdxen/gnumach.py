"""Stage: GNU Mach for the Xen platform — one cross build per variant, verified before it leaves the stage.

`prepare` makes the patched source tree once (the first configure of a fresh tree rewrites `Makefile.in` in the
source directory, so that happens here, on a writable copy); each variant then builds from it mounted read-only,
as a non-root user with no network. Kernels whose Xen notes are wrong never reach `artifacts/`.
"""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hurdxen import fsutil, manifest, mig, safeextract, stage, xenverify
from hurdxen.context import Context
from hurdxen.errors import HurdxenError
from hurdxen.executors import Mount, Step, StepResult
from hurdxen.mig import MigSpec
from hurdxen.recipes import Recipes
from hurdxen.sources import DebPin, GitPin, TarballPin, export_git, extract_deb, fetch_deb, fetch_tarball

STAGE = "gnumach"

PREPARE_SCRIPT = r"""
cp -a "$EXPORT/." "$OUT/"
cd "$OUT"
printf '%s\n' "$PATCHES" | while read -r patch; do
  [ -n "$patch" ] || continue
  echo "applying $patch"
  patch -p1 --no-backup-if-mismatch -s < "$PATCHDIR/$patch"
done
if [ ! -x configure ]; then
  autoreconf -fi
fi
# The first configure of a fresh tree rewrites Makefile.in in the source directory: let it happen now, on this
# writable copy, so every variant can build from the tree mounted read-only.
mkdir -p "$WORK/probe" && cd "$WORK/probe"
"$OUT/configure" --enable-platform=xen --host=i686-gnu CC="gcc -m32" LD="ld -melf_i386" MIG=true >probe.log 2>&1 \
  || { cat probe.log; exit 1; }
echo "prepared source tree"
"""

BUILD_SCRIPT = r"""
# Not MIGDIR: the mig script reads that variable as the place of migcom.
export PATH="$MIG_HOME/bin:$PATH"
cd "$BUILD"
# Map the source and build paths so the kernel records neither (two builds in different places are identical).
flags="$CFLAGS_BASE -ffile-prefix-map=$SRC=/usr/src/gnumach -ffile-prefix-map=$BUILD=/usr/src/gnumach/build"
set -x
"$SRC/configure" --enable-platform=xen --host="$HOST" $CONFIGURE_EXTRA \
  CC="$CC" LD="$LD" MIG="$MIG_HOME/bin/$MIG_TARGET-mig" CFLAGS="$flags" CCASFLAGS="$flags"
make -j"$JOBS" gnumach gnumach.stripped
set +x
cp gnumach "$OUT/gnumach-$VARIANT"
cp gnumach.stripped "$OUT/gnumach-$VARIANT.stripped"
# Not the Makefile's .gz rule: it records mtimes.
gzip -9n < gnumach.stripped > "$OUT/gnumach-$VARIANT.gz"
$CC --version | head -n 1 > "$BUILD/.compiler-version"
"""


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    sha256: str
    shown: str  # its path in the project (or its name, for a series outside it): the same on every machine


@dataclass(frozen=True)
class SourceSpec:
    git: GitPin | None
    tarball: TarballPin | None
    patches: tuple[Patch, ...]
    image: str
    upstream: str | None = None  # the recipe's git URL when an overlay fetches the same commit from elsewhere

    task = f"{STAGE}:source"
    doc = "the patched, configure-ready GNU Mach source tree"

    def identity(self, ctx: Context) -> str:
        pin = self.git.commit if self.git else self.tarball.sha256 if self.tarball else None
        return fsutil.identity(
            STAGE, "source", pin, [(p.name, p.sha256) for p in self.patches], ctx.image_tag(self.image), PREPARE_SCRIPT
        )

    def outputs(self, ctx: Context) -> dict[str, Path]:
        return {}  # the tree itself, which variants mount; its manifest records what it was made from

    def deps(self, ctx: Context) -> stage.Deps:
        pin = self.git or self.tarball
        return stage.Deps(
            (*stage.image_deps(ctx, self.image), *([stage.pin_task(pin)] if pin else [])),
            tuple(p.path for p in self.patches),
        )

    def describe(self) -> dict[str, Any]:
        """The canonical pinned identity (the recipe's upstream URL, the commit, every patch with its hash); where
        the bytes were fetched from is a local fact, kept apart in `fetched_from`."""
        d: dict[str, Any] = {"patches": [{"name": p.name, "path": p.shown, "sha256": p.sha256} for p in self.patches]}
        if self.git:
            d["git"] = {"url": self.upstream or self.git.url, "commit": self.git.commit}
            if self.upstream and self.upstream != self.git.url:
                d["fetched_from"] = {"git": self.git.url}
        if self.tarball:
            d["tarball"] = {"url": self.tarball.url, "sha256": self.tarball.sha256}
        return d


@dataclass(frozen=True)
class VariantSpec:
    name: str
    host: str
    cc: str
    ld: str
    mig_target: str
    pae: bool | None
    configure: tuple[str, ...]
    cflags: str
    jobs: int
    image: str
    source: SourceSpec
    mig: MigSpec

    @property
    def bits(self) -> int:
        return 64 if self.host.startswith("x86_64") else 32

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        return self.configure_line()

    def configure_line(self) -> str:
        words = [
            "--enable-platform=xen",
            f"--host={self.host}",
            *self.configure_args(),
            f"CC={self.cc}",
            f"LD={self.ld}",
            f"MIG={self.mig_target}-mig",
        ]
        return "configure " + " ".join(shlex.quote(w) for w in words)

    def configure_args(self) -> list[str]:
        extra = list(self.configure)
        if self.pae is not None and self.bits == 32:
            extra.insert(0, "--enable-pae" if self.pae else "--disable-pae")
        return extra

    def expectation(self, strict: bool = True) -> xenverify.KernelExpectation:
        return xenverify.KernelExpectation(
            bits=64 if self.bits == 64 else 32, pae=self.pae if self.bits == 32 else None, strict=strict
        )

    def identity(self, ctx: Context) -> str:
        d = {k: v for k, v in self.__dict__.items() if k not in ("source", "mig")}
        tag = ctx.image_tag(self.image)
        return fsutil.identity(STAGE, d, self.source.identity(ctx), self.mig.identity(ctx), tag, BUILD_SCRIPT)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d, k = out_dir(ctx, self.name), kernel_name(self.name)
        return {
            "kernel": d / k,
            "stripped": d / f"{k}.stripped",
            "kernel.gz": d / f"{k}.gz",
            "verify.json": d / "verify.json",
            "verify.txt": d / "verify.txt",
        }

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps((*stage.image_deps(ctx, self.image), self.source.task, self.mig.task))


@dataclass(frozen=True)
class PrebuiltSpec:
    name: str
    deb: DebPin
    path: str
    bits: int
    pae: bool | None

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.name}"

    @property
    def doc(self) -> str:
        return f"prebuilt kernel {self.deb.package} {self.deb.version} ({self.deb.arch}), verified"

    def identity(self, ctx: Context | None = None) -> str:
        return fsutil.identity(STAGE, "prebuilt", self.__dict__)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = out_dir(ctx, self.name)
        return {
            "kernel.gz": d / f"{kernel_name(self.name)}.gz",
            "verify.json": d / "verify.json",
            "verify.txt": d / "verify.txt",
        }

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps((stage.pin_task(self.deb),))


@dataclass(frozen=True)
class KernelResult:
    variant: str
    out_dir: Path
    kernel: Path
    stripped: Path | None
    gz: Path
    warnings: tuple[str, ...]


# ------------------------------------------------------------------ recipes -> specs


def source_spec(recipes: Recipes) -> SourceSpec:
    r = recipes["gnumach"]
    s = r["source"]
    git = GitPin("gnumach source", s["git"], s["commit"], "gnumach.source.git", s.get("ref")) if "git" in s else None
    tarball = (
        TarballPin("gnumach tarball", s["tarball"], s["sha256"], "gnumach.source.tarball") if "tarball" in s else None
    )
    return SourceSpec(git, tarball, patch_series(recipes), r.get("image", "builder"), upstream_git(recipes))


def upstream_git(recipes: Recipes) -> str | None:
    """The git URL recipes/gnumach.toml itself pins (an overlay may point `source.git` at a local mirror)."""
    path = recipes.root / recipes.files.get(STAGE, "recipes/gnumach.toml")
    try:
        with open(path, "rb") as f:
            url = tomllib.load(f).get("source", {}).get("git")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return url if isinstance(url, str) else None


def patch_series(recipes: Recipes) -> tuple[Patch, ...]:
    p = recipes["gnumach"].get("patches")
    if not p:
        return ()
    pdir = recipes.root / "recipes" / p["dir"]
    series = pdir / "series"
    if not series.is_file():
        raise HurdxenError(
            f"{recipes.where('gnumach', 'patches.dir')}: {series} has no series file",
            hint="list the patches, one per line, in `series`",
        )
    lines = series.read_text(errors="replace").splitlines()
    names = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    pinned: Mapping[str, str] = p["sha256"]
    out = []
    for name in names:
        path = pdir / name
        if name not in pinned:
            raise HurdxenError(
                f"{recipes.where('gnumach', 'patches.sha256')}: {name} (in {series}) has no sha256",
                hint=f'add "{name}" = "<sha256sum of the patch>"',
            )
        if not path.is_file():
            raise HurdxenError(f"{series}: {name} does not exist", hint="fix the series file or add the patch")
        got = fsutil.sha256_file(path)
        if got != pinned[name]:
            raise HurdxenError(
                f"{recipes.where('gnumach', f'patches.sha256.{name}')}: the patch's sha256 is {got}, "
                f"the recipe pins {pinned[name]}",
                hint="if you changed the patch on purpose, update the pin",
            )
        shown = str(path.relative_to(recipes.root)) if path.is_relative_to(recipes.root) else name
        out.append(Patch(name, path, got, shown))
    for name in pinned:
        if name not in names:
            raise HurdxenError(
                f"{recipes.where('gnumach', f'patches.sha256.{name}')}: not in {series}",
                hint="add it to the series or drop the pin",
            )
    return tuple(out)


def variant_specs(recipes: Recipes) -> list[VariantSpec]:
    r = recipes["gnumach"]
    src = source_spec(recipes)
    migs = stage.by_name(mig.specs(recipes))
    b = r.get("build", {})
    out = []
    for name, v in sorted(r["variants"].items()):
        if v["host"].startswith("x86_64") and "pae" in v:
            raise HurdxenError(
                f"{recipes.files['gnumach']}: variants.{name}.pae: only for 32-bit variants",
                hint="x86_64 kernels have no PAE switch; drop the key",
            )
        if v["mig"] not in migs:
            raise HurdxenError(
                f"{recipes.where('gnumach', f'variants.{name}.mig')}: no MIG target {v['mig']!r}",
                hint="add it to recipes/mig.toml [targets]",
            )
        out.append(
            VariantSpec(
                name=name,
                host=v["host"],
                cc=v["cc"],
                ld=v["ld"],
                mig_target=v["mig"],
                pae=v.get("pae"),
                configure=tuple(v.get("configure", [])),
                cflags=b.get("cflags", "-g -O2"),
                jobs=int(b.get("jobs", 2)),
                image=r.get("image", "builder"),
                source=src,
                mig=migs[v["mig"]],
            )
        )
    return out


def prebuilt_specs(recipes: Recipes) -> list[PrebuiltSpec]:
    out = []
    for name, p in sorted(recipes["gnumach"].get("prebuilt", {}).items()):
        out.append(
            PrebuiltSpec(
                name,
                DebPin.from_recipe(p["package"], f"gnumach.prebuilt.{name}.package"),
                p["path"],
                int(p["bits"]),
                p.get("pae"),
            )
        )
    return out


# ------------------------------------------------------------------ paths


def source_dir(ctx: Context) -> Path:
    return ctx.artifacts / STAGE / "source"


def out_dir(ctx: Context, name: str) -> Path:
    return ctx.artifacts / STAGE / name


def kernel_name(variant: str) -> str:
    return f"gnumach-{variant}"


# ------------------------------------------------------------------ entry points


def prepare_step(spec: SourceSpec, image_tag: str, export: Path, work: Path, out: Path) -> Step:
    """The container step that patches and prepares the exported source in `out`."""
    return Step(
        name=f"{STAGE}:source",
        script=PREPARE_SCRIPT,
        image=image_tag,
        mounts=(
            Mount(export, "EXPORT", "/in/export"),
            Mount(spec.patches[0].path.parent if spec.patches else export, "PATCHDIR", "/in/patches"),
            Mount(work, "WORK", "/work", writable=True),
            Mount(out, "OUT", "/src", writable=True),
        ),
        env=(("PATCHES", "\n".join(p.name for p in spec.patches)),),
    )


def build_step(spec: VariantSpec, image_tag: str, src: Path, migdir: Path, build_dir: Path, out: Path) -> Step:
    """The container step that configures and compiles one variant from the read-only prepared source."""
    return Step(
        name=spec.task,
        script=BUILD_SCRIPT,
        image=image_tag,
        mounts=(
            Mount(src, "SRC", "/usr/src/gnumach"),
            Mount(migdir, "MIG_HOME", "/opt/mig"),
            Mount(build_dir, "BUILD", "/usr/src/gnumach-build", writable=True),
            Mount(out, "OUT", "/out", writable=True),
        ),
        env=(
            ("HOST", spec.host),
            ("CC", spec.cc),
            ("LD", spec.ld),
            ("MIG_TARGET", spec.mig_target),
            ("CONFIGURE_EXTRA", " ".join(shlex.quote(a) for a in spec.configure_args())),
            ("CFLAGS_BASE", spec.cflags),
            ("JOBS", str(spec.jobs)),
            ("VARIANT", spec.name),
        ),
    )


def prepare(spec: SourceSpec, ctx: Context) -> Path:
    """The patched, configure-ready source tree at artifacts/gnumach/source (built once per identity)."""
    image_tag = ctx.image_tag(spec.image)
    final = source_dir(ctx)
    with (
        fsutil.scratch_dir(ctx.artifacts / "work", "gnumach-export") as export,
        fsutil.scratch_dir(ctx.artifacts / "work", "gnumach-prepare") as work,
        fsutil.atomic_dir(final) as out,
    ):
        if spec.git:
            export_git(spec.git, ctx.cache, export)
        elif spec.tarball:
            tarball = fetch_tarball(spec.tarball, ctx.cache)
            _extract_tarball(tarball, export)
        step = prepare_step(spec, image_tag, export, work, out)
        result = ctx.executor().run(step, ctx.log(f"{STAGE}:source"), ctx.monitor())
        manifest.write(out, spec, ctx, inputs=spec.describe(), step=result)
    return final


def _extract_tarball(tarball: Path, dest: Path) -> None:
    safeextract.extract(tarball, dest, f"gnumach source tarball {tarball.name}", strip_single_top=True)


def build(spec: SourceSpec | VariantSpec | PrebuiltSpec, ctx: Context) -> KernelResult | Path:
    """Entry point: the prepared source tree, a compiled variant or a prebuilt kernel, by the spec's kind."""
    if isinstance(spec, SourceSpec):
        return prepare(spec, ctx)
    if isinstance(spec, PrebuiltSpec):
        return fetch_prebuilt(spec, ctx)
    return compile_variant(spec, ctx)


def compile_variant(spec: VariantSpec, ctx: Context) -> KernelResult:
    """Build, verify (strictly) and publish one variant into artifacts/gnumach/<variant>/."""
    src = source_dir(ctx)
    image_tag = ctx.image_tag(spec.image)
    if not (src / manifest.MANIFEST).is_file() or manifest.read(src).identity != spec.source.identity(ctx):
        raise HurdxenError(
            f"{spec.task}: the prepared source in {src} is missing or stale",
            hint="run `doit gnumach:source` first (doit build does)",
        )
    mig_built = manifest.read_task(ctx.artifacts, spec.mig.task)
    mig_built.output("mig")  # the step runs it from the directory it was published in
    final = out_dir(ctx, spec.name)
    with fsutil.scratch_dir(ctx.artifacts / "work", spec.task) as build_dir, fsutil.atomic_dir(final) as out:
        step = build_step(spec, image_tag, src, mig_built.directory, build_dir, out)
        result = ctx.executor().run(step, ctx.log(spec.task), ctx.monitor())
        compiler = (build_dir / ".compiler-version").read_text().strip()
        warnings = _verify_outputs(out, kernel_name(spec.name), spec.expectation(strict=True), spec.task)
        _write_manifest(out, spec, ctx, mig_built.identity, result, compiler, warnings)
    outs = spec.outputs(ctx)
    return KernelResult(spec.name, final, outs["kernel"], outs["stripped"], outs["kernel.gz"], warnings)


def _verify_outputs(out: Path, name: str, expect: xenverify.KernelExpectation, task: str) -> tuple[str, ...]:
    """Check the unstripped and the gzipped kernel as Xen would; an error aborts before anything is published."""
    reports = {}
    warnings: list[str] = []
    for fname in (name, f"{name}.gz"):
        # Labelled by file name: the temporary directory's path means nothing once published.
        report = xenverify.inspect_kernel_bytes((out / fname).read_bytes(), expect, fname)
        try:
            found = xenverify.check_report(report)
        except HurdxenError as e:
            raise HurdxenError(f"{task}: {e.message}", hint=e.hint) from e
        warnings += [f.message for f in found]
        reports[fname] = report
    fsutil.write_json_atomic(out / "verify.json", {f: r.to_json() for f, r in reports.items()})
    # The unstripped kernel's report, read once (inspecting a kernel is most of what doit adds to a build).
    fsutil.write_atomic(out / "verify.txt", xenverify.render_report(reports[name]))
    return tuple(dict.fromkeys(warnings))


def _write_manifest(
    out: Path,
    spec: VariantSpec,
    ctx: Context,
    mig_identity: str,
    result: StepResult,
    compiler: str,
    warnings: tuple[str, ...],
) -> None:
    manifest.write(
        out,
        spec,
        ctx,
        inputs={"source": spec.source.describe(), "mig": {"target": spec.mig_target, "identity": mig_identity}},
        step=result,
        extra={
            "configure": spec.configure_line(),
            "cflags": spec.cflags,
            "compiler": compiler,
            "bits": spec.bits,
            "pae": spec.pae,
            "verify": {"strict": True, "warnings": list(warnings)},
        },
    )


def fetch_prebuilt(spec: PrebuiltSpec, ctx: Context) -> KernelResult:
    """Entry point: a Debian-built kernel, verified like any package, checked like our own (non-strict)."""
    deb = fetch_deb(spec.deb, ctx.cache)
    tree = extract_deb(deb, ctx.cache)
    src = safeextract.tree_path(tree, spec.path, f"gnumach.prebuilt.{spec.name}.path")
    if not src.is_file():
        raise HurdxenError(
            f"{spec.task}: {spec.deb.package} has no {spec.path}",
            hint=f"check gnumach.prebuilt.{spec.name}.path (dpkg -c lists the package)",
        )
    final = out_dir(ctx, spec.name)
    bits: Literal[32, 64] = 64 if spec.bits == 64 else 32
    expect = xenverify.KernelExpectation(bits=bits, pae=spec.pae if bits == 32 else None, strict=False)
    with fsutil.atomic_dir(final) as out:
        gz = out / f"{kernel_name(spec.name)}.gz"
        data = src.read_bytes()
        if not data.startswith(b"\x1f\x8b"):
            import gzip

            data = gzip.compress(data, 9, mtime=0)
        fsutil.write_atomic(gz, data)
        report = xenverify.inspect_kernel_bytes(data, expect, gz.name)
        try:
            found = xenverify.check_report(report)
        except HurdxenError as e:
            raise HurdxenError(f"{spec.task}: {e.message}", hint=e.hint) from e
        fsutil.write_json_atomic(out / "verify.json", {gz.name: report.to_json()})
        fsutil.write_atomic(out / "verify.txt", xenverify.render_report(report))
        manifest.write(
            out,
            spec,
            ctx,
            inputs={
                "debian": {
                    "package": spec.deb.package,
                    "version": spec.deb.version,
                    "arch": spec.deb.arch,
                    "suite": spec.deb.suite,
                    "sha256": fsutil.sha256_file(deb),
                    "path": spec.path,
                }
            },
            step=manifest.in_process("hurdxen.gnumach.fetch_prebuilt"),
            extra={
                "bits": spec.bits,
                "pae": spec.pae,
                "verify": {"strict": False, "warnings": [f.message for f in found]},
            },
        )
    return KernelResult(spec.name, final, gz, None, gz, tuple(f.message for f in found))
