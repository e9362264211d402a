"""Replicated auth on etcd against one auth host's local journal: knock latency and 1,000 clients.

    sudo /opt/dynknock/venv/bin/python bench/ha.py [--runs 3] [--knocks 100] [--clients 1000]
        [--json PATH] [--markdown PATH]

Each run builds tests/halab.py's lab twice, in turn: **etcd** (two auth replicas on a three-member
etcd cluster with TLS and RBAC, two gateways) and **local** (the same hosts, auth-a alone with the
users file and its own journal, as a fleet's one auth host). In each: `--knocks` knocks one after
another from the client to gateway gw-a with the client library (bench/labworker.py's knocks,
protocol v2 as `knock-client --bind`), from start to the service's first byte through the door; then
`--clients` clients, each its own user and source address, starting within 3 s (labworker's scale).
The order of the two labs alternates between runs. Results: the median and range over runs of each
figure, printed as markdown (docs/BENCHMARKS.md quotes it). Every loop is bounded; each lab is torn
down on exit.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

from figures import med, pct  # noqa: E402  (bench/figures.py)
from workers import collect, encode_args  # noqa: E402

from tests.halab import World, ha_lab, status  # noqa: E402
from tests.lab.stack import VENV_BIN, LabUser  # noqa: E402

WORKER = REPO / "bench" / "labworker.py"
PYTHON = str(VENV_BIN / "python")
SINK_PORT = 5201
SPREAD_S = 3.0
WORKERS = 4


def key_files(directory: Path, names: list[str]) -> tuple[list[LabUser], dict[str, str]]:
    users, paths = [], {}
    for name in names:
        key = secrets.token_bytes(32)
        path = directory / f"{name}.key"
        path.write_text(base64.b64encode(key).decode() + "\n")
        path.chmod(0o600)
        users.append(LabUser(name, key=key, services=("bench",)))
        paths[name] = str(path)
    return users, paths


def cpu_by_program() -> dict[str, float]:
    """CPU seconds used so far by every process of the machine, summed by program (the executable's name,
    or for a Python program its script or console entry: knock-auth, labworker.py ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        words = [w.decode(errors="replace") for w in argv if w]
        name = Path(words[0]).name if words else stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith("python") and len(words) > 1:
            script = next((w for w in words[1:] if not w.startswith("-")), "")
            name = Path(script).name if "/" in script else next((w for w in words[1:] if w.startswith("dynknock")),
                                                                name)
        out[name] = out.get(name, 0.0) + seconds
    return out


def one_lab(store_kind: str, knocks: int, clients: int, keys_dir: Path) -> dict[str, Any]:
    names = ["lat"] + [f"s{i}" for i in range(clients)]
    keys_dir.mkdir(mode=0o700)
    users, paths = key_files(keys_dir, names)
    with ha_lab("dkhb", store_kind=store_kind, users=users, services={"bench": f"127.0.0.1:{SINK_PORT}"},
                sshd=False) as world:
        return measure(world, knocks, clients, paths)


def measure(world: World, knocks: int, clients: int, paths: dict[str, str]) -> dict[str, Any]:
    lab, gw_a = world.lab, world.gateways["gw-a"]
    sink = lab.popen(gw_a, [PYTHON, str(WORKER), "sink", encode_args({"listen": [f"127.0.0.1:{SINK_PORT}"],
                                                                  "lifetime_s": 600})],
                     stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        if '"ready"' not in sink.stdout.readline():
            raise RuntimeError("the sink did not start")
        latency = collect(lab.popen(lab.client, [PYTHON, str(WORKER), "knocks", encode_args({
            "server": gw_a.ipv4, "key_files": [paths["lat"]], "count": knocks, "timing": {}, "bind": True,
            "max_seconds": 300})], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), 330)
        latency = [r for r in latency if "i" in r]
        scale: list[dict[str, Any]] = []
        cpu: dict[str, float] = {}  # CPU seconds by program over the clients' row (cpu_by_program)
        if clients:
            addresses = lab.add_ipv4_addresses(lab.client, clients)
            pairs = [(addr, paths[f"s{i}"]) for i, addr in enumerate(addresses)]
            start_wall = time.time() + 3.0
            cpu_before = cpu_by_program()
            procs = [lab.popen(lab.client, [PYTHON, str(WORKER), "scale", encode_args({
                "server": gw_a.ipv4, "clients": pairs[n::WORKERS], "start_wall": start_wall, "spread_s": SPREAD_S,
                "timing": {"timeout_s": 15.0}, "seed": n, "bind": True})], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True) for n in range(WORKERS)]
            for proc in procs:
                scale += [r for r in collect(proc, SPREAD_S + 120) if "ok" in r]
            cpu_after = cpu_by_program()
            cpu = {name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in cpu_after
                   if cpu_after[name] - cpu_before.get(name, 0.0) >= 0.05}
        # What each replica's auth counted meanwhile (rejections, claims refused, the store): the cause of a
        # slow row is there, not in the clients' figures.
        statuses = {name: status(world, name) for name in world.stacks if name.startswith("auth")}
    finally:
        sink.terminate()
        sink.wait(10)
    return {"latency": latency, "scale": scale, "status": statuses, "cpu_s": cpu}


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    ms = [r["door_ms"] for r in rows if r.get("ok")]
    return {"n": len(rows), "ok": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99), "max": max(ms, default=0.0),
            "resent": sum(1 for r in rows if r.get("bursts", 1) > 1),
            "pending": sum(1 for r in rows if r.get("pending"))}


def spread(values: list[float]) -> str:
    return f"{med(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def render(results: dict[str, Any]) -> str:
    lines = [f"Replicated auth on etcd against one auth host's local journal ({results['date']}; "
             f"{results['machine']}; load average {results['load_start']} at the start, {results['load_end']} at "
             "the end)", f"command: `{results['command']}`", "",
             "| store | knocks opened | knock p50 ms, median of runs (range) | knock p99 ms | "
             f"{results['clients']:,} clients: opened | p50 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in ("local", "etcd"):
        runs = results["runs"][kind]
        lat = [summary(r["latency"]) for r in runs]
        sc = [summary(r["scale"]) for r in runs]
        opened_lat = ", ".join(f"{s['ok']:.0f}/{s['n']:.0f}" for s in lat)
        opened_sc = ", ".join(f"{s['ok']:.0f}/{s['n']:.0f}" for s in sc)
        lines.append(f"| {kind} | {opened_lat} | {spread([s['p50'] for s in lat])} | {spread([s['p99'] for s in lat])} "
                     f"| {opened_sc} | {spread([s['p50'] for s in sc])} | {spread([s['p99'] for s in sc])} | "
                     f"{spread([s['max'] for s in sc])} |")
    local = med([summary(r["latency"])["p50"] for r in results["runs"]["local"]])
    etcd = med([summary(r["latency"])["p50"] for r in results["runs"]["etcd"]])
    lines += ["", f"Knock p50, etcd minus local: {etcd - local:+.1f} ms (goal: within 5 ms).", "",
              f"The {results['clients']:,} clients, runs in order: clients that resent a burst, that saw a PENDING:"]
    for kind in ("local", "etcd"):
        rows = [summary(r["scale"]) for r in results["runs"][kind]]
        lines.append(f"* {kind}: " + "; ".join(f"{s['resent']:.0f} resent, {s['pending']:.0f} PENDING" for s in rows))
    return "\n".join(lines)


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "")
    return f"{os.cpu_count()} CPUs, {model}, kernel {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--knocks", type=int, default=100)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.knocks < 1 or args.clients < 0:
        parser.error("--runs and --knocks must be positive, --clients not negative")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(),
        "command": shlex.join(["sudo", PYTHON, "bench/ha.py", *(sys.argv[1:] if argv is None else argv)]),
        "load_start": Path("/proc/loadavg").read_text().split()[0], "clients": args.clients,
        "runs": {"local": [], "etcd": []}}
    with tempfile.TemporaryDirectory(prefix="dynknock-hab-") as keys:
        for run in range(args.runs):
            order = ("local", "etcd") if run % 2 == 0 else ("etcd", "local")
            for kind in order:
                print(f"[ha] run {run + 1}/{args.runs}: {kind}", file=sys.stderr, flush=True)
                results["runs"][kind].append(one_lab(kind, args.knocks, args.clients, Path(keys) / f"{kind}{run}"))
                print(f"[ha]   knock {summary(results['runs'][kind][-1]['latency'])}, "
                      f"clients {summary(results['runs'][kind][-1]['scale'])}", file=sys.stderr, flush=True)
    results["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report = render(results)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
