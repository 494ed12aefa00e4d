#!/usr/bin/env bash
# Builds the LB node VM image: the Debian kernel and an initramfs holding
# busybox, the virtio network and block modules, lb-node with the libraries
# it links, and an init that configures the NIC from the kernel command line,
# reads the node's admin secret from its secret disk and runs lb-node.
# Output: target/image/{vmlinuz,initramfs.cpio.gz}; rebuilt only when
# lb-node, the kernel or this script changed.
#
#   scripts/build-image.sh [path/to/lb-node]   (default: builds target/release/lb-node)
#
# What the controller passes (see src/drivers/compute/libvirt/):
#   kernel command line: console=ttyS0 quiet lbaas.ip=ADDR/PREFIX lbaas.node=ID
#   /dev/vda (read-only virtio disk): the hex secret on its first line, then
#     zeros. Never on the command line, which every user of the host can read
#     (qemu's /proc/<pid>/cmdline, virsh dumpxml).
#   lbaas.probe instead (the KVM probe of --vm-domain-type auto): init prints
#     its marker and halts.
# The init prints "lbaas-node: init" first on every boot (the probe waits for
# it) and its command line, so the console log shows what the guest got.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/image-lib.sh
image_packages ip

lb_node="${1:-}"
if [ -z "$lb_node" ]; then
  cargo build --release --bin lb-node
  lb_node=target/release/lb-node
fi
image_kernel
out=target/image
mkdir -p "$out"

stamp=$(cat "$lb_node" "$kernel" "$0" scripts/image-lib.sh | sha256sum | cut -c1-16)
if image_up_to_date "$out" "$stamp"; then
  echo "image up to date: $out"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,run,lib/modules,etc}
image_busybox "$root" sh mount ip insmod sleep cat echo mkdir ln halt

# virtio NIC and disk and their dependencies, in load order.
image_modules "$root" virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
  failover net_failover virtio_net virtio_blk

# lb-node and the shared libraries it links.
cp "$lb_node" "$root/bin/lb-node"
ldd "$lb_node" | grep -o '/[^ ]*' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "lbaas-node: init"
echo "lbaas-node: cmdline: $(cat /proc/cmdline)"
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lbaas.probe) echo "lbaas-node: probe, halting"; exec halt -f ;;
    lbaas.ip=*) ip_addr=${arg#lbaas.ip=} ;;
    lbaas.node=*) node=${arg#lbaas.node=} ;;
  esac
done
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         failover net_failover virtio_net virtio_blk; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
n=0
while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
secret=
[ -b /dev/vda ] && read -r secret < /dev/vda
case "$secret" in
  ""|*[!0-9a-fA-F]*)
    echo "lbaas-node: no secret on /dev/vda; not starting lb-node"
    while true; do sleep 3600; done ;;
esac
ip link set lo up
n=0
while ! ip link show eth0 >/dev/null 2>&1 && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
ip addr add "$ip_addr" dev eth0
ip link set eth0 up
echo "lbaas-node: eth0 $ip_addr, starting lb-node $node"
export LB_NODE_SECRET="$secret"
while true; do
  /bin/lb-node --node-id "$node" --admin-listen "${ip_addr%/*}:9901" --threads 1
  echo "lbaas-node: lb-node exited ($?), restarting"
  sleep 1
done
INIT
chmod +x "$root/init"

image_pack "$root" "$out" "$stamp"
