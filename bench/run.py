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
4. many clients from many source addresses at once (1,000, then 2,000, each over 3 s), memory of each
   stage, and how busy the whole machine was over exactly the clients' 3 s (/proc/stat, load average);
5. per-stage microbenchmarks (codec, capture parse, gate rules, bus).

Every loop and flood is bounded in count and time; the lab is torn down in
`finally`. --smoke runs tiny counts (well under a minute) to keep this code from
rotting (tests/e2e/test_bench_smoke.py); its report goes where --output says.
--lab-prefix names the lab's namespaces (a lab of the same prefix is removed first).

To measure a candidate change before it lands: --code DIR runs the stack, the
workers and knock-client from DIR's packages instead of the installed copy, and
--client-timing '{"pending_wait_s": 0.02}' overrides client.session.Timing for
every knock. bench/ANALYSIS.md (hand-written: profiles, causes, what was tried)
is appended to a full run's report.

This file measures and collects JSON-able results (what --json writes); bench/report.py
renders the report from them (`bench/report.py --json RUN.json --output X.md` renders a
stored run again, without the lab), and --spread-with adds bench/spread.py's section.
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
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# bench_codec, micro, report, figures: this script's folder (first on sys.path), not packages
import bench_codec
import micro
import report
import zmq
from figures import DOOR_MODES, STAGES
from report import DIRECT_PORT, SINK_PORT
from workers import collect, encode_args

from dynknock import bus
from dynknock import protocol as proto
from dynknock.client.session import new_request
from dynknock.keys import SessionKeys, derive_master_key, hint_epoch, user_hint
from dynknock.topics import ALIVE, Topic

# The lab of the tests and benchmarks (tests/lab) is the checkout's, not installed: its folder goes last on
# sys.path, after site-packages, so that dynknock itself stays the installed copy (or the --code copy).
sys.path.append(str(Path(__file__).resolve().parent.parent))
from tests.lab.netlab import NetLab  # noqa: E402
from tests.lab.stack import VENV_BIN, LabUser, Stack, prepare_workdir, write_config, write_users  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PYTHON = str(VENV_BIN / "python")
WORKER = str(BENCH / "labworker.py")
PREFIX = "dkb"
SERVICE = "bench"  # forward = "auto": the kernel forwards its doors (IPv4 clients, target on this host)
RELAY_SERVICE = "benchr"  # the same sink with forward = "relay", for the relay's row
RAISED_CAPS = "max_doors_per_user = 10000\nmax_doors_total = 65535"
DEFAULT_CAPS = "max_doors_per_user = 8\nmax_doors_total = 1000"  # dynknock.config's defaults
# junk, right-sized junk, a SYN scan; and an eavesdropper's floods: junk under one user's live
# hint from spoofed sources, and replays of one captured exchange.
FLOOD_KINDS = ("junk", "sized", "syn", "hint", "replay")
CLK_TCK = os.sysconf("SC_CLK_TCK")



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
    scale_clients: tuple[int, ...] = (1000, 2000)  # one scale row each, in turn, each over scale_spread_s
    scale_procs: int = 4
    scale_spread_s: float = 3.0
    scale_pause_s: float = 5.0  # between two scale rows: what the first left (closes, conntrack) settles
    micro_seconds: float = 2.0
    nft_singles: int = 100
    nft_batch: int = 1000
    bus_messages: int = 200_000
    window_s: int = 180


SMOKE = Sizes(knocks=6, spawns=1, kdf_runs=1, gap_sweep=(0.01,), gap_sweep_knocks=3, direct_connects=5,
              flood_rate=20_000, flood_senders=1, flood_seconds=1.0, flood_max_seconds=6.0, flood_trials=2,
              hog_knocks=10,
              stream_seconds=0.5,
              stream_reps=1, parallel_streams=3, parallel_reps=1, scale_clients=(12, 24), scale_procs=2,
              scale_spread_s=0.5, scale_pause_s=0.5,
              micro_seconds=0.2, nft_singles=3, nft_batch=20, bus_messages=5_000, window_s=60)


