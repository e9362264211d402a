#!/usr/bin/env bash
# Install what is missing (apt + pip, idempotent), then run the demo in network namespaces.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/scripts/setup.sh"
cd "$repo"
exec /opt/dynknock/venv/bin/knock-demo --supervisord-conf "$repo/supervisord.conf" "$@"
