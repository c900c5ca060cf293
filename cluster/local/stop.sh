#!/usr/bin/env bash
# Stop the scheduler and workers that cluster/local/start.sh started in DIR.
#
# Usage:  cluster/local/stop.sh DIR
#   GRACE  seconds a process gets to exit after SIGTERM before it is SIGKILLed (default 10)
#
# Workers go first (SIGTERM lets a nanny stop its worker process cleanly), then the
# scheduler. Only processes named in DIR/*.pid whose command line mentions "dask" are
# signalled, so a stale PID file can never hit an unrelated process that reused the PID.
set -uo pipefail

DIR=${1:?usage: $0 DIR}
GRACE=${GRACE:-10}
[ -d "$DIR" ] || { echo "stop.sh: no such directory: $DIR" >&2; exit 1; }

is_ours() {  # is PID alive and a dask process?
    local args
    args=$(ps -o args= -p "$1" 2>/dev/null) || return 1
    case "$args" in *dask*) return 0;; *) return 1;; esac
}

signal_pid() {  # signal PID's whole process group if it leads one (setsid), else just PID
    local sig=$1 pid=$2
    if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
        kill "-$sig" -- "-$pid" 2>/dev/null || true
    else
        kill "-$sig" "$pid" 2>/dev/null || true
    fi
}

stop_group() {  # stop_group PIDFILE...: TERM, wait up to GRACE seconds, then KILL
    local pids=() pidfile pid
    for pidfile in "$@"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        is_ours "$pid" && pids+=("$pid")
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    for pid in "${pids[@]}"; do signal_pid TERM "$pid"; done
    local deadline=$((SECONDS + GRACE)) alive
    while :; do
        alive=()
        for pid in "${pids[@]}"; do is_ours "$pid" && alive+=("$pid"); done
        [ ${#alive[@]} -eq 0 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && break
        sleep 0.2
    done
    echo "stop.sh: still running after ${GRACE}s, sending SIGKILL: ${alive[*]}" >&2
    for pid in "${alive[@]}"; do signal_pid KILL "$pid"; done
}

shopt -s nullglob
stop_group "$DIR"/worker-*.pid
stop_group "$DIR"/scheduler.pid
# Leftovers: a nanny's worker process can outlive its killed nanny for a moment. Kill dask
# processes still in the leaders' process groups (checked one by one, as above).
for pidfile in "$DIR"/worker-*.pid "$DIR"/scheduler.pid; do
    group=$(cat "$pidfile")
    ps -eo pid=,pgid=,args= | while read -r pid pgid args; do
        if [ "$pgid" = "$group" ] && [ "$pid" != "$$" ]; then
            case "$args" in *dask*|*multiprocessing*) kill -KILL "$pid" 2>/dev/null || true;; esac
        fi
    done
done
rm -f "$DIR"/worker-*.pid "$DIR/scheduler.pid" "$DIR/scheduler.json"
echo "stopped the Dask processes of $DIR" >&2
