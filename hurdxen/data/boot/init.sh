#!/bin/busybox sh
# dom0 init for the boot check: start the Xen toolstack, then do what the boot stage asks on the console (Xen passes
# serial input to dom0), one command a line:
#   create NAME    create /guests/NAME.cfg paused, attach its console (relayed as "[NAME] x<hex>"), unpause; say
#                  "created NAME domid N"
#                  (or "xl create NAME failed"); xl stays to report the guest's end as "[xl:NAME] … has shut down"
#   destroy NAME   remove the guest (on_crash="preserve" keeps a crashed one until then), in the background: the
#                  stage need not wait; the next create does (its memory must be free); say "destroyed NAME"
#   poweroff       end
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
say() { echo "hurdxen-dom0: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
while read -r m; do
  insmod "/lib/modules/$m" || say "insmod $m failed"
done < /modules.order
mount -t xenfs xenfs /proc/xen
mkdir -p /var/run/xen /var/run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console /run/lock /tmp
xenstored --pid-file=/var/run/xenstored.pid
xen-init-dom0 >/dev/null || say "xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/var/run/xenconsoled.pid
say "toolstack up"

create() {
  cfg="/guests/$1.cfg" log="/var/log/xen/console/guest-$1.log" out="/tmp/xl-$1"
  if [ ! -e "$cfg" ]; then say "xl create $1 failed: no such guest"; return; fi
  [ -n "$destroying" ] && wait "$destroying"; destroying=
  rm -f "$out"
  # -p: created paused, unpaused once xenconsoled has attached the console (a guest that writes early and then
  # resets its ring, pv-grub2 handing over to GNU Mach, would lose that output). -F: xl waits for the guest's end.
  ( xl create -F -p "$cfg" 2>&1; echo "exit $?" ) | while IFS= read -r l; do
    echo "[xl:$1] $l"; echo "$l" >> "$out"
  done &
  n=0
  until grep -q "^Waiting for domain\|^exit " "$out" 2>/dev/null || [ $n -ge 1200 ]; do sleep 0.05; n=$((n+1)); done
  domid=$(sed -n 's/^Waiting for domain .* (domid \([0-9]*\)).*/\1/p' "$out" 2>/dev/null)
  if [ -z "$domid" ]; then say "xl create $1 failed"; return; fi
  n=0; while [ ! -e "$log" ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done
  # The guest's console is relayed hex-encoded (at most 1024 bytes a line), one write a line: its bytes can then
  # never start a line of the toolstack's or Xen's on the serial log, even when another line lands inside this one
  # (hurdxen/bootlog.py decodes it).
  ( tail -n +1 -f "$log" 2>/dev/null | while IFS= read -r l; do
      echo "[$1] x$(printf '%s' "$l" | hexdump -n 1024 -v -e '1/1 "%02x"')"
    done ) &
  xl unpause "$1"
  say "created $1 domid $domid"
}

stty -echo 2>/dev/null
say "ready"
while IFS=' ' read -r cmd name _; do
  case "$cmd" in
    create) create "$name" ;;
    destroy) ( xl destroy "$name" >/dev/null 2>&1; say "destroyed $name" ) & destroying=$! ;;
    poweroff) break ;;
    "") ;;
    *) say "unknown command $cmd" ;;
  esac
done
poweroff -f
