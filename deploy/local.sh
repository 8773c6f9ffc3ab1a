#!/bin/bash
# Set up and run ucloud on this one machine: local etcd, local storage, one host.
#
#   deploy/local.sh up       install what is needed, start everything, say how to use and stop it
#   deploy/local.sh down     stop everything this script started
#   deploy/local.sh status   show what runs
#
# State lives under UCLOUD_LOCAL_DIR (default /var/lib/ucloud/local): etcd's data, pid files, logs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
state=${UCLOUD_LOCAL_DIR:-/var/lib/ucloud/local}
export UCLOUD_ETCD_ENDPOINTS=127.0.0.1:${UCLOUD_LOCAL_ETCD_PORT:-2379}

case ${1:-} in
up)
    bash deploy/install.sh
    mkdir -p "$state"
    bash deploy/etcd.sh start "$state/etcd" "${UCLOUD_LOCAL_ETCD_PORT:-2379}" "${UCLOUD_LOCAL_ETCD_PEER_PORT:-2380}"
    "$repo/.venv/bin/ucloud-api" check
    cat <<EOT

ucloud runs on this machine: etcd at $UCLOUD_ETCD_ENDPOINTS (data and log in $state/etcd).
Its daemons use it with the configuration printed by: $repo/.venv/bin/ucloud-api config
Stop everything with: ${UCLOUD_LOCAL_DIR:+UCLOUD_LOCAL_DIR=$state }bash $repo/deploy/local.sh down
EOT
    ;;
down)
    bash deploy/etcd.sh stop "$state/etcd"
    ;;
status)
    bash deploy/etcd.sh status "$state/etcd"
    ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2
    ;;
esac