# --- small helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_stat_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs, from /proc/stat."""
    return cpu_ticks()[0]


def cpu_ticks() -> list[tuple[int, int]]:
    """(busy, total) clock ticks from /proc/stat: all CPUs together first, then each CPU."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        values = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]  # idle + iowait
        out.append((sum(values) - idle, sum(values)))
    return out


def loadavg() -> list[float]:
    """The load average over 1, 5 and 15 minutes."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


class Window:
    """How busy the whole machine was over exactly [start_wall, start_wall + seconds] (wall clock): the
    busy share of all CPUs together and of each (/proc/stat), the load average at both ends, and the CPU
    of the named processes meanwhile. A thread samples at the two instants, whatever the caller does."""

    def __init__(self, start_wall: float, seconds: float, pids: dict[str, int]) -> None:
        self.start_wall, self.seconds, self.pids = start_wall, seconds, dict(pids)
        self._out: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="window", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _snap(self) -> tuple[float, list[tuple[int, int]], list[float], dict[str, int]]:
        ticks = {}
        for name, pid in self.pids.items():
            try:
                ticks[name] = proc_stat_ticks(pid)
            except OSError:  # gone meanwhile (a stage restarted, a client process ended)
                pass
        return time.time(), cpu_ticks(), loadavg(), ticks

    def _run(self) -> None:
        time.sleep(max(0.0, self.start_wall - time.time()))
        t0, cpu0, load0, proc0 = self._snap()
        time.sleep(max(0.0, self.start_wall + self.seconds - time.time()))
        t1, cpu1, load1, proc1 = self._snap()
        shares = [(b1 - b0) / (n1 - n0) if n1 > n0 else float("nan")
                  for (b0, n0), (b1, n1) in zip(cpu0, cpu1, strict=True)]
        self._out = {"start_wall": t0, "seconds": t1 - t0, "busy_s": (cpu1[0][0] - cpu0[0][0]) / CLK_TCK,
                     "total_s": (cpu1[0][1] - cpu0[0][1]) / CLK_TCK, "busy_share": shares[0],
                     "cpu_shares": shares[1:], "loadavg_start": load0, "loadavg_end": load1,
                     "processes_s": {name: (proc1[name] - proc0[name]) / CLK_TCK for name in proc0 if name in proc1}}

    def result(self, timeout: float) -> dict[str, Any]:
        """The figures, once the window is over (empty if it never ended within timeout)."""
        self._thread.join(timeout)
        return dict(self._out)


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
    # Each package's modules, as the install lays them out (pyproject's packages): in a checkout
    # dynknock/<stage> is a symlink to the stage's folder, so a copy of the tree under dynknock/ would
    # hold each stage twice over (and copytree of dynknock/ then met dynknock/lab already there).
    for package in PACKAGES:
        (target / package).mkdir(parents=True, exist_ok=True)
        for module in (checkout / package).resolve().glob("*.py"):
            shutil.copyfile(module, target / package / module.name)
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


STEP_TOPICS = (Topic.AUTH_REQUEST_RECEIVED, Topic.AUTH_KNOCK_COMPLETE, Topic.AUTH_DOOR_OPENED)


