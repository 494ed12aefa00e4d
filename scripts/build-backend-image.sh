#!/usr/bin/env bash
# Builds a test image for managed VM backends (`compute: vm`, issue 16): the
# Debian kernel and an initramfs with busybox whose init configures eth0 and
# serves HTTP with `busybox httpd` on the port lbd gives it.
# Output: target/backend-image/{vmlinuz,initramfs.cpio.gz}; rebuilt only when
# the kernel or this script changed.
#
#   scripts/build-backend-image.sh
#
# What lbd passes (src/drivers/backend/vm.rs), appended to the template's
# cmdline: console=ttyS0 ... lbaas.ip=ADDR/PREFIX lbaas.port=PORT
# and `app.body=TEXT` (no spaces), if the template's cmdline has one, becomes
# the body of / (tests tell backends apart with it).
# The init prints "lbaas-backend: init" first and "lbaas-backend: httpd on
# ADDR:PORT" once serving. It ignores the ACPI power button (no acpid), so
# lbd's stop destroys it once the shutdown grace is over.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
[ -x /bin/busybox ] && /bin/busybox --list | grep -qx httpd || need+=(busybox-static)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}
out=target/backend-image
mkdir -p "$out"
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
failover net_failover virtio_net"

stamp=$( (cat "$kernel" "$0"; /bin/busybox --help | head -1) | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] \
   && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ]; then
  echo "backend image up to date: $out"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,run,www,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in sh mount ip insmod sleep cat echo mkdir ln httpd; do
  ln -s busybox "$root/bin/$applet"
done
for m in $modules; do
  cp "$(modinfo -k "$kver" -n "$m")" "$root/lib/modules/"
done

cat > "$root/init" <<INIT
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "lbaas-backend: init"
echo "lbaas-backend: cmdline: \$(cat /proc/cmdline)"
body=backend
for arg in \$(cat /proc/cmdline); do
  case "\$arg" in
    lbaas.ip=*) ip_addr=\${arg#lbaas.ip=} ;;
    lbaas.port=*) port=\${arg#lbaas.port=} ;;
    app.body=*) body=\${arg#app.body=} ;;
  esac
done
for m in $modules; do
  insmod /lib/modules/\$m.ko 2>/dev/null
done
echo "\$body" > /www/index.html
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1 && [ \$n -lt 100 ]; do sleep 0.05; n=\$((n+1)); done
ip addr add "\$ip_addr" dev eth0
ip link set eth0 up
echo "lbaas-backend: httpd on \${ip_addr%/*}:\$port"
while true; do
  httpd -f -p "\${ip_addr%/*}:\$port" -h /www
  echo "lbaas-backend: httpd exited (\$?), restarting"
  sleep 1
done
INIT
chmod +x "$root/init"

cp "$kernel" "$out/vmlinuz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz"
echo "$stamp" > "$out/stamp"
echo "built $out/vmlinuz and $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1)) from kernel $kver"
