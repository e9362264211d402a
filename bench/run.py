"""dynknock's benchmark: one command, the whole stack for real, a report with every figure.

    sudo bench/run.sh                      # installs (scripts/setup.sh), runs, writes docs/BENCHMARKS.md
    sudo /opt/dynknock/venv/bin/python bench/run.py [--smoke] [--output PATH]

It builds a network-namespace lab (prefix "dkb": server, client, attacker on a
bridge, lab addresses only), starts the real stack there (supervisord.conf,
nftables, libpcap), and measures, side by side in the same run:

1. knock-to-door latency (client library and the knock-client process), the KDF apart;
2. floods from the attacker (random junk, junk that passes the kernel filter, SYNs
   to random ports) with legitimate knocks during them, CPU per stage, capture drops;
3. relay throughput against the same stream sent straight to the service, one stream
   and many, and connection setup through the relay against direct;
4. many clients from many source addresses at once, memory of each stage;
5. per-stage microbenchmarks (codec, capture parse, gate rules, bus).

Every loop and flood is bounded in count and time; the lab is torn down in
`finally`. --smoke runs tiny counts (well under a minute) to keep this code from
rotting (tests/e2e/test_bench_smoke.py); its report goes where --output says.

To measure a candidate change before it lands: --code DIR runs the stack, the
workers and knock-client from DIR's packages instead of the installed copy, and
--client-timing '{"pending_wait_s": 0.02}' overrides client.session.Timing for
every knock. bench/ANALYSIS.md (hand-written: profiles, causes, what was tried)
is appended to a full run's report.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import importlib.util
import ipaddress
import json
import os
import platform
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from dynknock import bus
from dynknock import protocol as proto
from dynknock.client.session import new_request
from dynknock.keys import SessionKeys, derive_master_key, hint_epoch, user_hint
from dynknock.lab.netlab import NetLab
from dynknock.lab.stack import VENV_BIN, LabUser, Stack, prepare_workdir, write_config, write_users

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = str(VENV_BIN / "python")
WORKER = str(BENCH / "labworker.py")
PREFIX = "dkb"
SINK_PORT = 5201  # the service behind the relay (127.0.0.1) ...
DIRECT_PORT = 5202  # ... and the same sink on the server's address, a public port
SERVICE = "bench"  # forward = "auto": the kernel forwards its doors (IPv4 clients, target on this host)
RELAY_SERVICE = "benchr"  # the same sink with forward = "relay", for the relay's row
STAGES = ("capture", "auth", "gate", "relay", "bus")
DOOR_MODES = ("direct", "kernel", "relay")
RAISED_CAPS = "max_doors_per_user = 10000\nmax_doors_total = 65535"
DEFAULT_CAPS = "max_doors_per_user = 8\nmax_doors_total = 1000"  # dynknock.config's defaults
# junk, right-sized junk, a SYN scan; and an eavesdropper's floods: junk under one user's live
# hint from spoofed sources, and replays of one captured exchange (issue 11 §3).
FLOOD_KINDS = ("junk", "sized", "syn", "hint", "replay")  # straight to the service; a kernel door; a relayed door
CLK_TCK = os.sysconf("SC_CLK_TCK")

sys.path.insert(0, str(BENCH))
import micro  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    knocks: int = 120
    spawns: int = 20
    kdf_runs: int = 5
    gap_sweep: tuple[float, ...] = (0.0, 0.001, 0.002, 0.010)
    gap_sweep_knocks: int = 30
    direct_connects: int = 100
    flood_rate: int = 150_000  # packets/s offered, all sender processes together
    flood_senders: int = 3
    flood_seconds: float = 6.0  # at least; the flood goes on until the knocks during it are done
    flood_max_seconds: float = 20.0
    flood_trials: int = 12
    hog_knocks: int = 40
    stream_seconds: float = 3.0
    stream_reps: int = 5
    shaped_rate: str = "1gbit"  # a link slower than this machine's CPUs, for context
    parallel_streams: int = 100
    parallel_reps: int = 3
    scale_clients: int = 1000
    scale_procs: int = 4
    scale_spread_s: float = 3.0
    micro_seconds: float = 2.0
    nft_singles: int = 100
    nft_batch: int = 1000
    bus_messages: int = 200_000
    window_s: int = 180


SMOKE = Sizes(knocks=6, spawns=1, kdf_runs=1, gap_sweep=(0.01,), gap_sweep_knocks=3, direct_connects=5,
              flood_rate=20_000, flood_senders=1, flood_seconds=1.0, flood_max_seconds=6.0, flood_trials=2,
              hog_knocks=10,
              stream_seconds=0.5,
              stream_reps=1, parallel_streams=3, parallel_reps=1, scale_clients=12, scale_procs=2, scale_spread_s=0.5,
              micro_seconds=0.2, nft_singles=3, nft_batch=20, bus_messages=5_000, window_s=60)


# --- small helpers ---------------------------------------------------------------------------


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


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def encode_args(args: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(args).encode()).decode()


def proc_stat_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_key(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    return key


PACKAGES = ("dynknock", "dynknock/lab", "dynknock/auth", "dynknock/capture", "dynknock/gate", "dynknock/relay",
            "dynknock/client")


def installed_site() -> Path:
    spec = importlib.util.find_spec("dynknock")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent.parent


def installed_digest() -> str:
    """A digest of the installed code: scripts/setup.sh run by someone else mid-run changes it."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((installed_site() / package).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def installed_matches_checkout() -> bool:
    """Whether the venv's copy (what the stack runs) is this checkout's code."""
    site = installed_site()
    for package in PACKAGES:
        for source in (REPO / package).glob("*.py"):
            installed = site / package / source.name
            if not installed.exists() or hashlib.sha256(installed.read_bytes()).digest() != \
                    hashlib.sha256(source.read_bytes()).digest():
                return False
    return True