def request_steps(steps: list[tuple[float, str, str]], clients: set[str]) -> dict[str, list[float]]:
    """Per client address of `clients`, from auth's events: ms from its first P1 read to its knocks
    complete, and from knocks complete to the door opened (gate's confirmation)."""
    first: dict[str, float] = {}
    complete: dict[str, float] = {}
    opened: dict[str, float] = {}
    for when, topic, client in steps:
        if client not in clients:
            continue
        if topic == Topic.AUTH_REQUEST_RECEIVED:
            first.setdefault(client, when)
        elif topic == Topic.AUTH_KNOCK_COMPLETE:
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
        for topic in (*ALIVE.values(), *STEP_TOPICS):
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sub.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sub.poll(200):
                    continue
                _topic, frame = sub.recv_multipart()
                try:
                    event = bus.decode_as(frame, bus.Event)
                except bus.BadMessage:
                    continue
                with self._lock:
                    if event.topic in ALIVE.values():
                        self.alive[event.stage] = dict(event.fields)
                        self.alive_at[event.stage] = time.monotonic()
                    elif event.topic == Topic.AUTH_DOOR_OPENED:
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
                [f"scale{i}" for i in range(max(s.scale_clients, default=0))]:
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

    collect = staticmethod(collect)

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
        """One key holder, from one address, knocks as fast as it can for door after door,
        with the shipped caps; another user knocks meanwhile."""
        s = self.sizes
        log("hog: one user knocks for doors back to back, the shipped door caps; another user knocks meanwhile")
        self.set_caps(DEFAULT_CAPS)
        try:
            hog = self.worker_popen(self.lab.attacker, "knocks", {
                "server": self.lab.server.ipv4, "key_files": [self.key("hog")], "count": s.hog_knocks,
                "timing": {**self.client_timing, "timeout_s": 2.0}, "max_seconds": 60,
                # It never uses a door: a used single-use door stops counting against its user's cap (issue
                # 21), so only a holder of unused doors meets max_doors_per_user.
                "use_door": False})
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

    def nft_door_count(self, clients: set[str]) -> int:
        """Doors open now for these client addresses: relay doors not used yet (a used single-use one has
        lost its ronce4 element), and kernel doors by their target (fwd4 keeps it for the whole window; a
        used single-use door has lost its once4 element)."""
        return sum(self._nft_set_count("set", name, clients) for name in ("ronce4", "rmany4")) \
            + self._nft_set_count("map", "fwd4", clients)

    def _nft_set_count(self, kind: str, name: str, clients: set[str]) -> int:
        out = self.lab.run(self.lab.server, ["nft", "-j", "list", kind, "inet", "dynknock", name]).stdout
        count = 0
        for item in json.loads(out)["nftables"]:
            for element in item.get(kind, {}).get("elem", []):
                if isinstance(element, list):  # a map's element: [key, value]
                    element = element[0]
                value = element.get("elem", {}).get("val", element) if isinstance(element, dict) else element
                concat = value.get("concat", []) if isinstance(value, dict) else []
                if concat and str(concat[0]) in clients:
                    count += 1
        return count

    def bench_scale(self) -> None:
        """One row per count of scale_clients, in turn: the first (1,000) is results["scale"] as it always
        was, the others results["scale_more"]."""
        s = self.sizes
        rows = []
        for n, count in enumerate(s.scale_clients):
            if n:
                time.sleep(s.scale_pause_s)
            rows.append(self.scale_row(count))
        if rows:
            self.results["scale"] = rows[0]
            self.results["scale_more"] = rows[1:]

    def scale_row(self, count: int) -> dict[str, Any]:
        """`count` clients, each its own user and fresh source address, their starts spread over
        scale_spread_s; how busy the machine was over exactly those seconds (Window)."""
        s = self.sizes
        log(f"scale: {count} clients from {count} addresses over {s.scale_spread_s} s")
        addresses = self.lab.add_ipv4_addresses(self.lab.client, count)
        mine = set(addresses)
        pids = self.stage_pids()
        since = time.monotonic()
        machine0 = machine_ticks()
        rss0 = {stage: vm_rss_kib(pid) for stage, pid in pids.items()}
        cpu0 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
        cap0 = self.tap.fresh("capture", time.monotonic() - 2.5, 5) if self.tap else {}  # one every 2 s
        clients = [(addr, self.key(f"scale{i}")) for i, addr in enumerate(addresses)]
        start_wall = time.time() + 3.0
        timing = {"timeout_s": 15.0, **self.client_timing}
        procs = [self.worker_popen(self.lab.client, "scale", {
            "server": self.lab.server.ipv4, "clients": clients[n::s.scale_procs], "start_wall": start_wall,
            "spread_s": s.scale_spread_s, "timing": timing, "seed": n}) for n in range(s.scale_procs)]
        window = Window(start_wall, s.scale_spread_s,
                        {**pids, **{f"client{n}": proc.pid for n, proc in enumerate(procs)}})
        window.start()
        # Each worker's rows are read as they come: 500 rows (2,000 clients) fill a pipe, and a worker
        # blocked on its write never ended (the row waited for its deadline, 90 s more, and said so).
        collected: list[list[dict[str, Any]]] = [[] for _ in procs]
        failures: list[str] = []

        def drain(n: int, proc: subprocess.Popen[str]) -> None:
            try:
                collected[n] = self.collect(proc, s.scale_spread_s + 90)  # killed past that
            except RuntimeError as exc:
                failures.append(str(exc))

        readers = [threading.Thread(target=drain, args=(n, proc), daemon=True) for n, proc in enumerate(procs)]
        for reader in readers:
            reader.start()
        peak: dict[str, int] = dict(rss0)
        while any(reader.is_alive() for reader in readers):
            for stage, pid in pids.items():
                try:
                    peak[stage] = max(peak[stage], vm_rss_kib(pid))
                except OSError:
                    pass
            time.sleep(0.2)
        machine1 = machine_ticks()
        if failures:
            raise RuntimeError(failures[0])
        rows = [r for worker_rows in collected for r in worker_rows if "ok" in r]
        doors_nft = self.nft_door_count(mine)
        rss1 = {stage: vm_rss_kib(pid) for stage, pid in pids.items()}
        cpu1 = {stage: proc_stat_ticks(pid) for stage, pid in pids.items()}
        auth_alive = self.tap.fresh("auth", time.monotonic(), 5) if self.tap else {}
        cap1 = self.tap.fresh("capture", time.monotonic(), 5) if self.tap else {}
        auth_doors = sum(1 for d in auth_alive.get("doors", []) if str(d.get("client", "")) in mine)
        return {"clients": count, "rows": rows, "rss_before": rss0, "rss_after": rss1,
                "rss_peak": peak, "cpu_s": {st: (cpu1[st] - cpu0[st]) / CLK_TCK for st in STAGES},
                "nft_doors": doors_nft, "auth_doors": auth_doors, "capture_before": cap0,
                "capture_after": cap1, "spread_s": s.scale_spread_s,
                "machine_busy_s": (machine1[0] - machine0[0]) / CLK_TCK,
                "machine_total_s": (machine1[1] - machine0[1]) / CLK_TCK,
                "window": window.result(timeout=s.scale_spread_s + 10),
                "server_side_ms": [f["latency_ms"] for f in self.tap.opened_since(since)
                                   if str(f.get("client", "")) in mine] if self.tap else [],
                "steps": request_steps(list(self.tap.steps), mine) if self.tap else {}}

    # -- 5. micro -------------------------------------------------------------------------------------

    def bench_micro(self) -> None:
        s = self.sizes
        log("micro: codec (bench_codec.py), capture, gate (core and real nftables), bus")
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
    parser.add_argument("--lab-prefix", default=PREFIX, metavar="NAME",
                        help=f"the lab's namespace prefix (default {PREFIX}); a lab with the same prefix is "
                             "removed first, so two runs at once need different prefixes")
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
        with NetLab(args.lab_prefix) as lab:
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
    # The report is rendered from the very JSON that --json keeps, so bench/report.py --json gives it again.
    run = json.loads(json.dumps({"info": info, "sizes": asdict(sizes), "results": results, "command": command,
                                 "smoke": args.smoke, "elapsed_s": time.monotonic() - started}, default=str))
    if args.json:
        args.json.write_text(json.dumps(run, indent=1))
    earlier = [(str(path), json.loads(path.read_text())) for path in args.spread_with]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.render_with_texts(run, earlier))
    log(f"report written to {output} ({time.monotonic() - started:.0f} s)")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
