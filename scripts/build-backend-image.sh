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
. scripts/image-lib.sh
image_packages httpd

image_kernel
out=target/backend-image
mkdir -p "$out"
modules="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
failover net_failover virtio_net"

# (sed, not head: under pipefail a head that exits early can SIGPIPE busybox and fail the script)
stamp=$( (cat "$kernel" "$0" scripts/image-lib.sh; /bin/busybox --help | sed -n 1p) | sha256sum | cut -c1-16)
if image_up_to_date "$out" "$stamp"; then
  echo "backend image up to date: $out"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,run,www,lib/modules}
image_busybox "$root" sh mount ip insmod sleep cat echo mkdir ln httpd
# shellcheck disable=SC2086 # one word per module
image_modules "$root" $modules

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

image_pack "$root" "$out" "$stamp"
