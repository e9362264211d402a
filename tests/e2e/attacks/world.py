"""The attack suite's world: one lab and stack for the package, and the means to attack it.

(The fixtures are imported by conftest.py from here, so that the tests and the fixtures share one
module: pytest's importlib mode loads a conftest apart from what `import` loads.)

Each test plays one adversary of docs/SECURITY.md against the real stack
(supervisord.conf, nftables, sshd) in the lab "dka": the attacker is the third
namespace on the bridge and injects whole Ethernet frames with libpcap, so it can
send anything (recorded frames, rewritten ones, forged ones, floods); the
legitimate side is the real knock-client, or packets sealed here with a user's
key when a test needs to stop half-way through an exchange. The programs the
attacker runs are real files in tests/e2e/tools/, run there by the venv's python.

What every test checks is what an attacker would want: a door (an element in
nftables' `inet dynknock ronce4/ronce6/rmany4/rmany6`, a relay's door, an OPEN answer), a
reply (any UDP from the server), a crash (a stage PID that changed), or a secret
(in a log, an event or an error message). Measured figures (packets tried,
doors wrongly opened, crashes, flood rate, time to door under flood, CPU) are
written to $DYNKNOCK_ATTACK_FIGURES (default /tmp/dynknock-attack-figures.json);
docs/SECURITY.md quotes them.

The stack is started once for the package (`world`); every test starts with the
door window it asks for (`settled`, `long_window`), a test that asserts on every
door starts with none (`no_doors`), and a test that kills a stage waits until all
are alive again: tests run alone or in any order.
These tests need root, netns, nftables, tcpdump and sshd; they FAIL without them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest
from Crypto.Cipher import ChaCha20_Poly1305

from dynknock import protocol as proto
from dynknock.client.session import Request, new_request
from dynknock.client.syn import build_syn
from dynknock.keys import SessionKeys, derive_master_key, hint_epoch, user_hint
from dynknock.topics import Topic
from tests.lab.netlab import Host, NetLab, SshdInfo, require_privileges, start_sshd
from tests.lab.stack import (
    VENV_BIN,
    EventLog,
    LabUser,
    Stack,
    door_port,
    host_mac,
    prepare_workdir,
    ssh_command,
    write_config,
    write_users,
)

REPO = Path(__file__).resolve().parents[3]
TOOLS = Path(__file__).resolve().parents[1] / "tools"
PREFIX = "dka"
WINDOW_S = 5
LONG_WINDOW_S = 16
CONTROL_PORT = proto.CONTROL_PORT
DOOR_LOW, DOOR_HIGH = 63000, 65535  # the lab's door range (dynknock.lab.stack.write_config)
CLIENT = str(VENV_BIN / "knock-client")
PYTHON = str(VENV_BIN / "python")
STAGES = ("capture", "auth", "gate", "relay", "bus")
LOG_DIR = Path("/var/log/dynknock")
FIGURES_PATH = Path(os.environ.get("DYNKNOCK_ATTACK_FIGURES", "/tmp/dynknock-attack-figures.json"))
# Distinctive, so that finding one in a log cannot be a coincidence.
ALICE_PASSWORD = "alice-Pw-7c1e93b0-horse"
BOB_KEY = bytes.fromhex("5ec2e7b0b5d1c0ffee0ddba11facade5deadbeef0badf00d1234567890abcdef")
TH_SYN, TH_ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
# The events of a door being opened, at any stage.
OPENING = (Topic.AUTH_REQUEST_RECEIVED, Topic.AUTH_REQUEST_RETRY, Topic.AUTH_KNOCK_MATCHED, Topic.AUTH_DOOR_OPENED,
           Topic.GATE_RULE_ADDED, Topic.RELAY_DOOR_LISTENING)

FIGURES: dict[str, Any] = {}


def record_figures(section: str, **values: Any) -> None:
    """Keep a test's measured figures, and rewrite the file at once (a later failure loses nothing)."""
    FIGURES.setdefault(section, {}).update(values)
    FIGURES["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = FIGURES_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(FIGURES_PATH)


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.05) -> bool:
    """Poll condition until it holds or timeout seconds have passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
    return True


# --- packets -----------------------------------------------------------------


def ipv4_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, protocol: int, payload: object) -> bytes:
    """payload is a dpkt UDP or TCP (dpkt fills in its checksum) or bytes (sent as they are)."""
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=protocol, ttl=64,
                    id=secrets.randbelow(65536), data=payload)
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def udp_segment(sport: int, dport: int, payload: bytes) -> object:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)  # dpkt leaves ulen to us


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, flags: int) -> object:
    """client/syn.py's SYN with other flags in it (dpkt recomputes the checksum in the IP frame)."""
    segment = dpkt.tcp.TCP(build_syn(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), sport, dport, seq))
    segment.flags = flags
    segment.sum = 0
    return segment


