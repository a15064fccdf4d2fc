"""Stages: the cross compiler. `toolchain:gcc1` is binutils (Debian's `binutils-i686-gnu`) plus gcc's stage 1 (C only,
no libc: enough to build glibc and the Hurd); `toolchain:gcc` is the final C compiler, built against the new glibc.

Debian's gcc orig tarball holds the DFSG source as an inner tarball without the GFDL manuals; the patches the recipe
names (Debian's `gcc-gfdl-build.diff`, which replaces the `s-tm-texi` rule the stubbed manual breaks) are taken by
name from the pinned Debian tarball at build time and applied with `patch -p2` (Debian's patches are against src/).
"""

from __future__ import annotations

from typing import Any

from hurdxen.pipeline.recipes import Recipes
from hurdxen.sources.fetch import DebPin, TarballPin
from hurdxen.stages.toolchain.chain import Layer, TreeSpec, option_words

# binutils goes into /tools as the package ships it: the programs in /tools/libexec/binutils, their target-specific
# libbfd/libopcodes/libctf in /tools/lib/binutils (Debian's cross binutils link those, not the image's), and in
# /tools/bin a wrapper per program that points the loader there. gcc finds the unprefixed names in /tools/<target>/bin;
# `ld` is the BFD linker.
BINUTILS = r"""
mkdir -p "$TOOLS/bin" "$TOOLS/libexec/binutils" "$TOOLS/lib/binutils" "$TOOLS/$TARGET/bin"
cp -a "$BINUTILS"/usr/lib/x86_64-linux-gnu/. "$TOOLS/lib/binutils/"
for f in "$BINUTILS"/usr/bin/"$TARGET"-*; do
  n="$(basename "$f")"
  cp -a "$f" "$TOOLS/libexec/binutils/$n"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib/binutils exec %s/libexec/binutils/%s "$@"\n' "$TOOLS" "$TOOLS" "$n" \
    > "$TOOLS/bin/$n"
  chmod 755 "$TOOLS/bin/$n"
done
ln -sf "$TARGET-ld.bfd" "$TOOLS/bin/$TARGET-ld"
for t in ar as ld ld.bfd nm objcopy objdump ranlib readelf strip; do
  ln -sf "../../bin/$TARGET-$t" "$TOOLS/$TARGET/bin/$t"
done
echo 'nop' | "$TOOLS/$TARGET/bin/as" -o "$WORK/nop.o" - && "$TOOLS/bin/$TARGET-ld" --version | head -n 1
"""

UNPACK_GCC = r"""
mkdir -p orig gcc build
tar -xzf "$GCC_ORIG" -C orig --strip-components=1
tar -xJf "orig/$GCC_INNER" -C gcc --strip-components=1
rm -rf orig
cd gcc
for p in $GCC_PATCHES; do
  echo "applying $p (from $(basename "$GCC_DEBIAN"))"
  tar -xJf "$GCC_DEBIAN" -O "$p" | patch -p2 --no-backup-if-mismatch -s
done
GCC_SRC="$PWD"
cd "$WORK/build"
"""

STAGE1_SCRIPT = (
    BINUTILS
    + UNPACK_GCC
    + r"""
"$GCC_SRC/configure" --target="$TARGET" --prefix="$TOOLS" --with-sysroot="$SYSROOT" $CONFIGURE
make -j"$JOBS" all-gcc MAKEINFO=:
make -j"$JOBS" all-target-libgcc MAKEINFO=:
make install-gcc install-target-libgcc MAKEINFO=:
# the tree is the whole /tools prefix: binutils and gcc
cp -a "$TOOLS/." "$DEST/"
"$TOOLS/bin/$TARGET-gcc" --version | head -n 1 | tee "$OUT/gcc-version.txt"
"""
)


def gcc_inputs(r: dict[str, Any] | Any) -> tuple[tuple[str, TarballPin], ...]:
    g = r["gcc"]
    return (
        (
            "GCC_ORIG",
            TarballPin("gcc orig tarball", g["source"]["url"], g["source"]["sha256"], "toolchain.gcc.source.url"),
        ),
        (
            "GCC_DEBIAN",
            TarballPin("gcc debian.tar.xz", g["debian"]["url"], g["debian"]["sha256"], "toolchain.gcc.debian.url"),
        ),
    )


def stage1_spec(recipes: Recipes) -> TreeSpec:
    r = recipes["toolchain"]
    g = r["gcc"]
    return TreeSpec(
        stage_name="toolchain",
        name="gcc1",
        description=f"binutils {r['binutils']['deb']['version']} (Debian) + gcc stage 1 for {r['target']}, C only",
        script=STAGE1_SCRIPT,
        image=r.get("image", "toolchain"),
        tarballs=gcc_inputs(r),
        debs=(("BINUTILS", DebPin.from_recipe(r["binutils"]["deb"], "toolchain.binutils.deb")),),
        options=(
            ("TARGET", r["target"]),
            ("GCC_INNER", g["inner"]),
            ("GCC_PATCHES", option_words(g, "debian_patches")),
            ("CONFIGURE", option_words(g, "stage1_configure")),
        ),
        files=(("gcc-version.txt", "gcc-version.txt"),),
        jobs=int(r.get("jobs", 2)),
    )


FINAL_SCRIPT = (
    UNPACK_GCC
    + r"""
"$GCC_SRC/configure" --target="$TARGET" --prefix="$TOOLS" --with-sysroot="$SYSROOT" $CONFIGURE
make -j"$JOBS" MAKEINFO=:
make install MAKEINFO=: DESTDIR="$WORK/inst"
# the tree is the whole toolchain: stage 1's binutils, then this gcc over stage 1's
(cd "$TOOLS" && tar --exclude=./sysroot -cf - .) | tar -xf - -C "$DEST"
cp -a "$WORK/inst$TOOLS/." "$DEST/"
"$WORK/inst$TOOLS/bin/$TARGET-gcc" --version | head -n 1 | tee "$OUT/gcc-version.txt"
"""
)


def final_spec(recipes: Recipes, stage1: TreeSpec, sysroot: tuple[TreeSpec, ...]) -> TreeSpec:
    """The final C compiler: built with stage 1 against the full sysroot (glibc's shared libc)."""
    r = recipes["toolchain"]
    g = r["gcc"]
    return TreeSpec(
        stage_name="toolchain",
        name="gcc",
        description=f"the final C compiler for {r['target']} (gcc, shared libgcc), against the new glibc",
        script=FINAL_SCRIPT,
        image=r.get("image", "toolchain"),
        tarballs=gcc_inputs(r),
        layers=(Layer(stage1, "tools"), *(Layer(s) for s in sysroot)),
        options=(
            ("TARGET", r["target"]),
            ("GCC_INNER", g["inner"]),
            ("GCC_PATCHES", option_words(g, "debian_patches")),
            ("CONFIGURE", option_words(g, "final_configure")),
        ),
        files=(("gcc-version.txt", "gcc-version.txt"),),
        jobs=int(r.get("jobs", 2)),
    )
