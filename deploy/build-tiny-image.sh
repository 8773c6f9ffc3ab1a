#!/bin/bash
# Build, offline from Debian packages, a tiny bootable disk image for tests and demos:
# Debian's cloud kernel and a busybox initramfs on a FAT disk made bootable with syslinux.
# It prints "ucloud-tiny: booted" on its serial console (ttyS0), powers off on ACPI, and panics on an
# NMI (QMP inject-nmi) through pvpanic, so tests can make a guest kernel panic. It is reachable:
# every ethernet comes up with IPv6 by SLAAC, root's SSH keys and the hostname come from a NoCloud
# drive labelled CIDATA (meta-data, user-data), and dropbear serves SSH on port 22, keys only.
# Serial lines: "ucloud-tiny: booted", "ucloud-tiny: cidata N keys, hostname H" (or "no cidata
# drive"), "ucloud-tiny: eth0 up MAC", "ucloud-tiny: eth0 ADDRESS" for each address past DAD.
#
#   deploy/build-tiny-image.sh OUT_DIR
#
# Writes OUT_DIR/tiny.raw, OUT_DIR/tiny.qcow2, and OUT_DIR/vmlinuz + OUT_DIR/initrd.gz (the same
# kernel and initramfs, for booting without firmware). Idempotent: an existing build of this same
# script is kept (OUT_DIR/build-id holds the script's hash); a build by an older script is redone.
set -euo pipefail
[ $# -eq 1 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
build_id=$(sha256sum "$0" | cut -d' ' -f1)
if [ -s "$out/tiny.qcow2" ] && [ -s "$out/tiny.raw" ] && [ "$(cat "$out/build-id" 2>/dev/null)" = "$build_id" ]; then
    echo "tiny image already built in $out"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel: the package the cloud meta-package points at, unpacked, never installed. dropbear (the
# SSH server) and the two libraries of its own that a Debian host lacks come in the same download.
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kernel_pkg" ]; then apt-get update -qq; kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
packages=("$kernel_pkg" dropbear-bin libtomcrypt1 libtommath1)
apt-get download "${packages[@]}" >/dev/null 2>&1 || { apt-get update -qq; apt-get download "${packages[@]}" >/dev/null; }
dpkg-deb -x ./"$kernel_pkg"_*.deb kernel
cp kernel/boot/vmlinuz-* vmlinuz

# The initramfs: static busybox, virtio and FAT modules, dropbear with its libraries, and an /init
# that says it booted, waits for ACPI, brings its NICs up, reads its cidata drive and serves SSH.
mkdir -p initramfs/{bin,dev,proc,sys,tmp,root,mnt/cidata,var/run,lib/modules,lib64,lib/x86_64-linux-gnu,etc/acpi/PWRF,etc/dropbear}
cp /bin/busybox initramfs/bin/busybox
# fat, vfat and the code page and I/O charset the cloud kernel defaults to (437, ascii) mount a
# NoCloud seed: the kernel would ask modprobe for them, and there is no modprobe database here.
for module in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net button evdev pvpanic pvpanic-mmio \
              fat vfat nls_cp437 nls_ascii; do
    path=$(find kernel/lib/modules -name "$module.ko*" | head -n 1)
    [ -n "$path" ] || { echo "module $module not found in $kernel_pkg" >&2; exit 1; }
    case $path in
        *.xz) xz -dc "$path" > "initramfs/lib/modules/$module.ko" ;;
        *.zst) zstd -dqc "$path" > "initramfs/lib/modules/$module.ko" ;;
        *) cp "$path" "initramfs/lib/modules/$module.ko" ;;
    esac
    echo "$module" >> initramfs/lib/modules/order
done
# IPv6 itself is built into the cloud kernel (CONFIG_IPV6=y); fail loudly if a kernel ever moves it
# to a module, rather than booting a guest that silently never gets an address.
grep -q '^CONFIG_IPV6=y' kernel/boot/config-* || { echo "$kernel_pkg has no built-in IPv6" >&2; exit 1; }

