# Start and stop a long-running process without systemd: pid file, log file, health wait.
# Sourced by deploy/local.sh; not run on its own.

# start_daemon NAME DIR HEALTH_COMMAND COMMAND...: start COMMAND in the background (idempotent),
# with its pid in DIR/NAME.pid and its output in DIR/NAME.log; wait until HEALTH_COMMAND succeeds.
start_daemon() {
    local name=$1 dir=$2 health=$3; shift 3
    local pidfile=$dir/$name.pid
    mkdir -p "$dir"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "$name already running (pid $(cat "$pidfile"))"; return 0
    fi
    setsid "$@" >>"$dir/$name.log" 2>&1 < /dev/null &
    echo $! > "$pidfile"
    for _ in $(seq 150); do
        if eval "$health" >/dev/null 2>&1; then echo "$name running (pid $(cat "$pidfile"))"; return 0; fi
        kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.2
    done
    echo "$name did not start; last lines of $dir/$name.log:" >&2
    tail -n 20 "$dir/$name.log" >&2
    return 1
}

# stop_daemon NAME DIR: SIGTERM, then SIGKILL after 15 s.
stop_daemon() {
    local name=$1 dir=$2 pid
    local pidfile=$dir/$name.pid
    if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
        echo "$name not running"; rm -f "$pidfile"; return 0
    fi
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; echo "$name killed (did not stop within 15 s)"; else echo "$name stopped"; fi
    rm -f "$pidfile"
}
