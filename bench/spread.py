"""The spread of several bench runs: median and range of the figures the issues set goals for.

    bench/spread.py RUN1.json RUN2.json RUN3.json     (files written by bench/run.py --json)

One run's figure is a sample, not a result: docs/BENCHMARKS.md quotes this table beside the
run it shows in full.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from figures import cpu_per_gb, door_stats, gbps, med, pct, resent_knock

FLOOD_NAMES = {"junk": "random junk", "sized": "P1-size junk", "syn": "SYN scan",
               "hint": "junk under one user's live hint (spoofed sources)", "replay": "one captured P1/P2 replayed"}


def spread(values: list[float], digits: int = 1, unit: str = "") -> str:
    return f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    results = [r["results"] for r in runs]
    idle = [door_stats(r["latency"]["default"]) for r in results]
    out = [("library knock, idle, p50 ms", spread([i["p50"] for i in idle])),
           ("library knock, idle, p99 ms", spread([i["p99"] for i in idle])),
           ("knock-client process (bench/run.py spawns), p50 ms",
            spread([door_stats(r["latency"]["spawns"])["p50"] for r in results]))]
    for kind, name in FLOOD_NAMES.items():
        counts, rates, own = [], [], []
        for r, i in zip(results, idle, strict=True):
            phase = r["flood"][kind]
            during = [t for t in phase["trials"] if t.get("during_flood")]
            opened = sum(1 for t in during if t.get("ok"))
            within = sum(1 for t in during if t.get("ok") and t["door_ms"] <= 3 * i["p50"])
            first = sum(1 for t in during if t.get("ok") and not resent_knock(t))
            counts.append(f"{opened}/{len(during)} opened, {first} without a resend, {within} within 3x idle")
            rates.append(phase["offered"] / phase["seconds"])
            victim = [t for t in phase.get("victim_trials", []) if t.get("i") is not None]
            own.append(f"{sum(1 for t in victim if t.get('ok'))}/{len(victim)}")
        out.append((f"flood: {name}: offered pkt/s", spread(rates, 0)))
        out.append((f"flood: {name}: another user's knocks, runs in order", "; ".join(counts)))
        if kind in ("hint", "replay"):
            out.append((f"flood: {name}: the flooded user's own knocks opened, runs in order", ", ".join(own)))
    hog = []
    for r, i in zip(results, idle, strict=True):
        mine, others = r["hog"]["hog"], r["hog"]["others"]
        within = sum(1 for t in others if t.get("ok") and t["door_ms"] <= 3 * i["p50"])
        hog.append(f"hog {sum(1 for t in mine if t.get('ok'))}/{len(mine)} opened, others "
                   f"{sum(1 for t in others if t.get('ok'))}/{len(others)} opened and {within} within 3x idle")
    out.append(("one key holder hogging doors, runs in order", "; ".join(hog)))
    for mode in ("kernel", "relay"):
        single = [r["relay"]["single"] for r in results]
        # Older runs have one 100-stream round ("parallel"), newer several ("parallel_rounds").
        parallel = [r["relay"].get("parallel_rounds") or {m: [x] for m, x in r["relay"]["parallel"].items()}
                    for r in results]
        one = [med([gbps(a) / gbps(b) for a, b in zip(s[mode], s["direct"], strict=True)]) for s in single]
        out.append((f"{mode} / direct, one stream (median of the rounds of each run)", spread(one, 2, "x")))
        many = [med([gbps(a) / gbps(b) for a, b in zip(p[mode], p["direct"], strict=True)]) for p in parallel]
        out.append((f"{mode} / direct, 100 streams (median of the rounds of each run)", spread(many, 2, "x")))
        cpu = [med([cpu_per_gb(x) for x in s[mode]]) / med([cpu_per_gb(x) for x in s["direct"]]) for s in single]
        out.append((f"{mode}: machine CPU per GB / direct's, one stream", spread(cpu, 2, "x")))
    scale = [door_stats(r["scale"]["rows"]) for r in results]
    out.append(("1,000 clients in 3 s: opened", ", ".join(f"{s['ok']}/{s['n']}" for s in scale)))
    for key in ("p50", "p99", "max"):
        out.append((f"1,000 clients: {key} ms", spread([s[key] for s in scale])))
    out.append(("1,000 clients: opened on the first burst", ", ".join(str(s["first_burst"]) for s in scale)))
    out += scale_rows(results)
    return out


def scale_rows(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each scale row's machine (busy share over the clients' window, load at its start; runs in order:
    the tail follows it), and the rows after the first (2,000 clients) where every run has them."""
    out = []
    phases = [[r["scale"], *r.get("scale_more", [])] for r in results]
    for index, phase in enumerate(phases[-1]):
        count = phase["clients"]
        same = [p[index] for p in phases if len(p) > index and p[index]["clients"] == count]
        if index and len(same) == len(results):
            stats = [door_stats(p["rows"]) for p in same]
            out.append((f"{count:,} clients in 3 s: opened", ", ".join(f"{s['ok']}/{s['n']}" for s in stats)))
            for key in ("p50", "p99", "max"):
                out.append((f"{count:,} clients: {key} ms", spread([s[key] for s in stats])))
            confirmed = [pct(p.get("steps", {}).get("knocks_to_open_ms", []), 99) for p in same]
            out.append((f"{count:,} clients: knocks complete to door confirmed p99 ms, runs in order",
                        ", ".join(f"{c:.1f}" for c in confirmed)))
        machine = [p[index].get("window", {}) if len(p) > index else {} for p in phases]
        out.append((f"{count:,} clients: machine busy in the clients' window, load at its start, runs in order",
                    ", ".join(f"{w['busy_share']:.0%} (load {w['loadavg_start'][0]:.2f})" if w else "n/a"
                              for w in machine)))
    return out


def section(report: str, runs: list[dict[str, Any]], earlier: list[str]) -> str:
    """The report with a section "Spread over N runs" after its bars: one run's figure is a sample.
    runs: the earlier runs (named by `earlier`), then the report's own."""
    lines = [f"## Spread over {len(runs)} runs", "",
             f"The bars above are this run's (the last). Median and range over it and the runs before it "
             f"({', '.join(earlier)}, written by the same command with --json), computed by bench/spread.py:", ""]
    lines += ["| run | date | load average at the start, at the end |", "|---|---|---|"]
    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | {run['info']['date']} | {run['info']['loadavg_start']}, "
                     f"{run['info'].get('loadavg_end', '?')} |")
    lines += ["", f"| figure | median (range) of {len(runs)} runs |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in table(runs)]
    lines.append("")
    marker = "\n## 1. "
    at = report.find(marker)
    if at < 0:
        return report + "\n" + "\n".join(lines) + "\n"
    return report[:at + 1] + "\n".join(lines) + "\n" + report[at + 1:]


def main(paths: list[str]) -> int:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    print(f"| figure | median (range) of {len(runs)} runs |\n|---|---|")
    for name, value in table(runs):
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
