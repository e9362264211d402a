"""Attacks on the whole stack, with real packets, in network namespaces.

Each test plays one adversary of docs/SECURITY.md against the real stack
(supervisord.conf, nftables, sshd) in the lab "dka": the attacker is the third
namespace on the bridge and injects whole Ethernet frames with libpcap, so it can
send anything (recorded frames, rewritten ones, forged ones, floods); the
legitimate side is the real knock-client, or packets sealed here with a user's
key when a test needs to stop half-way through an exchange.

What every test checks is what an attacker would want: a door (an element in
nftables' `inet dynknock doors4/doors6`, a relay listener, an OPEN answer), a
reply (any UDP from the server), a crash (a stage PID that changed), or a secret
(in a log, an event or an error message). Measured figures (packets tried,
doors wrongly opened, crashes, flood rate, time to door under flood, CPU) are
written to $DYNKNOCK_ATTACK_FIGURES (default /tmp/dynknock-attack-figures.json);
docs/SECURITY.md quotes them.

These tests need root, netns, nftables, tcpdump and sshd; they FAIL without them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
import selectors
import shlex
import socket
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest
from Crypto.Cipher import ChaCha20_Poly1305

from dynknock import protocol as proto
from dynknock.client.session import new_request
from dynknock.client.syn import build_syn, tcp_checksum
from dynknock.events import as_json
from dynknock.keys import SessionKeys, derive_master_key, hint_epoch, user_hint
from dynknock.lab.netlab import Host, NetLab, SshdInfo, require_privileges, start_sshd
from dynknock.lab.stack import VENV_BIN, EventLog, LabUser, Stack, prepare_workdir, write_config, write_users

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INJECT_TOOL = Path(__file__).resolve().parent / "tools" / "inject_frames.py"
PREFIX = "dka"
NONE_PREFIX = "dkan"
WINDOW_S = 5
CONTROL_PORT = 62201
DOOR_LOW, DOOR_HIGH = 63000, 65535  # the lab's door range (dynknock.lab.stack.write_config)
CLIENT = str(VENV_BIN / "knock-client")
PYTHON = str(VENV_BIN / "python")
STAGES = ("capture", "auth", "gate", "relay", "bus")
LOG_DIR = Path("/var/log/dynknock")
FIGURES_PATH = Path(os.environ.get("DYNKNOCK_ATTACK_FIGURES", "/tmp/dynknock-attack-figures.json"))
DOOR_LINE = re.compile(r"Door is open at (\S+) port (\d+) for (\d+) seconds")
# Distinctive, so that finding one in a log cannot be a coincidence.
ALICE_PASSWORD = "alice-Pw-7c1e93b0-horse"
BOB_KEY = bytes.fromhex("5ec2e7b0b5d1c0ffee0ddba11facade5deadbeef0badf00d1234567890abcdef")
TH_SYN, TH_ACK = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK

FIGURES: dict[str, Any] = {}


def record_figures(section: str, **values: Any) -> None:
    """Keep a test's measured figures, and rewrite the file at once (a later failure loses nothing)."""
    FIGURES.setdefault(section, {}).update(values)
    FIGURES["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = FIGURES_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(FIGURES_PATH)


# --- tools run inside the lab's namespaces (written into the work directory) ---


FLOOD_TOOL = r'''
"""flood.py IFACE SRC_MAC DST_MAC SRC_IP DST_IP CONTROL_PORT SECONDS MAX_PACKETS

One process, as fast as it can: junk UDP to the control port (random bytes of
random sizes 0..300, and junk of exactly P1/P2 size with a well-formed version
and type, which the kernel filter passes) interleaved with a SYN scan of every
port 1..65535 (segments from client/syn.py), round after round. Stops after
SECONDS or MAX_PACKETS, whichever comes first; prints what it sent as JSON.
"""
import ipaddress, json, os, random, struct, sys, time
import pcap
from dynknock.client.syn import build_syn, internet_checksum

iface, src_mac, dst_mac, src_ip, dst_ip = sys.argv[1:6]
port, seconds, max_packets = int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
assert seconds <= 15 and max_packets <= 5_000_000, "the flood is bounded"
src, dst = ipaddress.IPv4Address(src_ip), ipaddress.IPv4Address(dst_ip)
ether = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"

def frame(proto, payload):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.getrandbits(16), 0, 64, proto, 0,
                         src.packed, dst.packed)
    checksum = internet_checksum(header)
    return ether + header[:10] + struct.pack("!H", checksum) + header[12:] + payload

junk = []
for i in range(4096):
    kind = i % 4
    if kind == 0:
        data = os.urandom(random.randrange(0, 301))
    elif kind == 1:
        data = b"\x01\x01" + os.urandom(128)
    elif kind == 2:
        data = b"\x01\x02" + os.urandom(80)
    else:
        data = os.urandom(130)
    junk.append(frame(17, struct.pack("!HHHH", random.randrange(1024, 65536), port, 8 + len(data), 0) + data))
syns = [frame(6, build_syn(src, dst, random.randrange(32768, 61000), p, random.getrandbits(32)))
        for p in range(1, 65536)]
handle = pcap.pcap(name=iface, promisc=False, immediate=True, timeout_ms=10)
send = handle.sendpacket
print("ready", flush=True)
udp_sent = syn_sent = errors = 0
i = 0
start = time.monotonic()
deadline = start + seconds
while udp_sent + syn_sent < max_packets and time.monotonic() < deadline:
    for _ in range(256):
        try:
            send(junk[i & 4095])
            udp_sent += 1
            send(syns[i % 65535])
            syn_sent += 1
        except OSError:
            errors += 1
        i += 1
elapsed = time.monotonic() - start
print(json.dumps({"udp_sent": udp_sent, "syn_sent": syn_sent, "errors": errors, "seconds": elapsed,
                  "syn_scan_rounds": syn_sent / 65535}))
'''

RAW_SYN_TOOL = r'''
"""raw_syn.py SOURCE DESTINATION PORT:ISN...: SYN knocks through client/syn.py's own raw-socket sender."""
import ipaddress, socket, sys
from dynknock.client.syn import RawSynSender
source, destination = ipaddress.ip_address(sys.argv[1]), ipaddress.ip_address(sys.argv[2])
sender = RawSynSender(socket.AF_INET if source.version == 4 else socket.AF_INET6)
for item in sys.argv[3:]:
    port, isn = item.split(":")
    sender.send(source, destination, int(port), int(isn))
sender.close()
'''

BUS_INTRUDER_TOOL = r'''
"""bus_intruder.py RUNTIME_DIR CLIENT PORT: what a local unprivileged user can do to the bus."""
import json, os, socket, sys, time
import zmq
from dynknock import bus
run_dir, client, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = {"uid": os.getuid(), "euid": os.geteuid()}
for name, probe in (("listdir", lambda: os.listdir(run_dir)), ("stat_socket", lambda: os.stat(f"{run_dir}/gate.sock"))):
    try:
        probe()
        result[name] = "allowed"
    except PermissionError:
        result[name] = "denied"
    except OSError as exc:
        result[name] = f"error {exc.errno}"
for endpoint in ("gate", "relay", "packets"):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(f"{run_dir}/{endpoint}.sock")
        result[f"connect_{endpoint}"] = "connected"
    except PermissionError:
        result[f"connect_{endpoint}"] = "denied"
    except OSError as exc:
        result[f"connect_{endpoint}"] = f"error {exc.errno}"
    finally:
        sock.close()
context = zmq.Context()
expires = time.time_ns() // 1_000_000 + 4000
for endpoint in ("gate", "relay"):
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{run_dir}/{endpoint}.sock")
    command = bus.DoorOpen("0badc0de", "mallory", client, port, "127.0.0.1", 22, expires, True)
    try:
        dealer.send(bus.encode(command), zmq.NOBLOCK)
        result[f"zmq_{endpoint}"] = "queued"
    except zmq.Again:
        result[f"zmq_{endpoint}"] = "not connected"
    result[f"zmq_{endpoint}_reply"] = bool(dealer.poll(1500))
context.destroy(0)
print(json.dumps(result))
'''


# --- packets -----------------------------------------------------------------


def ipv4_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=protocol, ttl=64,
                    id=secrets.randbelow(65536), data=payload)
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def udp_segment(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, flags: int) -> bytes:
    """client/syn.py's SYN with other flags in it, checksum recomputed."""
    source, destination = ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst)
    segment = bytearray(build_syn(source, destination, sport, dport, seq))
    segment[13] = flags
    segment[16:18] = b"\0\0"
    segment[16:18] = struct.pack("!H", tcp_checksum(source, destination, bytes(segment)))
    return bytes(segment)


