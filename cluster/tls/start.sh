#!/usr/bin/env bash
# Start a local scheduler and N workers that speak only mutual TLS (tls:// addresses).
#
# Usage:  cluster/tls/start.sh N CERT_DIR [DIR]
#   CERT_DIR  output of cluster/tls/make_certs.sh (ca.pem, server*.pem, client*.pem)
#   DIR       run directory (default: runs/dask-tls, git-ignored)
# Prints the scheduler file path; stop with cluster/local/stop.sh DIR. Connect with:
#   dimplicit train ... --scheduler-file DIR/scheduler.json \
#       --tls-ca-file CERT_DIR/ca.pem --tls-cert CERT_DIR/client.pem \
#       --tls-key CERT_DIR/client-key.pem
# Same as cluster/local/start.sh (see there for THREADS, START_TIMEOUT, ...) with TLS_DIR set.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${1:?usage: $0 N CERT_DIR [DIR]}
CERT_DIR=${2:?usage: $0 N CERT_DIR [DIR]}
for f in ca.pem server.pem server-key.pem client.pem client-key.pem; do
    [ -f "$CERT_DIR/$f" ] || { echo "tls/start.sh: missing $CERT_DIR/$f (run make_certs.sh)" >&2; exit 2; }
done
TLS_DIR=$CERT_DIR exec "$HERE/../local/start.sh" "$N" "${3:-runs/dask-tls}"
