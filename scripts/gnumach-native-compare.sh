#!/usr/bin/env bash
# Does recipes/patches/gnumach/ change the native (non-Xen) GNU Mach kernel? Builds the pinned commit as is and with
# the whole series, for the `at` platform, in the builder image the gnumach stage uses, and prints both sha256s.
#   scripts/gnumach-native-compare.sh GNUMACH_GIT_DIR MIG_DIR HOST [WORKDIR]
#   e.g. scripts/gnumach-native-compare.sh /srv/mirrors/gnumach artifacts/mig/x86_64-gnu x86_64-gnu /tmp/native
# MIG_DIR is a mig stage's directory (its bin/<host>-mig); HOST x86_64-gnu or i686-gnu. Needs Docker and the image.
set -euo pipefail
git_dir=$1 mig=$(realpath "$2") host=$3 work=${4:-$(mktemp -d)}
root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(sed -n 's/^commit = "\([0-9a-f]*\)"/\1/p' "$root/recipes/gnumach.toml" | head -1)
image=$(docker images --format '{{.Repository}}:{{.Tag}}' hurdxen/builder | head -1)
if [ "$host" = x86_64-gnu ]; then cc=gcc ld=ld; else cc="gcc -m32" ld="ld -melf_i386"; fi
for t in pristine patched; do
  rm -rf "$work/src-$t" "$work/build-$t" && mkdir -p "$work/src-$t" "$work/build-$t"
  git --git-dir="$git_dir" archive "$commit" | tar -x -C "$work/src-$t"
  if [ $t = patched ]; then
    while read -r p; do patch -d "$work/src-$t" -p1 --no-backup-if-mismatch -s < "$root/recipes/patches/gnumach/$p"; done \
      < "$root/recipes/patches/gnumach/series"
  fi
  docker run --rm --network none --init -v "$work/src-$t:/usr/src/gnumach" -v "$work/build-$t:/usr/src/build" \
    -v "$mig:/opt/mig:ro" "$image" bash -c "set -e; cd /usr/src/gnumach; autoreconf -fi >/dev/null 2>&1
      f='-g -O2 -ffile-prefix-map=/usr/src/gnumach=/usr/src/gnumach -ffile-prefix-map=/usr/src/build=/usr/src/gnumach/build'
      cd /usr/src/build; /usr/src/gnumach/configure --enable-platform=at --host=$host CC='$cc' LD='$ld' \
        MIG=/opt/mig/bin/$host-mig CFLAGS=\"\$f\" CCASFLAGS=\"\$f\" >configure.log
      make -j2 gnumach gnumach.stripped >make.log 2>&1"
  (cd "$work/build-$t" && sha256sum gnumach gnumach.stripped | sed "s/^/$t /")
done
