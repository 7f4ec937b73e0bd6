#!/bin/sh
# Test certificates: makes a throwaway CA in DIR (the first time) and a certificate for HOST
# signed by it, as DIR/HOST.pem and DIR/HOST.key. Trust DIR/ca.pem to verify it.
#
#     tests/tls/issue.sh DIR HOST
set -eu
dir=$1
host=$2
cd "$dir"
key_args="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
if [ ! -e ca.pem ]; then
    # shellcheck disable=SC2086
    openssl req -x509 $key_args -keyout ca.key -out ca.pem -days 2 -subj "/CN=slipway test CA" 2>/dev/null
fi
printf 'subjectAltName=DNS:%s\n' "$host" >"$host.ext"
# shellcheck disable=SC2086
openssl req $key_args -keyout "$host.key" -out "$host.csr" -subj "/CN=$host" 2>/dev/null
openssl x509 -req -in "$host.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$host.pem" -days 2 \
    -extfile "$host.ext" 2>/dev/null
