"""The prepared GNU Mach source tree (gnumach's first task): the pinned commit (or tarball) with the recipe's patch
series applied, configured once so that every variant can build from it mounted read-only (the first configure of a
fresh tree rewrites `Makefile.in` in the source directory, so that happens here, on a writable copy)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hurdxen.core import fsutil, safeextract
from hurdxen.core.errors import HurdxenError
from hurdxen.pipeline import manifest, stage
from hurdxen.pipeline.context import Context
from hurdxen.pipeline.executors import Mount, Step
from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.fetch import GitPin, Pin, TarballPin, fetch_tarball
from hurdxen.sources.git import export_git
from hurdxen.stages.gnumach import STAGE

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
# autom4te's cache is a Perl dump in hash order, which differs from run to run; nothing later reads it.
rm -rf autom4te.cache
# The first configure of a fresh tree rewrites Makefile.in in the source directory: let it happen now, on this
# writable copy, so every variant can build from the tree mounted read-only.
mkdir -p "$WORK/probe" && cd "$WORK/probe"
"$OUT/configure" --enable-platform=xen --host=i686-gnu CC="gcc -m32" LD="ld -melf_i386" MIG=true >probe.log 2>&1 \
  || { cat probe.log; exit 1; }
echo "prepared source tree"
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

    def pins(self) -> tuple[Pin, ...]:
        return tuple(p for p in (self.git, self.tarball) if p is not None)

    def deps(self, ctx: Context) -> stage.Deps:
        return stage.Deps(
            (*stage.image_deps(ctx, self.image), *stage.pin_tasks(self.pins())), tuple(p.path for p in self.patches)
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


def source_dir(ctx: Context) -> Path:
    return ctx.artifacts / STAGE / "source"


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


def prepare(spec: SourceSpec, ctx: Context) -> Path:
    """Entry point: the patched, configure-ready source tree at artifacts/gnumach/source (once per identity)."""
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
