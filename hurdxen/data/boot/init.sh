#!/bin/busybox sh
# dom0 init for the boot check: start the Xen toolstack, create every guest in /guests, show their consoles.
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
say "starting xenstored"
xenstored --pid-file=/var/run/xenstored.pid
xen-init-dom0 || say "xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/var/run/xenconsoled.pid
say "toolstack up"
wait_s=$(cat /guests/wait 2>/dev/null || echo 60)
for cfg in /guests/*.cfg; do
  [ -e "$cfg" ] || continue
  name=$(basename "$cfg" .cfg)
  say "xl create $name"
  # Created paused, unpaused once xenconsoled has attached the console: a guest that writes early and then
  # resets its ring (pv-grub2 handing over to GNU Mach) would otherwise lose that output.
  if xl $([ -e /guests/debug ] && echo -vvv) create -p "$cfg"; then
    log="/var/log/xen/console/guest-$name.log"
    n=0; while [ ! -e "$log" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
    [ -e "$log" ] || say "no console log for $name"
    ( tail -n +1 -f "$log" 2>/dev/null | while IFS= read -r l; do echo "[$name] $l"; done ) &
    xl unpause "$name"
    say "created $name"
  else
    say "xl create $name failed"
  fi
done
# Debugging aid: a /guests/debug file makes the init list the domains every few seconds.
[ -e /guests/debug ] && ( while sleep 4; do xl list; ls -la /var/log/xen/console; cat /var/log/xen/console/*; ps; done ) &
i=0
while [ $i -lt "$wait_s" ]; do
  sleep 1; i=$((i+1))
done
xl list
say "done"
poweroff -f
