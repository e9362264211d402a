"""Capture under floods an eavesdropper can send, with the real stack in the lab's namespaces.

Issue 11 §2 and the capture side of §3. The attacker namespace injects whole
Ethernet frames (libpcap) at the server:

1. Right-sized junk (P1/P2 sizes, right version and type bytes) in every wrapping:
   the wrappings capture accepts (IPv4 with options of several kinds, IPv6)
   under hints no user has: capture forwards none of it to auth and drops it at the
   hint check (`unknown_hints`); the wrappings it refuses (802.1Q with VLAN 0 and
   other ids, 802.1ad, QinQ, IPv6 extension headers) under a *live* hint, which
   would be forwarded were it read: none of it even passes the kernel filter
   (`received` does not move). A second libpcap handle in the server namespace
   with the filter minus its `not vlan` sees the tagged frames, so they are frames
   the old filter let through (the Linux kernel strips the outer tag before BPF).
2. Floods at >= 120,000 packets/s offered of junk under one user's live hint and
   of a replayed P1/P2 of that user: another user's knocks open 10/10 (how fast,
   against their idle latency, is measured by bench/run.py, not asserted here:
   speed goals live in benchmarks), the flooded user's own knock gets through (replays; a
   flood from the attacker's own address), the replays cost auth no AEAD
   (capture sheds them as duplicates) and the tap stays rate limited.

Figures go to $DYNKNOCK_CAPTURE_FIGURES (default /tmp/dynknock-capture-figures.json).
Needs root, netns, nftables, sshd; FAILS without them. Every flood is bounded
in packets and seconds; run only under the e2e flock (docs: notes/COMMON.md).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import selectors
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest

from dynknock import protocol as proto
from dynknock.capture.core import build_filter
from dynknock.capture.fairness import SOURCES_PER_PAYLOAD, Limits
from dynknock.client.session import new_request
from dynknock.keys import SessionKeys, hint_epoch, user_hint, write_key_file
from dynknock.protocol import CONTROL_PORT
from dynknock.topics import Topic
from tests.lab.netlab import Host, NetLab
from tests.lab.stack import DOOR_LINE, VENV_BIN, EventLog, LabUser, Stack, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PREFIX = "dkcw"
WINDOW_S = 5
CLIENT = str(VENV_BIN / "knock-client")
PYTHON = str(VENV_BIN / "python")
ALICE_KEY = bytes.fromhex("a11ce0000000000000000000000000000000000000000000000000000000a11c")
BOB_KEY = bytes.fromhex("b0b0000000000000000000000000000000000000000000000000000000000b0b")
FIGURES_PATH = Path(os.environ.get("DYNKNOCK_CAPTURE_FIGURES", "/tmp/dynknock-capture-figures.json"))
FIGURES: dict[str, Any] = {}

FLOOD_RATE_GOAL = 120_000  # packets/s offered
FLOOD_SECONDS = 14.0
FLOOD_MAX_PACKETS = 4_000_000
# Sender processes: one alone offers 110-160k packets/s on the 2-CPU test machine, two 170-210k, so two
# paced to FLOOD_RATE in all: above the goal, without taking more of the CPUs the server shares with them.
FLOODERS = int(os.environ.get("DYNKNOCK_FLOODERS", "2"))
FLOOD_RATE = float(os.environ.get("DYNKNOCK_FLOOD_RATE", "140000"))
# CPUs to pin the attacker's senders to (taskset -c), e.g. to keep them off the server's on a larger
# machine; unpinned by default (pinned to one of 2 CPUs they offered half the rate).
PIN_FLOOD = os.environ.get("DYNKNOCK_PIN_FLOOD", "")
IDLE_KNOCKS = 5
FLOOD_KNOCKS = 10


def record_figures(section: str, **values: Any) -> None:
    FIGURES.setdefault(section, {}).update(values)
    tmp = FIGURES_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(FIGURES, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(FIGURES_PATH)


FLOOD_TOOL = r'''
"""flood_frames.py IFACE FILE SECONDS MAX_PACKETS [RATE]: the hex frames of FILE round and round, at RATE
packets/s (default: as fast as one process can), until SECONDS or MAX_PACKETS; prints "ready", then what
it sent as JSON."""
import json, sys, time
import pcap
iface, path, seconds, max_packets = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
assert seconds <= 30 and max_packets <= 6_000_000, "the flood is bounded"
frames = [bytes.fromhex(line) for line in open(path) if line.strip()]
handle = pcap.pcap(name=iface, promisc=False, immediate=True, timeout_ms=10)
send = handle.sendpacket
print("ready", flush=True)
sent = errors = i = 0
start = time.monotonic()
deadline = start + seconds
while sent + errors < max_packets and time.monotonic() < deadline:
    for frame in frames[i:i + 512]:
        try:
            send(frame)
            sent += 1
        except OSError:
            errors += 1
    i = (i + 512) % len(frames)
    if rate:
        ahead = (sent + errors) / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": sent, "errors": errors, "seconds": time.monotonic() - start}))
'''

KNOCKER_TOOL = r'''
"""knocker.py COUNT ARGV...: knock-client's main(ARGV) once to warm up, then COUNT times, in one process, so
the times are the exchange's and not an interpreter's start-up (on a small machine under a flood, start-up
is what slows first); prints JSON [[exit, seconds, door line seen, output tail], ...]."""
import contextlib, io, json, re, sys, time
from dynknock.client.main import main
count, argv = int(sys.argv[1]), sys.argv[2:]
assert count <= 50, "bounded"
door = re.compile(r"Door is open at (\S+) port (\d+) for (\d+) seconds")
out = []
for _ in range(count + 1):
    buf = io.StringIO()
    at = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every namespace
    start = time.perf_counter()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    took = time.perf_counter() - start
    out.append([code, took, bool(door.search(buf.getvalue())), buf.getvalue()[-300:], at])
print(json.dumps(out[1:]))
'''

SEE_TOOL = r'''
"""see.py IFACE FILTER SECONDS: count the frames a libpcap handle with FILTER passes; prints "ready", then the count.

