#!/usr/bin/env bash
# Users, roles and `auth enable` of the etcd store of examples/ha (README.md, step 4).
#
#   ./rbac.sh PKI-DIR [PREFIX]        once, on a new cluster, before anything else writes to it
#
# Connects with root's client certificate (PKI-DIR/root.crt|key, PKI-DIR/client-ca.crt) to the
# members in ETCDCTL_ENDPOINTS (default: the three of the example), and reads the passwords
# PKI-DIR/{root,auth-a,auth-b,admin}.password that pki.sh made. Roles (PREFIX: /dynknock):
#   auth-replica  readwrite PREFIX/nonces/ (prefix), read PREFIX/users    users auth-a, auth-b
#   admin         readwrite PREFIX/users, read PREFIX/nonces/ (prefix)    user admin (knock-admin)
#   root          everything: only for this script and for an operator's compaction and defrag
# REPLICAS="auth-a auth-b" and ADMINS="admin" name other users.
#
# Caution (README.md, "etcd versions"): before etcd 3.4.42 / 3.5.28 / 3.6.9 a nested txn skips
# these roles, so any logged-in user can write any key; Debian 12's 3.4.23 is such a version.
set -euo pipefail
pki=${1:?usage: $0 PKI-DIR [PREFIX]}
prefix=${2:-/dynknock}
REPLICAS=${REPLICAS:-"auth-a auth-b"}
ADMINS=${ADMINS:-"admin"}
export ETCDCTL_API=3
export ETCDCTL_ENDPOINTS=${ETCDCTL_ENDPOINTS:-https://198.18.0.31:2379,https://198.18.0.32:2379,https://198.18.0.33:2379}
export ETCDCTL_CACERT=$pki/client-ca.crt ETCDCTL_CERT=$pki/root.crt ETCDCTL_KEY=$pki/root.key

password() { tr -d '\n' < "$pki/$1.password"; }
add_user() { etcdctl user add "$1" --interactive=false --new-user-password="$(password "$1")" >/dev/null; }

if ! users=$(etcdctl user list 2>&1); then
    echo "rbac.sh: cannot list the users (${users##*$'\n'}): is auth on already?" >&2
    exit 1
fi
if [ -n "$users" ]; then
    echo "rbac.sh: the cluster has users already ($(echo $users)); this script is for a new cluster only" >&2
    exit 1
fi

add_user root
etcdctl user grant-role root root >/dev/null
etcdctl role add auth-replica >/dev/null
etcdctl role grant-permission auth-replica readwrite "$prefix/nonces/" --prefix=true >/dev/null
etcdctl role grant-permission auth-replica read "$prefix/users" >/dev/null
etcdctl role add admin >/dev/null
etcdctl role grant-permission admin readwrite "$prefix/users" >/dev/null
etcdctl role grant-permission admin read "$prefix/nonces/" --prefix=true >/dev/null
for user in $REPLICAS; do add_user "$user"; etcdctl user grant-role "$user" auth-replica >/dev/null; done
for user in $ADMINS; do add_user "$user"; etcdctl user grant-role "$user" admin >/dev/null; done
etcdctl auth enable
echo "rbac.sh: roles auth-replica ($REPLICAS) and admin ($ADMINS) under $prefix; auth is on."
echo "rbac.sh: from now on etcdctl needs --user root:PASSWORD (or the user's own) as well as a certificate."
