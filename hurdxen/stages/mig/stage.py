"""Stage: MIG, the Mach Interface Generator, cross-built for i686-gnu and x86_64-gnu.

From Debian's orig tarball with Debian's patch series applied, configured `--target=<triplet>` against the Mach
headers of a pinned gnumach-dev package, in the builder image with no network and as a non-root user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hurdxen.core import fsutil, safeextract
from hurdxen.core.quoting import shell_word
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Mount, Step
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.deb import extract_deb, fetch_deb, manifest_record
from hurdxen.sources.fetch import DebPin, Pin, TarballPin, fetch_tarball

STAGE = "mig"

# MIG's configure insists on a compiler named `<target>-gcc`; the wrapper also serves as MIG's default cpp, so the
# built mig works on its own. make and make install run separately: `make -j2 all install` races.
SCRIPT = r"""
mkdir -p "$WORK/src" "$WORK/build" "$WORK/bin"
tar -xJf "$ORIG" -C "$WORK/src" --strip-components=1
tar -xJf "$DEBIAN" -C "$WORK/src" debian/patches
cd "$WORK/src"
grep -v '^[[:space:]]*\(#\|$\)' debian/patches/series | while read -r patch _; do
  echo "applying $patch"
  patch -p1 --no-backup-if-mismatch -s < "debian/patches/$patch"
done
printf '#!/bin/sh\nexec %s "$@"\n' "$COMPILER" > "$WORK/bin/$TARGET-gcc"
chmod 755 "$WORK/bin/$TARGET-gcc"
export PATH="$WORK/bin:$PATH"
cd "$WORK/build"
"$WORK/src/configure" --target="$TARGET" --prefix=/usr --libexecdir=/usr/lib/mig \
  TARGET_CPPFLAGS="-I$HEADERS/$INCLUDE_SUBDIR" CFLAGS="-O2 -g0"
make -j"$(nproc)"
make install DESTDIR="$WORK/dest"
mkdir -p "$OUT/bin" "$OUT/lib/mig"
cp "$WORK/dest/usr/bin/$TARGET-mig" "$OUT/bin/"
cp "$WORK/dest/usr/lib/mig/$TARGET-migcom" "$OUT/lib/mig/"
cp "$WORK/bin/$TARGET-gcc" "$OUT/bin/"
"$OUT/bin/$TARGET-mig" --version | head -n 1
"""


@dataclass(frozen=True)
class MigSpec:
    target: str
    compiler: str
    include_subdir: str
    source: TarballPin
    patches: TarballPin
    headers: DebPin
    image: str

    @property
    def task(self) -> str:
        return f"{STAGE}:{self.target}"

    @property
    def doc(self) -> str:
        return f"{self.target}-mig from {Path(self.source.url).name}"

    def identity(self, ctx: Context) -> str:
        return stage.identity(STAGE, self, ctx.image_tag(self.image), SCRIPT)

    def outputs(self, ctx: Context) -> dict[str, Path]:
        d = out_dir(ctx, self.target)
        return {
            "mig": d / "bin" / f"{self.target}-mig",
            "migcom": d / "lib" / "mig" / f"{self.target}-migcom",
            "gcc": d / "bin" / f"{self.target}-gcc",  # the compiler wrapper mig runs as its cpp
        }

    def pins(self) -> tuple[Pin, ...]:
        return (self.source, self.patches, self.headers)

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps((*stage.image_deps(ctx, self.image), *stage.pin_tasks(self.pins())))


@dataclass(frozen=True)
class MigResult:
    target: str
    out_dir: Path
    mig: Path
    migcom: Path
    seconds: float


def specs(recipes: Recipes) -> list[MigSpec]:
    r = recipes["mig"]
    source = TarballPin("mig orig tarball", r["source"]["url"], r["source"]["sha256"], "mig.source.url")
    patches = TarballPin("mig debian.tar.xz", r["patches"]["url"], r["patches"]["sha256"], "mig.patches.url")
    out = []
    for target, t in sorted(r["targets"].items()):
        out.append(
            MigSpec(
                target=target,
                compiler=t["compiler"],
                include_subdir=t.get("include_subdir", "usr/include"),
                source=source,
                patches=patches,
                headers=DebPin.from_recipe(t["headers"], f"mig.targets.{target}.headers"),
                image=r.get("image", "builder"),
            )
        )
    return out


def out_dir(ctx: Context, target: str) -> Path:
    return ctx.artifacts / STAGE / target


def fetch_inputs(spec: MigSpec, ctx: Context) -> tuple[Path, Path, Path]:
    orig = fetch_tarball(spec.source, ctx.cache)
    deb = fetch_tarball(spec.patches, ctx.cache)
    # GNU tar unpacks them inside the step (possibly on the host): check every member first
    safeextract.check(orig, f"{spec.source.name} {orig.name}", strip_single_top=True)
    safeextract.check(deb, f"{spec.patches.name} {deb.name}")
    headers = extract_deb(fetch_deb(spec.headers, ctx.cache), ctx.cache)
    return orig, deb, headers


def build_step(
    spec: MigSpec, image_tag: str, orig: Path, debian_tar: Path, headers: Path, work: Path, out: Path
) -> Step:
    """The one container step of this stage (the benchmark runs it by hand, too)."""
    return Step(
        name=spec.task,
        script=SCRIPT,
        image=image_tag,
        mounts=(
            Mount(orig, "ORIG", "/in/mig.orig.tar.xz"),
            Mount(debian_tar, "DEBIAN", "/in/mig.debian.tar.xz"),
            Mount(headers, "HEADERS", "/in/headers"),
            Mount(work, "WORK", "/work", writable=True),
            Mount(out, "OUT", "/out", writable=True),
        ),
        env=(("TARGET", spec.target), ("COMPILER", spec.compiler), ("INCLUDE_SUBDIR", spec.include_subdir)),
    )


def build(spec: MigSpec, ctx: Context) -> MigResult:
    """Entry point: build MIG for one target into artifacts/mig/<target>/ (atomically)."""
    start = time.monotonic()
    orig, debian_tar, headers = fetch_inputs(spec, ctx)
    image_tag = ctx.image_tag(spec.image)
    final = out_dir(ctx, spec.target)
    with fsutil.atomic_dir(final) as out, fsutil.scratch_dir(ctx.artifacts / "work", spec.task) as work:
        step = build_step(spec, image_tag, orig, debian_tar, headers, work, out)
        result = ctx.executor().run(step, ctx.log(spec.task), ctx.monitor())
        manifest.write(
            out,
            spec,
            ctx,
            inputs={
                "source": {"url": spec.source.url, "sha256": spec.source.sha256},
                "patches": {"url": spec.patches.url, "sha256": spec.patches.sha256},
                "headers": manifest_record(spec.headers, fetch_deb(spec.headers, ctx.cache), ctx.cache),
                "configure": f"--target={spec.target} TARGET_CC={shell_word(spec.compiler)}",
            },
            step=result,
        )
    outs = spec.outputs(ctx)
    return MigResult(spec.target, final, outs["mig"], outs["migcom"], time.monotonic() - start)