@dataclass
class Frame:
    kind: str  # P1 P2 P3 SYN other
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

    def p1(self, address: str, service: str = "ssh") -> tuple[bytes, Any]:
        request = new_request(service, ipaddress.ip_address(address))
        now = time.time_ns() // 1_000_000
        return self.seal(proto.P1(now, request.request_id, request.address, service, request.knocks)), request

    def p2(self, request_id: bytes) -> bytes:
        return self.seal(proto.P2(time.time_ns() // 1_000_000, request_id))

    def open_p3(self, payload: bytes) -> proto.P3 | proto.Reject:
        header = proto.parse_header(payload, accept=(proto.PacketType.P3,))
        if isinstance(header, proto.Reject):
            return header
        message = proto.open_packet(self.keys, header, payload)
        assert not isinstance(message, proto.P1 | proto.P2)
        return message

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


# --- events -------------------------------------------------------------------


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
    _serial: int = 0

    # -- addresses and files --

    def mac(self, host: Host) -> bytes:
        if host.ns not in self.macs:
            text = self.lab.run(host, ["cat", f"/sys/class/net/{host.interface}/address"]).stdout.strip()
            self.macs[host.ns] = bytes.fromhex(text.replace(":", ""))
        return self.macs[host.ns]

    def scratch(self, name: str) -> Path:
        self._serial += 1
        path = self.workdir / "scratch" / f"{self._serial:04d}-{name}"
        path.parent.mkdir(exist_ok=True)
        return path

    def tool(self, name: str, text: str) -> str:
        path = self.workdir / "tools" / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            path.chmod(0o644)
        return str(path)

    # -- sending --

    def inject(self, host: Host, frames: Sequence[bytes | float]) -> int:
        """Send whole Ethernet frames from host's eth0 (a float is a pause in seconds)."""
        path = self.scratch("frames.txt")
        path.write_text("".join(f"sleep {f}\n" if isinstance(f, float) else f.hex() + "\n" for f in frames))
        done = self.lab.run(host, [PYTHON, str(INJECT_TOOL), host.interface, str(path)],
                            timeout=60)
        return int(done.stdout.strip())

    def udp_from(self, host: Host, payload: bytes, sport: int = 0, src: str | None = None) -> bytes:
        return ipv4_frame(self.mac(host), self.mac(self.lab.server), src or host.ipv4, self.lab.server.ipv4, 17,
                          udp_segment(sport or 20000 + secrets.randbelow(20000), CONTROL_PORT, payload))

    def tcp_from(self, host: Host, dport: int, seq: int, flags: int = TH_SYN, src: str | None = None,
                 sport: int = 0) -> bytes:
        source = src or host.ipv4
        segment = tcp_segment(source, self.lab.server.ipv4, sport or 32768 + secrets.randbelow(28000), dport, seq,
                              flags)
        return ipv4_frame(self.mac(host), self.mac(self.lab.server), source, self.lab.server.ipv4, 6, segment)

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
        match = DOOR_LINE.search(done.stdout + done.stderr)
        assert match, done.stdout + done.stderr
        return int(match.group(2))

    def ssh_command(self, command: str) -> str:
        ssh = " ".join(shlex.quote(a) for a in self.sshd.ssh_argv("{host}"))
        return f"{ssh} -p {{port}} {command}"

    # -- observing --

    def doors(self, lab: NetLab | None = None) -> set[tuple[str, int]]:
        lab = lab or self.lab
        found: set[tuple[str, int]] = set()
        for name in ("doors4", "doors6"):
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
        lab = lab or self.lab
        out = lab.run(lab.server, ["ss", "-Hltn"]).stdout
        ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}
        return {p for p in ports if DOOR_LOW <= p <= DOOR_HIGH}

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


def _log_offsets() -> dict[str, int]:
    return {p.name: p.stat().st_size for p in LOG_DIR.glob("*.log")} if LOG_DIR.exists() else {}


@pytest.fixture(scope="module")
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


# --- 1. replay ------------------------------------------------------------------


def _record_exchange(world: World) -> tuple[list[Frame], int]:
    """A real knock by the real client, captured on the server's interface."""
    client = world.lab.client.ipv4
    bpf = f"host {client} and (udp port {CONTROL_PORT} or (tcp[tcpflags] & tcp-syn != 0))"
    with world.sniff(world.lab.server, bpf) as path:
        port = world.open_door("alice")
    frames = read_pcap(path)
    return frames, port


def _note_payloads(world: World, keyholder: Keyholder, frames: list[Frame]) -> None:
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


def _replay(world: World, frames: list[bytes | float], origin: Host) -> dict[str, Any]:
    """Inject frames from origin and report what the server did about them."""
    client = world.lab.client.ipv4
    shed_before = world.events.next_alive("capture").get("shed", {}).get("duplicate", 0)
    mark = world.events.mark()
    world.inject(origin, frames)
    time.sleep(1.0)
    events = world.events.since(mark)
    shed_after = world.events.next_alive("capture").get("shed", {}).get("duplicate", 0)
    rejected = [e.fields for e in events if e.topic == "auth.request.rejected" and e.fields.get("source") == client]
    # A copy from a source capture has seen it from is shed there, unparsed and uncounted by auth.
    reasons = Counter(f["reason"] for f in rejected) + Counter({"capture_duplicate": shed_after - shed_before})
    return {
        "reasons": reasons,
        "opening": [e.topic for e in events if e.topic in ("auth.request.received", "auth.request.retry",
                                                           "auth.knock.matched", "auth.door.opened",
                                                           "gate.rule.added", "relay.door.listening")],
        "doors": world.doors(),
    }


def test_replay_of_a_recorded_exchange_opens_nothing(world: World) -> None:
    recorded, door_port = _record_exchange(world)
    kinds = Counter(f.kind for f in recorded)
    assert kinds["P1"] >= 1 and kinds["SYN"] >= 3 and kinds["P2"] >= 1 and kinds["P3"] >= 1, kinds
    _note_payloads(world, world.alice, recorded)
    client = world.lab.client.ipv4
    legit = {(client, door_port)}
    sent = [f for f in recorded if f.kind in ("P1", "SYN", "P2")]
    to_replay = with_gaps(sent)
    authenticated = sum(1 for f in recorded if f.kind in ("P1", "P2"))
    attacker_mac = world.mac(world.lab.attacker)
    # From the attacker's port on the bridge: the recorded frames with the attacker's MAC
    # (so the bridge does not move the client's MAC to the attacker's port), the client's IP.
    from_attacker = with_gaps(sent, [rewrite_source(f.raw, attacker_mac, client) for f in sent])
    results: dict[str, Any] = {}
    replies_bpf = f"udp and src host {world.lab.server.ipv4}"
    for phase in ("immediate", "after_window", "after_auth_restart"):
        if phase == "after_window":
            assert world.wait_doors(lambda d: not d, WINDOW_S + 4) == set(), "the real door outlived its window"
        if phase == "after_auth_restart":
            old = world.stack.kill_stage("auth")
            world.stack.wait_alive(20)
            assert world.stack.stage_pid("auth") != old
        with world.sniff(world.lab.client, replies_bpf) as at_client, \
                world.sniff(world.lab.attacker, replies_bpf) as at_attacker:
            for origin, frames in ((world.lab.attacker, from_attacker), (world.lab.client, to_replay)):
                outcome = _replay(world, frames, origin)
                results[f"{phase}/{origin.role}"] = outcome
                allowed = legit if phase == "immediate" else set()
                assert outcome["doors"] <= allowed, (phase, origin.role, outcome)
                assert outcome["opening"] == [], (phase, origin.role, outcome)
                # Every authentic packet was refused as a replay (P1 and P2): by capture, which saw
                # it from this source before, or by auth's nonce journal (capture forgets after
                # 5 minutes or a restart of its own); no AEAD either way. The SYNs, with no
                # request pending, never even left the kernel's filter.
                reasons = outcome["reasons"]
                assert set(reasons) <= {"replay", "capture_duplicate"}, (phase, origin.role, outcome)
                assert reasons["replay"] + reasons["capture_duplicate"] == authenticated, (phase, origin.role, outcome)
        replies = read_pcap(at_client) + read_pcap(at_attacker)
        assert replies == [], f"{phase}: the server answered a replay: {[f.kind for f in replies]}"
    record_figures("replay", frames_recorded=len(recorded), frames_replayed_per_round=len(sent),
                   rounds=len(results), packets_tried=len(sent) * len(results),
                   doors_wrongly_opened=0, p3_replies=0,
                   reasons={k: dict(v["reasons"]) for k, v in results.items()})


# --- 2. race from another address -------------------------------------------------


@contextmanager
def _client_cut_off(world: World) -> Iterator[None]:
    """Drop the client's packets to the server at the bridge, after the client's own interface
    (so a capture there still sees them): the attacker's copies arrive first."""
    table = f"{PREFIX}_race"
    rules = (f"table netdev {table} {{\n  chain cut {{\n"
             f"    type filter hook ingress device \"v-cli\" priority 0;\n"
             f"    ip daddr {world.lab.server.ipv4} drop\n  }}\n}}\n")
    world.lab.run(world.lab.bridge_ns, ["nft", "-f", "-"], input=rules)
    try:
        yield
    finally:
        world.lab.run(world.lab.bridge_ns, ["nft", "delete", "table", "netdev", table], check=False)


def _first_burst(frames: list[Frame]) -> list[Frame]:
    """The first P1, the SYNs after it and the first P2 after those."""
    burst: list[Frame] = []
    for frame in frames:
        if frame.kind == "P1" and not burst:
            burst.append(frame)
        elif frame.kind == "SYN" and burst and len(burst) < 4:
            burst.append(frame)
        elif frame.kind == "P2" and len(burst) == 4:
            burst.append(frame)
            return burst
    return []


def test_race_from_another_address_opens_no_door(world: World) -> None:
    lab = world.lab
    server, client, attacker = lab.server.ipv4, lab.client.ipv4, lab.attacker.ipv4
    bpf = f"dst host {server} and (udp port {CONTROL_PORT} or (tcp[tcpflags] & tcp-syn != 0))"
    with _client_cut_off(world):
        with world.sniff(lab.client, bpf) as path:
            password = world.scratch("password")
            password.write_text(f"{ALICE_PASSWORD}\n")
            with password.open() as stdin:
                proc = lab.popen(lab.client, [CLIENT, "-u", "alice", "--password-stdin", "--timeout", "5", server],
                                 stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 8
            while not _first_burst(read_pcap(path)) and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.terminate()
            out, err = proc.communicate(timeout=10)
            world.outputs += [out, err]
        burst = _first_burst(read_pcap(path))
        assert burst, "the client's first burst was not captured"
        _note_payloads(world, world.alice, burst)
        # Paced like a network that delays the P1 a little: capture has time to let the knocks of
        # a newly accepted request through its kernel filter (the client itself leaves only 5 ms,
        # and resends the whole burst if that was too short; a one-shot injection cannot).
        def paced(raws: list[bytes]) -> list[bytes | float]:
            return [raws[0], 0.3, *raws[1:4], 0.2, raws[4]]

        stolen = paced([rewrite_source(f.raw, world.mac(lab.attacker), attacker) for f in burst])
        replies_bpf = f"udp and src host {server}"
        with world.sniff(lab.attacker, replies_bpf) as at_attacker, world.sniff(lab.client, replies_bpf) as at_client:
            mark = world.events.mark()
            world.inject(lab.attacker, stolen)
            time.sleep(1.0)
            after_race = world.doors()
            race_events = world.events.since(mark)
            # The client's own packets arrive late, unchanged.
            lab.run(lab.bridge_ns, ["nft", "delete", "table", "netdev", f"{PREFIX}_race"])
            late = world.events.mark()
            world.inject(lab.client, paced([f.raw for f in burst]))
            doors = world.wait_doors(lambda d: any(a == client for a, _ in d), 3)
            time.sleep(0.5)
            late_rejections = Counter(e.fields["reason"] for e in world.events.since(late, "auth.request.rejected"))
    assert after_race == set(), after_race
    assert not [e for e in race_events if e.topic in ("auth.request.received", "gate.rule.added",
                                                      "relay.door.listening")], race_events
    rejected = Counter(e.fields["reason"] for e in race_events if e.topic == "auth.request.rejected")
    assert not any(a == attacker for a, _ in doors), doors
    # What reached the attacker, if anything, is no door: decrypt it with the key we hold.
    statuses = []
    for frame in read_pcap(at_attacker):
        message = world.alice.open_p3(udp_payload(frame.raw))
        statuses.append(message.status.name if isinstance(message, proto.P3) else str(message))
    assert "OPEN" not in statuses, statuses
    door = [p for a, p in doors if a == client]
    assert door, f"the client's own (late) packets got no door: {doors}"
    assert lab.tcp_probe(lab.attacker, server, door[0], timeout=1.0) == "TimeoutError"
    # The client's late P2 is answered: the copies raced from elsewhere did not burn its
    # nonce (engine invariant 3; PROTOCOL.md section 8, "active on-path attacker").
    answers = [world.alice.open_p3(udp_payload(f.raw)) for f in read_pcap(at_client)]
    opened = [a for a in answers if isinstance(a, proto.P3) and a.status is proto.Status.OPEN]
    record_figures("race", packets_tried=len(burst), doors_wrongly_opened=0, attacker_p3_statuses=statuses,
                   rejections_of_copies=dict(rejected), rejections_of_the_late_originals=dict(late_rejections),
                   client_answered=bool(opened))
    assert opened and opened[0].door_port == door[0], (
        f"the client's own P2 got no OPEN answer (answers: {answers}); server rejections of the "
        f"attacker's copies: {dict(rejected)}, of the client's late originals: {dict(late_rejections)}")


# --- 3. forgery and fuzzing -------------------------------------------------------


def _passes_kernel_filter(payload: bytes) -> bool:
    return (len(payload) == 130 and payload[:2] == b"\x01\x01") or (len(payload) == 82 and payload[:2] == b"\x01\x02")


def _reordered(packet: bytes) -> list[bytes]:
    h, ct, tag = packet[:34], packet[34:-16], packet[-16:]
    version_type, hint, nonce = h[:2], h[2:10], h[10:34]
    return [
        version_type + nonce[:8] + hint + nonce[8:] + ct + tag,  # hint and nonce swapped
        version_type + hint + nonce[12:] + nonce[:12] + ct + tag,  # nonce halves swapped
        version_type + hint + nonce + tag + ct,  # tag before ciphertext
        version_type + hint + nonce + ct[16:] + ct[:16] + tag,  # ciphertext blocks rotated
        version_type + hint + nonce + ct[::-1] + tag,  # ciphertext reversed
        h[1:2] + h[0:1] + hint + nonce + ct + tag,  # version and type swapped
        version_type + hint[::-1] + nonce + ct + tag,  # hint reversed
    ]


def _forgeries(world: World) -> dict[str, list[bytes]]:
    p1, _ = world.alice.p1(world.lab.attacker.ipv4)
    p2 = world.alice.p2(secrets.token_bytes(16))
    vector = bytes.fromhex(json.loads((REPO / "tests/vectors/p1_ipv4.json").read_text())["packet"])
    groups: dict[str, list[bytes]] = {"bitflip": [], "truncated": [], "extended": [], "reordered": []}
    for valid in (p1, p2, vector):
        for bit in range(len(valid) * 8):
            flipped = bytearray(valid)
            flipped[bit // 8] ^= 1 << (bit % 8)
            groups["bitflip"].append(bytes(flipped))
        groups["truncated"] += [valid[:n] for n in range(len(valid))]
        groups["extended"] += [valid + os.urandom(n) for n in range(1, 301 - len(valid))]
        groups["reordered"] += [r for r in _reordered(valid) if r != valid]
    groups["random"] = [os.urandom(size) for size in range(301) for _ in range(2)]
    groups["right_sized_random"] = ([b"\x01\x01" + os.urandom(128) for _ in range(100)]
                                    + [b"\x01\x02" + os.urandom(80) for _ in range(100)])
    # Under a real user's current hint: forces the server through a full AEAD check each.
    groups["known_hint_forged"] = ([b"\x01\x01" + world.alice.hint() + os.urandom(120) for _ in range(100)]
                                   + [b"\x01\x02" + world.alice.hint() + os.urandom(72) for _ in range(100)])
    return groups


def _hostile_key_holder(world: World) -> list[tuple[bytes, str]]:
    """Authentic packets with contents the codec must refuse (only a key holder can send these)."""
    alice, client = world.alice, world.lab.attacker.ipv4
    request = new_request("ssh", ipaddress.ip_address(client))
    plain = bytearray(proto.encode_plaintext(proto.P1(time.time_ns() // 1_000_000, secrets.token_bytes(16),
                                                      ipaddress.ip_address(client), "ssh", request.knocks))[1])
    cases: list[tuple[bytes, str]] = []
    padding = bytearray(plain)
    padding[79] = 1
    cases.append((bytes(padding), "bad_padding"))
    family = bytearray(plain)
    family[24] = 9
    cases.append((bytes(family), "bad_field"))
    service = bytearray(plain)
    service[41:57] = b"SSH".ljust(16, b"\0")
    cases.append((bytes(service), "bad_field"))
    duplicate = bytearray(plain)
    duplicate[63:69] = duplicate[57:63]
    cases.append((bytes(duplicate), "bad_field"))
    zero_port = bytearray(plain)
    zero_port[57:59] = b"\0\0"
    cases.append((bytes(zero_port), "bad_field"))
    return [(alice.seal_raw_plaintext(proto.PacketType.P1, p), reason) for p, reason in cases]


def test_forged_and_fuzzed_control_packets_open_nothing_and_crash_nothing(world: World) -> None:
    lab = world.lab
    groups = _forgeries(world)
    hostile = _hostile_key_holder(world)
    held = {world.alice.hint(time.time() + d) for d in (-60, 0, 60)} | {world.bob.hint(time.time() + d)
                                                                          for d in (-60, 0, 60)}
    payloads = [p for group in groups.values() for p in group]
    expected: Counter[str] = Counter()
    under_live_hints = 0
    for payload in payloads:
        if _passes_kernel_filter(payload):
            if payload[2:10] in held:
                under_live_hints += 1
            else:
                expected["unknown_user"] += 1
    # Every forgery under a live hint is accounted for, but no longer one tag check each (issue 11
    # §3): capture sheds what exceeds its budgets per (hint, source) and per hint, and auth checks
    # at most a few bad tags per (source, hint) a second and sets the rest aside unchecked.
    live_hint_outcomes = ("bad_tag", "hint_over_budget", "shed")
    expected["live_hint"] = under_live_hints
    for _, reason in hostile:
        expected[reason] += 1
    pids = world.pids()
    before = world.rejections()
    capture_before = world.events.next_alive("capture")
    mark = world.events.mark()
    frames: list[bytes | float] = []
    for index, payload in enumerate(payloads):
        frames.append(world.udp_from(lab.attacker, payload))
        if index % 500 == 499:
            frames.append(0.02)  # a breath for capture's ring, so the counts are exact
    # The hostile key holder, from its own address, once the budgets the flood used have refilled.
    hostile_frames: list[bytes | float] = [world.udp_from(lab.client, p) for p, _ in hostile]
    from_server = f"ip src host {lab.server.ipv4} or ip6 src host {lab.server.ipv6} and not icmp6"

    def shed(alive: dict[str, Any]) -> int:
        return sum(v for v in alive.get("shed", {}).values() if isinstance(v, int))

    with world.sniff(lab.attacker, from_server) as replies:
        sent = world.inject(lab.attacker, frames)
        time.sleep(1.5)
        sent += world.inject(lab.client, hostile_frames)
        deadline = time.monotonic() + 10
        while True:
            after = world.rejections()
            capture_after = world.events.next_alive("capture")
            delta = Counter({k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)})
            # capture drops a datagram whose hint is no current user's before parsing it, and
            # counts it there (unknown_hints); auth counts the unknown users it still sees.
            in_capture = capture_after.get("unknown_hints", 0) - capture_before.get("unknown_hints", 0)
            delta["unknown_user"] += in_capture
            delta["shed"] = shed(capture_after) - shed(capture_before)
            outcomes = {k: delta.pop(k, 0) for k in live_hint_outcomes}
            delta["live_hint"] = sum(outcomes.values())
            delta = +delta
            if delta == expected or time.monotonic() > deadline:
                break
    assert sent == len(payloads) + len(hostile)
    # The tags auth still checked were a handful a second, not one per forgery.
    assert outcomes["bad_tag"] <= 100, outcomes
    assert world.pids() == pids, "a stage restarted"
    assert world.doors() == set()
    opening = [e.topic for e in world.events.since(mark) if e.topic in ("auth.request.received", "gate.rule.added")]
    assert opening == []
    assert read_pcap(replies) == [], "the server answered a forgery"
    record_figures("forgery", packets_tried=sent, by_group={k: len(v) for k, v in groups.items()},
                   hostile_key_holder=len(hostile), passed_kernel_filter=sum(expected.values()) - len(hostile),
                   rejections_delta=dict(delta), live_hint_outcomes=outcomes,
                   unknown_user_dropped_by_capture=in_capture,
                   doors_wrongly_opened=0, crashes=0)
    # Every packet the kernel let through was counted under its reason (by capture or auth); nothing else moved.
    assert delta == expected, f"rejection counters moved by {dict(delta)}, expected {dict(expected)}"


def test_every_tcp_flag_combination_opens_nothing(world: World) -> None:
    lab = world.lab
    pids = world.pids()
    unmatched_before = world.events.next_alive("auth")["unmatched_syns"]
    # (a) From the attacker: every flag byte to the control port, a door port, sshd's port, port 1.
    scan = [world.tcp_from(lab.attacker, port, secrets.randbits(32), flags)
            for port in (CONTROL_PORT, DOOR_LOW + 7, 22, 1) for flags in range(256)]
    # (b) From the client, at its own pending knocks with their exact ISNs: every flag byte
    # that is not "SYN without ACK" must not count as a knock.
    p1, request = world.alice.p1(lab.client.ipv4)
    not_knocks = [world.tcp_from(lab.client, k.port, k.isn, flags) for k in request.knocks
                  for flags in range(256) if flags & (TH_SYN | TH_ACK) != TH_SYN]
    replies_bpf = f"ip src host {lab.server.ipv4} and not (udp src port {CONTROL_PORT})"
    with world.sniff(lab.attacker, f"ip src host {lab.server.ipv4}") as at_attacker, \
            world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers, \
            world.sniff(lab.client, replies_bpf) as other_replies:
        world.inject(lab.attacker, scan)
        world.inject(lab.client, [world.udp_from(lab.client, p1), 0.3, *not_knocks, 0.3,
                                  world.udp_from(lab.client, world.alice.p2(request.request_id), sport=33333)])
        time.sleep(0.5)
        doors_after_fuzz = world.doors()
        # The knocks proper, with odd but valid flag bytes (SYN set, ACK clear): the request completes.
        odd = (TH_SYN | dpkt.tcp.TH_FIN, TH_SYN | dpkt.tcp.TH_URG | dpkt.tcp.TH_PUSH, TH_SYN | 0xC0)
        knocks = [world.tcp_from(lab.client, k.port, k.isn, f) for k, f in zip(request.knocks, odd, strict=True)]
        world.inject(lab.client, [*knocks, 0.2,
                                  world.udp_from(lab.client, world.alice.p2(request.request_id), sport=33334)])
        opened = world.wait_doors(lambda d: bool(d), 3)
        time.sleep(0.3)
    statuses = [a.status.name for a in (world.alice.open_p3(udp_payload(f.raw)) for f in read_pcap(answers))
                if isinstance(a, proto.P3)]
    assert world.pids() == pids
    assert read_pcap(at_attacker) == [], "the server answered the attacker's scan"
    assert read_pcap(other_replies) == [], "the server answered a non-knock segment"
    assert doors_after_fuzz == set(), doors_after_fuzz
    assert statuses[:1] == ["PENDING"], statuses  # the request was there, no flag combination counted
    assert statuses[-1:] == ["OPEN"] and {a for a, _ in opened} == {lab.client.ipv4}, (statuses, opened)
    unmatched_after = world.events.next_alive("auth")["unmatched_syns"]
    record_figures("tcp_flags", packets_tried=len(scan) + len(not_knocks), doors_wrongly_opened=0, crashes=0,
                   unmatched_syns_delta=unmatched_after - unmatched_before, answers=statuses)
    world.wait_doors(lambda d: not d, WINDOW_S + 4)


# --- 4. spoofing --------------------------------------------------------------------


def test_knocks_from_another_source_never_complete_a_sequence(world: World) -> None:
    lab = world.lab
    server, client, attacker = lab.server.ipv4, lab.client.ipv4, lab.attacker.ipv4
    p1, request = world.alice.p1(client)
    knocks = [f"{k.port}:{k.isn}" for k in request.knocks]
    unmatched_before = world.events.next_alive("auth")["unmatched_syns"]
    with world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers:
        world.inject(lab.client, [world.udp_from(lab.client, p1)])
        time.sleep(0.3)
        # The right ports and ISNs, from the attacker's own address, by the client's own SYN code.
        lab.run(lab.attacker, [PYTHON, world.tool("raw_syn.py", RAW_SYN_TOOL), attacker, server, *knocks])
        # The client's address, the right ports, guessed ISNs (an off-path spoofer).
        guesses = [world.tcp_from(lab.attacker, k.port, secrets.randbits(32), src=client) for k in request.knocks]
        world.inject(lab.attacker, guesses)
        time.sleep(0.3)
        world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=34001)])
        time.sleep(0.5)
        spoofed_doors = world.doors()
        # The real knocks from the real address still work afterwards.
        lab.run(lab.client, [PYTHON, world.tool("raw_syn.py", RAW_SYN_TOOL), client, server, *knocks])
        time.sleep(0.2)
        world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=34002)])
        opened = world.wait_doors(lambda d: bool(d), 3)
        time.sleep(0.3)
    unmatched_after = world.events.next_alive("auth")["unmatched_syns"]
    statuses = [a.status.name for a in (world.alice.open_p3(udp_payload(f.raw)) for f in read_pcap(answers))
                if isinstance(a, proto.P3)]
    record_figures("spoofed_knocks", packets_tried=6, doors_wrongly_opened=0, answers=statuses,
                   unmatched_syns_delta=unmatched_after - unmatched_before)
    assert spoofed_doors == set(), spoofed_doors
    assert statuses[:1] == ["PENDING"], statuses
    # The attacker's own-address SYNs never left the kernel filter; the guessed ISNs did and matched nothing.
    assert unmatched_after - unmatched_before == len(guesses)
    assert statuses[-1:] == ["OPEN"] and {a for a, _ in opened} == {client}, (statuses, opened)
    world.wait_doors(lambda d: not d, WINDOW_S + 4)


