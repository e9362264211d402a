"""docs/BENCHMARKS.md from a benchmark run's results: pure functions, no lab, no root.

    /opt/dynknock/venv/bin/python bench/report.py --json RUN.json [--spread-with R1.json R2.json] --output X.md

bench/run.py measures and collects JSON-able results ({"info", "sizes", "results", "command",
"smoke", "elapsed_s"}, what its --json writes); this renders them, so a report can be made
again from the stored JSON alone (a wording change, a new figure from old rows) and the
rendering is tested without the lab (tests/unit/test_bench_report.py). Two hand-kept texts
come in from files beside this one: bench/client_startup_results.md (the last figures of
bench/client_startup.py, which runs on its own) and bench/ANALYSIS.md (profiles, causes,
what was tried; appended to a full run's report).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spread
from figures import DOOR_MODES, STAGES, cpu_per_gb, door_stats, fmt, gbps, med, pct, resent_knock

BENCH = Path(__file__).resolve().parent
# The lab's service, named in the report's head: a sink behind the relay on 127.0.0.1 ...
SINK_PORT = 5201
DIRECT_PORT = 5202  # ... and the same sink on the server's address, a public port (the direct path)

Run = dict[str, Any]  # {"info", "sizes", "results", "command", "smoke", "elapsed_s"}, as --json writes it


@dataclass
class Page:
    """A report being written: its body's lines and the bars its sections set, for the head's table."""

    lines: list[str] = field(default_factory=list)
    bars: list[tuple[str, str, bool]] = field(default_factory=list)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def client_timing() -> str:
    """knock-client's timing (client.session.Timing's defaults), as the latency section names it."""
    from dynknock.client.session import Timing

    t = Timing()
    return ", ".join(f"{name} = {getattr(t, name):g}" for name in ("knock_gap_s", "p2_gap_s", "pending_wait_s",
                                                                   "first_interval_s") if hasattr(t, name))


def client_startup_results(text: str) -> tuple[str, str]:
    """(headline row, section) of bench/client_startup.py's last figures, kept in bench/client_startup_results.md:
    that benchmark runs on its own (the whole process, many runs), this report keeps its figures in place."""
    if text.startswith("<!--"):
        text = text.split("-->", 1)[1]
    lines = text.strip("\n").splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    if not rows:
        return "", ""
    return rows[0], "\n".join(line for line in lines if line != rows[0])




def _latency(page: Page, lat: dict[str, Any], override: Any, startup_md: str) -> dict[str, float]:
    """## 1: the idle knocks, their bars; returns their door statistics (the floods' yardstick)."""
    add, bars = page.lines.append, page.bars
    idle = door_stats(lat["default"])
    add("## 1. Knock-to-door latency")
    add("")
    add("From the client starting (key file read, so no KDF; sockets opened) to the first successful TCP")
    add("connect through the door (the service's first byte received through the relay). The client library")
    add("(client/session.py driven by client/knock.py, as knock-client uses it) runs in one process in the")
    add("client namespace, knocks one after another; Python's start-up is measured apart, with the real")
    add(f"knock-client process. knock-client's timing: {client_timing()}"
        + (f"; **overridden for this run's library knocks: {override}**" if override else "") + ".")
    add("")
    add("| client | knocks | opened | p50 ms | p90 ms | p99 ms | max ms | p50 to P3 OPEN | p50 connect ms | "
        "first burst |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(label: str, rows: list[dict[str, Any]]) -> None:
        st = door_stats(rows)
        add(f"| {label} | {st['n']} | {st['ok']} | {fmt(st['p50'])} | {fmt(st['p90'])} | {fmt(st['p99'])} | "
            f"{fmt(st['max'])} | {fmt(st['p3_p50'])} | {fmt(st['connect_p50'], 2)} | {st['first_burst']} |")

    startup_row, startup_text = client_startup_results(startup_md)
    if startup_row:
        add(startup_row)
    row("**library, knock-client's timing**", lat["default"])
    for gap, rows in lat["sweep"].items():
        row(f"library, knock_gap_s = {float(gap):g}", rows)
    spawn = door_stats(lat["spawns"])
    add(f"| knock-client process (`--proxy`, start to first byte) | {spawn['n']} | {spawn['ok']} | "
        f"{fmt(spawn['p50'])} | {fmt(spawn['p90'])} | {fmt(spawn['p99'])} | {fmt(spawn['max'])} | | | |")
    add("")
    add("'first burst': knocks opened without any resend (a SYN that races ahead of the server's knock filter")
    add("is dropped in the kernel and costs a PENDING round of `pending_wait_s`).")
    add("")
    if startup_text:
        add(startup_text.rstrip())
        add("")
    add(f"- scrypt KDF (a password instead of a key file), {len(lat['kdf_ms'])} runs: median "
        f"{fmt(med(lat['kdf_ms']))} ms, on top of any figure above.")
    if lat["server_side_ms"]:
        add(f"- Server side (auth.door.opened `latency_ms`: P1 accepted to gate and relay both confirmed), "
            f"{len(lat['server_side_ms'])} doors: p50 {fmt(pct(lat['server_side_ms'], 50), 0)} ms, "
            f"p99 {fmt(pct(lat['server_side_ms'], 99), 0)} ms (whole milliseconds).")
    direct = [r["connect_ms"] for r in lat["direct_connects"] if r.get("ok")]
    add(f"- Connection setup (connect + first byte): straight to the sink p50 {fmt(pct(direct, 50), 2)} ms, "
        f"p99 {fmt(pct(direct, 99), 2)} ms ({len(direct)} connects); through the relay, door open, p50 "
        f"{fmt(idle['connect_p50'], 2)} ms (column 'p50 connect').")
    add("")
    bars.append(("knock-to-door p50 < 15 ms", f"{fmt(idle['p50'])} ms", idle["p50"] < 15))
    bars.append(("knock-to-door p99 < 50 ms", f"{fmt(idle['p99'])} ms", idle["p99"] < 50))
    return idle


def _flood(page: Page, flood: dict[str, Any], sizes: dict[str, Any], idle: dict[str, float] | None) -> None:
    """## 2: each flood phase's packets and CPU, and the legitimate knocks during it."""
    add, bars = page.lines.append, page.bars
    names = {"junk": "random junk to the control port", "sized": "P1-size junk, version 1 type P1 (passes BPF)",
             "syn": "SYNs to random ports",
             "hint": "P1/P2-size junk under one user's sniffed live hint, spoofed sources",
             "replay": "one captured P1 and P2 replayed"}
    add("## 2. Flood")
    add("")
    add(f"From the attacker namespace: pre-built Ethernet frames written to AF_PACKET sockets by "
        f"{sizes['flood_senders']} sender processes, paced to {sizes['flood_rate']:,} packets/s in all, for at least")
    add(f"{sizes['flood_seconds']:g} s and until the legitimate knocks made during the flood are done. 'offered' is"
        " what the senders sent, 'received' what the server's eth0 counted.")
    add("Capture's counters are the differences of its `capture.alive` events on the tap (received = passed the")
    add("kernel filter). CPU is each stage's user+system time (/proc/PID/stat) during the phase per 100,000")
    add("packets received; the kernel's own work (softirq, BPF, nftables) is in no stage's figure.")
    add("")
    add("| phase | offered pkt/s | received pkt/s | passed BPF | kernel dropped | forwarded to auth | "
        + " | ".join(f"{st} CPU s/100k" for st in STAGES) + " |")
    add("|---|---:|---:|---:|---:|---:|" + "---:|" * len(STAGES))
    for kind, ph in flood.items():
        secs = ph["seconds"] or float("nan")
        per = 100_000 / ph["rx"] if ph["rx"] else float("nan")
        c0, c1 = ph["capture_before"], ph["capture_after"]

        def delta(key: str, c0: dict[str, Any] = c0, c1: dict[str, Any] = c1) -> str:
            return f"{c1[key] - c0[key]:,}" if key in c0 and key in c1 else "n/a"

        add(f"| {names[kind]} | {fmt(ph['offered'] / secs, 0)} | {fmt(ph['rx'] / secs, 0)} | "
            f"{delta('received')} | {delta('kernel_dropped')} | {delta('forwarded')} | "
            + " | ".join(fmt(ph["cpu_s"][st] * per, 3) for st in STAGES) + " |")
    add("")
    limit = 3 * idle["p50"] if idle else float("nan")
    add(f"Legitimate knocks during each flood, client library with knock-client's timing; each must open "
        f"within 3x the idle p50 ({fmt(limit)} ms):")
    add("")
    add("| phase | knocks during the flood | opened | p50 ms | max ms | resent | PENDING seen | within 3x idle |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")

    def row(label: str, rows: list[dict[str, Any]]) -> None:
        st = door_stats(rows)
        within = sum(1 for r in rows if r.get("ok") and r["door_ms"] <= limit)
        resent = sum(1 for r in rows if resent_knock(r))
        pending = sum(1 for r in rows if r.get("pending"))
        add(f"| {label} | {len(rows)} | {st['ok']} | {fmt(st['p50'])} | {fmt(st['max'])} | {resent} | "
            f"{pending} | {within}/{len(rows)} |")

    for kind, ph in flood.items():
        row(names[kind], [r for r in ph["trials"] if r.get("during_flood")])
        own = [r for r in ph.get("victim_trials", []) if r.get("i") is not None]
        if own:
            row("... the flooded user's own knocks", own)
    add("")
    add("The knocks counted for a phase are another user's; under the hint and replay floods the flooded")
    add("user's own knocks are shown below it (a goal where possible, not a bar). 'resent': the client sent")
    add("a second burst (P2 again and its SYNs again; the SYN echo 5 ms after the first P2 is part of the")
    add("first burst); 'PENDING seen': the server answered PENDING at least once (then OPEN or a resend).")
    add("")
    offered_min = min(ph["offered"] / (ph["seconds"] or float("inf")) for ph in flood.values())
    bars.append(("flood offered >= 120,000 pkt/s, every phase", f"{fmt(offered_min, 0)} pkt/s",
                 offered_min >= 120_000))
    for kind, ph in flood.items():
        rows = [r for r in ph["trials"] if r.get("during_flood")]
        within = sum(1 for r in rows if r.get("ok") and r["door_ms"] <= limit)
        bars.append((f"knocks during the flood ({names[kind]}) open within 3x idle", f"{within}/{len(rows)}",
                     within == len(rows) >= min(10, sizes['flood_trials'])))
        first = sum(1 for r in rows if r.get("ok") and not resent_knock(r))
        bars.append((f"knocks during the flood ({names[kind]}) open without a resend, >= 11 of 12",
                     f"{first}/{len(rows)}", len(rows) > 0 and first * 12 >= 11 * len(rows)))


def _hog(page: Page, hog: dict[str, Any], idle: dict[str, float]) -> None:
    """One key holder knocking for door after door, and another user meanwhile."""
    add, bars = page.lines.append, page.bars
    limit = 3 * idle["p50"]
    rows, mine = hog["others"], hog["hog"]
    opened = sum(1 for r in mine if r.get("ok"))
    refused = Counter(r.get("error", "?") for r in mine if not r.get("ok"))
    st = door_stats(rows)
    within = sum(1 for r in rows if r.get("ok") and r["door_ms"] <= limit)
    add("### One key holder hogging doors")
    add("")
    add("With the shipped caps (max_doors_per_user 8, max_doors_total 1,000; auth restarted onto them),")
    add(f"one user knocks {len(mine)} times back to back from the attacker's address and never uses a door, so")
    add("each is held unused for its window (a used single-use door no longer counts against the cap); another")
    add("user knocks from the client meanwhile.")
    add("")
    add("| who | knocks | opened | refused | p50 ms | max ms | within 3x idle |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    why = ", ".join(f"{k} {v}" for k, v in refused.items())
    add(f"| the hog | {len(mine)} | {opened} | {sum(refused.values())} ({why}) "
        f"| {fmt(door_stats(mine)['p50'])} | {fmt(door_stats(mine)['max'])} | |")
    add(f"| another user, meanwhile | {len(rows)} | {st['ok']} | {len(rows) - st['ok']} | {fmt(st['p50'])} | "
        f"{fmt(st['max'])} | {within}/{len(rows)} |")
    add("")
    bars.append(("one user hogging doors (never using one) holds at most 8", f"{opened} opened", opened <= 8))
    bars.append(("another user's knocks while one hogs open within 3x idle", f"{within}/{len(rows)}",
                 within == len(rows) > 0))


def _relay(page: Page, relay: dict[str, Any], sizes: dict[str, Any]) -> None:
    """## 3: throughput through a kernel door and the relay against direct."""
    add, bars = page.lines.append, page.bars
    modes = [m for m in DOOR_MODES if relay["single"].get(m)]
    add("## 3. Throughput through a door: kernel forwarding and the relay")
    add("")
    add("One bulk TCP stream (sendfile of a 64 MiB file, over and over; the sink splices what it gets to")
    add("/dev/null and answers the byte count), in rounds that take each path in turn, each path first in")
    add("its turn: **direct** = client -> sink on the server's address (a public port); **kernel** = client ->")
    add("door -> nftables DNAT -> sink on 127.0.0.1 (services.NAME.forward = \"kernel\", the default for a")
    add("local target); **relay** = client -> door -> relay stage -> sink on 127.0.0.1 (forward = \"relay\").")
    add("A rate is the bytes the sink got over the sender's time from its first byte to the sink's answer.")
    add("'CPU s/GB' is the whole machine's busy time (/proc/stat, both CPUs, sender and receiver included)")
    add("per GB delivered.")
    add("")
    n_rounds = len(relay["single"]["direct"])
    add("| | " + " | ".join(f"round {i + 1}" for i in range(n_rounds)) + " | median | range |")
    add("|---|" + "---:|" * (n_rounds + 2))
    ratio_of: dict[str, list[float]] = {}
    for mode in modes:
        rates = [gbps(r) for r in relay["single"][mode]]
        add(f"| {mode}, Gbit/s | " + " | ".join(fmt(x, 2) for x in rates)
            + f" | {fmt(med(rates), 2)} | {fmt(min(rates), 2)}-{fmt(max(rates), 2)} |")
    for mode in modes[1:]:
        ratio_of[mode] = [gbps(r) / gbps(d) for r, d in zip(relay["single"][mode], relay["single"]["direct"],
                                                           strict=True)]
        xs = ratio_of[mode]
        add(f"| {mode} / direct | " + " | ".join(fmt(x, 2) for x in xs)
            + f" | **{fmt(med(xs), 2)}** | {fmt(min(xs), 2)}-{fmt(max(xs), 2)} |")
    cpu_of = {mode: [cpu_per_gb(r) for r in relay["single"][mode]] for mode in modes}
    for mode in modes:
        xs = cpu_of[mode]
        add(f"| {mode}, machine CPU s/GB | " + " | ".join(fmt(x, 3) for x in xs)
            + f" | {fmt(med(xs), 3)} | {fmt(min(xs), 3)}-{fmt(max(xs), 3)} |")
    if "relay" in modes:
        add("| relay process CPU s per s | " + " | ".join(
            fmt(r["cpu"]["relay_s"] / r["seconds"], 2) for r in relay["single"]["relay"]) + " | | |")
    add("")
    par = relay["parallel"]
    add(f"{sizes['parallel_streams']} streams at once (through {sizes['parallel_streams']} doors, or "
        f"{sizes['parallel_streams']} direct connections; the table: the first round):")
    add("")
    add("| | streams | total Gbit/s | / direct | per stream p50 Mbit/s | min Mbit/s | machine CPU s/GB | "
        "relay CPU s | setup p50 ms | setup p99 ms |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    par_ratio: dict[str, float] = {}
    for mode in modes:
        r = par[mode]
        per = [x / 1e6 for x in r["per_stream_bps"]]
        par_ratio[mode] = gbps(r) / gbps(par["direct"]) if gbps(par["direct"]) else float("nan")
        add(f"| {mode} | {r['ok']}/{r['wanted']} | {fmt(gbps(r), 2)} | {fmt(par_ratio[mode], 2)} | "
            f"{fmt(pct(per, 50), 0)} | {fmt(min(per, default=float('nan')), 0)} | {fmt(cpu_per_gb(r), 3)} | "
            f"{fmt(r['cpu']['relay_s'], 2)} | {fmt(pct(r['setup_ms'], 50), 2)} | "
            f"{fmt(pct(r['setup_ms'], 99), 2)} |")
    add("")
    rounds = relay.get("parallel_rounds") or {mode: [par[mode]] for mode in modes}
    for mode in modes[1:]:
        xs = [gbps(r) / gbps(d) if gbps(d) else float("nan")
              for r, d in zip(rounds[mode], rounds["direct"], strict=True)]
        par_ratio[mode] = med(xs)
        add(f"{sizes['parallel_streams']} streams, {mode} / direct, round by round (each mode first in turn): "
            + ", ".join(fmt(x, 2) for x in xs) + f"; median **{fmt(med(xs), 2)}** (the bar below).")
    add("")
    shaped = relay.get("shaped", {})
    if all(shaped.get(m) for m in modes):
        add(f"Over a {sizes['shaped_rate']} link (tbf on the client's eth0; the link, not the CPU, is the limit): "
            + ", ".join(f"{m} {fmt(gbps(shaped[m]), 3)} Gbit/s" for m in modes) + ".")
        add("")
    add("Setup is connect + first byte; through the relay it includes the relay's accept, its connect to the")
    add("service and the first byte relayed; through the kernel, the DNAT of the first packet.")
    add("")
    if "kernel" in modes:
        one = med(ratio_of["kernel"])
        bars.append(("kernel door >= 0.95x direct, one stream", f"{fmt(one, 2)}x", one >= 0.95))
        bars.append((f"kernel door >= 0.95x direct, {sizes['parallel_streams']} streams",
                     f"{fmt(par_ratio['kernel'], 2)}x", par_ratio["kernel"] >= 0.95))
        cpu_ratio = med(cpu_of["kernel"]) / med(cpu_of["direct"])
        bars.append(("kernel door machine CPU per GB within 10% of direct", f"{fmt(cpu_ratio, 2)}x",
                     cpu_ratio <= 1.10))
    if "relay" in modes:
        bars.append(("(second row) relay >= 0.8x direct, one stream", f"{fmt(med(ratio_of['relay']), 2)}x",
                     med(ratio_of["relay"]) >= 0.8))


def window_figures(window: dict[str, Any]) -> dict[str, str]:
    """How busy the machine was over a scale row's window (bench/run.py Window), as the report writes it:
    the busy share of all CPUs and of each, the 1-minute load average at its start and end, and what was
    busy (the stages, the bench's client processes, the rest: kernel and anything else running)."""
    if not window:
        return {"busy": "n/a", "cpus": "", "load": "n/a", "split": ""}
    stages = sum(v for k, v in window["processes_s"].items() if k in STAGES)
    clients = sum(v for k, v in window["processes_s"].items() if k.startswith("client"))
    return {"busy": f"{window['busy_share']:.0%}",
            "cpus": ", ".join(f"cpu{i} {share:.0%}" for i, share in enumerate(window["cpu_shares"])),
            "load": f"{window['loadavg_start'][0]:.2f} → {window['loadavg_end'][0]:.2f}",
            "split": f"{window['busy_s']:.2f} of {window['total_s']:.2f} CPU-s busy: the stages {stages:.2f}, "
                     f"the bench's clients {clients:.2f}, the rest (kernel, anything else running) "
                     f"{window['busy_s'] - stages - clients:.2f}"}


def _scale(page: Page, scale: dict[str, Any], more: list[dict[str, Any]], sizes: dict[str, Any]) -> None:
    """## 4: many clients at once, each from its own address (a row per count: 1,000, then 2,000); how busy
    the whole machine was meanwhile; memory and CPU of each stage."""
    add, bars = page.lines.append, page.bars
    phases = [scale, *more]
    add("## 4. Scale")
    add("")
    counts = " then ".join(f"{p['clients']:,}" for p in phases)
    add(f"{counts} clients, each its own user and its own source address in 198.19.0.0/16, their starts")
    add(f"spread evenly over {scale['spread_s']:g} s (client library with knock-client's timing, "
        f"{sizes['scale_procs']} processes of threads); each knocks,")
    add("then connects through its door. One row per count, one after the other in the same stack (the earlier")
    add("rows' doors still open). 'knocks complete to door confirmed' is the server's side, from auth's events.")
    add("'machine busy' is the share of all CPUs' time that was not idle (/proc/stat) over exactly the clients'")
    add(f"{scale['spread_s']:g} s; with the 1-minute load average at its start and end it tells a loaded run "
        "from a quiet one:")
    add("the tail follows how busy the machine was (bench/ANALYSIS.md). The kernel recomputes the load average every")
    add("5 s, so over a 3 s window its two ends may be the same figure.")
    add("")
    add("| clients | opened and connected | success | p50 ms | p90 ms | p99 ms | max ms | first burst | "
        "knocks complete to door confirmed p50 / p99 ms | machine busy in the clients' window | "
        "load average (1 min) |")
    add("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase in phases:
        st = door_stats(phase["rows"])
        rate = st["ok"] / st["n"] if st["n"] else 0.0
        confirmed = phase.get("steps", {}).get("knocks_to_open_ms", [])
        w = window_figures(phase.get("window", {}))
        add(f"| {st['n']:,} | {st['ok']:,} | {rate:.1%} | {fmt(st['p50'])} | {fmt(st['p90'])} | {fmt(st['p99'])} | "
            f"{fmt(st['max'])} | {st['first_burst']:,} | {fmt(pct(confirmed, 50))} / {fmt(pct(confirmed, 99))} | "
            f"{w['busy']} | {w['load']} |")
    add("")
    for phase in phases:
        rows = phase["rows"]
        st = door_stats(rows)
        add(f"**{phase['clients']:,} clients.**")
        errors: dict[str, int] = {}
        for r in rows:
            if not r.get("ok"):
                key = str(r.get("error", "?"))[:60]
                errors[key] = errors.get(key, 0) + 1
        if errors:
            add("Failures: " + "; ".join(f"{n}x {e}" for e, n in sorted(errors.items())) + ".")
        pending = sum(1 for r in rows if r.get("pending"))
        server = phase.get("server_side_ms", [])
        add(f"First burst: {st['first_burst']} opened with one burst and no PENDING; {pending} saw a PENDING. "
            f"Server side (auth's P1 to door opened, `auth.door.opened` latency_ms, {len(server)} doors): "
            f"p50 {fmt(pct(server, 50))} ms, p99 {fmt(pct(server, 99))} ms, "
            f"max {fmt(max(server, default=float('nan')))} ms.")
        for key, label in (("p1_to_knocks_ms", "auth's P1 to its knocks complete"),
                           ("knocks_to_open_ms", "knocks complete to door confirmed")):
            values = phase.get("steps", {}).get(key, [])
            if values:
                add(f"{label}: p50 {fmt(pct(values, 50))} ms, p99 {fmt(pct(values, 99))} ms ({len(values)}).")
        add(f"Doors open at once afterwards: {phase['nft_doors']} elements for these clients in the nftables set, "
            f"{phase['auth_doors']} in auth's door table (window {sizes['window_s']} s).")
        cap0, cap1 = phase["capture_before"], phase["capture_after"]
        if "kernel_dropped" in cap0 and "kernel_dropped" in cap1:
            refused = f", {cap1['filter_refused'] - cap0['filter_refused']:,} knock filters refused by the " \
                "kernel (fell back to a wider form)" if "filter_refused" in cap0 and "filter_refused" in cap1 else ""
            add(f"Capture meanwhile: {cap1['received'] - cap0['received']:,} packets passed its kernel filter, "
                f"{cap1['kernel_dropped'] - cap0['kernel_dropped']:,} dropped by the kernel{refused}.")
        w = window_figures(phase.get("window", {}))
        if phase.get("window"):
            add(f"The machine over the clients' {phase['window']['seconds']:.2f} s: {w['busy']} busy "
                f"({w['cpus']}), {w['split']}; load average (1, 5, 15 min) "
                + ", ".join(f"{v:.2f}" for v in phase["window"]["loadavg_start"]) + " at its start, "
                + ", ".join(f"{v:.2f}" for v in phase["window"]["loadavg_end"]) + " at its end.")
        if "machine_busy_s" in phase:
            stages_s = sum(phase["cpu_s"].values())
            add(f"From the start of the client processes to the last one's end: "
                f"{phase['machine_busy_s']:.1f} s of {phase['machine_total_s']:.1f} CPU-s busy, of which the "
                f"stages {stages_s:.1f} s.")
        add("")
    add("| stage | clients | VmRSS before MiB | peak MiB | after MiB | CPU s during the row |")
    add("|---|---:|---:|---:|---:|---:|")
    for stage in STAGES:
        for phase in phases:
            add(f"| {stage} | {phase['clients']:,} | {phase['rss_before'][stage] / 1024:.1f} | "
                f"{phase['rss_peak'][stage] / 1024:.1f} | {phase['rss_after'][stage] / 1024:.1f} | "
                f"{phase['cpu_s'][stage]:.2f} |")
    add("")
    st = door_stats(scale["rows"])
    rate = st["ok"] / st["n"] if st["n"] else 0.0
    bars.append((f"{scale['clients']} clients at once: every door opens", f"{rate:.1%}", rate == 1.0))
    bars.append((f"{scale['clients']} clients at once: p99 <= 100 ms", f"{fmt(st['p99'])} ms", st["p99"] <= 100))
    bars.append((f"{scale['clients']} clients at once: max <= 300 ms", f"{fmt(st['max'])} ms", st["max"] <= 300))
    # Each client uses its door at once, and a used single-use door leaves the set: what the
    # bar counts is every door opened (auth.door.opened), not the elements left afterwards.
    opened = len(scale.get("server_side_ms", []))
    bars.append((f"{scale['clients']} doors opened, each used once by its client", f"{opened}",
                 opened >= scale["clients"]))


def _micro(page: Page, micro_r: dict[str, Any]) -> None:
    """## 5: per-stage microbenchmarks."""
    add = page.lines.append
    add("## 5. Per-stage microbenchmarks")
    add("")
    add("One core, inputs made beforehand, only the work timed.")
    add("")
    add("| stage | case | count | µs each | per second |")
    add("|---|---|---:|---:|---:|")
    for stage, key in (("auth (bench_codec.py)", "codec"), ("capture", "capture"), ("gate", "gate_core"),
                       ("bus", "bus_codec")):
        for name, count, spent in micro_r[key]:
            add(f"| {stage} | {name} | {count:,} | {spent / count * 1e6:.2f} | {count / spent:,.0f} |")
    got, secs = micro_r["bus_ipc"]
    add(f"| bus | encode + ipc PUSH -> PULL + decode, two processes | {got:,} | "
        f"{secs / max(got, 1) * 1e6:.2f} | {got / secs if secs else float('nan'):,.0f} |")
    g = micro_r["gate_nft"]
    for how, label in (("gate", f"real nftables, one door per call through knock-gate's Nft ({g['via']})"),
                       ("process", "real nftables, one `nft -f -` process per door")):
        values = g[how]
        add(f"| gate | {label}, median | {len(values)} | {med(values) * 1e6:.0f} | "
            f"{1 / med(values) if values else float('nan'):,.0f} |")
    add(f"| gate | real nftables, {g['batch']} doors in one call ({g['via']}) | {g['batch']} | "
        f"{g['batch_s'] / g['batch'] * 1e6:.1f} | {g['batch'] / g['batch_s']:,.0f} |")
    add("")
    add("Capture's knock-filter change (build_filter + BPF compile, done on every change of the pending knocks):")
    add("")
    add("| pending (address, port) pairs | filter text chars | compile ms, median |")
    add("|---:|---:|---:|")
    for pairs, length, ms in micro_r["filter_compile"]:
        add(f"| {pairs} | {length:,} | {ms:.2f} |")
    add("")


def _head(run: Run, bars: list[tuple[str, str, bool]]) -> list[str]:
    """The title, the run's facts (command, machine, code, load), the lab and the table of bars."""
    info, sizes, smoke = run["info"], run["sizes"], run.get("smoke", False)
    head: list[str] = []
    head.append("# dynknock benchmarks" + (" (SMOKE RUN: tiny counts, figures are not meaningful)" if smoke else ""))
    head.append("")
    head.append("Written by `bench/run.py`: every figure comes from one run of the command below, and each comparison")
    head.append("(relay against direct, flood against idle) was measured side by side in that run. Percentiles and")
    head.append("medians, never single timings. Rerun the command to refresh this file.")
    head.append("")
    head.append("| | |")
    head.append("|---|---|")
    head.append(f"| command | `{run.get('command', '?')}` |")
    head.append(f"| date | {info['date']} |")
    head.append(f"| machine | {info['nproc']} CPUs, {info['cpu']} ({info['machine']}), kernel {info['kernel']} |")
    head.append(f"| python | {info['python']} |")
    changed = info.get("installed_digest_end", info["installed_digest"]) != info["installed_digest"]
    head.append(f"| code | commit {info['commit']}; installed copy matches the checkout: "
                f"{info['installed_matches_checkout']}"
                + ("; **the installed code changed during the run** (scripts/setup.sh run meanwhile)" if changed
                   else "") + " |")
    if info.get("code_override"):
        head.append(f"| code under test | **{info['code_override']}** (on PYTHONPATH, not the installed copy) |")
    head.append(f"| load average (1 min) | {info['loadavg_start']} at the start, {info.get('loadavg_end', '?')} at "
                f"the end (anything else running shares the {info['nproc']} CPUs) |")
    head.append(f"| duration | {run.get('elapsed_s', float('nan')):.0f} s |")
    head.append("")
    head.append("The lab (dynknock/lab/netlab.py): namespaces on a bridge, server 198.18.0.1, client 198.18.0.2,")
    head.append("attacker 198.18.0.3, extra clients in 198.19.0.0/16 on the client (the server routes them through")
    head.append("198.18.0.2: one neighbour entry, not one per address). The real stack runs in the server namespace,")
    head.append("started by `supervisord -c supervisord.conf` (nftables with stealth, libpcap on eth0); the service")
    head.append(f"is a sink on 127.0.0.1:{SINK_PORT} behind the relay, also listening on 198.18.0.1:{DIRECT_PORT} "
                "(a `gate.public_tcp_ports` port) for the direct path.")
    # JSON has no tuples: a tuple of counts (gap_sweep) comes back a list; the line shows it as run.py's Sizes does.
    head.append("Counts: " + ", ".join(f"{k} = {tuple(v) if isinstance(v, list) else v}" for k, v in sizes.items())
                + ".")
    head.append("")
    head.append("## Bars")
    head.append("")
    head.append("| bar | measured | |")
    head.append("|---|---:|---|")
    for name, value, ok in bars:
        head.append(f"| {name} | {value} | {verdict(ok)} |")
    head.append("")
    return head


def render(run: Run, startup_md: str = "", analysis_md: str = "") -> str:
    """The report of one run. startup_md: bench/client_startup_results.md's text (its headline row joins
    the latency table); analysis_md: bench/ANALYSIS.md's, appended unless the run is a smoke run."""
    results, sizes = run["results"], run["sizes"]
    page = Page()
    idle = _latency(page, results["latency"], results.get("client_timing_override"), startup_md) \
        if results.get("latency") else None
    if results.get("flood"):
        _flood(page, results["flood"], sizes, idle)
    if results.get("hog") and idle:
        _hog(page, results["hog"], idle)
    if results.get("relay"):
        _relay(page, results["relay"], sizes)
    if results.get("scale"):
        _scale(page, results["scale"], results.get("scale_more", []), sizes)
    if results.get("micro"):
        _micro(page, results["micro"])
    if analysis_md and not run.get("smoke", False):
        page.lines += [analysis_md.rstrip(), ""]
    if results.get("notes"):
        page.lines += ["## Notes", "", results["notes"], ""]
    return "\n".join(_head(run, page.bars) + page.lines) + "\n"


def render_with_texts(run: Run, earlier: list[tuple[str, Run]]) -> str:
    """render() with the hand-kept texts beside this file, and the spread over `earlier` runs
    ((name, run) each, oldest first) and this one when there are any."""
    texts = [path.read_text() if path.exists() else "" for path in
             (BENCH / "client_startup_results.md", BENCH / "ANALYSIS.md")]
    report = render(run, *texts)
    if earlier:
        report = spread.section(report, [r for _, r in earlier] + [run], [name for name, _ in earlier])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="the run's results (bench/run.py --json)")
    parser.add_argument("--spread-with", type=Path, nargs="+", default=[], metavar="JSON",
                        help="earlier runs' --json files: the report adds the spread over them and this run")
    parser.add_argument("--output", type=Path, required=True, help="where the report goes")
    args = parser.parse_args(argv)
    earlier = [(str(path), json.loads(path.read_text())) for path in args.spread_with]
    args.output.write_text(render_with_texts(json.loads(args.json.read_text()), earlier))
    return 0


if __name__ == "__main__":
    sys.exit(main())
