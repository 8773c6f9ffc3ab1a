#!/bin/bash
# Set up and run ucloud on this one machine: local etcd, local storage, one host.
#
#   deploy/local.sh up       install what is needed, start everything, say how to use and stop it
#   deploy/local.sh down     stop everything this script started
#   deploy/local.sh status   show what runs
#
# State lives under UCLOUD_LOCAL_DIR (default /var/lib/ucloud/local): etcd's data, pid files, logs,
# the admin's API token (admin.token, mode 0600), the demo user's token and console password. Ports: UCLOUD_LOCAL_ETCD_PORT (2379),
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
export UCLOUD_RUN_DIR=$state/run UCLOUD_IMAGE_DIR=$state/images UCLOUD_DISK_DIR=$state/disks
export UCLOUD_PROBE_IMAGE_DIR=$state/tiny UCLOUD_UPLOAD_DIR=$state/uploads
# VMs' HDD disks (`ucloud vm create --hdd GIB`) beside the others: the host offers that file system as HDD.
export UCLOUD_HDD_DIR=$state/hdd
bin=$repo/.venv/bin
host=local
# VM networks need an underlay: by default this machine's own, the device and address of its default
# route. With one host there is no VXLAN peer; the host is the router of every network (it holds
# <prefix>::1 on the bridge), so you reach the VMs from this machine.
if [ -z "${UCLOUD_UNDERLAY_DEVICE:-}${UCLOUD_UNDERLAY_ADDRESS:-}" ]; then
    read -r UCLOUD_UNDERLAY_DEVICE UCLOUD_UNDERLAY_ADDRESS < <({ ip -o route get 1.1.1.1 || ip -o route get 2001:db8::1; } \
        2>/dev/null | sed -n 's/.* dev \([^ ]*\).* src \([^ ]*\).*/\1 \2/p') || true
    if [ -z "${UCLOUD_UNDERLAY_ADDRESS:-}" ]; then
        echo "this machine has no default route: set UCLOUD_UNDERLAY_DEVICE and UCLOUD_UNDERLAY_ADDRESS" >&2
        exit 1
    fi
fi
export UCLOUD_UNDERLAY_DEVICE UCLOUD_UNDERLAY_ADDRESS UCLOUD_ROUTER=${UCLOUD_ROUTER:-true}
export UCLOUD_API_URL=$api
ucloud=$bin/ucloud
key=$state/id_ed25519
ssh_options=(-i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)

# api METHOD PATH [JSON]: call the API as the admin; prints the answer's body.
api() {
    curl -sS -X "$1" -H "Authorization: Bearer $(cat "$state/admin.token")" -H "Content-Type: application/json" \
        ${3:+--data "$3"} "$api$2"
}
json() { "$bin/python" -c "import json, sys; print(json.load(sys.stdin)$1)"; }
names() { "$bin/python" -c "import json, sys; print(*(item['name'] for item in json.load(sys.stdin)), sep='\n')"; }

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
    bash deploy/build-tiny-image.sh "$state/tiny"
    "$bin/ucloud-vm" import-image "$state/tiny/tiny.qcow2" --name tiny --uuid tiny >/dev/null
    # The periodic jobs, every 30 s (cron or a systemd timer on real hosts: deploy/cron, deploy/systemd).
    mkdir -p "$state/uploads"
    start_daemon ucloud-jobs "$state" "sleep 0.2" bash -c \
        "while :; do '$bin/ucloud-filescan' run; '$bin/ucloud-imagescanner' run; sleep 30; done"
    start_daemon ucloud-console "$state" "sleep 0.5" "$bin/ucloud-vm" console-proxy --hostname "$host" \
        --address 127.0.0.1 --bind 127.0.0.1
    start_daemon ucloud-vm "$state" "api GET /api/v1/hosts/$host | json '[\"alive\"]' | grep -q True" \
        "$bin/ucloud-vm" run --hostname "$host"

    # The demo: a user "demo" with a password (for the console site), your SSH key, a network and a VM
    # on it with your key, all the demo user's, each created once (kept in $state); a demo VM of an
    # earlier `up` joins the network if it has none, and is started if it is not.
    export UCLOUD_TOKEN=$(cat "$state/admin.token")
    if [ ! -s "$state/demo.token" ]; then
        (umask 077
         [ -s "$state/demo.password" ] ||
             "$bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))' > "$state/demo.password"
         "$ucloud" user create demo --password-stdin -o json < "$state/demo.password" | json '["token"]' \
             > "$state/demo.token.new"
         mv "$state/demo.token.new" "$state/demo.token")
    fi
    export UCLOUD_TOKEN=$(cat "$state/demo.token")
    [ -s "$key" ] || ssh-keygen -q -t ed25519 -N '' -C "ucloud local demo" -f "$key"
    "$ucloud" ssh-key list -o json | names | grep -qx local || "$ucloud" ssh-key add local "$key.pub"
    "$ucloud" network show demo >/dev/null 2>&1 || "$ucloud" network create demo >/dev/null
    if ! "$ucloud" vm show demo >/dev/null 2>&1; then
        "$ucloud" vm create demo --image tiny --cpu 1 --ram 0.25 --ssd 1 --network demo --ssh-key local >/dev/null
    fi
    [ "$("$ucloud" vm show demo -o json | json '["networks"]')" != "[]" ] ||
        "$ucloud" network attach demo demo >/dev/null
    [ "$("$ucloud" vm show demo -o json | json '["status"]')" != STOPPED ] || "$ucloud" vm start demo >/dev/null
    for _ in $(seq 300); do
        "$ucloud" vm show demo -o json > "$state/demo.json"
        vm_status=$(json '["status"]' < "$state/demo.json")
        [ "$vm_status" = RUNNING ] && break
        sleep 0.2
    done
    uuid=$(json '["uuid"]' < "$state/demo.json")
    address=$(json '["networks"][0]["ipv6"]' < "$state/demo.json")
    serial=$state/run/$host/vms/$uuid/serial.log
    # Up when the guest took its address and its SSH server answers (SLAAC and dropbear: seconds).
    for _ in $(seq 120); do
        ssh "${ssh_options[@]}" -o ConnectTimeout=2 "root@$address" true 2>/dev/null && break
        sleep 0.5
    done
    cat <<EOT

