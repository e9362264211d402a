#!/usr/bin/env bash
# Install what is missing (apt + pip, idempotent), then run every test: unit, stage
# (real ZeroMQ), and end-to-end (network namespaces, nftables, sshd: needs root).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
# tests/e2e/test_real_server.py checks the systemd unit with systemd-analyze (package systemd;
# a container may lack it; systemd need not be PID 1 for that).
# tests/e2e/test_fresh_machine.py builds minimal Debian and Ubuntu roots with debootstrap.
test_packages=()
command -v systemd-analyze >/dev/null || test_packages+=(systemd)
command -v debootstrap >/dev/null || test_packages+=(debootstrap)
# Replicated auth (issue 23): the tests run their own etcd clusters in namespaces (tests/etcdlab.py).
command -v etcd >/dev/null || test_packages+=(etcd-server)
command -v etcdctl >/dev/null || test_packages+=(etcd-client)
command -v openssl >/dev/null || test_packages+=(openssl)
if [ ${#test_packages[@]} -gt 0 ]; then
    echo "test: installing ${test_packages[*]} (for the tests only)"
    # etcd-server's package would start a system-wide etcd on 127.0.0.1:2379 at install: the tests want
    # none, so no service is started while these install (policy-rc.d 101: "action not allowed").
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        ours="$policy"
        trap 'rm -f "$ours"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${test_packages[@]}" >/dev/null
    [ -z "$ours" ] || rm -f "$ours"
    trap - EXIT
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now etcd.service >/dev/null 2>&1 || true
    fi
fi
cd "$repo"
exec /opt/dynknock/venv/bin/pytest "$@"
