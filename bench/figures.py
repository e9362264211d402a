"""The figures a benchmark run's rows give: percentiles, door statistics, rates, CPU per GB.

Pure functions over the JSON-able rows that bench/run.py collects (and writes with --json),
shared by the report (bench/report.py), the spread of several runs (bench/spread.py) and
bench/client_startup.py. No I/O, no lab: they run anywhere, on fresh or stored results.
Also the one loop that times a microbenchmark (bench/micro.py, bench/bench_codec.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

# What a run measures, by name: the stack's processes (CPU, memory) and the ways to the service.
STAGES = ("capture", "auth", "gate", "relay", "bus")
DOOR_MODES = ("direct", "kernel", "relay")  # straight to the service; a kernel door; a relayed door

Row = dict[str, Any]
T = TypeVar("T")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def door_stats(rows: list[Row]) -> dict[str, float]:
    """Knocks (rows of labworker's knocks, spawns or scale) and how fast their doors opened."""
    ok = [r for r in rows if r.get("ok")]
    door = [r["door_ms"] for r in ok]
    return {"n": len(rows), "ok": len(ok), "p50": pct(door, 50), "p90": pct(door, 90), "p99": pct(door, 99),
            "max": max(door, default=float("nan")),
            "p3_p50": pct([r["p3_ms"] for r in ok if "p3_ms" in r], 50),
            "connect_p50": pct([r["connect_ms"] for r in ok if "connect_ms" in r], 50),
            "first_burst": sum(1 for r in ok if r.get("bursts") == 1 and not r.get("pending"))}


def resent_knock(row: Row) -> bool:
    """The client sent a second burst (P2 and its SYNs again): the knock cost a resend."""
    return int(row.get("bursts", 1)) > 1


def gbps(r: Row) -> float:
    """A stream row's rate: the bytes the sink got over the sender's time."""
    return float(r["received"] * 8 / r["seconds"] / 1e9) if r.get("seconds") else float("nan")


def cpu_per_gb(r: Row) -> float:
    """The whole machine's busy CPU seconds per GB a stream row delivered."""
    return float(r["cpu"]["machine_busy_s"] / (r["received"] / 1e9)) if r.get("received") else float("nan")


def timed(batch: Callable[[], Sequence[T]], work: Callable[[T], object], seconds: float) -> tuple[int, float]:
    """Apply `work` to batches of inputs until `seconds` of work have been spent: (inputs done, seconds).
    Only the work is timed, not `batch`, which may make fresh inputs each time (a nonce used once)."""
    done, spent = 0, 0.0
    while spent < seconds:
        items = batch()
        start = time.perf_counter()
        for item in items:
            work(item)
        spent += time.perf_counter() - start
        done += len(items)
    return done, spent