FOREIGN_CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
    "except TimeoutError:\n"
    "    print('timeout'); raise SystemExit\n"
    "except ConnectionRefusedError:\n"
    "    print('refused'); raise SystemExit\n"
    "except ConnectionResetError:\n"  # the reset can beat connect()'s own return
    "    print('reset'); raise SystemExit\n"
    "try:\n"
    "    data = s.recv(100)\n"
    "    print('eof' if not data else 'data:' + data[:40].decode(errors='replace'))\n"
    "except ConnectionResetError:\n"
    "    print('reset')\n"
    "except TimeoutError:\n"
    "    print('connected, silent')\n"
)


def _foreign_connects(lab: NetLab, attempts: dict[str, tuple[Host, str, int]]) -> dict[str, str]:
    """Connect and read, all at once (a door's window is short): 'timeout' (dropped), 'reset', 'eof',
    'refused', or the first bytes received."""
    procs = {name: lab.popen(host, [PYTHON, "-c", FOREIGN_CONNECT, address, str(port)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for name, (host, address, port) in attempts.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=20)
        results[name] = out.strip() or f"probe failed: {err.strip()}"
    return results


def test_open_door_refuses_every_other_address_nftables(world: World) -> None:
    lab = world.lab
    mark = world.events.mark()
    port = world.open_door("alice")
    results = _foreign_connects(lab, {
        "attacker_ipv4": (lab.attacker, lab.server.ipv4, port),
        "attacker_ipv6": (lab.attacker, lab.server.ipv6, port),
        "client_ipv6_for_an_ipv4_door": (lab.client, lab.server.ipv6, port),
    })
    relay_events = [e.fields for e in world.events.since(mark, "relay.connection.")]
    record_figures("door_other_address_nftables", attempts=results, doors_wrongly_opened=0)
    assert set(results.values()) == {"timeout"}, results  # dropped silently, not even a RST
    assert relay_events == [], relay_events  # nothing reached the relay, let alone sshd
    assert lab.tcp_probe(lab.client, lab.server.ipv4, port) == "connected"  # the door was not used up


def test_open_door_refuses_every_other_address_none_backend(world: World) -> None:
    """Without nftables only the relay's address check stands: the attacker reaches the listener,
    is reset before a byte of the service, and sshd never hears of it."""
    workdir = world.workdir / "none-backend"
    with NetLab(NONE_PREFIX) as lab:
        prepare_workdir(workdir)
        write_config(workdir / "dynknock.toml", workdir, lab, backend="none", window_seconds=WINDOW_S)
        write_users(workdir / "users.json", [LabUser("alice", key=world.alice.master)])
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        # VERBOSE makes sshd log every connection it accepts ("Connection from ...").
        with sshd.config.open("a") as config:
            config.write("LogLevel VERBOSE\n")
        os.kill(sshd.pid, 1)  # SIGHUP: sshd re-executes itself with the new config
        time.sleep(1.0)
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        events = EventLog(stack.endpoints.tap)
        try:
            stack.start()
            events.next_alive("relay", 10)
            pids = world.pids(stack)
            done = world.knock(user="alice", lab=lab)
            assert done.returncode == 0, done.stderr
            match = DOOR_LINE.search(done.stdout + done.stderr)
            assert match
            port = int(match.group(2))
            sshd_lines_before = sshd.log_file.read_text(errors="replace").count("Connection from")
            mark = events.mark()
            results = _foreign_connects(lab, {
                "attacker_ipv4": (lab.attacker, lab.server.ipv4, port),
                "attacker_ipv6": (lab.attacker, lab.server.ipv6, port),
            })
            refused = events.wait_for(lambda e: e.topic == "relay.connection.refused", mark, 3)
            time.sleep(0.5)
            refused_events = [e.fields for e in events.since(mark, "relay.connection.refused")]
            accepted_events = [e.fields for e in events.since(mark, "relay.connection.accepted")]
            sshd_lines_after = sshd.log_file.read_text(errors="replace").count("Connection from")
            # The authorised client still gets through, and sshd does log that one.
            ssh = sshd.ssh_argv(lab.server.ipv4, port) + ["echo", "via-none-backend"]
            via = lab.run(lab.client, ssh, check=False, timeout=30)
            sshd_lines_final = sshd.log_file.read_text(errors="replace").count("Connection from")
            assert world.pids(stack) == pids
        finally:
            stack.stop()
            events.close()
    record_figures("door_other_address_none_backend", attempts=results,
                   relay_refused_events=len(refused_events), sshd_connections_from_attacker=(
                       sshd_lines_after - sshd_lines_before), doors_wrongly_opened=0)
    assert all(r in ("reset", "eof") for r in results.values()), results
    assert refused is not None and {e["peer"] for e in refused_events} == {lab.attacker.ipv4, lab.attacker.ipv6}, \
        refused_events
    assert accepted_events == [], accepted_events
    assert sshd_lines_after == sshd_lines_before, "sshd saw the attacker's connection"
    assert via.returncode == 0 and via.stdout.strip() == "via-none-backend", via.stderr
    assert sshd_lines_final == sshd_lines_after + 1


# --- 5. starvation -------------------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


FLOOD_SECONDS = 10.0
FLOOD_MAX_PACKETS = 4_000_000
DOOR_UNDER_FLOOD_S = 8.0


def test_legitimate_knock_succeeds_under_flood_and_syn_scan(world: World) -> None:
    lab = world.lab
    pids = world.pids()
    capture_before = world.events.next_alive("capture")
    rejections_before = world.rejections()
    argv = [PYTHON, world.tool("flood.py", FLOOD_TOOL), lab.attacker.interface, world.mac(lab.attacker).hex(),
            world.mac(lab.server).hex(), lab.attacker.ipv4, lab.server.ipv4, str(CONTROL_PORT),
            str(FLOOD_SECONDS), str(FLOOD_MAX_PACKETS)]
    flood = lab.popen(lab.attacker, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(flood.stdout, selectors.EVENT_READ)
        assert selector.select(30) and flood.stdout.readline().strip() == "ready", "the flood did not start"
        selector.close()
        flood_started = time.monotonic()
        ticks_before = {stage: _cpu_ticks(pid) for stage, pid in pids.items()}
        mark = world.events.mark()
        time.sleep(1.0)  # the flood is on before the client starts
        started = time.monotonic()
        done = world.knock(user="alice", timeout_s=DOOR_UNDER_FLOOD_S)
        time_to_door = time.monotonic() - started
        opened = world.events.wait_for(lambda e: e.topic == "auth.door.opened", mark, 1)
        out, err = flood.communicate(timeout=FLOOD_SECONDS + 30)
    finally:
        if flood.poll() is None:
            flood.kill()
    flood_wall = time.monotonic() - flood_started
    ticks_after = {stage: _cpu_ticks(pid) for stage, pid in pids.items()}
    assert flood.returncode == 0, err
    sent = json.loads(out)
    time.sleep(0.5)
    capture_after = world.events.next_alive("capture", mark=world.events.mark())
    rejections_after = world.rejections()
    hz = os.sysconf("SC_CLK_TCK")
    cpu = {stage: round(100 * (ticks_after[stage] - ticks_before[stage]) / hz / flood_wall, 1) for stage in pids}
    total = sent["udp_sent"] + sent["syn_sent"]
    figures = {
        "flood_packets": total, "udp_junk_sent": sent["udp_sent"], "syn_scan_sent": sent["syn_sent"],
        "syn_scan_rounds": round(sent["syn_scan_rounds"], 2), "send_errors": sent["errors"],
        "flood_seconds": round(sent["seconds"], 2), "flood_rate_pps": round(total / sent["seconds"]),
        "client_exit": done.returncode, "time_to_door_s": round(time_to_door, 2),
        "server_latency_ms": opened.fields.get("latency_ms") if opened else None,
        "door_bound_s": DOOR_UNDER_FLOOD_S,
        "capture": {k: capture_after.get(k, 0) - capture_before.get(k, 0)
                    for k in ("received", "kernel_dropped", "interface_dropped", "forwarded", "dropped", "bus_full",
                              "unknown_hints")},
        "auth_rejections_delta": {k: v - rejections_before.get(k, 0) for k, v in rejections_after.items()
                                  if v != rejections_before.get(k, 0)},
        "cpu_percent": cpu, "cpu_window_s": round(flood_wall, 1),
        "doors_wrongly_opened": len({a for a, _ in world.doors()} - {lab.client.ipv4}),
        "crashes": sum(1 for s, p in world.pids().items() if pids[s] != p),
    }
    record_figures("starvation", **figures)
    assert done.returncode == 0, f"no door under flood: {done.stderr}\n{figures}"
    assert time_to_door <= DOOR_UNDER_FLOOD_S
    assert sent["syn_scan_rounds"] >= 1, f"the SYN scan did not cover all ports once: {sent}"
    assert figures["crashes"] == 0 and figures["doors_wrongly_opened"] == 0, figures


# --- 6. crashes ------------------------------------------------------------------------


def test_sigkill_of_relay_mid_session_leaves_nothing_open(world: World) -> None:
    lab = world.lab
    mark = world.events.mark()
    command = world.ssh_command("'sleep 20; echo survived'")
    session = lab.popen(lab.client, [CLIENT, "-u", "bob", "-k", str(world.bob_key_file), "--timeout", "3",
                                     "--exec", command, lab.server.ipv4],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accepted = world.events.wait_for(lambda e: e.topic == "relay.connection.accepted", mark, 10)
    assert accepted is not None, "the ssh session never went through the relay"
    port = accepted.fields["port"]
    time.sleep(1.0)  # the session is up and idle in `sleep`
    during = world.door_connections()
    world.stack.kill_stage("relay")
    out, err = session.communicate(timeout=30)
    world.outputs += [out, err]
    world.stack.wait_alive(20)
    deadline = time.monotonic() + 5
    while world.door_connections() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = world.door_connections()
    doors = world.wait_doors(lambda d: not d, WINDOW_S + 4)
    listeners = world.door_listeners()
    record_figures("crash_mid_relay", session_exit=session.returncode, connections_during=len(during),
                   connections_left=left, doors_after_window=sorted(doors))
    assert during, "no connection was seen during the session"
    assert "survived" not in out and session.returncode != 0  # the session died with the relay, as expected
    assert left == [], left
    assert doors == set() and port not in listeners, (doors, listeners)
    done = world.knock("--exec", world.ssh_command("echo relay-back"), user="bob")
    assert done.returncode == 0 and done.stdout.strip() == "relay-back", done.stderr


LONG_WINDOW_S = 16


def _set_window(world: World, seconds: int) -> None:
    """From here on doors stay open `seconds`: the config is rewritten and the stages that read it restarted."""
    config = world.stack.config_path
    text = config.read_text()
    wanted = f"window_seconds = {seconds}"
    if wanted in text:
        return
    config.write_text(re.sub(r"window_seconds = \d+", wanted, text))
    for stage in ("auth", "gate", "relay"):
        world.stack.kill_stage(stage)
    world.stack.wait_alive(20)


def _wait_answer(path: Path, keyholder: Keyholder, timeout: float) -> list[proto.P3 | proto.Reject]:
    deadline = time.monotonic() + timeout
    while True:
        answers = [keyholder.open_p3(udp_payload(f.raw)) for f in read_pcap(path) if f.kind == "P3"]
        if answers or time.monotonic() >= deadline:
            return answers
        time.sleep(0.05)


def test_sigkill_of_each_stage_mid_request_leaves_nothing_open(world: World) -> None:
    """Each stage dies once the door is open but before the client was told. Whatever the
    client is then told, an OPEN must be true; and after the window nothing is left open.
    (The window is LONG_WINDOW_S from here on, so that a door outlives a stage's restart.)"""
    _set_window(world, LONG_WINDOW_S)
    lab = world.lab
    outcomes: dict[str, Any] = {}
    false_open: dict[str, Any] = {}
    for stage in STAGES:
        p1, request = world.alice.p1(lab.client.ipv4)
        with world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers:
            mark = world.events.mark()
            world.inject(lab.client, [world.udp_from(lab.client, p1), 0.2,
                                      *[world.tcp_from(lab.client, k.port, k.isn) for k in request.knocks]])
            opened = world.events.wait_for(lambda e: e.topic == "auth.door.opened", mark, 3)
            assert opened is not None, stage
            old = world.stack.kill_stage(stage)
            world.stack.wait_alive(20)
            world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=35000)])
            answers_seen = _wait_answer(answers, world.alice, 1.5)
            doors, listeners = world.doors(), world.door_listeners()
        assert world.stack.stage_pid(stage) != old
        statuses = [a.status.name for a in answers_seen if isinstance(a, proto.P3)]
        outcomes[stage] = statuses or ["no answer"]
        # An OPEN answer is only ever given for a door that really is open (both stages confirmed).
        for answer in answers_seen:
            if isinstance(answer, proto.P3) and answer.status is proto.Status.OPEN:
                if (lab.client.ipv4, answer.door_port) not in doors or answer.door_port not in listeners:
                    false_open[stage] = {"port": answer.door_port, "nft_element": (lab.client.ipv4,
                                         answer.door_port) in doors, "relay_listening": answer.door_port in listeners}
    doors = world.wait_doors(lambda d: not d, LONG_WINDOW_S + 4)
    time.sleep(0.5)
    listeners = world.door_listeners()
    record_figures("crash_mid_request", window_s=LONG_WINDOW_S, outcomes=outcomes, false_open=false_open,
                   doors_after_window=sorted(doors), listeners_after_window=sorted(listeners))
    assert doors == set(), doors
    assert listeners == set(), listeners
    done = world.knock("--exec", world.ssh_command("echo back"), user="alice")
    assert done.returncode == 0 and done.stdout.strip() == "back", done.stderr
    assert false_open == {}, f"P3 OPEN for a door that was not open: {false_open} (outcomes {outcomes})"


def test_restart_of_the_whole_stack_with_doors_open(world: World) -> None:
    """Doors open (for LONG_WINDOW_S) while the whole stack stops and starts again (about 8 s).
    Their rules may outlive the stack in the kernel, or be closed as it stops; either way no
    door appears, none outlives its window, no listener is left, and knocking works again."""
    _set_window(world, LONG_WINDOW_S)
    lab = world.lab
    port4 = world.open_door("alice")
    port6 = world.open_door("bob", host=lab.server.ipv6)
    opened_at = time.monotonic()
    before = world.doors()
    world.stack.stop()
    world.stack.start()
    restarted_after = time.monotonic() - opened_at
    during = world.doors()
    listeners_during = world.door_listeners()
    probe_during = lab.tcp_probe(lab.client, lab.server.ipv4, port4)
    doors = world.wait_doors(lambda d: not d, LONG_WINDOW_S + 4)
    closed_after = time.monotonic() - opened_at
    listeners = world.door_listeners()
    survived = sorted(p for _, p in during if p in (port4, port6))
    record_figures("crash_whole_stack_restart", window_s=LONG_WINDOW_S, restart_s=round(restarted_after, 1),
                   doors_before_stop=sorted(before), doors_right_after_restart=sorted(during),
                   our_doors_survived_in_kernel=survived, listeners_right_after_restart=sorted(listeners_during),
                   probe_right_after_restart=probe_during, doors_after_window=sorted(doors),
                   seconds_until_closed=round(closed_after, 1))
    assert restarted_after < LONG_WINDOW_S - 1, "the restart took longer than the window: nothing was tested"
    assert {port4, port6} <= {p for _, p in before}, before
    assert during <= before, f"a door appeared across the restart: {during - before}"
    assert not {port4, port6} & listeners_during, listeners_during  # the relay starts with no listener
    # A rule that survived admits the client to a port where nothing listens: reset, never relayed.
    assert probe_during == ("ConnectionRefusedError" if port4 in survived else "TimeoutError"), probe_during
    assert doors == set(), doors
    assert closed_after <= LONG_WINDOW_S + 3, closed_after
    assert not {port4, port6} & listeners, listeners
    assert lab.tcp_probe(lab.client, lab.server.ipv4, port4) == "TimeoutError"
    done = world.knock("--exec", world.ssh_command("echo stack-back"), user="alice")
    assert done.returncode == 0 and done.stdout.strip() == "stack-back", done.stderr


# --- 7. refused at start ----------------------------------------------------------------


START_CASES = [
    ("runtime_dir_0777", stage) for stage in STAGES
] + [("users_file_missing", "auth"), ("users_file_0644", "auth")] + [("bad_config_value", stage) for stage in STAGES]


def _stage_argv(stage: str, config: Path) -> list[str]:
    program = str(VENV_BIN / f"knock-{stage}")
    if stage == "gate":  # as supervisord.conf starts it: the dynknock user with CAP_NET_ADMIN only
        return ["/usr/bin/setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups", "--no-new-privs",
                "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin",
                program, "-c", str(config)]
    return [program, "-c", str(config)]


@pytest.mark.parametrize("case,stage", START_CASES, ids=[f"{c}-{s}" for c, s in START_CASES])
def test_bad_start_is_refused_with_one_line(world: World, case: str, stage: str) -> None:
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
        done = lab.run(lab.attacker, _stage_argv(stage, config), check=False, timeout=8)
        returncode, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stderr = None, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else (exc.stderr or "")
    world.outputs.append(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    FIGURES.setdefault("bad_start", {})[f"{case}-{stage}"] = {"exit": returncode, "stderr": lines}
    record_figures("bad_start")
    assert returncode == 2, f"knock-{stage} was not refused at start (exit {returncode}): {stderr!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith(f"knock-{stage}: "), lines[0]
    for needle in expect:
        assert needle in lines[0], f"{needle!r} not named in {lines[0]!r}"


# --- 8. local privilege ------------------------------------------------------------------


def test_local_unprivileged_user_cannot_reach_the_bus(world: World) -> None:
    lab = world.lab
    run_dir = world.workdir / "run"
    target_port = DOOR_LOW + 1242
    mark = world.events.mark()
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PYTHON,
            world.tool("bus_intruder.py", BUS_INTRUDER_TOOL), str(run_dir), lab.attacker.ipv4, str(target_port)]
    done = lab.run(lab.server, argv, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    time.sleep(0.5)
    doors = {d for d in world.doors() if d[0] == lab.attacker.ipv4 or d[1] == target_port}
    listeners = world.door_listeners()
    door_events = [e.topic for e in world.events.since(mark) if e.topic.startswith(("gate.rule.", "relay.door."))]
    record_figures("local_privilege", intruder=result, doors_wrongly_opened=len(doors))
    assert result["uid"] != 0 and result["euid"] != 0
    assert result["listdir"] == "denied" and result["stat_socket"] == "denied", result
    assert {result[f"connect_{e}"] for e in ("gate", "relay", "packets")} == {"denied"}, result
    assert result["zmq_gate_reply"] is False and result["zmq_relay_reply"] is False, result
    assert doors == set() and target_port not in listeners, (doors, listeners)
    assert door_events == [], door_events
    mode = (run_dir.stat().st_mode & 0o777)
    assert mode & 0o007 == 0, oct(mode)


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_stages_run_without_root_and_gate_holds_only_net_admin(world: World) -> None:
    found: dict[str, dict[str, str]] = {}
    for stage, pid in world.pids().items():
        status = _status(pid)
        found[stage] = {k: status[k].strip() for k in ("Uid", "Gid", "CapPrm", "CapEff", "CapBnd", "NoNewPrivs")}
    record_figures("privileges", stages=found)
    for stage, status in found.items():
        assert all(int(x) != 0 for x in status["Uid"].split()), (stage, status)
        assert all(int(x) != 0 for x in status["Gid"].split()), (stage, status)
        expected = 1 << 12 if stage == "gate" else 0  # CAP_NET_ADMIN
        assert int(status["CapEff"], 16) == expected, (stage, status)
        assert int(status["CapPrm"], 16) == expected, (stage, status)
        assert status["NoNewPrivs"] == "1", (stage, status)  # no setuid program can give privileges back
    assert int(found["gate"]["CapBnd"], 16) == 1 << 12, found["gate"]


# --- 9. secrets ------------------------------------------------------------------------------


def test_no_secret_in_any_log_event_or_error_message(world: World) -> None:
    """Runs last: everything the suite made the stages log or publish, and every error printed."""
    time.sleep(0.5)
    offsets = FIGURES["run"]["log_offsets"]
    logs = ""
    for path in sorted(LOG_DIR.glob("*.log")):
        with path.open("rb") as handle:
            start = offsets.get(path.name, 0)
            if path.stat().st_size >= start:
                handle.seek(start)
            logs += handle.read().decode(errors="replace")
    for out in world.workdir.rglob("supervisord.out"):
        logs += out.read_text(errors="replace")
    events = world.events.since(0)
    dumped = json.dumps([as_json(e) for e in events], default=repr)
    errors = "\n".join(world.outputs)
    keys = [ALICE_PASSWORD, *world.alice.secrets(), *world.bob.secrets(), base64.b64encode(BOB_KEY).decode()]
    payloads = sorted(world.payload_secrets)
    assert len(events) > 100 and len(logs) > 1000 and payloads, "the suite left too little to search"
    leaks = []
    for needle in keys + payloads:
        for name, text in (("logs", logs), ("events", dumped)):
            if needle.lower() in text.lower():
                leaks.append((name, needle))
    for needle in keys:  # the client's own terminal may show its knocks (as in the paper), never keys
        if needle.lower() in errors.lower():
            leaks.append(("error messages", needle))
    record_figures("secrets", log_bytes_searched=len(logs), events_searched=len(events),
                   error_text_bytes=len(errors), needles=len(keys) + len(payloads), leaks=len(leaks))
    assert leaks == [], leaks
