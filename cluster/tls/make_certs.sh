#!/usr/bin/env bash
# Create a private CA and two certificates signed by it, for Dask's mutual TLS.
#
# Usage:  cluster/tls/make_certs.sh DIR
#   DAYS  validity in days (default 365)
#   SAN   extra subject alternative names for the scheduler/worker certificate, e.g.
#         SAN="DNS:node01,DNS:node02,IP:10.0.0.5" (localhost and 127.0.0.1 are always in)
#
# Writes to DIR:
#   ca.pem, ca-key.pem           the CA. Keep ca-key.pem offline / private: whoever holds it
#                                can mint certificates the cluster accepts.
#   server.pem, server-key.pem   for the scheduler and the workers (serverAuth + clientAuth:
#                                workers also connect to the scheduler and to each other)
#   client.pem, client-key.pem   for clients (dimplicit train/score, notebooks)
# Every party must get ca.pem plus its own certificate and key. Keys are created mode 0600.
# The Python equivalent (for tests) is dimplicit.testing.make_test_certificates.
set -euo pipefail

DIR=${1:?usage: $0 DIR}
DAYS=${DAYS:-365}
SAN_LIST="DNS:localhost,IP:127.0.0.1${SAN:+,$SAN}"
command -v openssl >/dev/null || { echo "make_certs.sh: openssl not found" >&2; exit 2; }

mkdir -p "$DIR"
cd "$DIR"
umask 077                                 # keys (and everything else) private to the owner

# A minimal OpenSSL config: one section of X.509 extensions per kind of certificate.
CONF=$(mktemp)
trap 'rm -f "$CONF" server.csr client.csr ca.srl' EXIT
cat >"$CONF" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $SAN_LIST
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
CNF

# ECDSA P-256 keys: small, fast, supported by every TLS 1.2+ stack Dask uses.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

newkey ca-key.pem
openssl req -new -x509 -key ca-key.pem -sha256 -days "$DAYS" \
    -subj "/O=dimplicit/CN=dimplicit cluster CA" \
    -config "$CONF" -extensions ca -out ca.pem

for kind in server client; do
    newkey "$kind-key.pem"
    openssl req -new -key "$kind-key.pem" -subj "/O=dimplicit/CN=dimplicit $kind" \
        -config "$CONF" -out "$kind.csr"
    openssl x509 -req -in "$kind.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$CONF" -extensions "$kind" -out "$kind.pem" 2>/dev/null
done

chmod 644 ca.pem server.pem client.pem   # certificates are public; keys stay 0600
openssl verify -CAfile ca.pem server.pem client.pem >&2
echo "certificates in $(pwd)" >&2
