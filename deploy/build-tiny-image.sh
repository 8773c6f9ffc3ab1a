#!/bin/bash
# Build, offline from Debian packages, a tiny bootable disk image for tests and demos:
# Debian's cloud kernel and a busybox initramfs on a FAT disk made bootable with syslinux.
# It prints "ucloud-tiny: booted" on its serial console (ttyS0), powers off on ACPI, and panics on an
# NMI (QMP inject-nmi) through pvpanic, so tests can make a guest kernel panic.
#
#   deploy/build-tiny-image.sh OUT_DIR
#
# Writes OUT_DIR/tiny.raw, OUT_DIR/tiny.qcow2, and OUT_DIR/vmlinuz + OUT_DIR/initrd.gz (the same
# kernel and initramfs, for booting without firmware). Idempotent: an existing build of this same
# script is kept (OUT_DIR/build-id holds the script's hash); a build by an older script is redone.
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
build_id=$(sha256sum "$0" | cut -d' ' -f1)
if [ -s "$out/tiny.qcow2" ] && [ -s "$out/tiny.raw" ] && [ "$(cat "$out/build-id" 2>/dev/null)" = "$build_id" ]; then
    echo "tiny image already built in $out"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel: the package the cloud meta-package points at, unpacked, never installed.
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel_pkg" ]; then apt-get update -qq; kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
apt-get download "$kernel_pkg" >/dev/null 2>&1 || { apt-get update -qq; apt-get download "$kernel_pkg" >/dev/null; }
dpkg-deb -x ./*.deb kernel
cp kernel/boot/vmlinuz-* vmlinuz

# The initramfs: static busybox, virtio modules, an /init that says it booted and waits for ACPI.
mkdir -p initramfs/{bin,dev,proc,sys,lib/modules,etc/acpi/PWRF}
cp /bin/busybox initramfs/bin/busybox
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net button evdev pvpanic pvpanic-mmio; do
    path=$(find kernel/lib/modules -name "$module.ko*" | head -n 1)
    [ -n "$path" ] || { echo "module $module not found in $kernel_pkg" >&2; exit 1; }
    case $path in
        *.xz) xz -dc "$path" > "initramfs/lib/modules/$module.ko" ;;
        *.zst) zstd -dqc "$path" > "initramfs/lib/modules/$module.ko" ;;
        *) cp "$path" "initramfs/lib/modules/$module.ko" ;;
    esac
    echo "$module" >> initramfs/lib/modules/order
done
cat > initramfs/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /lib/modules/order); do insmod "/lib/modules/$module.ko" 2>/dev/null; done
# An NMI the kernel cannot attribute (QMP inject-nmi) panics it; pvpanic tells QEMU.
echo 1 > /proc/sys/kernel/unknown_nmi_panic
echo "ucloud-tiny: booted"
# In the foreground (-d, logging to the console): daemonized, busybox acpid finds no log file and quits.
acpid -d -c /etc/acpi &
while true; do sleep 3600; done
INIT
printf '#!/bin/sh\necho "ucloud-tiny: power button, powering off"\npoweroff -f\n' > initramfs/etc/acpi/PWRF/00000080
chmod +x initramfs/init initramfs/etc/acpi/PWRF/00000080
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -9) > initrd.gz

# The disk: FAT, syslinux in its boot sector, kernel and initramfs as files.
printf 'DEFAULT tiny\nLABEL tiny\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND console=ttyS0 quiet\n' > syslinux.cfg
mkfs.fat -C tiny.raw 65536 >/dev/null
syslinux --install tiny.raw
mcopy -i tiny.raw vmlinuz initrd.gz syslinux.cfg ::
qemu-img convert -f raw -O qcow2 tiny.raw tiny.qcow2
cp vmlinuz initrd.gz tiny.raw tiny.qcow2 "$out/"
echo "$build_id" > "$out/build-id"
echo "tiny image built in $out (kernel from $kernel_pkg)"
