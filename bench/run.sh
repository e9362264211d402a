#!/usr/bin/env bash
# The whole benchmark in one command (as root): installs this checkout into /opt/dynknock/venv
# (scripts/setup.sh, idempotent), then runs bench/run.py, which builds the namespace lab, runs the
# stack, measures, tears everything down and writes docs/BENCHMARKS.md. About 3 minutes on 2 CPUs.
#
#   sudo bench/run.sh                      # full run, writes docs/BENCHMARKS.md
#   sudo bench/run.sh --smoke --output /tmp/bench.md    # tiny counts, under a minute
#   sudo bench/run.sh --help
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/run.sh: run as root (sudo $0): it builds network namespaces and runs the stack" >&2
    exit 2
fi
bash "$repo/scripts/setup.sh" >&2
cd "$repo"
DYNKNOCK_BENCH_COMMAND="sudo bench/run.sh${*:+ $*}" exec /opt/dynknock/venv/bin/python "$repo/bench/run.py" "$@"
