# Shared by scripts/build-image.sh (LB-node VMs) and
# scripts/build-backend-image.sh (test backend VMs): both boot the host's
# newest kernel directly with a busybox initramfs. Sourced, not run; the
# functions use the caller's `set -euo pipefail`.

# Installs what an image is made of: busybox-static (with applet $1), a
# kernel and cpio.
image_packages() {
  local need=()
  [ -x /bin/busybox ] && /bin/busybox --list | grep -x "$1" >/dev/null || need+=(busybox-static)
  ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
  command -v cpio >/dev/null 2>&1 || need+=(cpio)
  if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# Sets `kernel` (its path) and `kver` (its version): the host's newest.
image_kernel() {
  kernel=$(ls /boot/vmlinuz-* | sort -V | tail -1)
  kver=${kernel#/boot/vmlinuz-}
}

# Whether directory $1 holds a whole image built with stamp $2.
image_up_to_date() {
  [ -f "$1/stamp" ] && [ "$(cat "$1/stamp")" = "$2" ] \
    && [ -f "$1/vmlinuz" ] && [ -f "$1/initramfs.cpio.gz" ]
}

# Puts busybox into root $1 with the applets $2...
image_busybox() {
  local root=$1 applet
  shift
  cp /bin/busybox "$root/bin/busybox"
  for applet in "$@"; do
    ln -s busybox "$root/bin/$applet"
  done
}

# Copies kernel modules $2... (of `kver`, in load order) into $1/lib/modules.
image_modules() {
  local root=$1 m
  shift
  for m in "$@"; do
    cp "$(modinfo -k "$kver" -n "$m")" "$root/lib/modules/"
  done
}

# Writes the kernel and root $1 packed as an initramfs into directory $2,
# with stamp $3.
image_pack() {
  cp "$kernel" "$2/vmlinuz"
  (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) > "$2/initramfs.cpio.gz"
  echo "$3" > "$2/stamp"
  echo "built $2/vmlinuz and $2/initramfs.cpio.gz ($(du -h "$2/initramfs.cpio.gz" | cut -f1)) from kernel $kver"
}
