"""docs/BENCHMARKS.md is rendered from a run's results alone (bench/report.py, bench/spread.py).

A small run, made here with figures whose percentiles and ratios can be worked out by hand,
goes through the renderer as bench/run.py --json stores it: the bars table must say what each
figure is and whether its goal is met, the spread section must sit after the bars with the
median and range over the runs, and the report must come out the same from the stored JSON.
No lab, no root: bench/run.py's measuring is covered by tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
STAGES = ("capture", "auth", "gate", "relay", "bus")
FLOOD_KINDS = ("junk", "sized", "syn", "hint", "replay")


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, ModuleType]]:
    """bench/report.py and bench/spread.py, imported as bench/run.py does (bench/ is not a package)."""
    monkeypatch.syspath_prepend(str(BENCH))
    yield importlib.import_module("report"), importlib.import_module("spread")


def knock(ms: float, *, ok: bool = True, bursts: int = 1, pending: int = 0) -> dict[str, Any]:
    return {"i": 0, "ok": ok, "door_ms": ms, "p3_ms": ms - 2, "connect_ms": 0.5, "bursts": bursts,
            "pending": pending, "during_flood": True, "t_start": 0.0, "t_end": 1.0}


def stream(gbit_s: float, cpu_s: float, count: int = 1) -> dict[str, Any]:
    """A stream row: gbit_s over 2 s, the machine busy cpu_s meanwhile."""
    received = int(gbit_s * 1e9 / 8 * 2)
    return {"ok": count, "wanted": count, "received": received, "seconds": 2.0,
            "per_stream_bps": [gbit_s * 1e9 / count] * count, "setup_ms": [1.0, 2.0],
            "cpu": {"machine_busy_s": cpu_s, "machine_total_s": 4.0, "relay_s": 0.5, "sink_s": 0.5}}


def sample_run(idle_ms: list[float], kernel: float = 0.96, relay: float = 0.63) -> dict[str, Any]:
    """A run as bench/run.py --json writes it (tuples where run.py has them: JSON makes them lists)."""
    flood_trials = [knock(12.0) for _ in range(11)] + [knock(25.0, bursts=2, pending=1)]
    per_stage = {stage: 0.5 for stage in STAGES}
    capture = {"received": 1000, "kernel_dropped": 0, "forwarded": 100}
    results = {
        "latency": {"default": [knock(ms) for ms in idle_ms], "sweep": {"0.01": [knock(20.0)]},
                    "spawns": [knock(40.0)], "kdf_ms": [300.0], "server_side_ms": [3.0, 4.0],
                    "direct_connects": [{"i": 0, "ok": True, "connect_ms": 0.25}]},
        "flood": {kind: {"offered": 300_000, "seconds": 2.0, "rx": 290_000, "send_errors": 0, "rx_dropped": 0,
                         "cpu_s": per_stage, "capture_before": {}, "capture_after": capture,
                         "trials": flood_trials, "victim_trials": [knock(11.0)] if kind == "hint" else []}
                  for kind in FLOOD_KINDS},
        "hog": {"hog": [knock(10.0)] * 8 + [{"i": 0, "ok": False, "error": "REFUSED"}] * 2,
                "others": [knock(10.0)] * 12},
        "relay": {"single": {"direct": [stream(10.0, 1.0)], "kernel": [stream(10.0 * kernel, 1.0)],
                             "relay": [stream(10.0 * relay, 2.0)]},
                  "parallel": {"direct": stream(10.0, 1.0, 3), "kernel": stream(9.7, 1.0, 3),
                               "relay": stream(5.0, 2.0, 3)},
                  "shaped": {}},
        "scale": {"clients": 4, "rows": [knock(ms) for ms in (30.0, 40.0, 50.0, 400.0)], "spread_s": 3.0,
                  "nft_doors": 4, "auth_doors": 4, "capture_before": {}, "capture_after": {},
                  "rss_before": {s: 10240 for s in STAGES}, "rss_peak": {s: 20480 for s in STAGES},
                  "rss_after": {s: 10240 for s in STAGES}, "cpu_s": per_stage,
                  "server_side_ms": [5.0, 6.0, 7.0, 8.0]},
        "micro": {"codec": [("codec: seal + parse + open (P2)", 1000, 0.01)], "capture": [("parse_frame", 2000, 0.01)],
                  "gate_core": [("gate core", 500, 0.01)], "bus_codec": [("bus.encode", 4000, 0.01)],
                  "bus_ipc": (5000, 0.5), "filter_compile": [(0, 120, 0.4)],
                  "gate_nft": {"via": "libnftables", "gate": [0.001], "process": [0.004], "batch": 20,
                               "batch_s": 0.01}},
    }
    info = {"date": "2026-11-30 20:50 UTC", "nproc": "2", "cpu": "AMD EPYC", "machine": "x86_64",
            "kernel": "6.18", "python": "3.11.2", "commit": "729a91e", "installed_matches_checkout": "yes",
            "installed_digest": "abc", "installed_digest_end": "abc", "loadavg_start": "2.64",
            "loadavg_end": "3.27"}
    sizes = {"knocks": len(idle_ms), "gap_sweep": (0.01,), "flood_rate": 150_000, "flood_senders": 3,
             "flood_seconds": 6.0, "flood_trials": 12, "shaped_rate": "1gbit", "parallel_streams": 3,
             "scale_procs": 2, "window_s": 180}
    return {"info": info, "sizes": sizes, "results": results, "command": "sudo bench/run.sh", "smoke": False,
            "elapsed_s": 212.4}


def bars_of(report: str) -> dict[str, tuple[str, str]]:
    """The bars table: {bar: (measured, verdict)}."""
    section = report.split("## Bars\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| (.+?) \| \*\*(met|NOT met)\*\* \|$", section, re.MULTILINE)
    return {name: (value, verdict) for name, value, verdict in rows}


def test_the_bars_say_each_figure_and_whether_its_goal_is_met(bench: tuple[ModuleType, ModuleType]) -> None:
    report, _ = bench
    text: str = report.render(sample_run([8.0, 9.0, 10.0, 11.0, 60.0]))
    bars = bars_of(text)
    assert bars["knock-to-door p50 < 15 ms"] == ("10.0 ms", "met")
    assert bars["knock-to-door p99 < 50 ms"] == ("60.0 ms", "NOT met")  # nearest rank: the slowest of five
    assert bars["flood offered >= 120,000 pkt/s, every phase"] == ("150,000 pkt/s", "met")
    # 3x the idle p50 is 30 ms: all 12 within; one of them resent, and 11 of 12 is the goal.
    junk = "random junk to the control port"
    assert bars[f"knocks during the flood ({junk}) open within 3x idle"] == ("12/12", "met")
    assert bars[f"knocks during the flood ({junk}) open without a resend, >= 11 of 12"] == ("11/12", "met")
    assert bars["one user hogging doors (never using one) holds at most 8"] == ("8 opened", "met")
    assert bars["another user's knocks while one hogs open within 3x idle"] == ("12/12", "met")
    assert bars["kernel door >= 0.95x direct, one stream"] == ("0.96x", "met")
    assert bars["kernel door >= 0.95x direct, 3 streams"] == ("0.97x", "met")
    assert bars["kernel door machine CPU per GB within 10% of direct"] == ("1.04x", "met")
    assert bars["(second row) relay >= 0.8x direct, one stream"] == ("0.63x", "NOT met")
    assert bars["4 clients at once: every door opens"] == ("100.0%", "met")
    assert bars["4 clients at once: max <= 300 ms"] == ("400.0 ms", "NOT met")
    assert bars["4 doors opened, each used once by its client"] == ("4", "met")
    assert len(bars) == 23
    for heading in ("## 1. Knock-to-door latency", "## 2. Flood", "### One key holder hogging doors",
                    "## 3. Throughput through a door", "## 4. Scale", "## 5. Per-stage microbenchmarks"):
        assert f"\n{heading}" in text, heading
    assert "| command | `sudo bench/run.sh` |" in text and "| duration | 212 s |" in text
    assert "gap_sweep = (0.01,)" in report.render(json.loads(json.dumps(sample_run([10.0]))))  # as Sizes shows it


def test_the_spread_section_follows_the_bars_with_median_and_range(bench: tuple[ModuleType, ModuleType]) -> None:
    report, spread = bench
    runs = [sample_run([p50] * 5, kernel=kernel) for p50, kernel in ((9.0, 0.96), (12.0, 0.92), (10.0, 0.99))]
    runs[0]["info"]["date"] = "2026-11-30 20:42 UTC"
    text: str = spread.section(report.render(runs[-1]), runs, ["/tmp/b1.json", "/tmp/b2.json"])
    bars_end, section = text.index("\n## Spread over 3 runs\n"), text.split("## Spread over 3 runs\n", 1)[1]
    assert text.index("\n## Bars\n") < bars_end < text.index("\n## 1. Knock-to-door latency")
    assert "(/tmp/b1.json, /tmp/b2.json, written by the same command with --json)" in section
    assert "| 1 | 2026-11-30 20:42 UTC | 2.64, 3.27 |" in section
    assert "| library knock, idle, p50 ms | 10.0 (9.0–12.0) |" in section
    assert "| kernel / direct, one stream (median of the rounds of each run) | 0.96x (0.92–0.99) |" in section
    assert "| flood: random junk: another user's knocks, runs in order | " \
           + "; ".join(["12/12 opened, 11 without a resend, 12 within 3x idle"] * 3) + " |" in section
    assert "| flood: junk under one user's live hint (spoofed sources): the flooded user's own knocks opened, " \
           "runs in order | 1/1, 1/1, 1/1 |" in section


def test_a_stored_run_renders_the_same_report(bench: tuple[ModuleType, ModuleType], tmp_path: Path) -> None:
    """bench/report.py --json gives again what bench/run.py wrote: JSON turns tuples into lists and
    nothing in the report may tell."""
    report, _ = bench
    run = sample_run([8.0, 9.0, 10.0, 11.0, 60.0])
    stored = json.loads(json.dumps(run))
    assert stored != run  # the tuples did become lists
    assert report.render(stored) == report.render(copy.deepcopy(run))
    earlier = sample_run([12.0] * 5)
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--json", str(tmp_path / "run.json"), "--spread-with", str(tmp_path / "earlier.json"),
                        "--output", str(out)]) == 0
    assert out.read_text() == report.render_with_texts(stored, [(str(tmp_path / "earlier.json"), earlier)])
    assert "## Spread over 2 runs" in out.read_text()


def test_a_smoke_run_says_so_and_leaves_the_analysis_out(bench: tuple[ModuleType, ModuleType]) -> None:
    report, _ = bench
    run = sample_run([10.0] * 5)
    assert "ANALYSIS TEXT" in report.render(run, analysis_md="ANALYSIS TEXT")
    run["smoke"] = True
    text: str = report.render(run, analysis_md="ANALYSIS TEXT")
    assert text.startswith("# dynknock benchmarks (SMOKE RUN: tiny counts, figures are not meaningful)\n")
    assert "ANALYSIS TEXT" not in text


def window(busy: float, load: float) -> dict[str, Any]:
    """bench/run.py Window's figures: 2 CPUs over 3 s, `busy` of them busy; the stages 1.2 CPU-s, the clients 0.9."""
    return {"start_wall": 1.0, "seconds": 3.0, "busy_s": 6.0 * busy, "total_s": 6.0, "busy_share": busy,
            "cpu_shares": [busy - 0.05, busy + 0.05], "loadavg_start": [load, 1.5, 1.0],
            "loadavg_end": [load + 1.0, 1.6, 1.0],
            "processes_s": {"capture": 0.2, "auth": 0.5, "gate": 0.3, "relay": 0.1, "bus": 0.1,
                            "client0": 0.5, "client1": 0.4}}