The count is the kernel's (pcap stats: ps_recv, every frame the filter passed, read or dropped for want of
buffer), so a reader that falls behind on a busy machine counts the same.
"""
import sys, time
import pcap
handle = pcap.pcap(name=sys.argv[1], snaplen=256, promisc=False, immediate=True, timeout_ms=50,
                   buffer_size=32 * 1024 * 1024)
handle.setfilter(sys.argv[2])
handle.setnonblock(True)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    handle.readpkts()
    time.sleep(0.01)
print(handle.stats()[0])
'''


# --- a user's keys ----------------------------------------------------------------------------


class Keyholder:
    def __init__(self, master: bytes) -> None:
        self.keys = SessionKeys.from_master(master)

    def hint(self) -> bytes:
        return user_hint(self.keys, hint_epoch(time.time()))

    def p1_p2(self, address: str) -> tuple[bytes, bytes]:
        """A P1 and its P2, sealed as the client seals them."""
        request = new_request("ssh", ipaddress.ip_address(address))
        now = time.time_ns() // 1_000_000
        p1 = proto.P1(now, request.request_id, request.address, "ssh", request.knocks)
        p2 = proto.P2(now + 5, request.request_id)
        return (proto.seal(self.keys, p1, self.hint(), secrets.token_bytes(proto.NONCE_LEN)),
                proto.seal(self.keys, p2, self.hint(), secrets.token_bytes(proto.NONCE_LEN)))


def junk(kind: proto.PacketType, hint: bytes, rng: random.Random) -> bytes:
    """Right-sized junk with the version and type bytes the kernel filter wants, under `hint`."""
    size = proto.PACKET_LEN[kind]
    return bytes([proto.VERSION, kind.value]) + hint + rng.randbytes(size - 10)


# --- frames (dpkt) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    src_mac: bytes
    dst_mac: bytes
    dst4: str
    dst6: str


def udp_segment(data: bytes, sport: int) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=sport, dport=CONTROL_PORT, ulen=8 + len(data), data=data)


def ipv4(src: str, dst: str, data: bytes, options: bytes = b"", sport: int = 40000) -> dpkt.ip.IP:
    segment = udp_segment(data, sport)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, ttl=64,
                        id=secrets.randbelow(65536), opts=options, hl=5 + len(options) // 4,
                        len=20 + len(options) + 8 + len(data), data=segment)
    return dpkt.ip.IP(bytes(packet))  # checksums computed


def ipv6(src: str, dst: str, data: bytes, extension: tuple[int, bytes] | None = None) -> dpkt.ip6.IP6:
    segment = bytes(udp_segment(data, 40000))  # UDP checksum 0: capture never looks at it
    head, nxt = (b"", dpkt.ip.IP_PROTO_UDP) if extension is None else (extension[1], extension[0])
    if extension is not None:
        head = bytes([dpkt.ip.IP_PROTO_UDP]) + head[1:]
    return dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                        nxt=nxt, plen=len(head) + len(segment), hlim=64, data=head + segment)


def ether(link: Link, network: dpkt.Packet, tags: list[tuple[int, int]] | None = None) -> bytes:
    if not tags:
        return bytes(dpkt.ethernet.Ethernet(dst=link.dst_mac, src=link.src_mac, data=network))
    frame = dpkt.ethernet.Ethernet(dst=link.dst_mac, src=link.src_mac, type=tags[0][0],
                                   vlan_tags=[dpkt.ethernet.VLANtag8021Q(id=vid) for _, vid in tags], data=network)
    raw = bytes(frame)
    if len(tags) == 2:
        raw = raw[:16] + tags[1][0].to_bytes(2, "big") + raw[18:]
    return raw


ACCEPTED_OPTIONS = {
    "ipv4 plain": b"",
    "ipv4 option nop": b"\x01\x01\x01\x01",
    "ipv4 option record-route": b"\x07\x07\x04" + bytes(4) + b"\x00",
    "ipv4 option timestamp": b"\x44\x0c\x05\x00" + bytes(8),
    "ipv4 option router-alert": b"\x94\x04\x00\x00",
    "ipv4 40 bytes of options": b"\x01" * 39 + b"\x00",
}
REFUSED_TAGS = {
    "802.1Q vlan 0": [(0x8100, 0)],
    "802.1Q vlan 5": [(0x8100, 5)],
    "802.1Q vlan 4094": [(0x8100, 4094)],
    "802.1ad vlan 7": [(0x88A8, 7)],
    "QinQ 802.1ad+802.1Q": [(0x88A8, 7), (0x8100, 5)],
    "double 802.1Q": [(0x8100, 7), (0x8100, 0)],
}
REFUSED_EXTENSIONS = {
    "ipv6 hop-by-hop": (0, bytes([0, 0, 1, 4, 0, 0, 0, 0])),
    "ipv6 destination options": (60, bytes([0, 0, 1, 4, 0, 0, 0, 0])),
    "ipv6 atomic fragment": (44, bytes([0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78])),
}


# --- the lab ----------------------------------------------------------------------------------------


@dataclass
class World:
    lab: NetLab
    stack: Stack
    workdir: Path
    events: EventLog
    alice: Keyholder
    link: Link
    keys: dict[str, Path]
    last_knocks: list[tuple[float, float]] = field(default_factory=list)  # (monotonic start, seconds)

    def mac(self, host: Host) -> bytes:
        text = self.lab.run(host, ["cat", f"/sys/class/net/{host.interface}/address"]).stdout.strip()
        return bytes.fromhex(text.replace(":", ""))

    def tool(self, name: str, text: str) -> str:
        path = self.workdir / "tools" / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            path.chmod(0o644)
        return str(path)

    def frames_file(self, name: str, frames: list[bytes]) -> str:
        path = self.workdir / "frames" / f"{name}.hex"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(frame.hex() + "\n" for frame in frames))
        path.chmod(0o644)
        return str(path)

    def knock(self, user: str, timeout_s: float = 8.0) -> tuple[bool, float, str]:
        """The real client from the client namespace: (door opened, wall seconds, output)."""
        argv = [CLIENT, "-u", user, "--timeout", str(timeout_s), "-k", str(self.keys[user]), self.lab.server.ipv4]
        started = time.monotonic()
        done = self.lab.run(self.lab.client, argv, check=False, timeout=timeout_s + 30)
        took = time.monotonic() - started
        text = done.stdout + done.stderr
        return done.returncode == 0 and DOOR_LINE.search(text) is not None, took, text

    def knocks(self, user: str, count: int, timeout_s: float = 8.0) -> list[tuple[bool, float, str]]:
        """count knocks by the real client code in one process in the client namespace (KNOCKER_TOOL)."""
        argv = [PYTHON, self.tool("knocker.py", KNOCKER_TOOL), str(count), "-u", user, "--timeout", str(timeout_s),
                "-k", str(self.keys[user]), self.lab.server.ipv4]
        done = self.lab.run(self.lab.client, argv, check=False, timeout=count * (timeout_s + 5) + 30)
        assert done.returncode == 0, done.stderr
        results = json.loads(done.stdout)
        self.last_knocks = [(at, took) for _, took, _, _, at in results]
        return [(code == 0 and door, took, tail) for code, took, door, tail, _ in results]

    def capture_counters(self) -> dict[str, Any]:
        alive = self.events.next_alive("capture")
        flat = {k: alive.get(k, 0) for k in ("received", "kernel_dropped", "forwarded", "dropped", "unknown_hints",
                                             "wrapped", "bus_full")}
        flat.update({f"shed_{k}": v for k, v in dict(alive.get("shed", {})).items()})
        return flat

    def capture_counters_once(self, before: dict[str, Any], done: Callable[[dict[str, int]], bool],
                              timeout_s: float = 6.0) -> dict[str, Any]:
        """capture's counters from its next heartbeats, once `done` holds for how they moved since `before`
        (a bounded poll on what capture reports, not a sleep); the last ones at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            after = self.capture_counters()
            if done(delta(after, before)) or time.monotonic() > deadline:
                return after


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: int(after[k]) - int(before.get(k, 0)) for k in after}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    FIGURES.clear()
    # Bob knocks 15 times within a few seconds: more doors than the default per-user cap.
    with lab_stack(PREFIX, REPO / "supervisord.conf", [LabUser("alice", key=ALICE_KEY), LabUser("bob", key=BOB_KEY)],
                   window_seconds=WINDOW_S, extra="max_doors_per_user = 100") as (lab, stack, _):
        workdir = stack.workdir
        keys = {name: workdir / f"{name}.key" for name in ("alice", "bob")}
        write_key_file(keys["alice"], ALICE_KEY)
        write_key_file(keys["bob"], BOB_KEY)
        events = EventLog(stack.endpoints.tap)
        try:
            events.wait_joined()
            world = World(lab, stack, workdir, events, Keyholder(ALICE_KEY), Link(b"", b"", "", ""), keys)
            world.link = Link(world.mac(lab.attacker), world.mac(lab.server), lab.server.ipv4, lab.server.ipv6)
            ok, _, text = world.knock("alice")  # auth has sent capture the live hints
            assert ok, text
            yield world
        finally:
            events.close()


