# Runs in the boot-dom0 image: copy what the dom0 initramfs needs into $OUT/rootfs, the kernel to $OUT/vmlinuz.
# Env: KERNEL_RELEASE, DOM0_MODULES (module names), DOM0_PROGRAMS (absolute paths), DOM0_FILES (more files,
# e.g. libraries loaded with dlopen, which ldd does not show).
R="$OUT/rootfs"
mkdir -p "$R"
kdir=/opt/dom0-kernel
cp "$kdir/boot/vmlinuz-$KERNEL_RELEASE" "$OUT/vmlinuz"

copy() {  # copy a file (following symlinks) to the same path under $R
  mkdir -p "$R$(dirname "$2")"
  cp -L "$1" "$R$2"
}
mkdir -p "$R/bin"
cp /bin/busybox "$R/bin/busybox"

libs=$(mktemp)
for p in $DOM0_PROGRAMS; do
  copy "$p" "$p"
  ldd "$p" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' >> "$libs"
done
for f in $DOM0_FILES; do
  echo "$f" >> "$libs"
done
for l in $(sort -u "$libs"); do
  copy "$l" "$l"
done
rm -f "$libs"

# Kernel modules with their dependencies, in load order.
: > "$R/modules.order"
for m in $DOM0_MODULES; do
  modprobe -d "$kdir" -S "$KERNEL_RELEASE" --show-depends "$m" | while read -r kind path _; do
    [ "$kind" = insmod ] || continue
    rel=${path#"$kdir"/lib/modules/"$KERNEL_RELEASE"/}
    base=$(basename "$rel")
    mkdir -p "$R/lib/modules"
    cp "$path" "$R/lib/modules/$base"
    grep -qx "$base" "$R/modules.order" || echo "$base" >> "$R/modules.order"
  done
done
test -s "$R/modules.order"
cat "$R/modules.order"
ls -l "$OUT/vmlinuz"
du -sh "$R"
