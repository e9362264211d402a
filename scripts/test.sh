#!/usr/bin/env bash
# Install what is missing (apt + pip, idempotent), then run every test: unit, stage
# (real ZeroMQ), and end-to-end (network namespaces, nftables, sshd: needs root).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# --with-etcd: the tests of replicated auth run their own etcd clusters in namespaces (tests/etcdlab.py);
# setup.sh installs etcd-server, etcd-client and openssl and starts no system etcd.
bash "$repo/scripts/setup.sh" --with-etcd
# tests/e2e/test_real_server.py checks the systemd unit with systemd-analyze (package systemd;
# a container may lack it; systemd need not be PID 1 for that).
# tests/e2e/test_fresh_machine.py builds minimal Debian and Ubuntu roots with debootstrap.
test_packages=()
command -v systemd-analyze >/dev/null || test_packages+=(systemd)
command -v debootstrap >/dev/null || test_packages+=(debootstrap)
if [ ${#test_packages[@]} -gt 0 ]; then
    echo "test: installing ${test_packages[*]} (for the tests only)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${test_packages[@]}" >/dev/null
fi
cd "$repo"
exec /opt/dynknock/venv/bin/pytest "$@"