# dropbear, the SSH server, from its Debian package. It is dynamically linked: copy the libraries
# ldd resolves (its own libtomcrypt/libtommath from their packages, libc, libz, libcrypt, libgmp from
# this Debian host, which has them installed) and the dynamic loader at the path the binary names.
for deb in dropbear-bin_*.deb libtomcrypt1_*.deb libtommath1_*.deb; do dpkg-deb -x "$deb" dropbear; done
cp dropbear/usr/sbin/dropbear dropbear/usr/bin/dropbearkey initramfs/bin/
LD_LIBRARY_PATH=$PWD/dropbear/usr/lib/x86_64-linux-gnu ldd dropbear/usr/sbin/dropbear dropbear/usr/bin/dropbearkey \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u | while read -r lib; do
    cp -L "$lib" initramfs/lib/x86_64-linux-gnu/
done
cp -L /lib64/ld-linux-x86-64.so.2 initramfs/lib64/
# Root with no usable password (dropbear runs with -s anyway): keys are the only way in.
printf 'root:x:0:0:root:/root:/bin/sh\n' > initramfs/etc/passwd
printf 'root:*:0:0:99999:7:::\n' > initramfs/etc/shadow
printf 'root:x:0:\n' > initramfs/etc/group
printf '/bin/sh\n' > initramfs/etc/shells
chmod 700 initramfs/root
chmod 600 initramfs/etc/shadow

