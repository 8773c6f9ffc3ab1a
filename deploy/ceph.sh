#!/bin/bash
# A one-node Ceph on 127.0.0.1 for development and tests: a monitor, a manager and one OSD
# (memstore: in memory, no disk), and the pools ucloud uses. Not for production.
#
#   deploy/ceph.sh start DIR    bring it up (idempotent) and wait until RBD works; prints CEPH_CONF
#   deploy/ceph.sh stop DIR     stop it (its data, in memory, is gone)
#   deploy/ceph.sh status DIR   exit 0 if it answers
#
# Pools: CEPH_IMAGE_POOL (images) and CEPH_VM_POOL (vms). Monitor ports: CEPH_MON_PORT (6789, v1)
# and CEPH_MON_PORT_V2 (3300). Clients use DIR/ceph.conf (export CEPH_CONF=DIR/ceph.conf).
set -euo pipefail
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1; mkdir -p "$2"; dir=$(cd "$2" && pwd)
conf=$dir/ceph.conf
image_pool=${CEPH_IMAGE_POOL:-images} vm_pool=${CEPH_VM_POOL:-vms}
v1=${CEPH_MON_PORT:-6789} v2=${CEPH_MON_PORT_V2:-3300}

answers() { timeout 10 ceph -c "$conf" --connect-timeout 5 health >/dev/null 2>&1; }

stop_all() {
    for pidfile in "$dir"/run/*.pid; do
        [ -f "$pidfile" ] || continue
        kill -9 "$(cat "$pidfile")" 2>/dev/null || true   # memstore: nothing to flush
        rm -f "$pidfile"
    done
}

case $cmd in
start)
    if [ -f "$conf" ] && answers; then echo "ceph already running; CEPH_CONF=$conf"; exit 0; fi
    stop_all
    rm -rf "$dir/mon" "$dir/osd" "$dir/mgr" "$dir/run" "$dir/log"
    mkdir -p "$dir/mon/ceph-a" "$dir/osd/ceph-0" "$dir/mgr/ceph-x" "$dir/run" "$dir/log"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    cat > "$conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
run dir = $dir/run
mon data = $dir/mon/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
mgr data = $dir/mgr/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = ${CEPH_MEMSTORE_BYTES:-8589934592}
rbd default features = layering, exclusive-lock, object-map, fast-diff, deep-flatten
[mon]
admin socket = $dir/run/\$name.asok
[osd]
admin socket = $dir/run/\$name.asok
[mgr]
admin socket = $dir/run/\$name.asok
CONF
    monmaptool --create --clobber --addv a "[v2:127.0.0.1:$v2,v1:127.0.0.1:$v1]" --fsid "$fsid" "$dir/monmap" >/dev/null
    ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" 2>>"$dir/log/setup.log"
    ceph-mon -c "$conf" -i a
    for _ in $(seq 100); do answers && break; sleep 0.1; done
    ceph-mgr -c "$conf" -i x
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    osd_id=$(ceph -c "$conf" osd new "$osd_uuid")
    ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" 2>>"$dir/log/setup.log" >/dev/null
    ceph-osd -c "$conf" -i "$osd_id" 2>>"$dir/log/setup.log"
    for pool in "$image_pool" "$vm_pool"; do
        ceph -c "$conf" osd pool create "$pool" 8 8 >/dev/null 2>&1
        rbd -c "$conf" pool init "$pool"
    done
    # Usable means an RBD image can be made and removed.
    for _ in $(seq 200); do
        if rbd -c "$conf" create --size 1M "$vm_pool/ucloud-probe" 2>/dev/null; then
            rbd -c "$conf" rm "$vm_pool/ucloud-probe" >/dev/null 2>&1
            echo "ceph running (mon, mgr, osd.$osd_id; pools $image_pool, $vm_pool); CEPH_CONF=$conf"
            exit 0
        fi
        sleep 0.2
    done
    echo "ceph did not become usable; see $dir/log/" >&2
    exit 1
    ;;
stop)
    stop_all
    echo "ceph stopped"
    ;;
status)
    if [ -f "$conf" ] && answers; then ceph -c "$conf" -s; else echo "ceph not running"; exit 1; fi
    ;;
*) usage ;;
esac
