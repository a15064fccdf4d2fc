"""Stages: the cross compiler. `toolchain:gcc1` is binutils (Debian's `binutils-<target>` package, or built from its
source tarball) plus gcc's stage 1 (C only, no libc: enough to build glibc and the Hurd); `toolchain:gcc` is the final
C compiler, built against the new glibc.

Debian's gcc orig tarball holds the DFSG source as an inner tarball without the GFDL manuals; the patches the recipe
names (Debian's `gcc-gfdl-build.diff`, which replaces the `s-tm-texi` rule the stubbed manual breaks) are taken by
name from the pinned Debian tarball at build time and applied with `patch -p2` (Debian's patches are against src/).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hurdxen.sources.fetch import DebPin, TarballPin
from hurdxen.stages.toolchain.chain import Layer, TreeSpec, option_words
from hurdxen.stages.toolchain.target import Target

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

# binutils from its source tarball instead (a target Debian has no usable package for): installed into /tools, where
# gcc finds it as Debian's would be.
BINUTILS_SOURCE = r"""
mkdir -p binutils-src binutils-build
tar -xJf "$BINUTILS_ORIG" -C binutils-src --strip-components=1
cd binutils-build
"$WORK/binutils-src/configure" --target="$TARGET" --prefix="$TOOLS" --with-sysroot="$SYSROOT" $BINUTILS_CONFIGURE
make -j"$JOBS" MAKEINFO=:
make install MAKEINFO=:
cd "$WORK"
rm -rf binutils-src binutils-build
echo 'nop' | "$TOOLS/$TARGET/bin/as" -o "$WORK/nop.o" - && "$TOOLS/bin/$TARGET-ld" --version | head -n 1
"""

UNPACK_GCC_SOURCE = r"""
mkdir -p orig gcc build
tar -xzf "$GCC_ORIG" -C orig --strip-components=1
tar -xJf "orig/$GCC_INNER" -C gcc --strip-components=1
rm -rf orig
cd gcc
for p in $GCC_PATCHES; do
  echo "applying $p (from $(basename "$GCC_DEBIAN"))"
  tar -xJf "$GCC_DEBIAN" -O "$p" | patch -p2 --no-backup-if-mismatch -s
done
"""

# The recipe's edits of gcc's source (GCC_EDITS: lines of `file match from to`): on each line of `file` holding
# `match`, `from` becomes `to` (x86_64-gnu: t-gnu64's m64 OS directory ../lib64 → ../lib, where glibc installs).
# Only a target that has edits gets this fragment (the others' scripts, and identities, stay as they were).
EDIT_GCC = r"""
printf '%s\n' "$GCC_EDITS" | while read -r file match from to; do
  [ -n "$file" ] || continue
  grep -q -e "$match.*$from" "$file" || { echo "gcc edit: no line of $file holds $match and $from"; exit 1; }
  sed -i -e "\|$match|s|$from|$to|" "$file"
  echo "edited $file: $(grep -e "$match" "$file" | head -n 1)"
done
"""

ENTER_GCC_BUILD = r"""GCC_SRC="$PWD"
cd "$WORK/build"
"""

STAGE1_GCC = r"""
"$GCC_SRC/configure" --target="$TARGET" --prefix="$TOOLS" --with-sysroot="$SYSROOT" $CONFIGURE
make -j"$JOBS" all-gcc MAKEINFO=:
make -j"$JOBS" all-target-libgcc MAKEINFO=:
make install-gcc install-target-libgcc MAKEINFO=:
# the tree is the whole /tools prefix: binutils and gcc
cp -a "$TOOLS/." "$DEST/"
"$TOOLS/bin/$TARGET-gcc" --version | head -n 1 | tee "$OUT/gcc-version.txt"
"""


def unpack_gcc(g: Mapping[str, Any]) -> str:
    """Unpacking and patching gcc's source, with the edits fragment when the target has edits."""
    return UNPACK_GCC_SOURCE + (EDIT_GCC if g.get("edits") else "") + ENTER_GCC_BUILD