# The keys in a #cloud-config user-data, one a line. ucloud writes user-data as JSON (which is YAML);
# people write YAML. Two shapes of the top-level ssh_authorized_keys are understood:
#   a flow list (JSON or YAML), on one line or many:  "ssh_authorized_keys": ["ssh-ed25519 AAAA c", "..."]
#   a block list:                                      ssh_authorized_keys:
#                                                        - ssh-ed25519 AAAA c
# Items may be double- or single-quoted (block items also bare). Not understood: escapes inside
# quotes, keys under users:, anchors. A key never contains a quote or a bracket, so this is enough.
cat > initramfs/bin/authorized-keys.awk <<'AWK'
{ text = text $0 "\n" }
END {
    at = index(text, "ssh_authorized_keys")
    if (!at) exit
    rest = substr(text, at + length("ssh_authorized_keys"))
    sub(/^["']?[ \t]*:[ \t]*/, "", rest)
    if (substr(rest, 1, 1) == "[") {
        rest = substr(rest, 2, index(rest, "]") - 2)
        while (match(rest, /"[^"]*"|'[^']*'/)) {
            print substr(rest, RSTART + 1, RLENGTH - 2)
            rest = substr(rest, RSTART + RLENGTH)
        }
        exit
    }
    n = split(rest, lines, "\n")
    for (i = 2; i <= n; i++) {
        line = lines[i]
        if (line ~ /^[ \t]*(#.*)?$/) continue
        if (line !~ /^[ \t]*- /) break
        sub(/^[ \t]*- [ \t]*/, "", line)
        sub(/[ \t]+$/, "", line)
        if (line ~ /^".*"$/ || line ~ /^'.*'$/) line = substr(line, 2, length(line) - 2)
        print line
    }
}
AWK

cat > initramfs/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for module in $(cat /lib/modules/order); do insmod "/lib/modules/$module.ko" 2>/dev/null; done
# An NMI the kernel cannot attribute (QMP inject-nmi) panics it; pvpanic tells QEMU.
echo 1 > /proc/sys/kernel/unknown_nmi_panic
echo "ucloud-tiny: booted"
# In the foreground (-d, logging to the console): daemonized, busybox acpid finds no log file and quits.
acpid -d -c /etc/acpi &

# Every ethernet up, IPv6 by SLAAC: the kernel takes router advertisements and forms EUI-64
# addresses from the MAC (so the control plane knows them without asking the guest). Done in the
# background first, so duplicate address detection and the router solicitation overlap reading the
# seed and making the host key. Polled rather than done once, so a NIC hot-plugged later comes up
# too; each address is printed once it has passed DAD, and again if it went away and came back.
# router_solicitation_delay=0: no random wait (up to 1 s) before each DAD and the router
# solicitation. It spreads out hosts booting together on one link; under TCG each second counts.
settings="addr_gen_mode=0 use_tempaddr=0 accept_ra=1 router_solicitation_delay=0"
for conf in default all; do
    for setting in $settings; do echo "${setting#*=}" > "/proc/sys/net/ipv6/conf/$conf/${setting%=*}"; done
done
ip link set lo up
nics() {
    seen="" rounds=0
    while true; do
        now=""
        for dev in /sys/class/net/*; do
            nic=${dev##*/}
            # A NIC may go (hot-unplug) between the listing and the reads: skip it, never stop the loop.
            type=$(cat "$dev/type" 2>/dev/null) && flags=$(cat "$dev/flags" 2>/dev/null) || continue
            [ "$type" = 1 ] || continue                            # ARPHRD_ETHER only
            if [ $(( flags & 1 )) = 0 ]; then                      # not IFF_UP yet
                for setting in $settings; do echo "${setting#*=}" > "/proc/sys/net/ipv6/conf/$nic/${setting%=*}"; done
                ip link set "$nic" up && echo "ucloud-tiny: $nic up $(cat "$dev/address")"
            fi
            for addr in $(ip -o -6 addr show dev "$nic" | awk '!/tentative|dadfailed/ {sub(/\/.*/, "", $4); print $4}'); do
                now="$now $nic=$addr"
                case " $seen " in *" $nic=$addr "*) ;; *) echo "ucloud-tiny: $nic $addr" ;; esac
            done
        done
        seen=$now
        # Quick while booting (a test waits for these lines), slow after a minute: hot-plug is rare.
        rounds=$((rounds + 1)); if [ $rounds -lt 120 ]; then sleep 0.5; else sleep 2; fi
    done
}
nics &

# Keys and hostname from a NoCloud seed (a vfat or iso9660 volume labelled CIDATA or cidata), read once.
seed=$(findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=cidata 2>/dev/null || true)
if [ -n "$seed" ] && mount -o ro "$seed" /mnt/cidata; then
    mkdir -p /root/.ssh && chmod 700 /root/.ssh
    # Only lines that look like keys (a key with options in front, command="..." ssh-..., is dropped).
    awk -f /bin/authorized-keys.awk /mnt/cidata/user-data 2>/dev/null | grep -E '^(ssh|ecdsa|sk)-' > /root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
    # local-hostname from meta-data, as YAML (local-hostname: web) or JSON ("local-hostname": "web").
    name=$(sed -n "s/.*local-hostname[\"']*[ \t]*:[ \t]*[\"']*\([A-Za-z0-9.-]*\).*/\1/p" /mnt/cidata/meta-data 2>/dev/null | head -n 1)
    [ -z "$name" ] || hostname "$name"
    echo "ucloud-tiny: cidata $(wc -l < /root/.ssh/authorized_keys) keys, hostname $(hostname)"
    umount /mnt/cidata
else
    echo "ucloud-tiny: no cidata drive"
fi

# SSH on port 22, keys only (-s), logging to the console (-E), restarted if it ever exits (-F keeps
# it in the foreground of this loop). The host key is made fresh at each boot.
dropbearkey -t ed25519 -f /etc/dropbear/host_key >/dev/null 2>&1
(while true; do dropbear -F -E -s -p 22 -r /etc/dropbear/host_key; echo "ucloud-tiny: dropbear exited ($?), restarting"; sleep 1; done) &

# The serial console is interactive (ucloud's serial console): a root shell on ttyS0, again after each exit.
(while true; do setsid sh -c 'exec sh -i </dev/ttyS0 >/dev/ttyS0 2>&1'; sleep 1; done) &

while true; do sleep 3600; done
INIT
printf '#!/bin/sh\necho "ucloud-tiny: power button, powering off"\npoweroff -f\n' > initramfs/etc/acpi/PWRF/00000080
chmod +x initramfs/init initramfs/etc/acpi/PWRF/00000080
# gzip -6, not -9: with dropbear's libraries -9 takes 1.3 s longer here and saves 0.5%.
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -6) > initrd.gz

# The disk: FAT, syslinux in its boot sector, kernel and initramfs as files.
printf 'DEFAULT tiny\nLABEL tiny\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND console=ttyS0 quiet\n' > syslinux.cfg
mkfs.fat -C tiny.raw 65536 >/dev/null
syslinux --install tiny.raw
mcopy -i tiny.raw vmlinuz initrd.gz syslinux.cfg ::
qemu-img convert -f raw -O qcow2 tiny.raw tiny.qcow2
cp vmlinuz initrd.gz tiny.raw tiny.qcow2 "$out/"
echo "$build_id" > "$out/build-id"
echo "tiny image built in $out (kernel from $kernel_pkg)"