@dataclass
class Frame:
    kind: str  # P1 P2 P3 SYN udp other
    raw: bytes
    ts: float = 0.0


def classify(raw: bytes, ts: float = 0.0) -> Frame:
    try:
        eth = dpkt.ethernet.Ethernet(raw)
    except dpkt.UnpackError:
        return Frame("other", raw, ts)
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
        t = ip.data
        if isinstance(t, dpkt.udp.UDP):
            size = len(bytes(t.data))
            if t.dport == CONTROL_PORT and size in (130, 82):
                return Frame("P1" if size == 130 else "P2", raw, ts)
            if t.sport == CONTROL_PORT and size == 98:
                return Frame("P3", raw, ts)
            return Frame("udp", raw, ts)
        if isinstance(t, dpkt.tcp.TCP) and t.flags & (TH_SYN | TH_ACK) == TH_SYN:
            return Frame("SYN", raw, ts)
    return Frame("other", raw, ts)


def udp_payload(raw: bytes) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(raw).data.data.data)


def rewrite_source(raw: bytes, mac: bytes, address: str) -> bytes:
    """The same frame from another host: Ethernet and IP source replaced, checksums recomputed by dpkt."""
    eth = dpkt.ethernet.Ethernet(raw)
    eth.src = mac
    eth.data.src = socket.inet_aton(address)
    eth.data.sum = 0
    eth.data.data.sum = 0
    return bytes(eth)


def read_pcap(path: Path) -> list[Frame]:
    frames: list[Frame] = []
    try:
        with path.open("rb") as handle:
            for ts, raw in dpkt.pcap.Reader(handle):
                frames.append(classify(bytes(raw), ts))
    except (ValueError, dpkt.NeedData, struct.error):
        pass  # a file still being written: its last record may be torn
    return frames


def with_gaps(frames: list[Frame], raws: list[bytes] | None = None) -> list[bytes | float]:
    """Frames to inject with the pauses they were recorded with (knock-client leaves 5 ms between
    P1 and its SYNs, time for capture to let the new request's SYNs through its kernel filter)."""
    out: list[bytes | float] = []
    for index, frame in enumerate(frames):
        if index:
            out.append(min(0.5, max(0.0, frame.ts - frames[index - 1].ts)))
        out.append(raws[index] if raws is not None else frame.raw)
    return out


# --- a user's keys, to seal packets as that user's client would -----------------


