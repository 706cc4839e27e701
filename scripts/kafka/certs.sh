#!/usr/bin/env bash
# Make the TLS material of the secured local broker in one directory (idempotent: kept if present):
#
#   ca.pem, ca.key           a throwaway CA (the truststore of broker and clients)
#   broker.pem               the broker's PEM keystore: PKCS#8 key, certificate (SAN 127.0.0.1 and
#                            localhost, so clients keep hostname verification on), then the CA
#   client.pem, client.key   the client's certificate (CN=ftp-pooler) and key, for the mTLS listener
#
# Usage: scripts/kafka/certs.sh <dir>
set -euo pipefail

dir=${1:?usage: certs.sh <dir>}
mkdir -p "$dir"
cd "$dir"
umask 077

if [ -f ca.pem ] && [ -f broker.pem ] && [ -f client.pem ] && [ -f client.key ]; then
  exit 0
fi

days=3650
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout ca.key -out ca.pem -subj "/CN=FTP Pooler local Kafka CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null

# issue <name> <subject> <extensions>: a key (PKCS#8, unencrypted) and a certificate signed by the CA.
issue() {
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -sha256 -days "$days" -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

issue broker "/CN=localhost" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
cat broker.key broker.crt ca.pem > broker.pem
rm -f broker.key broker.crt

issue client "/CN=ftp-pooler" \
  "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
mv client.crt client.pem
# Certificates are public; keys stay 0600.
chmod 644 ca.pem client.pem
