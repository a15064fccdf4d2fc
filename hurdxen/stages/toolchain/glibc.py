"""Stages: the target's system root. `toolchain:mach-headers` installs GNU Mach's headers from the gnumach recipe's
prepared source; `toolchain:glibc` builds glibc for the Hurd with the stage-1 compiler, MIG and the Mach and Hurd
headers.

Debian's glibc orig tarball is DFSG (no manual/, whose errno.texi the Hurd port reads) and libc.so's linker script
does not name libmachuser and libhurduser; the patches the recipe names (Debian's `local-remove-manual.diff` and
`tg-mach-hurd-link.diff`) are taken by name from the pinned Debian tarball and applied with `patch -p1`.
"""

from __future__ import annotations

from typing import Any

from hurdxen.sources.fetch import TarballPin
from hurdxen.stages.toolchain.chain import Layer, TreeSpec, Upstream, option_words
from hurdxen.stages.toolchain.target import Target

# Only headers are installed, so the host compiler passes configure's checks (the prepared source was probed the same
# way: @PROBE_CC@ and @PROBE_LD@ are the target's, e.g. `gcc -m32`); MIG is not run by install-data. install-data also
# updates doc/version.texi: it runs on a copy of the source.
MACH_HEADERS_SCRIPT = r"""
cp -a "$GNUMACH/." gnumach
rm -f gnumach/manifest.json
mkdir -p build && cd build
"$WORK/gnumach/configure" $CONFIGURE CC="@PROBE_CC@" LD="@PROBE_LD@" MIG=true
make install-data DESTDIR="$DEST"
find "$DEST" -type f | wc -l | sed 's/$/ header files/'
"""


def mach_headers_spec(t: Target, gnumach_source: Any) -> TreeSpec:
    r = t.toolchain
    return TreeSpec(
        stage_name="toolchain",
        name=t.name("mach-headers"),
        description=f"GNU Mach's headers for {t.triplet} (make install-data) from the pinned gnumach source",
        script=t.fill(MACH_HEADERS_SCRIPT),
        image=r.get("image", "toolchain"),
        upstream=(Upstream("GNUMACH", gnumach_source),),
        options=(("CONFIGURE", option_words(r["mach_headers"], "configure")),),
        jobs=int(r.get("jobs", 2)),
    )


# CXX: without a target C++ compiler glibc's configure would take the host's g++ for support/links-dso-program.cc.
# MIG's directory comes after /tools/bin on PATH: its `<target>-gcc` wrapper must not shadow the cross compiler.
# @LDSO@ is the target's ld.so (ld.so.1, ld-x86-64.so.1).
GLIBC_SCRIPT = r"""
export PATH="$PATH:$MIG_DIR/bin"
mkdir -p glibc build
tar -xJf "$GLIBC_ORIG" -C glibc --strip-components=1
cd glibc
for p in $GLIBC_PATCHES; do
  echo "applying $p (from $(basename "$GLIBC_DEBIAN"))"
  tar -xJf "$GLIBC_DEBIAN" -O "$p" | patch -p1 --no-backup-if-mismatch
done
cd "$WORK/build"
BUILD_CC=gcc CXX=cxx-not-found CC="$TARGET-gcc" AR="$TARGET-ar" RANLIB="$TARGET-ranlib" \
  "$WORK/glibc/configure" --host="$TARGET" --build=x86_64-linux-gnu --with-headers="$SYSROOT/usr/include" \
  --with-pkgversion="$GLIBC_PKGVERSION" $CONFIGURE
make -j"$JOBS" MAKEINFO=:
make MAKEINFO=: DESTDIR="$DEST" install
ldso="$(find "$DEST" -name @LDSO@ | sort | head -n 1)"
test -n "$ldso" || { echo "glibc installed no @LDSO@"; exit 1; }
echo "@LDSO@ installed as ${ldso#"$DEST"}"
cp -L "$ldso" "$OUT/@LDSO@"
strings "$OUT/@LDSO@" > "$WORK/ld.so.strings"
{ grep -m1 '^ld.so (' "$WORK/ld.so.strings" || echo "(no ld.so banner found)"; } | tee "$OUT/ld.so-banner.txt"
"""


def glibc_spec(t: Target, gcc1: TreeSpec, headers: tuple[TreeSpec, ...], mig: Any) -> TreeSpec:
    r = t.toolchain
    g = r["glibc"]
    version = g["version"]
    ldso = str(r["ldso"])
    return TreeSpec(
        stage_name="toolchain",
        name=t.name("glibc"),
        description=f"glibc {version} for {r['target']} (libc.so.0.3, {ldso}, libpthread) with the stage-1 gcc",
        script=t.fill(GLIBC_SCRIPT),
        image=r.get("image", "toolchain"),
        tarballs=(
            (
                "GLIBC_ORIG",
                TarballPin(
                    "glibc orig tarball", g["source"]["url"], g["source"]["sha256"], "toolchain.glibc.source.url"
                ),
            ),
            (
                "GLIBC_DEBIAN",
                TarballPin(
                    "glibc debian.tar.xz", g["debian"]["url"], g["debian"]["sha256"], "toolchain.glibc.debian.url"
                ),
            ),
        ),
        layers=(Layer(gcc1, "tools"), *(Layer(h) for h in headers)),
        upstream=(Upstream("MIG_DIR", mig),),
        options=(
            ("TARGET", r["target"]),
            ("GLIBC_PATCHES", option_words(g, "debian_patches")),
            ("GLIBC_PKGVERSION", g.get("pkgversion", "GNU libc")),
            ("CONFIGURE", option_words(g, "configure")),
        ),
        files=((ldso, ldso), ("ld.so-banner.txt", "ld.so-banner.txt")),
        jobs=int(r.get("jobs", 2)),
        facts=(("glibc_version", version),),
    )
