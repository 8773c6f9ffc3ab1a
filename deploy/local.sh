#!/bin/bash
# Set up and run ucloud on this one machine: local etcd, local storage, one host.
#
#   deploy/local.sh up       install what is needed, start everything, say how to use and stop it
#   deploy/local.sh down     stop everything this script started
#   deploy/local.sh status   show what runs
#
# State lives under UCLOUD_LOCAL_DIR (default /var/lib/ucloud/local): etcd's data, pid files, logs,
# and the admin's API token (admin.token, mode 0600). Ports: UCLOUD_LOCAL_ETCD_PORT (2379),
# UCLOUD_LOCAL_ETCD_PEER_PORT (2380), UCLOUD_LOCAL_API_PORT (8080).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
. deploy/daemon.sh
state=${UCLOUD_LOCAL_DIR:-/var/lib/ucloud/local}
etcd_port=${UCLOUD_LOCAL_ETCD_PORT:-2379}
api_port=${UCLOUD_LOCAL_API_PORT:-8080}
api=http://127.0.0.1:$api_port
export UCLOUD_ETCD_ENDPOINTS=127.0.0.1:$etcd_port
bin=$repo/.venv/bin

case ${1:-} in
up)
    bash deploy/install.sh
    mkdir -p "$state"
    bash deploy/etcd.sh start "$state/etcd" "$etcd_port" "${UCLOUD_LOCAL_ETCD_PEER_PORT:-2380}"
    "$bin/ucloud-api" check
    if [ ! -s "$state/admin.token" ]; then
        (umask 077; "$bin/ucloud-api" create-admin admin > "$state/admin.token")
        echo "created the admin user 'admin'; its token is in $state/admin.token"
    fi
    start_daemon ucloud-api "$state" "curl -sf $api/healthz" \
        "$bin/ucloud-api" serve --bind "127.0.0.1:$api_port" --workers 3
    start_daemon ucloud-scheduler "$state" "sleep 0.5" "$bin/ucloud-scheduler" run --name local
    cat <<EOT

ucloud runs on this machine:
  etcd        127.0.0.1:$etcd_port   (data and log in $state/etcd)
  API         $api   (log in $state/ucloud-api.log; OpenAPI at $api/api/v1/openapi.json)
  scheduler   log in $state/ucloud-scheduler.log
  admin token $state/admin.token

Try:  curl -H "Authorization: Bearer \$(cat $state/admin.token)" $api/api/v1/vms
Stop everything with: ${UCLOUD_LOCAL_DIR:+UCLOUD_LOCAL_DIR=$state }bash $repo/deploy/local.sh down
EOT
    ;;
down)
    stop_daemon ucloud-scheduler "$state"
    stop_daemon ucloud-api "$state"
    bash deploy/etcd.sh stop "$state/etcd"
    ;;
status)
    bash deploy/etcd.sh status "$state/etcd" || true
    if curl -sf "$api/healthz" >/dev/null; then echo "ucloud-api running at $api"; else echo "ucloud-api not running"; fi
    if [ -f "$state/ucloud-scheduler.pid" ] && kill -0 "$(cat "$state/ucloud-scheduler.pid")" 2>/dev/null; then
        echo "ucloud-scheduler running (pid $(cat "$state/ucloud-scheduler.pid"))"; else echo "ucloud-scheduler not running"; fi
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2
    ;;
esac
