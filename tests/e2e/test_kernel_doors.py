"""Doors in the kernel: nftables forwards a door to a local service.

The real stack in the lab "dkk" (supervisord, libpcap, nftables, sshd on
127.0.0.1:22). Its config leaves ssh at `forward = "auto"`, which is the kernel
for IPv4 clients (IPv6 clients of an IPv4 target still go through the relay: NAT
keeps the family), and adds "web6", an IPv6 service on the server's own address,
which the kernel forwards for IPv6 clients. Checked from outside, as a user and an
attacker see it: the door leads to the service and to nothing else, once, for its
window; the loopback services stay out of reach of a neighbour (route_localnet is
on, the guard chain holds); sessions outlive every stage; the tap reports the
connection and its bytes, each direction on its own.
"""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest
import zmq

from dynknock import bus
from dynknock.keys import write_key_file
from tests.lab.netlab import SERVER_IPV6, Host, NetLab, SshdInfo
from tests.lab.stack import VENV_BIN, LabUser, Stack, connect_handshaken, door_port, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INJECT_TOOL = Path(__file__).resolve().parent / "tools" / "inject_frames.py"
PREFIX = "dkk"
WINDOW_S = 6
CLIENT = str(VENV_BIN / "knock-client")
PYTHON = str(VENV_BIN / "python")
BOB_KEY = bytes.fromhex("6b65726e656c2d646f6f72732d6b65792d666f722d626f622d30313233343536")
WEB6_PORT = 2222
STAGES = ("capture", "auth", "gate", "relay", "bus")

# A service on the server's own IPv6 address: its first line, then as many bytes as asked.
BANNER_SERVICE = """
import socket, sys, threading
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
def serve(c):
    with c:
        c.sendall(b"web6-banner\\n")
        wanted = c.recv(64).strip()
        if wanted.isdigit():
            c.sendall(b"x" * int(wanted))
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Connect, read the banner, optionally ask for N bytes and count them, optionally hold the connection.
DOOR_CLIENT = """
import socket, sys, time
address, port, ask, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
try:
    s = socket.create_connection((address, port), timeout=3)
except OSError as e:
    print(type(e).__name__); sys.exit(0)
banner = s.recv(64).split(b"\\n")[0].decode(errors="replace")
total = 0
if ask:
    s.sendall(ask.encode() + b"\\n")
    s.settimeout(10)
    while total < int(ask):
        data = s.recv(65536)
        if not data:
            break
        total += len(data)