def reexec_with_code(checkout: Path, argv: list[str], command: str) -> None:
    """Run this benchmark again with a checkout's packages first on PYTHONPATH, for every process
    (this one, the stack's stages, the workers, knock-client). The copy is world-readable because the
    stages run unprivileged; it is removed at the end of the run."""
    import shutil

    target = Path(tempfile.mkdtemp(prefix="dynknock-bench-code-"))
    for package in PACKAGES:
        shutil.copytree(checkout / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = dict(os.environ, PYTHONPATH=str(target), DYNKNOCK_BENCH_CODE=str(target),
               DYNKNOCK_BENCH_CODE_FROM=str(checkout.resolve()), DYNKNOCK_BENCH_COMMAND=command)
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


def machine_info() -> dict[str, str]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit, dirty = "?", ""
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), "machine": platform.machine(),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "installed_matches_checkout": "yes" if installed_matches_checkout() else "NO (rerun scripts/setup.sh)",
            "installed_digest": installed_digest(),
            "loadavg_start": Path("/proc/loadavg").read_text().split(" ")[0]}


# --- the tap: heartbeats and door events -------------------------------------------------------


STEP_TOPICS = ("auth.request.received", "auth.knock.complete", "auth.door.opened")


def request_steps(steps: list[tuple[float, str, str]], prefix: str) -> dict[str, list[float]]:
    """Per client address starting with prefix, from auth's events: ms from its first P1 read to its
    knocks complete, and from knocks complete to the door opened (gate's confirmation)."""
    first: dict[str, float] = {}
    complete: dict[str, float] = {}
    opened: dict[str, float] = {}
    for when, topic, client in steps:
        if not client.startswith(prefix):
            continue
        if topic == "auth.request.received":
            first.setdefault(client, when)
        elif topic == "auth.knock.complete":
            complete[client] = when
        else:
            opened[client] = when
    return {"p1_to_knocks_ms": [(complete[c] - first[c]) * 1000 for c in complete if c in first],
            "knocks_to_open_ms": [(opened[c] - complete[c]) * 1000 for c in opened if c in complete]}