ucloud runs on this machine:
  etcd        127.0.0.1:$etcd_port   (data and log in $state/etcd)
  API         $api   (log in $state/ucloud-api.log; OpenAPI at $api/api/v1/openapi.json)
  scheduler   log in $state/ucloud-scheduler.log
  host agent  host "$host" (log in $state/ucloud-vm.log)
  consoles    $api/console/  (the console site: log in as "demo", password $(cat "$state/demo.password"))
              proxy ws://127.0.0.1:${UCLOUD_CONSOLE_PORT:-6080} (log in $state/ucloud-console.log)
  file-scan and image-scanner every 30 s (log in $state/ucloud-jobs.log): \`ucloud file upload PATH\`
              (or a copy into $state/uploads/<user>/), then \`ucloud file list\`, \`ucloud image create\`
  admin token $state/admin.token

The demo user's VM "demo" ($uuid) is $vm_status, on network "demo" at $address.
Its serial console and screen are on the console site; its serial log ($serial) says:
$(grep -a "ucloud-tiny" "$serial" | tail -n 3 | sed 's/^/  /')

Log into it:  ssh -i $key root@$address
Use the CLI:  export UCLOUD_API_URL=$api UCLOUD_TOKEN=\$(cat $state/demo.token)   (admin: admin.token)
              $ucloud vm show demo
Stop everything with: ${UCLOUD_LOCAL_DIR:+UCLOUD_LOCAL_DIR=$state }bash $repo/deploy/local.sh down
EOT
    ;;
down)
    stop_daemon ucloud-vm "$state"
    # QEMUs outlive their agent by design; "down" means everything, so the VMs stop too.
    pkill -f "$state/run/" 2>/dev/null && echo "VMs stopped" || true
    stop_daemon ucloud-jobs "$state"
    stop_daemon ucloud-console "$state"
    stop_daemon ucloud-scheduler "$state"
    stop_daemon ucloud-api "$state"
    bash deploy/etcd.sh stop "$state/etcd"
    ;;
status)
    bash deploy/etcd.sh status "$state/etcd" || true
    if curl -sf "$api/healthz" >/dev/null; then echo "ucloud-api running at $api"; else echo "ucloud-api not running"; fi
    for daemon in ucloud-scheduler ucloud-vm ucloud-jobs ucloud-console; do
        if [ -f "$state/$daemon.pid" ] && kill -0 "$(cat "$state/$daemon.pid")" 2>/dev/null; then
            echo "$daemon running (pid $(cat "$state/$daemon.pid"))"; else echo "$daemon not running"; fi
    done
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2
    ;;
esac
