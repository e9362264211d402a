"""The benchmark must keep running: bench/run.py --smoke, whole stack, tiny counts.

It writes its report to a temporary file (never docs/BENCHMARKS.md) and the
test checks that every section came out with numbers, not that any bar is
met: the bars are for the full run on a quiet machine; and that bench/report.py
renders the same report again from the run's JSON alone.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from tests.lab.netlab import require_privileges
from tests.lab.stack import VENV_BIN

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def test_bench_smoke_produces_a_report_with_numbers(tmp_path: Path) -> None:
    require_privileges()
    report, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    done = subprocess.run([str(VENV_BIN / "python"), str(REPO / "bench" / "run.py"), "--smoke",
                           "--output", str(report), "--json", str(raw)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    text = report.read_text()
    assert "SMOKE RUN" in text
    assert "## Notes" not in text, text  # the run reports a failure part-way in Notes
    for heading in ("## Bars", "## 1. Knock-to-door latency", "## 2. Flood", "## 3. Throughput through a door",
                    "## 4. Scale", "## 5. Per-stage microbenchmarks"):
        assert heading in text, heading
    for line in ("| command | `", "| machine | ", "| python | ", "| date | "):
        assert line in text, line
    for bar in ("knock-to-door p50 < 15 ms", "knock-to-door p99 < 50 ms", "kernel door >= 0.95x direct, one stream",
                "(second row) relay >= 0.8x direct, one stream",
                "flood offered >= 120,000 pkt/s"):
        assert re.search(rf"\| {re.escape(bar)}[^|]* \| {NUMBER}", text), bar
    data = json.loads(raw.read_text())["results"]
    knocks = data["latency"]["default"]
    assert knocks and all(math.isfinite(r["door_ms"]) and r["door_ms"] > 0 for r in knocks if r["ok"])
    assert sum(r["ok"] for r in knocks) >= len(knocks) - 1  # a smoke run may lose one knock, not all
    assert data["relay"]["single"]["direct"][0]["received"] > 0
    assert data["relay"]["single"]["relay"][0]["received"] > 0
    assert data["relay"]["single"]["kernel"][0]["received"] > 0
    assert all(phase["offered"] > 0 and phase["rx"] > 0 for phase in data["flood"].values())
    assert sum(r["ok"] for r in data["scale"]["rows"]) > 0
    assert data["micro"]["codec"] and data["micro"]["bus_ipc"][0] > 0
    # The report comes from the results alone: bench/report.py renders the same one from the JSON.
    again = tmp_path / "again.md"
    done = subprocess.run([str(VENV_BIN / "python"), str(REPO / "bench" / "report.py"), "--json", str(raw),
                           "--output", str(again)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert again.read_text() == text