def _start(world: World, host: Host, argv: list[str]) -> subprocess.Popen[str]:
    proc = world.lab.popen(host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    ready = selector.select(30)
    selector.close()
    assert ready and proc.stdout.readline().strip() == "ready", f"{argv[1]} did not start"
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    return out


def _send(world: World, frames: list[bytes], name: str) -> int:
    """Send each frame once from the attacker (the flood tool, bounded by the count)."""
    path = world.frames_file(name, frames)
    proc = _start(world, world.lab.attacker, [PYTHON, world.tool("flood_frames.py", FLOOD_TOOL),
                                              world.lab.attacker.interface, path, "20", str(len(frames))])
    sent = json.loads(_finish(proc, 60))
    assert sent["errors"] == 0 and sent["sent"] == len(frames), sent
    return int(sent["sent"])


# --- 1. every wrapping ----------------------------------------------------------------------------

PER_WRAPPING = 3000


def test_junk_in_every_wrapping_costs_auth_nothing(world: World) -> None:
    lab, link, rng = world.lab, world.link, random.Random(11)
    src4, src6 = lab.attacker.ipv4, lab.attacker.ipv6
    kinds = (proto.PacketType.P1, proto.PacketType.P2)

    # Refused wrappings, under Alice's live hint: were they read, the hint check would pass them on.
    live = world.alice.hint()
    refused: dict[str, list[bytes]] = {}
    for name, tags in REFUSED_TAGS.items():
        refused[f"{name} ipv4"] = [ether(link, ipv4(src4, link.dst4, junk(kinds[i % 2], live, rng)), tags)
                                   for i in range(PER_WRAPPING)]
        refused[f"{name} ipv4 record-route"] = [
            ether(link, ipv4(src4, link.dst4, junk(kinds[i % 2], live, rng), ACCEPTED_OPTIONS[
                "ipv4 option record-route"]), tags) for i in range(PER_WRAPPING // 3)]
        refused[f"{name} ipv6"] = [ether(link, ipv6(src6, link.dst6, junk(kinds[i % 2], live, rng)), tags)
                                   for i in range(PER_WRAPPING // 3)]
    for name, extension in REFUSED_EXTENSIONS.items():
        refused[name] = [ether(link, ipv6(src6, link.dst6, junk(kinds[i % 2], live, rng), extension))
                         for i in range(PER_WRAPPING)]
    # What the filter would pass without its last clause: the frames are ones the old filter let through.
    addresses = [lab.server.ipv4, lab.server.ipv6]
    old_filter = build_filter(addresses, CONTROL_PORT, []).removesuffix(" and not vlan")
    assert old_filter != build_filter(addresses, CONTROL_PORT, [])
    tagged_total = sum(len(v) for k, v in refused.items() if not k.startswith("ipv6 "))
    all_refused = [frame for frames in refused.values() for frame in frames]
    before = world.capture_counters()
    seer = _start(world, lab.server, [PYTHON, world.tool("see.py", SEE_TOOL), lab.server.interface, old_filter, "8"])
    sent_refused = _send(world, all_refused, "refused")
    time.sleep(0.5)  # not a handshake: the half second in which refused frames, were any read, would show
    after = world.capture_counters()
    old_saw = int(_finish(seer, 30).strip())
    refused_delta = delta(after, before)

    # Accepted wrappings, under hints no user has.
    accepted: dict[str, list[bytes]] = {}
    for name, options in ACCEPTED_OPTIONS.items():
        accepted[name] = [ether(link, ipv4(src4, link.dst4, junk(kinds[i % 2], rng.randbytes(8), rng), options))
                          for i in range(PER_WRAPPING)]
    accepted["ipv6 plain"] = [ether(link, ipv6(src6, link.dst6, junk(kinds[i % 2], rng.randbytes(8), rng)))
                              for i in range(PER_WRAPPING)]
    all_accepted = [frame for frames in accepted.values() for frame in frames]
    before = world.capture_counters()
    sent_accepted = _send(world, all_accepted, "accepted")
    accepted_delta = delta(world.capture_counters_once(before, lambda moved: moved["received"] >= sent_accepted),
                           before)

    record_figures("wrappings", refused={k: len(v) for k, v in refused.items()}, refused_sent=sent_refused,
                   refused_capture=refused_delta, tagged_frames_the_old_filter_passes=old_saw,
                   tagged_frames_sent=tagged_total,
                   accepted={k: len(v) for k, v in accepted.items()}, accepted_sent=sent_accepted,
                   accepted_capture=accepted_delta)
    # Refused: never past the kernel (nothing received, nothing read, nothing forwarded)...
    assert refused_delta["received"] == 0 and refused_delta["forwarded"] == 0, refused_delta
    assert refused_delta["wrapped"] == 0 and refused_delta["dropped"] == 0, refused_delta
    # ... though the filter without `not vlan` passes every tagged one but QinQ's (the inner tag stays).
    qinq = sum(len(v) for k, v in refused.items() if k.startswith(("QinQ", "double")))
    assert old_saw == tagged_total - qinq, (old_saw, tagged_total, qinq)
    # Accepted: every frame read, every one dropped by the hint check, none parsed or forwarded.
    assert accepted_delta["received"] == sent_accepted, accepted_delta
    assert accepted_delta["unknown_hints"] == sent_accepted, accepted_delta
    assert accepted_delta["forwarded"] == 0 and accepted_delta["dropped"] == 0, accepted_delta
    assert accepted_delta["kernel_dropped"] == 0, accepted_delta


# --- 2. floods under a live hint, and replays -------------------------------------------------------


def _spoofed(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(0xC6130000 + rng.randrange(1, 65535)))  # 198.19.0.0/16


def _flood(world: World, name: str, frames: list[bytes], others: Callable[[], dict[str, Any]],
           flooded: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Flood frames round and round from FLOODERS processes while the other user knocks (`others`), then
    the flooded user (`flooded`); the figures."""
    lab = world.lab
    path = world.frames_file(name, frames)
    pids = {stage: world.stack.stage_pid(stage) for stage in ("capture", "auth")}
    before = world.capture_counters()
    auth_before = world.events.next_alive("auth")
    tap_mark = world.events.mark()
    pin = ["taskset", "-c", PIN_FLOOD] if PIN_FLOOD else []
    floods = [_start(world, lab.attacker, [*pin, PYTHON, world.tool("flood_frames.py", FLOOD_TOOL),
                                           lab.attacker.interface, path, str(FLOOD_SECONDS),
                                           str(FLOOD_MAX_PACKETS // FLOODERS), str(FLOOD_RATE / FLOODERS)])
              for _ in range(FLOODERS)]
    started = time.monotonic()
    ticks = {stage: _cpu_ticks(pid) for stage, pid in pids.items()}
    try:
        time.sleep(1.0)  # not a handshake: the flood has been on for a second (a steady state) before anyone knocks
        outcome = others()
        still_on = all(f.poll() is None for f in floods)
        outcome.update(flooded())
        wall = time.monotonic() - started
        ticks = {stage: _cpu_ticks(pid) - ticks[stage] for stage, pid in pids.items()}
        sent = [json.loads(_finish(f, FLOOD_SECONDS + 30)) for f in floods]
    finally:
        for f in floods:
            if f.poll() is None:
                f.kill()
                f.wait(5)
    packets = sum(s["sent"] for s in sent)
    # Until capture has accounted for every flood packet (read, or dropped by the kernel).
    after = world.capture_counters_once(before, lambda moved: moved["received"] + moved["kernel_dropped"] >= packets)
    auth_after = world.events.next_alive("auth")
    hz = os.sysconf("SC_CLK_TCK")
    seconds = max(s["seconds"] for s in sent)
    tap = world.events.since(tap_mark)
    tap_seconds = max(1.0, time.monotonic() - started)
    rejections = {k: v - dict(auth_before.get("rejections", {})).get(k, 0)
                  for k, v in dict(auth_after.get("rejections", {})).items()}
    figures = {
        "offered_pps": round(packets / seconds), "packets": packets, "flood_seconds": round(seconds, 2),
        "send_errors": sum(s["errors"] for s in sent), "flood_outlasted_knocks": still_on,
        "capture": delta(after, before), "auth_rejections": {k: v for k, v in rejections.items() if v},
        "cpu_percent": {stage: round(100 * t / hz / wall, 1) for stage, t in ticks.items()},
        "tap_events": len(tap), "tap_events_per_s": round(len(tap) / tap_seconds, 1),
        "tap_rejections": len([e for e in tap if "rejected" in e.topic]),
        "tap_replay_rejections": [dict(e.fields) for e in tap if e.fields.get("reason") == "replay"][:10],
        **outcome,
    }
    return figures


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _bob_knocks(world: World, count: int) -> dict[str, Any]:
    results = world.knocks("bob", count)
    times = [took for _, took, _ in results]
    slow = [world.events.timeline(at, at + took + 0.05, "bob") for at, took in world.last_knocks
            if took > 2 * min(times)]
    return {"bob_opened": sum(ok for ok, _, _ in results), "bob_knocks": count,
            "bob_s_median": round(statistics.median(times), 3), "bob_s_min": round(min(times), 3),
            "bob_s_max": round(max(times), 3), "bob_s": [round(t, 3) for t in times],
            "bob_failures": [text[-300:] for ok, _, text in results if not ok], "bob_slow_timelines": slow}


def _alice_knocks_once(world: World) -> dict[str, Any]:
    ok, took, _ = world.knocks("alice", 1)[0]
    return {"alice_opened": ok, "alice_s": round(took, 3)}


@pytest.fixture(scope="module")
def idle(world: World) -> dict[str, Any]:
    figures = _bob_knocks(world, IDLE_KNOCKS)
    assert figures["bob_opened"] == IDLE_KNOCKS, figures
    record_figures("idle", **figures)
    return figures


def _check_others(figures: dict[str, Any]) -> None:
    assert figures["offered_pps"] >= FLOOD_RATE_GOAL, figures
    assert figures["flood_outlasted_knocks"], f"the flood ended before the knocks did: {figures}"
    assert figures["bob_opened"] == FLOOD_KNOCKS, figures
    # How fast Bob's knocks open under the flood (the "within 3x idle") is a speed goal: it is
    # measured by bench/run.py over three runs and reported in docs/BENCHMARKS.md, never asserted here,
    # where one slow knock on a loaded 2-CPU CI machine would fail the suite (each test records its
    # figures, bob_s_* included, in FIGURES_PATH).
    # The tap stays rate limited (every stage limits its rejection events), whatever the flood.
    assert figures["tap_events_per_s"] < 200, figures
    assert figures["capture"]["kernel_dropped"] <= 0.01 * figures["capture"]["received"], figures


def test_flood_of_junk_under_a_live_hint_leaves_others_knocks_open(world: World, idle: dict[str, Any]) -> None:
    link, rng = world.link, random.Random(22)
    hint = world.alice.hint()
    kinds = (proto.PacketType.P1, proto.PacketType.P2)
    frames = [ether(link, ipv4(_spoofed(rng), link.dst4, junk(kinds[i % 2], hint, rng), sport=1024 + i % 60000))
              for i in range(16384)]

    figures = _flood(world, "live-hint-spoofed", frames, lambda: _bob_knocks(world, FLOOD_KNOCKS),
                     lambda: _alice_knocks_once(world))
    record_figures("live_hint_spoofed_sources", **figures)
    _check_others(figures)
    # What reached auth under Alice's hint is her hint's budget (and Bob's and Alice's knocks), not the flood.
    limits = Limits()
    bound = limits.hint_burst + limits.hint_rate * (figures["flood_seconds"] + 1) + 300  # + Bob's and Alice's
    assert figures["capture"]["forwarded"] <= bound, figures


def test_flood_of_junk_from_one_address_leaves_that_users_own_knocks_open(world: World,
                                                                          idle: dict[str, Any]) -> None:
    link, rng = world.link, random.Random(33)
    hint = world.alice.hint()
    kinds = (proto.PacketType.P1, proto.PacketType.P2)
    frames = [ether(link, ipv4(world.lab.attacker.ipv4, link.dst4, junk(kinds[i % 2], hint, rng)))
              for i in range(16384)]

    def alice() -> dict[str, Any]:
        results = world.knocks("alice", 3)
        return {"alice_opened": sum(ok for ok, _, _ in results), "alice_s": [round(t, 3) for _, t, _ in results]}

    figures = _flood(world, "live-hint-one-address", frames, lambda: _bob_knocks(world, FLOOD_KNOCKS), alice)
    record_figures("live_hint_one_address", **figures)
    _check_others(figures)
    assert figures["alice_opened"] == 3, figures


def test_replay_flood_costs_no_crypto_and_leaves_knocks_open(world: World, idle: dict[str, Any]) -> None:
    lab, link, rng = world.lab, world.link, random.Random(44)
    p1, p2 = world.alice.p1_p2(lab.client.ipv4)
    # The exchange the eavesdropper saw: sent once from Alice's address.
    client_link = Link(world.mac(lab.client), link.dst_mac, link.dst4, link.dst6)
    originals = [ether(client_link, ipv4(lab.client.ipv4, link.dst4, p, sport=45000)) for p in (p1, p2)]
    path = world.frames_file("original", originals)
    mark = world.events.mark()
    lab.run(lab.client, [PYTHON, "-c", "import sys, pcap\nh = pcap.pcap(name=sys.argv[1], immediate=True)\n"
                         "for line in open(sys.argv[2]):\n    h.sendpacket(bytes.fromhex(line.strip()))\n",
                         lab.client.interface, path])
    # auth has taken the P1 (its P2 came right behind it): capture saw both first from Alice's address.
    received = world.events.wait_for(lambda e: e.topic == Topic.AUTH_REQUEST_RECEIVED
                                     and e.fields.get("client") == lab.client.ipv4, mark, 10)
    assert received is not None, "auth never took the original P1"
    # Copies from Alice's address, the attacker's and spoofed ones.
    sources = [lab.client.ipv4, lab.attacker.ipv4] + [_spoofed(rng) for _ in range(4000)]
    frames = [ether(link, ipv4(sources[i % len(sources)], link.dst4, (p1, p2)[i % 2], sport=45000))
              for i in range(8192)]

    figures = _flood(world, "replay", frames, lambda: _bob_knocks(world, FLOOD_KNOCKS),
                     lambda: _alice_knocks_once(world))
    record_figures("replay", **figures)
    _check_others(figures)
    assert figures["alice_opened"], figures
    capture = figures["capture"]
    # Every copy is shed in capture as a duplicate but the first from each of SOURCES_PER_PAYLOAD sources
    # (capture/fairness.py: a copy raced from another address must not shed the client's own): auth sees
    # at most those, and refuses them as replays before any AEAD.
    extra = 2 * (SOURCES_PER_PAYLOAD - 1)  # P1 and P2, each first seen from Alice's address
    assert capture["shed_duplicate"] >= figures["packets"] - extra, figures
    assert figures["auth_rejections"].get("replay", 0) <= extra, figures
    assert figures["auth_rejections"].get("bad_tag", 0) == 0, figures
