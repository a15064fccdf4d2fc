"""Stage: GNU Mach for the Xen platform — one cross build per variant, verified before it leaves the stage.

`gnumach_source` makes the patched, configured source tree once; each variant then builds from it mounted read-only,
as a non-root user with no network. Kernels whose Xen notes are wrong never reach `artifacts/`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError, labelled
from hurdxen.core.quoting import shell_word
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Mount, Step, StepResult
from hurdxen.pipeline.recipes import Recipes
from hurdxen.pipeline.stage import Build
from hurdxen.sources.deb import extract_deb, fetch_deb, manifest_record
from hurdxen.sources.fetch import DebPin, Pin
from hurdxen.stages.gnumach import STAGE
from hurdxen.stages.gnumach.source import SourceSpec, prepare, source_dir, source_spec
from hurdxen.stages.mig import stage as mig
from hurdxen.stages.mig.stage import MigSpec
from hurdxen.xen import verify as xenverify

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
        return "configure " + " ".join(shell_word(w) for w in words)

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

    def pins(self) -> tuple[Pin, ...]:
        return ()  # it reads its producers (the prepared source tree, MIG), which fetch their own

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

    def pins(self) -> tuple[Pin, ...]:
        return (self.deb,)

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps(stage.pin_tasks(self.pins()))


@dataclass(frozen=True)
class KernelResult:
    variant: str
    out_dir: Path
    kernel: Path
    stripped: Path | None
    gz: Path
    warnings: tuple[str, ...]


# ------------------------------------------------------------------ recipes -> specs


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


def out_dir(ctx: Context, name: str) -> Path:
    return ctx.artifacts / STAGE / name


def kernel_name(variant: str) -> str:
    return f"gnumach-{variant}"


# ------------------------------------------------------------------ entry points


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
            ("CONFIGURE_EXTRA", " ".join(shell_word(a) for a in spec.configure_args())),
            ("CFLAGS_BASE", spec.cflags),
            ("JOBS", str(spec.jobs)),
            ("VARIANT", spec.name),
        ),
    )


def compile_variant(spec: VariantSpec, ctx: Context) -> KernelResult:
    """Entry point: build, verify (strictly) and publish one variant into artifacts/gnumach/<variant>/."""
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
        with labelled(task):
            found = xenverify.check_report(report)
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
        with labelled(spec.task):
            found = xenverify.check_report(report)
        fsutil.write_json_atomic(out / "verify.json", {gz.name: report.to_json()})
        fsutil.write_atomic(out / "verify.txt", xenverify.render_report(report))
        manifest.write(
            out,
            spec,
            ctx,
            inputs={"debian": {**manifest_record(spec.deb, deb, ctx.cache), "path": spec.path}},
            step=manifest.in_process("hurdxen.gnumach.fetch_prebuilt"),
            extra={
                "bits": spec.bits,
                "pae": spec.pae,
                "verify": {"strict": False, "warnings": [f.message for f in found]},
            },
        )
    return KernelResult(spec.name, final, gz, None, gz, tuple(f.message for f in found))


# The stage's entry points, one per spec kind (the generic stage task picks one by the spec's type).
BUILDS: Mapping[type, Build] = {SourceSpec: prepare, VariantSpec: compile_variant, PrebuiltSpec: fetch_prebuilt}
