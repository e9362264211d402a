#!/usr/bin/env bash
# The certificates and passwords of the etcd store of examples/ha (README.md, "Secrets").
#
#   ./pki.sh DIR          make everything in DIR (a new, empty directory, mode 0700)
#
# Run it on an offline machine: DIR/peer-ca.key and DIR/client-ca.key must never reach a host.
# Two CAs: the PEER CA signs the members' raft certificates (port 2380); the CLIENT CA signs the
# members' client-port certificates (2379) and every client's. A client certificate so cannot join
# raft, nor a member's peer certificate act as a client. No certificate carries a CommonName:
# etcd's JSON gateway answers 400 to one that does when auth is on (the user is the login).
#
# Members and clients (override with the environment):
#   MEMBERS="etcd-1=198.18.0.31 etcd-2=198.18.0.32 etcd-3=198.18.0.33"   name=IP (its SAN)
#   CLIENTS="auth-a auth-b admin root"                                    one etcd user each
# Each client gets NAME.crt, NAME.key and NAME.password (random; the etcd user's password).
set -euo pipefail
dir=${1:?usage: $0 DIR}
MEMBERS=${MEMBERS:-"etcd-1=198.18.0.31 etcd-2=198.18.0.32 etcd-3=198.18.0.33"}
CLIENTS=${CLIENTS:-"auth-a auth-b admin root"}
DAYS=${DAYS:-825}

if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "pki.sh: $dir is not empty; refusing to overwrite keys" >&2
    exit 1
fi
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$1.key"; }

ca() {
    key "$1"
    openssl req -x509 -new -key "$dir/$1.key" -subj "/O=dynknock/CN=$1" -days 3650 -sha256 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -out "$dir/$1.crt"
}

cert() { # cert CA NAME EXTENDED-KEY-USAGE [IP]
    local ca=$1 name=$2 usage=$3 ip=${4:-}
    key "$name"
    openssl req -new -key "$dir/$name.key" -subj "/O=dynknock" -out "$dir/$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        [ -n "$ip" ] && echo "subjectAltName=IP:$ip"
    } > "$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" -CAcreateserial \
        -days "$DAYS" -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
}

ca peer-ca
ca client-ca
for member in $MEMBERS; do
    name=${member%%=*} ip=${member#*=}
    cert peer-ca "$name-peer" serverAuth,clientAuth "$ip"
    # serverAuth and clientAuth: the member's JSON gateway dials the member itself with it.
    cert client-ca "$name-server" serverAuth,clientAuth "$ip"
done
for client in $CLIENTS; do
    cert client-ca "$client" clientAuth
    openssl rand -base64 24 > "$dir/$client.password"
done
chmod 644 "$dir"/*.crt
rm -f "$dir"/*.srl
echo "pki.sh: made in $dir:"
ls -l "$dir"
