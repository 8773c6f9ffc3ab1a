#!/bin/bash
# ucloud on a real host, run by `deploy/install.sh --system` as root (idempotent; run it again to
# upgrade from a newer checkout):
#   - the Debian packages, and a system user and group `ucloud` (no shell, no login);
#   - this checkout's files in PREFIX (/opt/ucloud), owned by root, with their own environment
#     PREFIX/.venv exactly as Pipfile.lock pins it (no dev packages) and the console site's parts;
#   - the systemd units and timers in UNITS (/etc/systemd/system), pointing at PREFIX and ETC;
#   - ETC/ucloud.conf (/etc/ucloud), every setting with its default, only if there is none yet:
#     root may write it, group ucloud read it (it holds etcd's password), nobody else;
#   - STATE/images (/var/lib/ucloud/images) for the image scanner, owned by ucloud (the agents run
#     as root);
#   - a group ucloud-ceph that may read the Ceph keyring of UCLOUD_CEPH_CLIENT when it exists and is
#     not the admin's: the scheduler fences dead hosts through Ceph and the image scanner writes
#     images, so their units (only theirs: never the API's) have that group.
# Then it prints what to enable. No service is started: the operator chooses what runs where.
#
#   deploy/install.sh --system [--prefix DIR] [--etc DIR] [--units DIR] [--state DIR]
set -euo pipefail
UCLOUD_SRC=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/ucloud etc=/etc/ucloud units=/etc/systemd/system state=/var/lib/ucloud
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --etc) etc=$2; shift 2 ;;
        --units) units=$2; shift 2 ;;
        --state) state=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "system-install: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for dir in "$prefix" "$etc" "$units" "$state"; do
    case $dir in
        *[\#\&]*) echo "system-install: $dir: no '#' or '&' in a path, please" >&2; exit 2 ;;
        /*) ;;
        *) echo "system-install: $dir: give an absolute path" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "system-install: run it as root" >&2; exit 1; }
umask 022  # what it installs is readable by the services (the config is made 0640 on purpose)
source "$UCLOUD_SRC/deploy/install-lib.sh"

install_packages
install_pipenv

getent group ucloud >/dev/null || groupadd --system ucloud
getent group ucloud-ceph >/dev/null || groupadd --system ucloud-ceph
id -u ucloud >/dev/null 2>&1 || useradd --system --gid ucloud --home-dir "$state" --no-create-home \
    --shell /usr/sbin/nologin --comment "ucloud services" ucloud

# The code: what git tracks (or the whole tree, from a tarball), plus the console site's parts
# if this checkout has fetched them; written next to PREFIX and swapped in, its environment kept.
echo "install: ucloud into $prefix"
new="$prefix.new"
rm -rf "$new"
mkdir -p "$new"
if git -C "$UCLOUD_SRC" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$UCLOUD_SRC" ls-files -z | (cd "$UCLOUD_SRC" && tar --null -T - -cf -) | tar -C "$new" -xf -
else
    tar -C "$UCLOUD_SRC" --exclude=./.venv --exclude=./test-artifacts -cf - . | tar -C "$new" -xf -
fi
[ -d "$UCLOUD_SRC/ucloud_api/site/vendor" ] && cp -a "$UCLOUD_SRC/ucloud_api/site/vendor" "$new/ucloud_api/site/"
[ -d "$prefix/.venv" ] && mv "$prefix/.venv" "$new/.venv"  # a venv is not relocatable: same path after the swap
rm -rf "$prefix.old"
[ -d "$prefix" ] && mv "$prefix" "$prefix.old"
mv "$new" "$prefix"
rm -rf "$prefix.old"
# Debian's interpreter, which every user may run (and which the Ceph bindings are built for).
PIPENV_PYTHON=/usr/bin/python3 python_env "$prefix"
(cd "$prefix" && bash deploy/console-assets.sh)
# Compiled now: under ProtectSystem=strict the services cannot write __pycache__ themselves.
"$prefix/.venv/bin/python" -m compileall -q "$prefix"/ucloud_* >/dev/null
chown -R root:root "$prefix"
chmod -R u=rwX,go=rX "$prefix"

install -d -m 0750 -o root -g ucloud "$etc"
if [ ! -e "$etc/ucloud.conf" ]; then
    echo "install: $etc/ucloud.conf (every setting with its default; edit it)"
    (umask 027 && env -i PATH="$PATH" "$prefix/.venv/bin/ucloud-api" config \
        | sed -e "s#^UCLOUD_IMAGE_DIR=.*#UCLOUD_IMAGE_DIR=$state/images#" \
              -e "s#^UCLOUD_UPLOAD_DIR=.*#UCLOUD_UPLOAD_DIR=$state/uploads#" > "$etc/ucloud.conf")
fi
# Also an older one: the services read it themselves now, as ucloud (systemd read it as root).
chown root:ucloud "$etc/ucloud.conf"
chmod 0640 "$etc/ucloud.conf"
install -d -m 0755 "$state"
install -d -m 0755 -o ucloud -g ucloud "$state/images"
chown -R ucloud:ucloud "$state/images"  # an image scanner that ran as root left its files root's
# Users' upload folders: the API (ucloud) makes, writes and removes them, file-scan (ucloud) reads
# them; no one else. The API's unit may write $state/uploads only (ReadWritePaths): an upload folder
# elsewhere needs a drop-in with its own ReadWritePaths=.
uploads=$(sed -n 's/^UCLOUD_UPLOAD_DIR=//p' "$etc/ucloud.conf" | tail -1)
install -d -m 0750 -o ucloud -g ucloud "${uploads:-/var/www}"
[ "${uploads:-/var/www}" = "$state/uploads" ] || echo "install: UCLOUD_UPLOAD_DIR is ${uploads:-/var/www}:" \
    "give ucloud-api.service ReadWritePaths=${uploads:-/var/www} in a drop-in (systemctl edit ucloud-api)"

echo "install: systemd units into $units"
install -d -m 0755 "$units"
for unit in "$prefix"/deploy/systemd/*.service "$prefix"/deploy/systemd/*.timer; do
    sed -e "s#/opt/ucloud#$prefix#g" -e "s#/etc/ucloud#$etc#g" -e "s#/var/lib/ucloud#$state#g" "$unit" \
        > "$units/$(basename "$unit")"
    chmod 0644 "$units/$(basename "$unit")"
done
[ -d /run/systemd/system ] && systemctl daemon-reload

client=$(sed -n 's/^UCLOUD_CEPH_CLIENT=//p' "$etc/ucloud.conf" | tail -1)
keyring=/etc/ceph/ceph.client.${client:-admin}.keyring
if [ "${client:-admin}" = admin ]; then
    # Never the admin's: whoever reads it owns the whole Ceph cluster.
    [ -e "$keyring" ] && echo "install: UCLOUD_CEPH_CLIENT is admin: give ucloud a Ceph client of its own (below)"
elif [ -e "$keyring" ]; then
    chgrp ucloud-ceph "$keyring"
    chmod 0640 "$keyring"
    echo "install: group ucloud-ceph (the scheduler and the image scanner) may read $keyring"
fi

cat <<DONE

ucloud is installed in $prefix. Next:
  1. Edit $etc/ucloud.conf: UCLOUD_ETCD_ENDPOINTS (etcd: Debian's etcd-server, 3 or 5 members),
     and for Ceph UCLOUD_CEPH_CONF with a client of its own, e.g.
       ceph auth get-or-create client.ucloud mon 'profile rbd' \\
           osd 'profile rbd pool=vms, profile rbd pool=images' -o /etc/ceph/ceph.client.ucloud.keyring
     (the mon's `profile rbd` lets it blocklist the clients of a dead host: the fence),
     then UCLOUD_CEPH_CLIENT=ucloud, and run this again (group ucloud-ceph may then read that keyring).
  2. Check it:   $prefix/.venv/bin/ucloud-api --config $etc/ucloud.conf check
  3. The first admin:   runuser -u ucloud -- $prefix/.venv/bin/ucloud-api --config $etc/ucloud.conf create-admin admin
  4. Enable what this machine runs (deploy/systemd/README.md says which where):
       systemctl enable --now ucloud-api.service ucloud-scheduler.service
       systemctl enable --now ucloud-vm@\$(hostname).service
       systemctl enable --now ucloud-filescan.timer ucloud-imagescanner.timer
DONE
