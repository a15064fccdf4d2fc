#!/bin/sh
# Xen block hotplug script of the boot check's dom0 (libxl runs it for a disk with `script=`, env XENBUS_PATH):
# `add` puts the image file named in the backend's `params` on a loop device and tells blkback which
# (physical-device, as hex major:minor); a guest device named as a partition (`dev` hda1) gets that partition
# of the image (losetup -P). `remove` frees the loop device. Debian's block script needs bash and udev-era tools
# the busybox dom0 lacks.
dir=$XENBUS_PATH
fail() { xenstore-write "$dir/hotplug-error" "$*" "$dir/hotplug-status" error; echo "hurdxen-block: $*" >&2; exit 1; }
case "$1" in
add)
  file=$(xenstore-read "$dir/params") || fail "no params in $dir"
  dev=$(losetup -f) || fail "no free loop device"
  part=$(xenstore-read "$dir/dev" | sed -n 's/^[a-z]*\([0-9][0-9]*\)$/\1/p')
  losetup ${part:+-P} "$dev" "$file" || fail "losetup $dev $file failed"
  blk=$dev${part:+p$part}
  n=0; while [ ! -b "$blk" ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
  [ -b "$blk" ] || { losetup -d "$dev"; fail "$file has no partition $part"; }
  xenstore-write "$dir/physical-device" "$(stat -L -c '%t:%T' "$blk")" "$dir/physical-device-path" "$dev" \
    "$dir/hotplug-status" connected
  ;;
remove)
  dev=$(xenstore-read "$dir/physical-device-path" 2>/dev/null) && losetup -d "$dev"
  ;;
esac
exit 0