time.sleep(hold)
print(banner, total, flush=True)
"""


@dataclass
class KernelLab:
    lab: NetLab
    stack: Stack
    sshd: SshdInfo
    workdir: Path
    key_file: Path

    def knock(self, *args: str, service: str = "ssh", family: int = 4) -> int:
        host = self.lab.server.ipv4 if family == 4 else self.lab.server.ipv6
        done = self.lab.run(self.lab.client, [CLIENT, "-u", "bob", "-k", str(self.key_file), "--timeout", "5",
                                              "-s", service, *args, host], check=False, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return door_port(done.stdout + done.stderr)

    def connect(self, port: int, family: int = 4, ask: int = 0, hold: float = 0.0) -> str:
        host = self.lab.server.ipv4 if family == 4 else self.lab.server.ipv6
        return self.lab.run(self.lab.client, [sys.executable, "-c", DOOR_CLIENT, host, str(port),
                                              str(ask or ""), str(hold)], timeout=60).stdout.strip()

    def nft_elements(self, name: str) -> str:
        kind = "map" if name.startswith("fwd") else "set"
        return self.lab.run(self.lab.server, ["nft", "list", kind, "inet", "dynknock", name]).stdout

    def listening(self, port: int) -> bool:
        return f":{port} " in self.lab.run(self.lab.server, ["ss", "-Hltn"]).stdout + " "


@pytest.fixture(scope="module")
def kernel_lab() -> Iterator[KernelLab]:
    users = [LabUser("bob", key=BOB_KEY, services=("ssh", "web6"))]
    services = {"ssh": "127.0.0.1:22", "web6": f"[{SERVER_IPV6}]:{WEB6_PORT}"}
    with lab_stack(PREFIX, REPO / "supervisord.conf", users, window_seconds=WINDOW_S,
                   services=services) as (lab, stack, sshd):
        lab.popen(lab.server, [sys.executable, "-c", BANNER_SERVICE, lab.server.ipv6, str(WEB6_PORT)])
        write_key_file(stack.workdir / "bob.key", BOB_KEY)
        kernel = KernelLab(lab, stack, sshd, stack.workdir, stack.workdir / "bob.key")
        deadline = time.monotonic() + 10
        while not kernel.listening(WEB6_PORT):  # a bounded poll: the service is up before a test knocks for it
            assert time.monotonic() < deadline, "the web6 service did not start"
            time.sleep(0.05)
        yield kernel


def established(lab: NetLab, host: Host, ss_filter: str, timeout_s: float = 30.0) -> None:
    """A bounded poll until `host` has an established TCP connection matching `ss_filter`."""
    deadline = time.monotonic() + timeout_s
    while not lab.run(host, ["ss", "-Htn", "state", "established", *ss_filter.split()]).stdout.strip():
        assert time.monotonic() < deadline, f"no established connection ({ss_filter}) on {host.role}"
        time.sleep(0.05)


class Tap:
    """Events on the tap from now on (the subscription is made before the action it watches)."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sub: zmq.Socket[Any] = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        # The slow joiner: the subscription goes out with the handshake, ahead of the action watched.
        connect_handshaken(self.sub, stack.endpoints.tap)
        self.stack = stack

    def wait(self, predicate: Any, timeout_s: float) -> bus.Event:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sub.poll(200):
                event = bus.decode_as(self.sub.recv_multipart()[-1], bus.Event)
                if predicate(event):
                    return event
        raise AssertionError(f"no matching event within {timeout_s} s")

    def close(self) -> None:
        self.context.destroy(0)


