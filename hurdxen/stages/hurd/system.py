"""Stages: the Hurd from its pinned git commit. `hurd:headers` installs its headers into the sysroot (for glibc);
`hurd:system` builds the servers, libraries and daemons a boot needs (ext2fs.static among them) with the cross
toolchain, against the new glibc.

The Hurd's configure cannot run its link tests with the stage-1 compiler before glibc exists, so the headers'
configure runs with the host's compiler for the target's word size (@PROBE_CC@; only headers are installed); the
system's runs with the cross compiler.
"""

from __future__ import annotations

from typing import Any

from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.fetch import GitPin
from hurdxen.stages.toolchain.chain import Layer, TreeSpec, Upstream, option_words
from hurdxen.stages.toolchain.target import Target

# The exported tree is read-only: autoreconf runs on a copy (autom4te's cache differs from run to run: dropped).
PREPARE = r"""
export PATH="$PATH:$MIG_DIR/bin"
cp -a "$HURD_SRC/." hurd
(cd hurd && autoreconf -fi && rm -rf autom4te.cache)
mkdir -p build
cd build
"""

HEADERS_SCRIPT = (
    PREPARE
    + r"""
"$WORK/hurd/configure" --host="$TARGET" $CONFIGURE CC="@PROBE_CC@"
make no_deps=t install-headers DESTDIR="$DEST"
find "$DEST" -type f | wc -l | sed 's/$/ header files/'
"""
)

# Each top-level target is a directory (its libraries are built first by the Hurd's own Makefile); the libraries
# that were built are installed with them.
SYSTEM_SCRIPT = (
    PREPARE
    + r"""
PKG_CONFIG_LIBDIR="$SYSROOT/usr/lib/pkgconfig" "$WORK/hurd/configure" --host="$TARGET" $CONFIGURE
make -j"$JOBS" $HURD_TARGETS
for t in $HURD_TARGETS; do
  make "$t-install" DESTDIR="$DEST" $INSTALL_FLAGS
done
for d in lib*/; do
  d="${d%/}"
  if ls "$d"/*.so >/dev/null 2>&1; then
    make "$d-install" DESTDIR="$DEST" $INSTALL_FLAGS
  fi
done
static="$(find "$DEST" "$WORK/build" -name ext2fs.static -type f | head -n 1)"
test -n "$static" || { echo "the Hurd installed no ext2fs.static"; exit 1; }
cp -L "$static" "$OUT/ext2fs.static"
find "$DEST" -maxdepth 2 -not -path "$DEST/usr/include/*" | sort
"""
)


def hurd_pin(recipes: Recipes) -> tuple[GitPin, str]:
    """The pinned commit (fetched from the overlay's mirror, if any) and the recipe's own upstream URL."""
    s = recipes["hurd"]["source"]
    pin = GitPin("hurd source", s["git"], s["commit"], "hurd.source.git", s.get("ref"))
    return pin, upstream_url(recipes) or s["git"]


def upstream_url(recipes: Recipes) -> str | None:
    """The git URL recipes/hurd.toml itself pins (an overlay may point `source.git` at a local mirror)."""
    from hurdxen.pipeline.recipes import read_toml

    path = recipes.root / recipes.files.get("hurd", "recipes/hurd.toml")
    url = read_toml(path, recipes.files.get("hurd", "recipes/hurd.toml")).get("source", {}).get("git")
    return url if isinstance(url, str) else None


def headers_spec(recipes: Recipes, t: Target, mig: Any) -> TreeSpec:
    r = t.hurd
    pin, canonical = hurd_pin(recipes)
    return TreeSpec(
        stage_name="hurd",
        name=t.name("headers"),
        description=f"the Hurd's headers at {pin.commit[:12]} for {t.triplet} (make install-headers), for glibc",
        script=t.fill(HEADERS_SCRIPT),
        image=r.get("image", "toolchain"),
        git=(("HURD_SRC", pin, canonical),),
        upstream=(Upstream("MIG_DIR", mig),),
        options=(("TARGET", t.triplet), ("CONFIGURE", option_words(r, "configure"))),
        jobs=int(r.get("jobs", 2)),
        facts=(("hurd_commit", pin.commit),),
    )


def system_spec(recipes: Recipes, t: Target, gcc1: TreeSpec, sysroot: tuple[TreeSpec, ...], mig: Any) -> TreeSpec:
    r = t.hurd
    pin, canonical = hurd_pin(recipes)
    return TreeSpec(
        stage_name="hurd",
        name=t.name("system"),
        description=f"the Hurd at {pin.commit[:12]} for {t.triplet}: {', '.join(r['targets'])} and their libraries",
        script=SYSTEM_SCRIPT,
        image=r.get("image", "toolchain"),
        git=(("HURD_SRC", pin, canonical),),
        layers=(Layer(gcc1, "tools"), *(Layer(s) for s in sysroot)),
        upstream=(Upstream("MIG_DIR", mig),),
        options=(
            ("TARGET", t.triplet),
            ("CONFIGURE", option_words(r, "configure")),
            ("HURD_TARGETS", option_words(r, "targets")),
            ("INSTALL_FLAGS", option_words(r, "install_flags")),
        ),
        files=(("ext2fs.static", "ext2fs.static"),),
        jobs=int(r.get("jobs", 2)),
        facts=(("hurd_commit", pin.commit),),
    )
