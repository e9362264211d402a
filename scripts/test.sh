#!/usr/bin/env bash
# Install what is missing (apt + pip, idempotent), then run every test: unit, stage
# (real ZeroMQ), and end-to-end (network namespaces, nftables, sshd: needs root).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
exec /opt/dynknock/venv/bin/pytest "$@"