class TapRecorder:
    """Keeps each stage's latest heartbeat and every auth.door.opened, from knock-bus's tap."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.alive: dict[str, dict[str, Any]] = {}
        self.alive_at: dict[str, float] = {}
        self.opened: list[tuple[float, dict[str, Any]]] = []
        # (publisher's wall time, topic, client) of each request's steps: where a knock's time goes
        self.steps: list[tuple[float, str, str]] = []
        self.topics: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tap", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        context: zmq.Context[Any] = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 200_000)
        for prefix in (b"capture.alive", b"auth.alive", b"relay.alive", b"gate.alive", b"auth.door.opened",
                       b"auth.request.received", b"auth.knock.complete"):
            sub.setsockopt(zmq.SUBSCRIBE, prefix)
        sub.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sub.poll(200):
                    continue
                topic, frame = sub.recv_multipart()
                try:
                    event = bus.decode_as(frame, bus.Event)
                except bus.BadMessage:
                    continue
                with self._lock:
                    self.topics[event.topic] = self.topics.get(event.topic, 0) + 1
                    if event.topic.endswith(".alive"):
                        self.alive[event.stage] = dict(event.fields)
                        self.alive_at[event.stage] = time.monotonic()
                    elif event.topic == "auth.door.opened":
                        self.opened.append((time.monotonic(), dict(event.fields)))
                    if event.topic in STEP_TOPICS:
                        self.steps.append((event.time, event.topic, str(event.fields.get("client", ""))))
        finally:
            context.destroy(0)

    def latest(self, stage: str) -> dict[str, Any]:
        with self._lock:
            return dict(self.alive.get(stage, {}))

    def fresh(self, stage: str, after: float, timeout: float = 6.0) -> dict[str, Any]:
        """The first heartbeat of `stage` published after monotonic time `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.alive_at.get(stage, 0) > after:
                    return dict(self.alive[stage])
            time.sleep(0.05)
        return self.latest(stage)

    def opened_since(self, after: float) -> list[dict[str, Any]]:
        with self._lock:
            return [fields for t, fields in self.opened if t >= after]


# --- the lab with the stack ------------------------------------------------------------------------


class Bench:
    def __init__(self, lab: NetLab, workdir: Path, sizes: Sizes) -> None:
        self.lab, self.workdir, self.sizes = lab, workdir, sizes
        self.keys_dir = workdir / "keys"
        self.stack = Stack(lab, workdir, REPO / "supervisord.conf")
        self.tap: TapRecorder | None = None
        self.results: dict[str, Any] = {}
        self.client_timing: dict[str, float] = {}  # overrides of client.session.Timing for every knock

    # -- set-up ----------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return str(self.keys_dir / f"{name}.key")

    def start(self) -> None:
        s = self.sizes
        prepare_workdir(self.workdir)
        self.keys_dir.mkdir(mode=0o700, exist_ok=True)
        users = []
        for name in ["lat0", "lat1", "spawn", "flood", "stream", "sweep", "victim", "hog"] + \
                [f"scale{i}" for i in range(s.scale_clients)]:
            users.append(LabUser(name, key=write_key(Path(self.key(name))), services=(SERVICE, RELAY_SERVICE)))
        write_users(self.workdir / "users.json", users)
        # A public port for the direct path, and our sink as the service behind the relay.
        # The door caps (server.max_doors_per_user 8, max_doors_total 1,000 by default) are raised:
        # the latency rows knock 120 times as two users with doors of window_s, and the scale row
        # opens 1,000 doors at once on top of them. What the caps do is tested in test_doors_limits.
        write_config(self.workdir / "dynknock.toml", self.workdir, self.lab, window_seconds=s.window_s,
                     extra=RAISED_CAPS,
                     public_tcp_ports=(DIRECT_PORT,),
                     services={SERVICE: f"127.0.0.1:{SINK_PORT}", RELAY_SERVICE: f"127.0.0.1:{SINK_PORT}"},
                     forward={RELAY_SERVICE: "relay"})
        self.sink = self.lab.popen(self.lab.server, [PYTHON, WORKER, "sink", encode_args(
            {"listen": [f"127.0.0.1:{SINK_PORT}", f"{self.lab.server.ipv4}:{DIRECT_PORT}"], "lifetime_s": 900})],
            stdout=subprocess.PIPE, text=True)
        assert self.sink.stdout is not None
        if '"ready"' not in self.sink.stdout.readline():
            raise RuntimeError("the sink did not start")
        self.stack.start()
        self.tap = TapRecorder(self.stack.endpoints.tap)
        self.tap.start()
        time.sleep(0.5)
        payload = self.workdir / "payload.bin"
        with payload.open("wb") as handle:
            for _ in range(64):
                handle.write(os.urandom(1 << 20))
        self.payload = payload

    def stop(self) -> None:
        if self.tap is not None:
            self.tap.stop()
        self.stack.stop()

    # -- running workers --------------------------------------------------------------------

    def worker(self, host: Any, command: str, args: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        done = self.lab.run(host, [PYTHON, WORKER, command, encode_args(args)], timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"worker {command} failed ({done.returncode}): {done.stderr[-2000:]}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    def worker_popen(self, host: Any, command: str, args: dict[str, Any]) -> subprocess.Popen[str]:
        return self.lab.popen(host, [PYTHON, WORKER, command, encode_args(args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    @staticmethod
    def collect(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"worker failed ({proc.returncode}): {err[-2000:]}")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def stage_pids(self) -> dict[str, int]:
        return {stage: self.stack.stage_pid(stage) for stage in STAGES}

    def server_rx(self) -> tuple[int, int]:
        out = self.lab.run(self.lab.server, ["ip", "-s", "-j", "link", "show", "eth0"]).stdout
        stats = json.loads(out)[0]["stats64"]["rx"]
        return int(stats["packets"]), int(stats["dropped"])

    def knocks(self, count: int, key_names: list[str], timing: dict[str, float] | None = None, *,
               pause_s: float = 0.0, max_seconds: float = 120) -> list[dict[str, Any]]:
        rows = self.worker(self.lab.client, "knocks", {
            "server": self.lab.server.ipv4, "key_files": [self.key(k) for k in key_names], "count": count,
            "timing": {**self.client_timing, **(timing or {})}, "pause_s": pause_s,
            "max_seconds": max_seconds}, timeout=max_seconds + 60)
        return [r for r in rows if "i" in r]

    # -- 1. latency ------------------------------------------------------------------------------

    def bench_latency(self) -> None:
        s = self.sizes
        kdf = []
        for _ in range(s.kdf_runs):
            start = time.perf_counter()
            derive_master_key("alice", "correct horse battery staple")
            kdf.append((time.perf_counter() - start) * 1000)
        log(f"latency: {s.knocks} knocks, client library with knock-client's timing")
        since = time.monotonic()
        default = self.knocks(s.knocks, ["lat0", "lat1"])
        server_side = [f["latency_ms"] for f in self.tap.opened_since(since)] if self.tap else []
        sweep = {}
        for gap in s.gap_sweep:
            log(f"latency: {s.gap_sweep_knocks} knocks with knock_gap_s={gap}")
            sweep[str(gap)] = self.knocks(s.gap_sweep_knocks, ["sweep"], {"knock_gap_s": gap})
        log(f"latency: {s.spawns} knock-client processes")
        spawns = [r for r in self.worker(self.lab.client, "spawns", {
            "client": str(VENV_BIN / "knock-client"), "key_file": self.key("spawn"), "server": self.lab.server.ipv4,
            "count": s.spawns, "service": SERVICE, "max_seconds": 120}, timeout=200) if "i" in r]
        direct = [r for r in self.worker(self.lab.client, "connects", {
            "server": self.lab.server.ipv4, "port": DIRECT_PORT, "count": s.direct_connects}, timeout=120)
            if "i" in r]
        self.results["latency"] = {"kdf_ms": kdf, "default": default, "server_side_ms": server_side,
                                   "sweep": sweep, "spawns": spawns, "direct_connects": direct}

    # -- 2. flood ------------------------------------------------------------------------------------

    def server_mac(self) -> str:
        return self.lab.run(self.lab.server, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()

    def sniffed(self, kind: str) -> dict[str, Any]:
        """What an eavesdropper of one of the victim's knocks holds: its hint (now and the next minute's),
        or the exact P1 and P2 of one exchange."""
        keys = SessionKeys.from_master(base64.b64decode(Path(self.key("victim")).read_text()))
        now = time.time()
        if kind == "hint":
            return {"hints": [user_hint(keys, hint_epoch(now + 60 * k)).hex() for k in (0, 1)]}
        if kind == "replay":
            request = new_request(SERVICE, ipaddress.ip_address(self.lab.client.ipv4))
            now_ms = time.time_ns() // 1_000_000
            p1 = proto.seal(keys, proto.P1(now_ms, request.request_id, request.address, SERVICE, request.knocks),
                            user_hint(keys, hint_epoch(now)), os.urandom(proto.NONCE_LEN))
            p2 = proto.seal(keys, proto.P2(now_ms, request.request_id), user_hint(keys, hint_epoch(now)),
                            os.urandom(proto.NONCE_LEN))
            return {"packets": [p1.hex(), p2.hex()]}
        return {}

    def bench_flood(self) -> None:
        s = self.sizes
        mac = self.server_mac()
        phases = {}
        pace = max(0.0, (s.flood_seconds - 1.0) / s.flood_trials - 0.02)
        for kind in FLOOD_KINDS:
            log(f"flood: {kind} at {s.flood_rate:,}/s, {s.flood_trials} knocks during it")
            pids = self.stage_pids()
            mark = time.monotonic()
            cap0 = self.tap.fresh("capture", mark - 2.5, 5) if self.tap else {}
            start_wall = time.time() + 1.2  # the senders start and build their frames meanwhile
            senders = [self.worker_popen(self.lab.attacker, "flood", {
                "kind": kind, "rate": s.flood_rate / s.flood_senders, "seconds": s.flood_max_seconds,
                "dst_mac": mac, "src_ip": self.lab.attacker.ipv4, "dst_ip": self.lab.server.ipv4,
                "start_wall": start_wall, "seed": n, **self.sniffed(kind)}) for n in range(s.flood_senders)]
            victim: list[dict[str, Any]] = []
            try:
                time.sleep(max(0.0, start_wall - time.time()))
                cpu0 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
                rx0 = self.server_rx()
                time.sleep(0.5)  # the flood is on
                trials = self.knocks(s.flood_trials, ["flood"], pause_s=pace, max_seconds=s.flood_max_seconds - 2)
                if kind in ("hint", "replay"):  # and the flooded user's own knocks, from its own address
                    victim = self.knocks(max(2, s.flood_trials // 4), ["victim"], pause_s=pace,
                                         max_seconds=max(2.0, s.flood_max_seconds - 2 - (time.time() - start_wall)))
                time.sleep(max(0.0, start_wall + s.flood_seconds - time.time()))
            finally:
                for proc in senders:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
            sent = []
            for proc in senders:
                sent += [r for r in self.collect(proc, 30) if "sent" in r]
            rx1 = self.server_rx()
            cpu1 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
            cap1 = self.tap.fresh("capture", time.monotonic(), 5) if self.tap else {}
            flood_start = max((r["wall_start"] for r in sent), default=0.0)
            flood_end = min((r["wall_end"] for r in sent), default=0.0)
            for row in trials:
                row["during_flood"] = flood_start <= row["t_start"] and row["t_end"] <= flood_end
            phases[kind] = {
                "offered": sum(r["sent"] for r in sent), "send_errors": sum(r["errors"] for r in sent),
                "seconds": max((r["seconds"] for r in sent), default=0.0),
                "rx": rx1[0] - rx0[0], "rx_dropped": rx1[1] - rx0[1],
                "cpu_s": {st: (cpu1[st] - cpu0[st]) / CLK_TCK for st in STAGES},
                "capture_before": cap0, "capture_after": cap1, "trials": trials, "victim_trials": victim}
            time.sleep(0.2 if s is SMOKE else 1.0)  # let the queues drain before the next phase
        self.results["flood"] = phases
        self.bench_hog()

    def set_caps(self, caps: str) -> None:
        """Rewrite the door caps in the config and restart auth onto them (supervisord restarts it)."""
        path = self.workdir / "dynknock.toml"
        text = path.read_text()
        old = RAISED_CAPS if RAISED_CAPS in text else DEFAULT_CAPS
        path.write_text(text.replace(old, caps))
        self.stack.kill_stage("auth")
        self.stack.wait_alive(30)
        time.sleep(0.5)

    def bench_hog(self) -> None:
        """One key holder, from one address, knocks as fast as it can for door after door (issue 11 §4),
        with the shipped caps; another user knocks meanwhile."""
        s = self.sizes
        log("hog: one user knocks for doors back to back, the shipped door caps; another user knocks meanwhile")
        self.set_caps(DEFAULT_CAPS)
        try:
            hog = self.worker_popen(self.lab.attacker, "knocks", {
                "server": self.lab.server.ipv4, "key_files": [self.key("hog")], "count": s.hog_knocks,
                "timing": {**self.client_timing, "timeout_s": 2.0}, "max_seconds": 60})
            time.sleep(1.0)  # the hog holds its doors by now
            # Three other users in turn, so that none reaches its own cap of 8 in the phase.
            others = self.knocks(s.flood_trials, ["flood", "victim", "spawn"], pause_s=0.1, max_seconds=60)
            hog_rows = [r for r in self.collect(hog, 120) if "i" in r]
        finally:
            self.set_caps(RAISED_CAPS)
        self.results["hog"] = {"hog": hog_rows, "others": others}

    # -- 3. relay throughput --------------------------------------------------------------------------

    def streams(self, mode: str, count: int, seconds: float) -> dict[str, Any]:
        """mode: "direct" (to the sink's public port), "kernel" (through kernel doors) or "relay"."""
        relay_pid, sink_pid = self.stack.stage_pid("relay"), self.sink.pid
        machine0, relay0, sink0 = machine_ticks(), proc_stat_ticks(relay_pid), proc_stat_ticks(sink_pid)
        rows = self.worker(self.lab.client, "streams", {
            "mode": "direct" if mode == "direct" else "relay", "streams": count, "seconds": seconds,
            "server": self.lab.server.ipv4, "service": RELAY_SERVICE if mode == "relay" else SERVICE,
            "port": DIRECT_PORT, "key_files": [self.key("stream")], "payload": str(self.payload),
            "max_setup_s": 120}, timeout=seconds + 300)
        machine1, relay1, sink1 = machine_ticks(), proc_stat_ticks(relay_pid), proc_stat_ticks(sink_pid)
        result = rows[-1]
        result["mode"] = mode
        result["cpu"] = {"machine_busy_s": (machine1[0] - machine0[0]) / CLK_TCK,
                         "machine_total_s": (machine1[1] - machine0[1]) / CLK_TCK,
                         "relay_s": (relay1 - relay0) / CLK_TCK, "sink_s": (sink1 - sink0) / CLK_TCK}
        return result

    def bench_relay(self) -> None:
        s = self.sizes
        single: dict[str, list[dict[str, Any]]] = {mode: [] for mode in DOOR_MODES}
        for rep in range(s.stream_reps):
            order = DOOR_MODES[rep % 3:] + DOOR_MODES[:rep % 3]  # each mode first in turn: no position bias
            for mode in order:
                log(f"relay: one stream, {mode}, {s.stream_seconds} s (round {rep + 1}/{s.stream_reps})")
                single[mode].append(self.streams(mode, 1, s.stream_seconds))
        # 100 streams: rounds too, each mode first in turn, so that the ratio to direct is a median of
        # side-by-side rounds, not one round's luck on a shared machine (one round moved 0.93-1.01x).
        parallel_rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in DOOR_MODES}
        for rep in range(s.parallel_reps):
            order = DOOR_MODES[rep % 3:] + DOOR_MODES[:rep % 3]
            for mode in order:
                log(f"relay: {s.parallel_streams} streams at once, {mode} (round {rep + 1}/{s.parallel_reps})")
                parallel_rounds[mode].append(self.streams(mode, s.parallel_streams, s.stream_seconds))
        parallel = {mode: rounds[0] for mode, rounds in parallel_rounds.items()}
        shaped: dict[str, dict[str, Any]] = {}
        log(f"relay: one stream each way over a {s.shaped_rate} link (tbf on the client's eth0)")
        self.lab.run(self.lab.client, ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", s.shaped_rate,
                                       "burst", "1mb", "latency", "20ms"])
        try:
            for mode in DOOR_MODES:
                shaped[mode] = self.streams(mode, 1, s.stream_seconds)
        finally:
            self.lab.run(self.lab.client, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        self.results["relay"] = {"single": single, "parallel": parallel, "parallel_rounds": parallel_rounds,
                                 "shaped": shaped}

    # -- 4. scale -----------------------------------------------------------------------------------

    def nft_door_count(self, prefix: str) -> int:
        """Doors open now for addresses starting with prefix: relay doors, and kernel doors by their target
        (fwd4 keeps it for the whole window; a used single-use door has lost its once4 element)."""
        return self._nft_set_count("set", "doors4", prefix) + self._nft_set_count("map", "fwd4", prefix)

    def _nft_set_count(self, kind: str, name: str, prefix: str) -> int:
        out = self.lab.run(self.lab.server, ["nft", "-j", "list", kind, "inet", "dynknock", name]).stdout
        count = 0
        for item in json.loads(out)["nftables"]:
            for element in item.get(kind, {}).get("elem", []):
                if isinstance(element, list):  # a map's element: [key, value]
                    element = element[0]
                value = element.get("elem", {}).get("val", element) if isinstance(element, dict) else element
                concat = value.get("concat", []) if isinstance(value, dict) else []
                if concat and str(concat[0]).startswith(prefix):
                    count += 1
        return count

    def bench_scale(self) -> None:
        s = self.sizes
        log(f"scale: {s.scale_clients} clients from {s.scale_clients} addresses over {s.scale_spread_s} s")
        addresses = self.lab.add_ipv4_addresses(self.lab.client, s.scale_clients)
        pids = self.stage_pids()
        since = time.monotonic()
        machine0 = machine_ticks()
        rss0 = {stage: vm_rss_kib(pid) for stage, pid in pids.items()}
        cpu0 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
        cap0 = self.tap.latest("capture") if self.tap else {}
        clients = [(addr, self.key(f"scale{i}")) for i, addr in enumerate(addresses)]
        start_wall = time.time() + 3.0
        timing = {"timeout_s": 15.0, **self.client_timing}
        procs = [self.worker_popen(self.lab.client, "scale", {
            "server": self.lab.server.ipv4, "clients": clients[n::s.scale_procs], "start_wall": start_wall,
            "spread_s": s.scale_spread_s, "timing": timing, "seed": n}) for n in range(s.scale_procs)]
        peak: dict[str, int] = dict(rss0)
        deadline = time.monotonic() + s.scale_spread_s + 90
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            for stage, pid in pids.items():
                try:
                    peak[stage] = max(peak[stage], vm_rss_kib(pid))
                except OSError:
                    pass
            time.sleep(0.2)
        machine1 = machine_ticks()
        rows = []
        for proc in procs:
            rows += [r for r in self.collect(proc, 30) if "ok" in r]
        doors_nft = self.nft_door_count("198.19.")
        rss1 = {stage: vm_rss_kib(pid) for stage, pid in pids.items()}
        cpu1 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
        auth_alive = self.tap.fresh("auth", time.monotonic(), 5) if self.tap else {}
        cap1 = self.tap.fresh("capture", time.monotonic(), 5) if self.tap else {}
        auth_doors = sum(1 for d in auth_alive.get("doors", []) if str(d.get("client", "")).startswith("198.19."))
        self.results["scale"] = {"clients": s.scale_clients, "rows": rows, "rss_before": rss0, "rss_after": rss1,
                                 "rss_peak": peak, "cpu_s": {st: (cpu1[st] - cpu0[st]) / CLK_TCK for st in STAGES},
                                 "nft_doors": doors_nft, "auth_doors": auth_doors, "capture_before": cap0,
                                 "capture_after": cap1, "spread_s": s.scale_spread_s,
                                 "machine_busy_s": (machine1[0] - machine0[0]) / CLK_TCK,
                                 "machine_total_s": (machine1[1] - machine0[1]) / CLK_TCK,
                                 "server_side_ms": [f["latency_ms"] for f in self.tap.opened_since(since)
                                                    if str(f.get("client", "")).startswith("198.19.")]
                                 if self.tap else [],
                                 "steps": request_steps(list(self.tap.steps), "198.19.") if self.tap else {}}

    # -- 5. micro -------------------------------------------------------------------------------------

    def bench_micro(self) -> None:
        s = self.sizes
        log("micro: codec (bench_codec.py), capture, gate (core and real nftables), bus")
        spec = importlib.util.spec_from_file_location("bench_codec", BENCH / "bench_codec.py")
        assert spec is not None and spec.loader is not None
        bench_codec = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_codec)
        out: dict[str, Any] = {}
        out["codec"] = bench_codec.run(s.micro_seconds * 2.5, 1000)
        out["capture"] = micro.capture_parse(s.micro_seconds)
        out["filter_compile"] = micro.capture_filter_compile()
        out["gate_core"] = micro.gate_core_ops(s.micro_seconds / 2)
        out["gate_nft"] = self.worker(self.lab.attacker, "nft", {"count": s.nft_singles, "batch": s.nft_batch},
                                      timeout=300)[-1]
        out["bus_codec"] = micro.bus_codec(s.micro_seconds)
        out["bus_ipc"] = micro.bus_ipc(s.bus_messages)
        self.results["micro"] = out


# --- the report -------------------------------------------------------------------------------------


def door_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    ok = [r for r in rows if r.get("ok")]
    door = [r["door_ms"] for r in ok]
    return {"n": len(rows), "ok": len(ok), "p50": pct(door, 50), "p90": pct(door, 90), "p99": pct(door, 99),
            "max": max(door, default=float("nan")),
            "p3_p50": pct([r["p3_ms"] for r in ok if "p3_ms" in r], 50),
            "connect_p50": pct([r["connect_ms"] for r in ok if "connect_ms" in r], 50),
            "first_burst": sum(1 for r in ok if r.get("bursts") == 1 and not r.get("pending"))}


def resent_knock(row: dict[str, Any]) -> bool:
    """The client sent a second burst (P2 and its SYNs again): the knock cost a resend."""
    return int(row.get("bursts", 1)) > 1


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def gbps(r: dict[str, Any]) -> float:
    return r["received"] * 8 / r["seconds"] / 1e9 if r.get("seconds") else float("nan")


def cpu_per_gb(r: dict[str, Any]) -> float:
    return r["cpu"]["machine_busy_s"] / (r["received"] / 1e9) if r.get("received") else float("nan")


def client_timing() -> str:
    from dynknock.client.session import Timing

    t = Timing()
    return ", ".join(f"{name} = {getattr(t, name):g}" for name in ("knock_gap_s", "p2_gap_s", "pending_wait_s",
                                                                   "first_interval_s") if hasattr(t, name))


def client_startup_results() -> tuple[str, str]:
    """(headline row, section) of bench/client_startup.py's last figures, kept in bench/client_startup_results.md:
    that benchmark runs on its own (the whole process, many runs), this report keeps its figures in place."""
    path = BENCH / "client_startup_results.md"
    if not path.exists():
        return "", ""
    text = path.read_text()
    if text.startswith("<!--"):
        text = text.split("-->", 1)[1]
    lines = text.strip("\n").splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    if not rows:
        return "", ""
    return rows[0], "\n".join(line for line in lines if line != rows[0])


def render(results: dict[str, Any], info: dict[str, str], command: str, sizes: Sizes, smoke: bool,
           elapsed_s: float) -> str:
    body: list[str] = []
    add = body.append
    bars: list[tuple[str, str, bool]] = []

    lat = results.get("latency")
    idle = door_stats(lat["default"]) if lat else None
    if lat and idle:
        add("## 1. Knock-to-door latency")
        add("")
        add("From the client starting (key file read, so no KDF; sockets opened) to the first successful TCP")
        add("connect through the door (the service's first byte received through the relay). The client library")
        add("(client/session.py driven by client/knock.py, as knock-client uses it) runs in one process in the")
        add("client namespace, knocks one after another; Python's start-up is measured apart, with the real")
        add(f"knock-client process. knock-client's timing: {client_timing()}"
            + (f"; **overridden for this run's library knocks: {results['client_timing_override']}**"
               if results.get("client_timing_override") else "") + ".")
        add("")
        add("| client | knocks | opened | p50 ms | p90 ms | p99 ms | max ms | p50 to P3 OPEN | p50 connect ms | "
            "first burst |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def row(label: str, rows: list[dict[str, Any]]) -> dict[str, float]:
            st = door_stats(rows)
            add(f"| {label} | {st['n']} | {st['ok']} | {fmt(st['p50'])} | {fmt(st['p90'])} | {fmt(st['p99'])} | "
                f"{fmt(st['max'])} | {fmt(st['p3_p50'])} | {fmt(st['connect_p50'], 2)} | {st['first_burst']} |")
            return st

        startup_row, startup_text = client_startup_results()
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

    flood = results.get("flood")
    if flood:
        names = {"junk": "random junk to the control port", "sized": "P1-size junk, version 1 type P1 (passes BPF)",
                 "syn": "SYNs to random ports",
                 "hint": "P1/P2-size junk under one user's sniffed live hint, spoofed sources",
                 "replay": "one captured P1 and P2 replayed"}
        add("## 2. Flood")
        add("")
        add(f"From the attacker namespace: pre-built Ethernet frames written to AF_PACKET sockets by "
            f"{sizes.flood_senders} sender processes, paced to {sizes.flood_rate:,} packets/s in all, for at least")
        add(f"{sizes.flood_seconds:g} s and until the legitimate knocks made during the flood are done. 'offered' is"
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
        for kind, ph in flood.items():
            rows = [r for r in ph["trials"] if r.get("during_flood")]
            st = door_stats(rows)
            within = sum(1 for r in rows if r.get("ok") and r["door_ms"] <= limit)
            resent = sum(1 for r in rows if resent_knock(r))
            pending = sum(1 for r in rows if r.get("pending"))
            add(f"| {names[kind]} | {len(rows)} | {st['ok']} | {fmt(st['p50'])} | {fmt(st['max'])} | {resent} | "
                f"{pending} | {within}/{len(rows)} |")
            own = [r for r in ph.get("victim_trials", []) if r.get("i") is not None]
            if own:
                st = door_stats(own)
                within = sum(1 for r in own if r.get("ok") and r["door_ms"] <= limit)
                resent = sum(1 for r in own if resent_knock(r))
                pending = sum(1 for r in own if r.get("pending"))
                add(f"| ... the flooded user's own knocks | {len(own)} | {st['ok']} | {fmt(st['p50'])} | "
                    f"{fmt(st['max'])} | {resent} | {pending} | {within}/{len(own)} |")
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
                         within == len(rows) >= min(10, sizes.flood_trials)))
            first = sum(1 for r in rows if r.get("ok") and not resent_knock(r))
            bars.append((f"knocks during the flood ({names[kind]}) open without a resend, >= 11 of 12",
                         f"{first}/{len(rows)}", len(rows) > 0 and first * 12 >= 11 * len(rows)))

    hog = results.get("hog")
    if hog and idle:
        limit = 3 * idle["p50"]
        rows, mine = hog["others"], hog["hog"]
        opened = sum(1 for r in mine if r.get("ok"))
        refused = Counter(r.get("error", "?") for r in mine if not r.get("ok"))
        st = door_stats(rows)
        within = sum(1 for r in rows if r.get("ok") and r["door_ms"] <= limit)
        add("### One key holder hogging doors")
        add("")
        add("With the shipped caps (max_doors_per_user 8, max_doors_total 1,000; auth restarted onto them),")
        add(f"one user knocks {len(mine)} times back to back from the attacker's address, each door held for its")
        add("window; another user knocks from the client meanwhile.")
        add("")
        add("| who | knocks | opened | refused | p50 ms | max ms | within 3x idle |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        why = ", ".join(f"{k} {v}" for k, v in refused.items())
        add(f"| the hog | {len(mine)} | {opened} | {sum(refused.values())} ({why}) "
            f"| {fmt(door_stats(mine)['p50'])} | {fmt(door_stats(mine)['max'])} | |")
        add(f"| another user, meanwhile | {len(rows)} | {st['ok']} | {len(rows) - st['ok']} | {fmt(st['p50'])} | "
            f"{fmt(st['max'])} | {within}/{len(rows)} |")
        add("")
        bars.append(("one user hogging doors holds at most 8", f"{opened} opened", opened <= 8))
        bars.append(("another user's knocks while one hogs open within 3x idle", f"{within}/{len(rows)}",
                     within == len(rows) > 0))

    relay = results.get("relay")
    if relay:
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
        rounds = len(relay["single"]["direct"])
        add("| | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median | range |")
        add("|---|" + "---:|" * (rounds + 2))
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
        add(f"{sizes.parallel_streams} streams at once (through {sizes.parallel_streams} doors, or "
            f"{sizes.parallel_streams} direct connections; the table: the first round):")
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
            add(f"{sizes.parallel_streams} streams, {mode} / direct, round by round (each mode first in turn): "
                + ", ".join(fmt(x, 2) for x in xs) + f"; median **{fmt(med(xs), 2)}** (the bar below).")
        add("")
        shaped = relay.get("shaped", {})
        if all(shaped.get(m) for m in modes):
            add(f"Over a {sizes.shaped_rate} link (tbf on the client's eth0; the link, not the CPU, is the limit): "
                + ", ".join(f"{m} {fmt(gbps(shaped[m]), 3)} Gbit/s" for m in modes) + ".")
            add("")
        add("Setup is connect + first byte; through the relay it includes the relay's accept, its connect to the")
        add("service and the first byte relayed; through the kernel, the DNAT of the first packet.")
        add("")
        if "kernel" in modes:
            one = med(ratio_of["kernel"])
            bars.append(("kernel door >= 0.95x direct, one stream", f"{fmt(one, 2)}x", one >= 0.95))
            bars.append((f"kernel door >= 0.95x direct, {sizes.parallel_streams} streams",
                         f"{fmt(par_ratio['kernel'], 2)}x", par_ratio["kernel"] >= 0.95))
            cpu_ratio = med(cpu_of["kernel"]) / med(cpu_of["direct"])
            bars.append(("kernel door machine CPU per GB within 10% of direct", f"{fmt(cpu_ratio, 2)}x",
                         cpu_ratio <= 1.10))
        if "relay" in modes:
            bars.append(("(second row) relay >= 0.8x direct, one stream", f"{fmt(med(ratio_of['relay']), 2)}x",
                         med(ratio_of["relay"]) >= 0.8))

    scale = results.get("scale")
    if scale:
        rows = scale["rows"]
        st = door_stats(rows)
        add("## 4. Scale")
        add("")
        add(f"{scale['clients']} clients, each its own user and its own source address in 198.19.0.0/16, their")
        add(f"starts spread evenly over {scale['spread_s']:g} s (client library with knock-client's timing, "
            f"{sizes.scale_procs} processes of threads); each knocks, then connects through its door.")
        add("")
        errors: dict[str, int] = {}
        for r in rows:
            if not r.get("ok"):
                key = str(r.get("error", "?"))[:60]
                errors[key] = errors.get(key, 0) + 1
        add("| clients | opened and connected | success | p50 ms | p90 ms | p99 ms | max ms | first burst |")
        add("|---:|---:|---:|---:|---:|---:|---:|---:|")
        rate = st["ok"] / st["n"] if st["n"] else 0.0
        add(f"| {st['n']} | {st['ok']} | {rate:.1%} | {fmt(st['p50'])} | {fmt(st['p90'])} | {fmt(st['p99'])} | "
            f"{fmt(st['max'])} | {st['first_burst']} |")
        if errors:
            add("")
            add("Failures: " + "; ".join(f"{n}x {e}" for e, n in sorted(errors.items())))
        add("")
        pending = sum(1 for r in rows if r.get("pending"))
        server = scale.get("server_side_ms", [])
        add(f"First burst: {st['first_burst']} opened with one burst and no PENDING; {pending} saw a PENDING. "
            f"Server side (auth's P1 to door opened, `auth.door.opened` latency_ms, {len(server)} doors): "
            f"p50 {fmt(pct(server, 50))} ms, p99 {fmt(pct(server, 99))} ms, "
            f"max {fmt(max(server, default=float('nan')))} ms.")
        for key, label in (("p1_to_knocks_ms", "auth's P1 to its knocks complete"),
                           ("knocks_to_open_ms", "knocks complete to door confirmed")):
            values = scale.get("steps", {}).get(key, [])
            if values:
                add(f"{label}: p50 {fmt(pct(values, 50))} ms, p99 {fmt(pct(values, 99))} ms ({len(values)}).")
        add("")
        add(f"Doors open at once afterwards: {scale['nft_doors']} elements for 198.19.0.0/16 in the nftables set, "
            f"{scale['auth_doors']} in auth's door table (window {sizes.window_s} s).")
        cap0, cap1 = scale["capture_before"], scale["capture_after"]
        if "kernel_dropped" in cap0 and "kernel_dropped" in cap1:
            add(f"Capture meanwhile: {cap1['received'] - cap0['received']:,} packets passed its kernel filter, "
                f"{cap1['kernel_dropped'] - cap0['kernel_dropped']:,} dropped by the kernel.")
        add("")
        if "machine_busy_s" in scale:
            stages_s = sum(scale["cpu_s"].values())
            add(f"The machine meanwhile (start of the clients to the last one's end): "
                f"{scale['machine_busy_s']:.1f} s of {scale['machine_total_s']:.1f} CPU-s busy, of which the stages "
                f"{stages_s:.1f} s; the rest is the client processes and the kernel.")
            add("")
        add("| stage | VmRSS before MiB | peak MiB | after MiB | CPU s during the run |")
        add("|---|---:|---:|---:|---:|")
        for stage in STAGES:
            add(f"| {stage} | {scale['rss_before'][stage] / 1024:.1f} | {scale['rss_peak'][stage] / 1024:.1f} | "
                f"{scale['rss_after'][stage] / 1024:.1f} | {scale['cpu_s'][stage]:.2f} |")
        add("")
        bars.append((f"{scale['clients']} clients at once: every door opens", f"{rate:.1%}", rate == 1.0))
        bars.append((f"{scale['clients']} clients at once: p99 <= 100 ms", f"{fmt(st['p99'])} ms", st["p99"] <= 100))
        bars.append((f"{scale['clients']} clients at once: max <= 300 ms", f"{fmt(st['max'])} ms", st["max"] <= 300))
        bars.append((f"{scale['clients']} doors open at once", f"{scale['nft_doors']}",
                     scale["nft_doors"] >= scale["clients"]))

    micro_r = results.get("micro")
    if micro_r:
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

    analysis = BENCH / "ANALYSIS.md"
    if not smoke and analysis.exists():
        add(analysis.read_text().rstrip())
        add("")
    notes = results.get("notes")
    if notes:
        add("## Notes")
        add("")
        add(notes)
        add("")

    head: list[str] = []
    head.append("# dynknock benchmarks" + (" (SMOKE RUN: tiny counts, figures are not meaningful)" if smoke else ""))
    head.append("")
    head.append("Written by `bench/run.py`: every figure comes from one run of the command below, and each comparison")
    head.append("(relay against direct, flood against idle) was measured side by side in that run. Percentiles and")
    head.append("medians, never single timings. Rerun the command to refresh this file.")
    head.append("")
    head.append("| | |")
    head.append("|---|---|")
    head.append(f"| command | `{command}` |")
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
    head.append(f"| duration | {elapsed_s:.0f} s |")
    head.append("")
    head.append("The lab (dynknock/lab/netlab.py): namespaces on a bridge, server 198.18.0.1, client 198.18.0.2,")
    head.append("attacker 198.18.0.3, extra clients in 198.19.0.0/16. The real stack runs in the server namespace,")
    head.append("started by `supervisord -c supervisord.conf` (nftables with stealth, libpcap on eth0); the service")
    head.append(f"is a sink on 127.0.0.1:{SINK_PORT} behind the relay, also listening on 198.18.0.1:{DIRECT_PORT} "
                "(a `gate.public_tcp_ports` port) for the direct path.")
    head.append("Counts: " + ", ".join(f"{k} = {v}" for k, v in asdict(sizes).items()) + ".")
    head.append("")
    head.append("## Bars")
    head.append("")
    head.append("| bar | measured | |")
    head.append("|---|---:|---|")
    for name, value, ok in bars:
        head.append(f"| {name} | {value} | {verdict(ok)} |")
    head.append("")
    return "\n".join(head + body) + "\n"


def with_spread(report: str, runs: list[dict[str, Any]], earlier: list[str]) -> str:
    """The report with a section "Spread over N runs" after its bars: one run's figure is a sample."""
    sys.path[:0] = [str(BENCH)]
    import spread  # bench/spread.py, beside this file

    lines = [f"## Spread over {len(runs)} runs", "",
             f"The bars above are this run's (the last). Median and range over it and the runs before it "
             f"({', '.join(earlier)}, written by the same command with --json), computed by bench/spread.py:", ""]
    lines += ["| run | date | load average at the start, at the end |", "|---|---|---|"]
    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | {run['info']['date']} | {run['info']['loadavg_start']}, "
                     f"{run['info'].get('loadavg_end', '?')} |")
    lines += ["", f"| figure | median (range) of {len(runs)} runs |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in spread.table(runs)]
    lines.append("")
    marker = "\n## 1. "
    at = report.find(marker)
    if at < 0:
        return report + "\n" + "\n".join(lines) + "\n"
    return report[:at + 1] + "\n".join(lines) + "\n" + report[at + 1:]


# --- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny counts (< 60 s): checks the benchmark still runs")
    parser.add_argument("--output", type=Path, help="report path (default: docs/BENCHMARKS.md; required with --smoke)")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--only", default="micro,latency,relay,flood,scale",
                        help="comma-separated parts to run (default: all)")
    parser.add_argument("--client-timing", type=json.loads, default={}, metavar="JSON",
                        help='override fields of client.session.Timing for every knock, e.g. '
                             '\'{"pending_wait_s": 0.02}\' (reported in the output)')
    parser.add_argument("--code", type=Path,
                        help="run the stack and the clients from this checkout's code instead of the installed "
                             "copy (PYTHONPATH), e.g. to measure a candidate change before it lands")
    parser.add_argument("--spread-with", type=Path, nargs="+", default=[], metavar="JSON",
                        help="earlier runs' --json files: the report adds the median and range of every goal's "
                             "figure over them and this run (bench/spread.py), after this run's bars")
    args = parser.parse_args(argv)
    if args.smoke and args.output is None:
        parser.error("--smoke needs --output (smoke figures must not overwrite docs/BENCHMARKS.md)")
    output = args.output or REPO / "docs" / "BENCHMARKS.md"
    sizes = SMOKE if args.smoke else Sizes()
    parts = set(args.only.split(","))
    command = os.environ.get("DYNKNOCK_BENCH_COMMAND") or \
        shlex.join(["sudo", PYTHON, "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    info = machine_info()
    started = time.monotonic()
    if args.code is not None and "DYNKNOCK_BENCH_CODE" not in os.environ:
        reexec_with_code(args.code, sys.argv[1:] if argv is None else argv, command)
    if "DYNKNOCK_BENCH_CODE_FROM" in os.environ:
        info["code_override"] = os.environ["DYNKNOCK_BENCH_CODE_FROM"]
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-bench-"))
    results: dict[str, Any] = {}
    failure = ""
    try:
        with NetLab(PREFIX) as lab:
            bench = Bench(lab, workdir, sizes)
            bench.client_timing = args.client_timing
            if args.client_timing:
                bench.results["client_timing_override"] = args.client_timing
            try:
                bench.start()
                if "micro" in parts:
                    bench.bench_micro()
                if "latency" in parts:
                    bench.bench_latency()
                if "relay" in parts:
                    bench.bench_relay()
                if "flood" in parts:
                    bench.bench_flood()
                if "scale" in parts:
                    bench.bench_scale()
            except Exception:
                failure = traceback.format_exc()
                log("FAILED:\n" + failure)
            finally:
                results = bench.results
                bench.stop()
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        if "DYNKNOCK_BENCH_CODE" in os.environ:
            shutil.rmtree(os.environ["DYNKNOCK_BENCH_CODE"], ignore_errors=True)
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split(" ")[0]
    info["installed_digest_end"] = installed_digest()
    if failure:
        results["notes"] = "The run failed part-way; figures above are partial:\n\n```\n" + failure + "```"
    if args.json:
        args.json.write_text(json.dumps({"info": info, "sizes": asdict(sizes), "results": results}, default=str,
                                        indent=1))
    report = render(results, info, command, sizes, args.smoke, time.monotonic() - started)
    if args.spread_with:
        earlier = [json.loads(path.read_text()) for path in args.spread_with]
        runs = [*earlier, json.loads(json.dumps({"info": info, "sizes": asdict(sizes), "results": results},
                                                default=str))]
        report = with_spread(report, runs, [str(path) for path in args.spread_with])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    log(f"report written to {output} ({time.monotonic() - started:.0f} s)")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
