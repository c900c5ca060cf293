#!/usr/bin/env bash
# Start a Dask scheduler and N workers on this machine, in the background, bound to 127.0.0.1.
#
# Usage:   cluster/local/start.sh N [DIR]
#   N      number of worker processes (each: a nanny + 1 worker process with THREADS threads)
#   DIR    run directory (default: runs/dask-local, git-ignored). Receives scheduler.json, *.pid and *.log
#          files and the workers' scratch space.
# Prints:  the path of the scheduler file on stdout (and nothing else), so that
#            SCHED=$(cluster/local/start.sh 2 runs/dask)
#            dimplicit train ... --scheduler-file "$SCHED"
#          works. Progress and the dashboard link go to stderr.
# Stop:    cluster/local/stop.sh DIR
#
# Environment (all optional):
#   THREADS        task threads per worker, also the BLAS/OpenMP threads per worker (default 1)
#   TLS_DIR        use mutual TLS with the certificates of cluster/tls/make_certs.sh in this
#                  directory (ca.pem, server.pem, server-key.pem, client.pem, client-key.pem)
#   START_TIMEOUT  seconds to wait for the scheduler and all workers (default 60)
#   DASK, PYTHON   commands to use (default: `dask` and `python` from PATH, i.e. the active
#                  virtualenv; dask, distributed and dimplicit must be installed there)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${1:?usage: $0 N [DIR]}
DIR=${2:-runs/dask-local}
THREADS=${THREADS:-1}
START_TIMEOUT=${START_TIMEOUT:-60}
DASK=${DASK:-dask}
PYTHON=${PYTHON:-python}

case "$N" in ''|*[!0-9]*|0) echo "start.sh: N must be a positive integer, got '$N'" >&2; exit 2;; esac
command -v "$DASK" >/dev/null || { echo "start.sh: '$DASK' not found: activate the virtualenv" >&2; exit 2; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)                  # absolute: workers resolve it from their own cwd
SCHED_FILE=$DIR/scheduler.json

# Refuse to start twice in one directory: the second scheduler would overwrite the file
# the first cluster's clients and workers rely on.
if [ -f "$DIR/scheduler.pid" ] \
    && ps -o args= -p "$(cat "$DIR/scheduler.pid")" 2>/dev/null | grep -q dask; then
    echo "start.sh: a scheduler is already running for $DIR (stop it with $HERE/stop.sh $DIR)" >&2
    exit 1
fi
rm -f "$SCHED_FILE" "$DIR"/*.pid         # a stale file would point at a dead scheduler

# Size every BLAS/OpenMP pool to the worker's task threads *before* Python starts (NumPy
# reads these at import). Otherwise each worker starts one BLAS thread per core and
# N workers oversubscribe the machine N-fold.
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

TLS_ARGS=()
if [ -n "${TLS_DIR:-}" ]; then
    TLS_DIR=$(cd "$TLS_DIR" && pwd)
    # Scheduler and workers present server.pem (valid for serving and for connecting).
    TLS_ARGS=(--protocol tls --tls-ca-file "$TLS_DIR/ca.pem"
              --tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server-key.pem")
fi

# Anything that goes wrong from here on (a failed command, Ctrl-C, kill) tears down what
# was started, so a failed start never leaves orphans behind.
STARTED=0
teardown() {
    if [ "$STARTED" -eq 0 ]; then
        echo "start.sh: start failed; stopping what was started" >&2
        GRACE=3 "$HERE/stop.sh" "$DIR" >&2 || true
    fi
}
trap teardown EXIT
trap 'exit 130' INT                       # EXIT trap runs on the way out
trap 'exit 143' TERM

# setsid: each process leads its own process group, so stop.sh can signal a nanny together
# with the worker process it forked, and closing this terminal (SIGHUP) does not kill them.
SETSID=()
command -v setsid >/dev/null && SETSID=(setsid)

# Port 0 = any free port (read back from the scheduler file). The HTTP port (dashboard,
# /health, /metrics) is bound to 127.0.0.1 explicitly: by default it listens on all interfaces.
"${SETSID[@]}" "$DASK" scheduler \
    --host 127.0.0.1 --port 0 \
    --dashboard-address 127.0.0.1:0 \
    --scheduler-file "$SCHED_FILE" \
    "${TLS_ARGS[@]}" \
    >"$DIR/scheduler.log" 2>&1 </dev/null &
echo $! >"$DIR/scheduler.pid"

# Wait for the scheduler file: fails fast if the scheduler dies (bad option, TLS file...).
deadline=$((SECONDS + START_TIMEOUT))
until [ -s "$SCHED_FILE" ]; do
    if ! kill -0 "$(cat "$DIR/scheduler.pid")" 2>/dev/null; then
        echo "start.sh: the scheduler exited; last lines of $DIR/scheduler.log:" >&2
        tail -n 20 "$DIR/scheduler.log" >&2
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start.sh: no scheduler file after ${START_TIMEOUT}s; see $DIR/scheduler.log" >&2
        exit 1
    fi
    sleep 0.2
done

for ((i = 0; i < N; i++)); do
    # --nworkers 1 --nthreads $THREADS: one process per worker (separate GILs and memory
    # limits); --death-timeout: exit by itself if the scheduler vanishes for 60 s.
    "${SETSID[@]}" "$DASK" worker \
        --scheduler-file "$SCHED_FILE" \
        --host 127.0.0.1 \
        --dashboard-address 127.0.0.1:0 \
        --nworkers 1 --nthreads "$THREADS" \
        --name "worker-$i" \
        --local-directory "$DIR/worker-$i" \
        --death-timeout 60 \
        "${TLS_ARGS[@]}" \
        >"$DIR/worker-$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/worker-$i.pid"
done

# Block until all N workers have registered with the scheduler.
if ! "$PYTHON" - "$SCHED_FILE" "$N" "$START_TIMEOUT" "${TLS_DIR:-}" <<'PY'
import sys

from distributed import Client
from distributed.security import Security

path, n, timeout, tls = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
security = None
if tls:  # the waiting client identifies itself like any other client
    security = Security(
        require_encryption=True,
        tls_ca_file=f"{tls}/ca.pem",
        tls_client_cert=f"{tls}/client.pem",
        tls_client_key=f"{tls}/client-key.pem",
    )
with Client(scheduler_file=path, security=security, timeout=timeout) as client:
    client.wait_for_workers(n, timeout=timeout)
    info = client.scheduler_info(n_workers=0)
    port = info.get("services", {}).get("dashboard")
    print(f"scheduler {info['address']} with {n} worker(s)", file=sys.stderr)
    if port:
        print(f"dashboard http://127.0.0.1:{port}/status", file=sys.stderr)
PY
then
    echo "start.sh: the workers did not all register within ${START_TIMEOUT}s; logs in $DIR" >&2
    for ((i = 0; i < N; i++)); do
        echo "--- worker-$i.log" >&2
        tail -n 5 "$DIR/worker-$i.log" >&2 || true
    done
    exit 1
fi

STARTED=1
echo "$SCHED_FILE"