def gcc_options(g: Mapping[str, Any], configure: str) -> tuple[tuple[str, str], ...]:
    opts = [("GCC_INNER", g["inner"]), ("GCC_PATCHES", option_words(g, "debian_patches")), ("CONFIGURE", configure)]
    if g.get("edits"):  # added only when used: the identities of targets without edits stay what they were
        opts.append(("GCC_EDITS", "\n".join(f"{e['file']} {e['match']} {e['from']} {e['to']}" for e in g["edits"])))
    return tuple(opts)


def gcc_inputs(r: Mapping[str, Any]) -> tuple[tuple[str, TarballPin], ...]:
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


def stage1_spec(t: Target) -> TreeSpec:
    r = t.toolchain
    g = r["gcc"]
    b = r["binutils"]
    at = f"toolchain.targets.{t.triplet}.binutils"
    if "deb" in b:
        binutils, what = BINUTILS, f"binutils {b['deb']['version']} (Debian)"
        tarballs = gcc_inputs(r)
        debs: tuple[tuple[str, DebPin], ...] = (("BINUTILS", DebPin.from_recipe(b["deb"], f"{at}.deb")),)
        own: tuple[tuple[str, str], ...] = ()
    else:
        binutils, what = BINUTILS_SOURCE, f"binutils {b['version']} (source)"
        pin = TarballPin("binutils orig tarball", b["source"]["url"], b["source"]["sha256"], f"{at}.source.url")
        tarballs, debs = (("BINUTILS_ORIG", pin), *gcc_inputs(r)), ()
        own = (("BINUTILS_CONFIGURE", option_words(b, "configure")),)
    return TreeSpec(
        stage_name="toolchain",
        name=t.name("gcc1"),
        description=f"{what} + gcc stage 1 for {r['target']}, C only",
        script=binutils + unpack_gcc(g) + STAGE1_GCC,
        image=r.get("image", "toolchain"),
        tarballs=tarballs,
        debs=debs,
        options=(("TARGET", r["target"]), *gcc_options(g, option_words(g, "stage1_configure")), *own),
        files=(("gcc-version.txt", "gcc-version.txt"),),
        jobs=int(r.get("jobs", 2)),
    )


FINAL_BUILD = r"""
"$GCC_SRC/configure" --target="$TARGET" --prefix="$TOOLS" --with-sysroot="$SYSROOT" $CONFIGURE
make -j"$JOBS" MAKEINFO=:
make install MAKEINFO=: DESTDIR="$WORK/inst"
# the tree is the whole toolchain: stage 1's binutils, then this gcc over stage 1's
(cd "$TOOLS" && tar --exclude=./sysroot -cf - .) | tar -xf - -C "$DEST"
cp -a "$WORK/inst$TOOLS/." "$DEST/"
"$WORK/inst$TOOLS/bin/$TARGET-gcc" --version | head -n 1 | tee "$OUT/gcc-version.txt"
"""


def final_spec(t: Target, stage1: TreeSpec, sysroot: tuple[TreeSpec, ...]) -> TreeSpec:
    """The final C compiler: built with stage 1 against the full sysroot (glibc's shared libc)."""
    r = t.toolchain
    g = r["gcc"]
    return TreeSpec(
        stage_name="toolchain",
        name=t.name("gcc"),
        description=f"the final C compiler for {r['target']} (gcc, shared libgcc), against the new glibc",
        script=unpack_gcc(g) + FINAL_BUILD,
        image=r.get("image", "toolchain"),
        tarballs=gcc_inputs(r),
        layers=(Layer(stage1, "tools"), *(Layer(s) for s in sysroot)),
        options=(("TARGET", r["target"]), *gcc_options(g, option_words(g, "final_configure"))),
        files=(("gcc-version.txt", "gcc-version.txt"),),
        jobs=int(r.get("jobs", 2)),
    )
