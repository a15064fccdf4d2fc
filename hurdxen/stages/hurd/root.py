"""Stages: a small userland and the installed root. `hurd:dash` cross-builds dash from Debian's orig tarball against
the new glibc; `hurd:root` gathers what a boot runs — glibc's shared libraries and ld.so.1, the Hurd's servers,
libraries and /libexec, /bin/sh → dash, the /servers nodes and /dev, /tmp — stripped, as one tree (the root disk
and the ramdisk are made from it), with the boot modules also as named files.
"""

from __future__ import annotations

from hurdxen.sources.fetch import TarballPin
from hurdxen.stages.toolchain.chain import Layer, TreeSpec, option_words
from hurdxen.stages.toolchain.target import Target

DASH_SCRIPT = r"""
mkdir -p dash build
tar -xzf "$DASH_ORIG" -C dash --strip-components=1
cd build
CC_FOR_BUILD=gcc "$WORK/dash/configure" --host="$TARGET" CC="$TARGET-gcc" $CONFIGURE
make -j"$JOBS"
make install DESTDIR="$DEST"
cp "$DEST/bin/dash" "$OUT/dash"
"""


def dash_spec(t: Target, gcc1: TreeSpec, sysroot: tuple[TreeSpec, ...]) -> TreeSpec:
    r = t.hurd["dash"]
    return TreeSpec(
        stage_name="hurd",
        name=t.name("dash"),
        description=f"dash {r['version']} for {t.triplet}, against the new glibc (/bin/sh)",
        script=DASH_SCRIPT,
        image=t.hurd.get("image", "toolchain"),
        tarballs=(
            (
                "DASH_ORIG",
                TarballPin("dash orig tarball", r["source"]["url"], r["source"]["sha256"], "hurd.dash.source.url"),
            ),
        ),
        layers=(Layer(gcc1, "tools"), *(Layer(s) for s in sysroot)),
        options=(("TARGET", t.triplet), ("CONFIGURE", option_words(r, "configure"))),
        files=(("dash", "dash"),),
        jobs=int(t.hurd.get("jobs", 2)),
        facts=(("dash_version", r["version"]),),
    )


# The layers are unpacked into $SYSROOT; the root takes the runtime parts of them (no headers, static archives or
# object files). Executables are stripped of everything, shared libraries of what they do not need. @LDSO@ is the
# target's ld.so (ld.so.1, ld-x86-64.so.1), @LDSO_GLOB@ its name and versions.
ROOT_SCRIPT = r"""
R="$DEST"
mkdir -p "$R/lib" "$R/bin" "$R/hurd" "$R/libexec" "$R/dev" "$R/tmp" "$R/etc" "$R/servers/socket"
chmod 1777 "$R/tmp"
(cd "$SYSROOT/lib" && find . -maxdepth 1 \( -name '@LDSO_GLOB@' -o -name 'lib*.so.*' \) | sort) | while read -r f; do
  cp -a "$SYSROOT/lib/$f" "$R/lib/"
done
cp -a "$SYSROOT/hurd/." "$R/hurd/"
cp -a "$SYSROOT/libexec/." "$R/libexec/"
cp -a "$SYSROOT/bin/dash" "$R/bin/dash"
ln -sf dash "$R/bin/sh"
[ -e "$R/lib/ld.so" ] || ln -sf @LDSO@ "$R/lib/ld.so"
for n in $SERVER_NODES; do
  mkdir -p "$(dirname "$R/servers/$n")"
  : > "$R/servers/$n"
done
find "$R" -type f | sort | while read -r f; do
  if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    case "$f" in
      *.so|*.so.*) "$TARGET-strip" --strip-unneeded "$f" ;;
      *) "$TARGET-strip" --strip-all "$f" ;;
    esac
  fi
done
for f in $ROOT_FILES; do
  cp "$R/$f" "$OUT/$(basename "$f")"
done
(cd "$R" && find . -type f | sort | xargs sha256sum) > "$OUT/files.sha256"
echo "root: $(find "$R" | wc -l) entries, $(du -sh "$R" | cut -f1)"
"""


def root_spec(t: Target, gcc1: TreeSpec, parts: tuple[TreeSpec, ...]) -> TreeSpec:
    r = t.hurd["root"]
    modules = tuple(r["files"])
    return TreeSpec(
        stage_name="hurd",
        name=t.name("root"),
        description=f"the installed {t.triplet} Hurd root (glibc, the servers, /libexec, /bin/sh), stripped",
        script=t.fill(ROOT_SCRIPT),
        image=t.hurd.get("image", "toolchain"),
        layers=(Layer(gcc1, "tools"), *(Layer(p) for p in parts)),
        options=(
            ("TARGET", t.triplet),
            ("SERVER_NODES", option_words(r, "server_nodes")),
            ("ROOT_FILES", " ".join(modules)),
        ),
        files=(*((m.rsplit("/", 1)[-1], m.rsplit("/", 1)[-1]) for m in modules), ("files.sha256", "files.sha256")),
        jobs=int(t.hurd.get("jobs", 2)),
    )