def with_two_scale_rows(run: dict[str, Any], busy: float = 0.71, load: float = 0.4) -> dict[str, Any]:
    """The run with its 4-client row measured over a window, and a second row of 8 clients after it."""
    scale = run["results"]["scale"]
    scale["window"] = window(busy, load)
    scale["steps"] = {"p1_to_knocks_ms": [5.0] * 4, "knocks_to_open_ms": [2.0, 3.0, 4.0, 9.0]}
    more = copy.deepcopy(scale)
    more.update(clients=8, rows=[knock(ms) for ms in (20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)]
                + [{"i": 0, "ok": False, "error": "no P3 (timeout)"}], nft_doors=7, auth_doors=7,
                window=window(0.98, 3.2), steps={"knocks_to_open_ms": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 700.0]})
    run["results"]["scale_more"] = [more]
    run["sizes"]["scale_clients"] = (4, 8)
    return run


def scale_table(report: str) -> list[list[str]]:
    """The cells of the scale section's first table, a list per row."""
    section = report.split("\n## 4. Scale\n", 1)[1]
    table = section.split("\n| clients |", 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_scale_section_has_a_row_per_count_with_the_machines_load(bench: tuple[ModuleType, ModuleType]) -> None:
    report, _ = bench
    text: str = report.render(with_two_scale_rows(sample_run([10.0] * 5)))
    first, second = scale_table(text)
    # clients, opened, success, p50, p90, p99, max, first burst, confirmed p50 / p99, busy, load
    assert first == ["4", "4", "100.0%", "40.0", "400.0", "400.0", "400.0", "4", "3.0 / 9.0", "71%",
                     "0.40 → 1.40"]
    assert second == ["8", "7", "87.5%", "50.0", "80.0", "80.0", "80.0", "7", "40.0 / 700.0", "98%",
                      "3.20 → 4.20"]
    assert "Failures: 1x no P3 (timeout)." in text
    assert ("The machine over the clients' 3.00 s: 71% busy (cpu0 66%, cpu1 76%), 4.26 of 6.00 CPU-s busy: the "
            "stages 1.20, the bench's clients 0.90, the rest (kernel, anything else running) 2.16; load average "
            "(1, 5, 15 min) 0.40, 1.50, 1.00 at its start, 1.40, 1.60, 1.00 at its end.") in text
    assert "| auth | 8 | 10.0 | 20.0 | 10.0 | 0.50 |" in text
    # The bars stay the first row's (1,000 clients in the real run): the second row is reported, not a goal.
    bars = bars_of(text)
    assert bars["4 clients at once: every door opens"] == ("100.0%", "met") and len(bars) == 23
    assert not [name for name in bars if name.startswith("8 ")]
    # A run stored before these figures (no window, one row) still renders, with n/a where they would be.
    old = sample_run([10.0] * 5)
    (row,) = scale_table(report.render(old))
    assert row[-3:] == ["n/a / n/a", "n/a", "n/a"]


def test_the_spread_has_the_second_row_and_each_runs_machine(bench: tuple[ModuleType, ModuleType]) -> None:
    report, spread = bench
    runs = [with_two_scale_rows(sample_run([10.0] * 5), busy, load) for busy, load in ((0.71, 0.4), (0.95, 2.5))]
    runs.insert(0, sample_run([10.0] * 5))  # an older run: one row, no window
    section = spread.section(report.render(runs[-1]), runs, ["/tmp/b1.json", "/tmp/b2.json"])
    assert "| 4 clients: machine busy in the clients' window, load at its start, runs in order | " \
           "n/a, 71% (load 0.40), 95% (load 2.50) |" in section
    assert "| 8 clients: machine busy in the clients' window, load at its start, runs in order | " \
           "n/a, 98% (load 3.20), 98% (load 3.20) |" in section
    assert "8 clients in 3 s: opened" not in section  # not every run has that row
    two = spread.section(report.render(runs[-1]), runs[1:], ["/tmp/b2.json"])
    assert "| 8 clients in 3 s: opened | 7/8, 7/8 |" in two
    assert "| 8 clients: p99 ms | 80.0 (80.0–80.0) |" in two
    assert "| 8 clients: knocks complete to door confirmed p99 ms, runs in order | 700.0, 700.0 |" in two
