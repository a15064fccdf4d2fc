# Build only the Xen hypervisor (xen/xen, uncompressed ELF) from Debian's orig tarball.
# Mounts: $TARBALL (read-only dir holding the tarball), $OUT (writable). Env: XEN_TARBALL (file name),
# XEN_CONFIG ("CONFIG_X=y ..."), SOURCE_DATE_EPOCH, JOBS.
work=$(mktemp -d "${TMPDIR:-/tmp}/xen.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xJf "$TARBALL/$XEN_TARBALL"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
cd "$src"
# Fixed build identity strings instead of the user, host, date and time of the build.
export XEN_WHOAMI=hurdxen XEN_DOMAIN=hurdxen XEN_BUILD_HOST=hurdxen
export XEN_BUILD_DATE="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %e %Y')"
export XEN_BUILD_TIME="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%T')"
make -C xen defconfig
for kv in $XEN_CONFIG; do
  key=${kv%%=*}
  sed -i "/^$key=/d; /^# $key is not set/d" xen/.config
  echo "$kv" >> xen/.config
done
make -C xen olddefconfig
for kv in $XEN_CONFIG; do
  grep -qx "$kv" xen/.config || { echo "olddefconfig dropped $kv" >&2; exit 1; }
done
# Only the multiboot ELF: skip xen.efi (its PE links cost time and QEMU boots xen/xen).
make -C xen -j"${JOBS:-2}" XEN_BUILD_EFI=n XEN_BUILD_PE=n
cp xen/xen "$OUT/xen"
cp xen/.config "$OUT/xen.config"
file "$OUT/xen" || true
