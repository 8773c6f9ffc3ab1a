#!/bin/bash
# A local etcd on 127.0.0.1, for one machine and for tests: a single member, or one member of a
# cluster on this machine. Not for production: production runs a 3- or 5-member cluster on
# separate machines (see README).
#
#   deploy/etcd.sh start DIR [CLIENT_PORT [PEER_PORT [NAME CLUSTER]]]
#                               start (idempotent); a single member waits until healthy
#   deploy/etcd.sh stop DIR     stop (SIGTERM, then SIGKILL after 10 s)
#   deploy/etcd.sh status DIR   exit 0 if running and healthy
#   deploy/etcd.sh defrag DIR   give the space freed by compaction back to the file system (weekly,
#                               e.g. from cron; the member blocks its clients while it runs)
#
# Everything lives under DIR: data/, etcd.log, etcd.pid, and etcd.env (the ports, name and cluster,
# remembered so that a restart reuses them). Ports default to 2379 / 2380.
# NAME and CLUSTER (NAME=http://127.0.0.1:PEER_PORT,… for every member, the same list for all)
# make DIR one member of a multi-member cluster: start every member with the same CLUSTER. Such a
# member cannot be healthy alone (it serves clients only once a majority runs), so start returns
# once its process runs; check the cluster's health once a majority was started.
# As ucloud expects of any etcd (README, "What etcd must be given"): compaction every hour, a backend
# quota of UCLOUD_ETCD_QUOTA_BYTES (default 8 GiB), and a regular defrag (compaction alone frees space
# inside the file only).
set -euo pipefail

usage() { sed -n '5,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1; dir=$2
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
pidfile=$dir/etcd.pid envfile=$dir/etcd.env

# A killed etcd may linger as a zombie until its reaper gets to it (kill -0 still succeeds then):
# only a process that is not a zombie runs.
running() {
    [ -f "$pidfile" ] || return 1
    local state
    state=$(awk '{print $3}' "/proc/$(cat "$pidfile")/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
healthy() { ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$CLIENT_PORT" --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1; }

case $cmd in
start)
    if [ -f "$envfile" ]; then . "$envfile"; fi
    CLIENT_PORT=${3:-${CLIENT_PORT:-2379}}; PEER_PORT=${4:-${PEER_PORT:-2380}}
    NAME=${5:-${NAME:-ucloud-local}}; CLUSTER=${6:-${CLUSTER:-$NAME=http://127.0.0.1:$PEER_PORT}}
    if running; then
        echo "etcd already running (pid $(cat "$pidfile")) on 127.0.0.1:$CLIENT_PORT"; exit 0
    fi
    command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server etcd-client)" >&2; exit 1; }
    printf 'CLIENT_PORT=%s\nPEER_PORT=%s\nNAME=%s\nCLUSTER=%s\n' "$CLIENT_PORT" "$PEER_PORT" "$NAME" "$CLUSTER" > "$envfile"
    setsid etcd --name "$NAME" --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
        --initial-cluster "$CLUSTER" --initial-cluster-token "ucloud-$(printf %s "$CLUSTER" | cksum | cut -d' ' -f1)" \
        --auto-compaction-mode=periodic --auto-compaction-retention=1h \
        --quota-backend-bytes="${UCLOUD_ETCD_QUOTA_BYTES:-8589934592}" \
        >>"$dir/etcd.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    if [ "$CLUSTER" != "$NAME=http://127.0.0.1:$PEER_PORT" ]; then
        sleep 0.2
        if running; then echo "etcd member $NAME started (pid $(cat "$pidfile")) on 127.0.0.1:$CLIENT_PORT"; exit 0; fi
    else
        for _ in $(seq 100); do
            if healthy; then echo "etcd running (pid $(cat "$pidfile")) on 127.0.0.1:$CLIENT_PORT"; exit 0; fi
            running || break
            sleep 0.1
        done
    fi
    echo "etcd did not start; last lines of $dir/etcd.log:" >&2
    tail -n 20 "$dir/etcd.log" >&2
    exit 1
    ;;
stop)
    if ! running; then echo "etcd not running"; rm -f "$pidfile"; exit 0; fi
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do running || break; sleep 0.1; done
    if running; then kill -9 "$pid"; echo "etcd killed (did not stop within 10 s)"; else echo "etcd stopped"; fi
    rm -f "$pidfile"
    ;;
status)
    if [ -f "$envfile" ]; then . "$envfile"; fi
    CLIENT_PORT=${CLIENT_PORT:-2379}
    if running && healthy; then echo "etcd running (pid $(cat "$pidfile")) on 127.0.0.1:$CLIENT_PORT"; else echo "etcd not running"; exit 1; fi
    ;;
defrag)
    if [ -f "$envfile" ]; then . "$envfile"; fi
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${CLIENT_PORT:-2379}" --command-timeout=300s defrag
    ;;
*) usage ;;
esac