class Keyholder:
    def __init__(self, name: str, master: bytes) -> None:
        self.name = name
        self.master = master
        self.keys = SessionKeys.from_master(master)

    def hint(self, when: float | None = None) -> bytes:
        return user_hint(self.keys, hint_epoch(time.time() if when is None else when))

    def seal(self, message: proto.Message) -> bytes:
        return proto.seal(self.keys, message, self.hint(message.timestamp_ms / 1000),
                          secrets.token_bytes(proto.NONCE_LEN))

    def p1(self, address: str, service: str = "ssh",
           knock_kind: proto.KnockKind = proto.KnockKind.SYN) -> tuple[bytes, Request]:
        request = new_request(service, ipaddress.ip_address(address), knock_kind)
        now = time.time_ns() // 1_000_000
        return self.seal(proto.P1(now, request.request_id, request.address, service, request.knocks,
                                  knock_kind)), request

    def p2(self, request_id: bytes) -> bytes:
        return self.seal(proto.P2(time.time_ns() // 1_000_000, request_id))

    def open_p3(self, payload: bytes) -> proto.P3 | proto.Reject:
        header = proto.parse_header(payload, accept=(proto.PacketType.P3,))
        if isinstance(header, proto.Reject):
            return header
        message = proto.open_packet(self.keys, header, payload)
        assert not isinstance(message, proto.P1 | proto.P2)
        return message

    def answers(self, path: Path) -> list[proto.P3 | proto.Reject]:
        """Every P3 answer in a capture (complete or still being written), opened with this user's key."""
        return [self.open_p3(udp_payload(f.raw)) for f in read_pcap(path) if f.kind == "P3"]

    def statuses(self, path: Path) -> list[str]:
        """The status of every P3 answer in a capture that opens with this user's key."""
        return [a.status.name for a in self.answers(path) if isinstance(a, proto.P3)]

    def seal_raw_plaintext(self, kind: proto.PacketType, plain: bytes) -> bytes:
        """A packet that authenticates but whose plaintext the codec would never write (a hostile key holder)."""
        header = struct.pack("!BB8s24s", proto.VERSION, kind, self.hint(), secrets.token_bytes(24))
        cipher = ChaCha20_Poly1305.new(key=self.keys.client_to_server, nonce=header[10:34])
        cipher.update(header)
        ciphertext, tag = cipher.encrypt_and_digest(plain)
        return header + ciphertext + tag

    def secrets(self) -> list[str]:
        k = self.keys
        return [base64.b64encode(self.master).decode(), self.master.hex(), k.hint.hex(), k.client_to_server.hex(),
                k.server_to_client.hex(), base64.b64encode(k.client_to_server).decode()]


# --- the world ----------------------------------------------------------------


@dataclass
class World:
    lab: NetLab
    stack: Stack
    sshd: SshdInfo
    workdir: Path
    events: EventLog
    alice: Keyholder
    bob: Keyholder
    bob_key_file: Path
    macs: dict[str, bytes] = field(default_factory=dict)
    # Everything a stage or the client printed, for the secrets test.
    outputs: list[str] = field(default_factory=list)
    # Decrypted payloads seen during the suite (request ids, plaintexts), for the secrets test.
    payload_secrets: set[str] = field(default_factory=set)
    window_s: int = WINDOW_S
    _serial: int = 0

    # -- addresses and files --

    def mac(self, host: Host) -> bytes:
        if host.ns not in self.macs:
            self.macs[host.ns] = host_mac(self.lab, host)
        return self.macs[host.ns]

    def scratch(self, name: str) -> Path:
        self._serial += 1
        path = self.workdir / "scratch" / f"{self._serial:04d}-{name}"
        path.parent.mkdir(exist_ok=True)
        return path

    def tool(self, name: str) -> str:
        """tests/e2e/tools/<name>, copied where an unprivileged user in a namespace can read it."""
        path = self.workdir / "tools" / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            shutil.copyfile(TOOLS / name, path)
            path.chmod(0o644)
        return str(path)

    # -- sending --

    def inject(self, host: Host, frames: Sequence[bytes | float]) -> int:
        """Send whole Ethernet frames from host's eth0 (a float is a pause in seconds)."""
        path = self.scratch("frames.txt")
        path.write_text("".join(f"sleep {f}\n" if isinstance(f, float) else f.hex() + "\n" for f in frames))
        done = self.lab.run(host, [PYTHON, str(TOOLS / "inject_frames.py"), host.interface, str(path)], timeout=60)
        return int(done.stdout.strip())

    def udp_from(self, host: Host, payload: bytes, sport: int = 0, src: str | None = None) -> bytes:
        return ipv4_frame(self.mac(host), self.mac(self.lab.server), src or host.ipv4, self.lab.server.ipv4,
                          dpkt.ip.IP_PROTO_UDP,
                          udp_segment(sport or 20000 + secrets.randbelow(20000), CONTROL_PORT, payload))

    def tcp_from(self, host: Host, dport: int, seq: int, flags: int = TH_SYN, src: str | None = None,
                 sport: int = 0) -> bytes:
        source = src or host.ipv4
        segment = tcp_segment(source, self.lab.server.ipv4, sport or 32768 + secrets.randbelow(28000), dport, seq,
                              flags)
        return ipv4_frame(self.mac(host), self.mac(self.lab.server), source, self.lab.server.ipv4,
                          dpkt.ip.IP_PROTO_TCP, segment)

    def send_p1(self, host: Host, p1: bytes, client: str) -> None:
        """Inject a P1 and return once auth has read it: capture widens its kernel filter to the P1's
        sender before it forwards the P1 (capture/main.py), so the request's knocks pass from then on."""
        mark = self.events.mark()
        self.inject(host, [self.udp_from(host, p1)])
        received = self.events.wait_for(
            lambda e: e.topic == Topic.AUTH_REQUEST_RECEIVED and e.fields.get("client") == client, mark, 5)
        assert received is not None, "auth never read the P1"

    # -- the real client --

    def knock(self, *args: str, user: str = "alice", timeout_s: float = 3, host: str | None = None,
              ns: Host | None = None, lab: NetLab | None = None) -> subprocess.CompletedProcess[str]:
        lab = lab or self.lab
        argv = [CLIENT, "-u", user, "--timeout", str(timeout_s)]
        argv += ["--password-stdin"] if user == "alice" else ["-k", str(self.bob_key_file)]
        argv += [*args, host or lab.server.ipv4]
        done = lab.run(ns or lab.client, argv, check=False, timeout=timeout_s + 60,
                       input=f"{ALICE_PASSWORD}\n" if user == "alice" else None)
        self.outputs += [done.stdout, done.stderr]
        return done

    def open_door(self, user: str = "alice", **kwargs: Any) -> int:
        done = self.knock(user=user, **kwargs)
        assert done.returncode == 0, done.stderr
        return door_port(done.stdout + done.stderr)

    def ssh_command(self, command: str) -> str:
        return ssh_command(self.sshd, command)

    # -- observing --

    def doors(self, lab: NetLab | None = None) -> set[tuple[str, int]]:
        lab = lab or self.lab
        found: set[tuple[str, int]] = set()
        for name in ("ronce4", "ronce6", "rmany4", "rmany6"):
            out = lab.run(lab.server, ["nft", "-j", "list", "set", "inet", "dynknock", name]).stdout
            for item in json.loads(out)["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                    address, port = value["concat"]
                    found.add((str(address), int(port)))
        return found

    def wait_doors(self, predicate: Callable[[set[tuple[str, int]]], bool], timeout: float) -> set[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while True:
            doors = self.doors()
            if predicate(doors) or time.monotonic() >= deadline:
                return doors
            time.sleep(0.2)

    def door_listeners(self, lab: NetLab | None = None) -> set[int]:
        """The door ports the relay serves: its listeners on door ports (gate.backend "none"), and, for this
        world's stack (nftables redirects relayed doors to one listener), the doors of its next heartbeat."""
        out = (lab or self.lab).run((lab or self.lab).server, ["ss", "-Hltn"]).stdout
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}
        served = {p for p in ports if DOOR_LOW <= p <= DOOR_HIGH}
        if lab is None or lab is self.lab:
            served |= {int(p) for p in self.events.next_alive("relay")["door_ports"]}
        return served

    def door_connections(self) -> list[str]:
        out = self.lab.run(self.lab.server, ["ss", "-Htn"]).stdout
        lines = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 5 or parts[0] == "TIME-WAIT":  # closed; the kernel only waits out late segments
                continue
            local_port = int(parts[3].rsplit(":", 1)[1])
            peer_port = int(parts[4].rsplit(":", 1)[1])
            if DOOR_LOW <= local_port <= DOOR_HIGH or 22 in (local_port, peer_port):
                lines.append(line)
        return lines

    def pids(self, stack: Stack | None = None) -> dict[str, int]:
        stack = stack or self.stack
        return {stage: stack.stage_pid(stage) for stage in STAGES}

    def rejections(self, timeout: float = 8.0) -> dict[str, int]:
        return dict(self.events.next_alive("auth", timeout)["rejections"])

    def sniff(self, host: Host, bpf: str, lab: NetLab | None = None) -> AbstractContextManager[Path]:
        """tcpdump on host's eth0 into a file; the file is complete when the block ends."""
        return (lab or self.lab).sniff(host, bpf, self.scratch(f"{host.role}.pcap"))

    def wait_statuses(self, path: Path, keyholder: Keyholder, wanted: Callable[[list[str]], bool],
                      timeout: float = 3) -> list[str]:
        """The P3 answers captured so far, once `wanted` holds of them (or timeout seconds have passed)."""
        wait_until(lambda: wanted(keyholder.statuses(path)), timeout)
        return keyholder.statuses(path)

    # -- the door window --

    def set_window(self, seconds: int) -> None:
        """From here on doors stay open `seconds`: the config is rewritten and the stages that read it restarted."""
        config = self.stack.config_path
        text = config.read_text()
        wanted = f"window_seconds = {seconds}"
        if wanted not in text:
            config.write_text(re.sub(r"window_seconds = \d+", wanted, text))
            self.restart_door_stages()
        self.window_s = seconds

    def restart_door_stages(self) -> None:
        """Kill auth, gate and relay (supervisord starts them again), then empty the door sets: the
        state a fresh stack has, whatever doors earlier tests left, without waiting out their windows.
        The gate keeps its table across its own restart on purpose (kernel doors outlive it), so the
        sets are flushed here, after the new gate is up."""
        for stage in ("auth", "gate", "relay"):
            self.stack.kill_stage(stage)
        self.stack.wait_alive(20)
        for name in ("ronce4", "ronce6", "rmany4", "rmany6"):
            self.lab.run(self.lab.server, ["nft", "flush", "set", "inet", "dynknock", name])


# --- shared by several themes ------------------------------------------------------


def record_exchange(world: World) -> tuple[list[Frame], int]:
    """A real knock by the real client, captured on the server's interface."""
    client = world.lab.client.ipv4
    bpf = f"host {client} and (udp port {CONTROL_PORT} or (tcp[tcpflags] & tcp-syn != 0))"
    with world.sniff(world.lab.server, bpf) as path:
        port = world.open_door("alice")
    frames = read_pcap(path)
    return frames, port


def note_payloads(world: World, keyholder: Keyholder, frames: list[Frame]) -> None:
    """Decrypt what was captured (we hold the key), so the secrets test can look for it everywhere."""
    for frame in frames:
        if frame.kind not in ("P1", "P2"):
            continue
        payload = udp_payload(frame.raw)
        header = proto.parse_header(payload)
        assert not isinstance(header, proto.Reject)
        message = proto.open_packet(keyholder.keys, header, payload)
        assert not isinstance(message, proto.Reject), message
        world.payload_secrets.add(message.request_id.hex())
        if isinstance(message, proto.P1):
            world.payload_secrets.add(proto.encode_plaintext(message)[1].hex())
            world.payload_secrets.update(f"{k.isn:08x}" for k in message.knocks)


def stage_argv(stage: str, config: Path) -> list[str]:
    program = str(VENV_BIN / f"knock-{stage}")
    if stage == "gate":  # as supervisord.conf starts it: the dynknock user with CAP_NET_ADMIN only
        return ["/usr/bin/setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups", "--no-new-privs",
                "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin",
                program, "-c", str(config)]
    return [program, "-c", str(config)]


def start_refused(world: World, case: str, stage: str) -> tuple[int | None, str, list[str]]:
    """Start knock-<stage> alone with one thing wrong (case); its exit status, its stderr, and what the
    one line must name."""
    lab = world.lab
    workdir = world.workdir / "bad-start" / f"{case}-{stage}"
    prepare_workdir(workdir)
    config = workdir / "dynknock.toml"
    # backend "none" and our own table name: a stage that wrongly starts changes no firewall.
    write_config(config, workdir, lab, backend="none", table="dkabad", window_seconds=WINDOW_S)
    write_users(workdir / "users.json", [LabUser("alice", key=world.alice.master)])
    expect: list[str]
    if case == "runtime_dir_0777":
        os.chmod(workdir / "run", 0o777)
        expect = [str(workdir / "run"), "0777", "bus.runtime_dir"]
    elif case == "users_file_missing":
        (workdir / "users.json").unlink()
        expect = [str(workdir / "users.json")]
    elif case == "users_file_0644":
        os.chmod(workdir / "users.json", 0o644)
        expect = [str(workdir / "users.json"), "0644"]
    else:
        config.write_text(config.read_text().replace(f"window_seconds = {WINDOW_S}", "window_seconds = 0"))
        expect = [str(config), "server.window_seconds"]
    # The attacker's namespace: capture finds an eth0 there, and nothing of the real stack is touched.
    try:
        done = lab.run(lab.attacker, stage_argv(stage, config), check=False, timeout=8)
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stderr = None, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
    world.outputs.append(stderr)
    return returncode, stderr, expect


def _log_offsets() -> dict[str, int]:
    return {p.name: p.stat().st_size for p in LOG_DIR.glob("*.log")} if LOG_DIR.exists() else {}


@pytest.fixture(scope="package")
def world() -> Iterator[World]:
    require_privileges()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-attacks-"))
    os.chmod(workdir, 0o755)
    FIGURES.clear()
    record_figures("run", log_offsets=_log_offsets(), workdir=str(workdir))
    alice = Keyholder("alice", derive_master_key("alice", ALICE_PASSWORD))
    bob = Keyholder("bob", BOB_KEY)
    with NetLab(PREFIX) as lab:
        prepare_workdir(workdir)
        # These attacks were written against relayed doors (a listener to kill, a set element to look
        # for): keep that path under attack here. Kernel doors are attacked in test_kernel_doors.py and
        # test_stealth.py.
        write_config(workdir / "dynknock.toml", workdir, lab, window_seconds=WINDOW_S, forward={"ssh": "relay"})
        bob_key_file = workdir / "bob.key"
        bob_key_file.write_text(base64.b64encode(BOB_KEY).decode() + "\n")
        bob_key_file.chmod(0o600)
        write_users(workdir / "users.json", [LabUser("alice", key=alice.master), LabUser("bob", key=BOB_KEY)])
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        events = EventLog(stack.endpoints.tap)
        try:
            stack.start()
            world = World(lab, stack, sshd, workdir, events, alice, bob, bob_key_file)
            world.events.next_alive("auth", 10)  # our subscription is live
            yield world
        finally:
            stack.stop()
            events.close()
            record_figures("run", suite_seconds=round(time.monotonic() - started, 1))


@pytest.fixture(autouse=True)
def settled(world: World, request: pytest.FixtureRequest) -> World:
    """Every test starts with the window it asks for: LONG_WINDOW_S if it uses `long_window` (so that a
    door outlives a stage's restart), WINDOW_S otherwise. Changing it restarts auth, gate and relay;
    consecutive tests of one window pay nothing. A test that kills a stage waits until every stage is
    alive again before it ends."""
    world.set_window(LONG_WINDOW_S if "long_window" in request.fixturenames else WINDOW_S)
    return world


@pytest.fixture
def long_window(settled: World) -> int:
    """Doors stay open LONG_WINDOW_S in this test (`settled` sets it)."""
    return settled.window_s


@pytest.fixture
def no_doors(settled: World) -> World:
    """No door and no door listener at the start, for tests that assert on every door there is. Doors
    an earlier test left are not waited out (up to LONG_WINDOW_S each) but reset: auth, gate and relay
    restart and the door sets are emptied. That doors time out on their own is tested where it is the
    point (tests/e2e/test_stack.py, test_kernel_doors.py)."""
    if settled.doors() or settled.door_listeners():
        settled.restart_door_stages()
    assert settled.doors() == set()
    assert wait_until(lambda: not settled.door_listeners(), 3, every=0.2), settled.door_listeners()
    return settled