def test_an_ipv4_door_is_forwarded_by_the_kernel_and_leads_to_ssh(kernel_lab: KernelLab) -> None:
    tap = Tap(kernel_lab.stack, "gate.rule.added")
    try:
        port = kernel_lab.knock()
        added = tap.wait(lambda e: e.topic == "gate.rule.added" and e.fields.get("port") == port, 5)
    finally:
        tap.close()
    assert added.fields["forward"] == "kernel"
    assert f"{kernel_lab.lab.client.ipv4} . {port}" in kernel_lab.nft_elements("once4")
    assert ": 127.0.0.1 . 22" in kernel_lab.nft_elements("fwd4")
    assert not kernel_lab.listening(port), "a kernel door has no listener in user space"
    assert kernel_lab.connect(port).startswith("SSH-2.0-")
    lab = kernel_lab.lab
    ssh = " ".join(shlex.quote(a) for a in kernel_lab.sshd.ssh_argv("{host}"))
    done = lab.run(lab.client, [CLIENT, "-u", "bob", "-k", str(kernel_lab.key_file), "--exec",
                                f"{ssh} -p {{port}} echo through-the-kernel", lab.server.ipv4], check=False, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "through-the-kernel", done.stdout + done.stderr


def test_one_connection_per_door_in_the_kernel_and_it_outlives_the_window(kernel_lab: KernelLab) -> None:
    port = kernel_lab.knock()
    first = kernel_lab.lab.popen(kernel_lab.lab.client, [sys.executable, "-c", DOOR_CLIENT, kernel_lab.lab.server.ipv4,
                                                         str(port), "", str(WINDOW_S + 2)],
                                 stdout=subprocess.PIPE, text=True)
    established(kernel_lab.lab, kernel_lab.lab.client, f"dport = :{port}")
    # The element is gone with the first connection: a second one is dropped, silently.
    assert f". {port} " not in kernel_lab.nft_elements("once4")
    assert kernel_lab.connect(port) == "TimeoutError"
    out, _ = first.communicate(timeout=WINDOW_S + 20)
    assert out.strip().startswith("SSH-2.0-"), out  # held past the window, then read its line


def test_an_unused_door_closes_on_time(kernel_lab: KernelLab) -> None:
    port = kernel_lab.knock()
    time.sleep(WINDOW_S + 1)  # the behaviour under test: the door's window runs out
    assert f". {port} " not in kernel_lab.nft_elements("once4") + kernel_lab.nft_elements("fwd4")
    assert kernel_lab.connect(port) == "TimeoutError"


def test_a_neighbour_cannot_reach_the_loopback_service_although_route_localnet_is_on(kernel_lab: KernelLab) -> None:
    lab = kernel_lab.lab
    interface = lab.server.interface
    assert lab.run(lab.server, ["sysctl", "-n", f"net.ipv4.conf.{interface}.route_localnet"]).stdout.strip() == "1"
    mac = {h.role: bytes.fromhex(lab.run(h, ["cat", f"/sys/class/net/{h.interface}/address"]).stdout.strip()
                                 .replace(":", "")) for h in (lab.server, lab.attacker)}

    def probe() -> list[str]:
        """SYNs from the neighbour to 127.0.0.1:22 and 127.0.0.2:22 with the server's MAC; what came back."""
        frames = []
        for destination in ("127.0.0.1", "127.0.0.2"):
            segment = dpkt.tcp.TCP(sport=40000 + secrets.randbelow(20000), dport=22, seq=secrets.randbits(32),
                                   flags=dpkt.tcp.TH_SYN, win=65535)
            packet = dpkt.ip.IP(src=socket.inet_aton(lab.attacker.ipv4), dst=socket.inet_aton(destination),
                                p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=segment)
            frames.append(bytes(dpkt.ethernet.Ethernet(src=mac["attacker"], dst=mac["server"],
                                                       type=dpkt.ethernet.ETH_TYPE_IP, data=packet)))
        path = kernel_lab.workdir / f"guard-{secrets.token_hex(4)}.txt"
        path.write_text("".join(f.hex() + "\n" for f in frames))
        path.chmod(0o644)
        with lab.sniff(lab.attacker, "tcp", kernel_lab.workdir / f"guard-{secrets.token_hex(4)}.pcap") as capture:
            lab.run(lab.attacker, [PYTHON, str(INJECT_TOOL), lab.attacker.interface, str(path)])
            time.sleep(1.0)  # time for an answer, if there is one
        replies = []
        with capture.open("rb") as handle:
            for _, raw in dpkt.pcap.Reader(handle):
                ip = dpkt.ethernet.Ethernet(bytes(raw)).data
                if isinstance(ip, dpkt.ip.IP) and socket.inet_ntoa(ip.dst) == lab.attacker.ipv4:
                    replies.append(f"{socket.inet_ntoa(ip.src)} flags {ip.data.flags:#x}")
        return replies

    def guard_drops() -> int:
        listing = json.loads(lab.run(lab.server, ["nft", "-j", "list", "chain", "inet", "dynknock", "guard"]).stdout)
        return sum(expr["counter"]["packets"] for item in listing["nftables"] if "rule" in item
                   for expr in item["rule"]["expr"] if "counter" in expr)

    def tcp_segments_in() -> int:
        """Tcp InSegs of the server namespace: what reached its TCP stack."""
        lines = [line.split() for line in lab.run(lab.server, ["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if line.startswith("Tcp:")]
        return int(lines[1][lines[0].index("InSegs")])

    before_drops, before_segments = guard_drops(), tcp_segments_in()
    assert probe() == []
    # The guard stopped both SYNs (before NAT, before any input rule): none reached TCP.
    assert guard_drops() - before_drops == 2
    assert tcp_segments_in() == before_segments
    # Without the guard, and with gate.stealth = false (played by an accept ahead of our input rules,
    # as nothing else would then stop it), the same SYNs reach the loopback service's TCP.
    lab.run(lab.server, ["nft", "insert", "rule", "inet", "dynknock", "input", "ip", "daddr", "127.0.0.0/8",
                         "tcp", "dport", "22", "accept"])
    listing = json.loads(lab.run(lab.server, ["nft", "-j", "-a", "list", "table", "inet", "dynknock"]).stdout)
    rules = [item["rule"] for item in listing["nftables"] if "rule" in item]
    permissive = next(r["handle"] for r in rules if r["chain"] == "input")
    guards = [r["handle"] for r in rules if r["chain"] == "guard"]
    for handle in guards:
        lab.run(lab.server, ["nft", "delete", "rule", "inet", "dynknock", "guard", "handle", str(handle)])
    try:
        before_segments = tcp_segments_in()
        probe()
        assert tcp_segments_in() - before_segments >= 1
    finally:
        for direction in ("daddr", "saddr"):
            lab.run(lab.server, ["nft", "add", "rule", "inet", "dynknock", "guard", "iifname", "!=", "lo", "ip",
                                 direction, "127.0.0.0/8", "counter", "drop"])
        lab.run(lab.server, ["nft", "delete", "rule", "inet", "dynknock", "input", "handle", str(permissive)])
    assert probe() == []


def test_an_ipv6_door_to_an_ipv6_service_is_forwarded_by_the_kernel(kernel_lab: KernelLab) -> None:
    # Without a door the service, on the server's public address, is not reachable.
    assert kernel_lab.connect(WEB6_PORT, family=6) == "TimeoutError"
    port = kernel_lab.knock(service="web6", family=6)
    assert f"{kernel_lab.lab.client.ipv6} . {port}" in kernel_lab.nft_elements("once6")
    assert not kernel_lab.listening(port)
    assert kernel_lab.connect(port, family=6) == "web6-banner 0"
    assert kernel_lab.connect(port, family=6) == "TimeoutError"


def test_an_ipv6_client_of_an_ipv4_service_goes_through_the_relay(kernel_lab: KernelLab) -> None:
    port = kernel_lab.knock(family=6)
    assert f". {port} " in kernel_lab.nft_elements("ronce6")
    # nftables redirects it to the relay's one listener (server.relay_port): nothing binds the door port itself
    assert not kernel_lab.listening(port) and kernel_lab.listening(1022), "the relay listens on its own port"
    assert kernel_lab.connect(port, family=6).startswith("SSH-2.0-")


def test_the_tap_reports_a_kernel_door_connection_and_its_bytes_each_way(kernel_lab: KernelLab) -> None:
    tap = Tap(kernel_lab.stack, "gate.connection.")
    try:
        port = kernel_lab.knock(service="web6", family=6)
        assert kernel_lab.connect(port, family=6, ask=300_000) == "web6-banner 300000"
        opened = tap.wait(lambda e: e.topic == "gate.connection.opened" and e.fields.get("port") == port, 5)
        closed = tap.wait(lambda e: e.topic == "gate.connection.closed" and e.fields.get("port") == port, 10)
    finally:
        tap.close()
    assert opened.fields["user"] == "bob" and opened.fields["client"] == kernel_lab.lab.client.ipv6
    # Whole IP packets: the service's 300,000 bytes and headers one way, a request line and acks the other.
    assert 300_000 < closed.fields["bytes_out"] < 400_000, closed.fields
    assert 0 < closed.fields["bytes_in"] < 50_000, closed.fields


def test_an_established_session_survives_a_sigkill_of_every_stage(kernel_lab: KernelLab) -> None:
    lab = kernel_lab.lab
    ssh = " ".join(shlex.quote(a) for a in kernel_lab.sshd.ssh_argv("{host}"))
    session = lab.popen(lab.client, [CLIENT, "-u", "bob", "-k", str(kernel_lab.key_file), "--exec",
                                     f"{ssh} -p {{port}} 'sleep 6; echo still-here'", lab.server.ipv4],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # knocked and connected through the kernel door (sshd's end of the TCP session is there)
    established(lab, lab.server, "sport = :22")
    for stage in STAGES:
        kernel_lab.stack.kill_stage(stage)
    out, err = session.communicate(timeout=60)
    assert session.returncode == 0 and out.strip() == "still-here", out + err
    kernel_lab.stack.wait_alive(30)
