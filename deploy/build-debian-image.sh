#!/bin/bash
# Build, offline from Debian packages, a real Debian 12 guest for the slow compatibility test: a stock
# bookworm with cloud-init, openssh-server and ifupdown, configured only by its NoCloud drive, as a
# stock cloud image would be. It boots from its disk with BIOS firmware (ucloud boots no -kernel):
# an MBR disk whose first partition (FAT, active, syslinux) holds Debian's own kernel and initramfs,
# and whose second is the root filesystem (ext4, made with mkfs.ext4 -d: no loop device, no mount).
# The kernel logs to the serial console (ttyS0), where cloud-init prints "Cloud-init v. ... finished".
#
#   deploy/build-debian-image.sh OUT_DIR
#
# Writes OUT_DIR/debian.qcow2. Idempotent: an existing build of this same script is kept
# (OUT_DIR/build-id holds the script's hash); a build by an older script is redone.
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
build_id=$(sha256sum "$0" | cut -d' ' -f1)
if [ -s "$out/debian.qcow2" ] && [ "$(cat "$out/build-id" 2>/dev/null)" = "$build_id" ]; then
    echo "debian image already built in $out"; exit 0
fi
work=$(mktemp -d /var/tmp/ucloud-debian-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The root filesystem, with the packages a Debian cloud image has for booting, networking and SSH.
# Nothing of ucloud's goes in: keys, host name and network come from the cidata drive at boot. Only
# the fstab (a cloud image's build writes one too) and the apt lists (size) are touched.
mmdebstrap --quiet --variant=minbase \
    --include=linux-image-cloud-amd64,systemd-sysv,openssh-server,cloud-init,ifupdown,isc-dhcp-client,iproute2,udev,netbase \
    --customize-hook='echo "/dev/vda2 / ext4 errors=remount-ro 0 1" > "$1/etc/fstab"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm rootfs
cp rootfs/boot/vmlinuz-* vmlinuz
cp rootfs/boot/initrd.img-* initrd.img

# Sizes in MiB: the root filesystem has its contents and a third more (logs, cloud-init's state,
# host keys); the boot partition the kernel and initramfs with room for one more of each.
root_mb=$(( $(du -sm rootfs | cut -f1) * 4 / 3 + 128 ))
boot_mb=$(( ( $(du -sm --apparent-size vmlinuz initrd.img | awk '{s += $1} END {print s}') * 2 ) + 16 ))
truncate -s "${root_mb}M" root.raw
mkfs.ext4 -q -L root -d rootfs root.raw
rm -rf rootfs

# The boot partition: FAT, its hidden-sectors field the partition's start (sector 2048), so syslinux's
# boot sector finds its files whether or not the MBR code tells it where the partition is.
mkfs.fat -h 2048 -C boot.raw $(( boot_mb * 1024 )) >/dev/null
syslinux --install boot.raw
printf 'DEFAULT debian\nLABEL debian\n  KERNEL vmlinuz\n  INITRD initrd.img\n  APPEND root=/dev/vda2 ro console=ttyS0\n' > syslinux.cfg
mcopy -i boot.raw vmlinuz initrd.img syslinux.cfg ::

# The disk: syslinux's MBR code in sector 0, partition 1 (the FAT, active) at 1 MiB, partition 2 after it.
truncate -s $(( 1 + boot_mb + root_mb ))M debian.raw
printf 'label: dos\nstart=2048, size=%d, type=c, bootable\nstart=%d, size=%d, type=83\n' \
    $(( boot_mb * 2048 )) $(( (1 + boot_mb) * 2048 )) $(( root_mb * 2048 )) | sfdisk --quiet debian.raw
dd if=/usr/lib/syslinux/mbr/mbr.bin of=debian.raw bs=440 count=1 conv=notrunc status=none
dd if=boot.raw of=debian.raw bs=1M seek=1 conv=notrunc,sparse status=none
dd if=root.raw of=debian.raw bs=1M seek=$(( 1 + boot_mb )) conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 debian.raw "$out/debian.qcow2"
echo "$build_id" > "$out/build-id"
echo "debian image built in $out ($(( 1 + boot_mb + root_mb )) MiB disk)"
