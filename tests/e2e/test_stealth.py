"""Stealth under hostile probes: the server sends nothing to a prober without a key.

Issue 11 §1. The kernel itself answers some packets before any input hook of
nftables sees them: an IPv4 packet with a malformed option gets ICMP *parameter
problem* at once, a lone first fragment gets ICMP *reassembly time exceeded*
when its reassembly queue expires, an IPv6 hop-by-hop option with the "discard
and report" action gets ICMPv6 *parameter problem*. A stealth server must send
none of them. The battery below sends, from the attacker namespace of the lab
and with the real stack running (supervisord, libpcap, nftables, sshd):
IPv4 options of every kind (well-formed and malformed), fragments (first,
middle, last, tiny, overlapping, duplicated, complete), every TCP flag
combination, UDP to many kinds of port, every ICMP and ICMPv6 type, other IP
protocols, and IPv6 extension headers (hop-by-hop, destination options,
routing of several types, unknown next headers, fragment headers), once with no
door open and once with a door open for another user. Whatever leaves the
server towards the attacker, but for neighbour discovery on the link (ARP, ND,
MLD), fails the test.

The fragment reassembly timeouts of the server namespace are lowered to a few
seconds (sysctls) so that the expiry of a lone fragment, 30 s (IPv4) / 60 s
(IPv6) by default, is seen within the test; the kernel's path is the same.

The legitimate side must keep working: a door and an ssh session through it,
the server's own outbound TCP and UDP, and path-MTU discovery for the server's
own connection (ICMP "fragmentation needed" from a router on the path).
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from dynknock.keys import write_key_file
from dynknock.protocol import CONTROL_PORT
from tests.lab.netlab import Host, NetLab, SshdInfo
from tests.lab.stack import VENV_BIN, LabUser, Stack, door_port, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
INJECT_TOOL = Path(__file__).resolve().parent / "tools" / "inject_frames.py"
PREFIX = "dks"
CLIENT = str(VENV_BIN / "knock-client")
PYTHON = str(VENV_BIN / "python")
BOB_KEY = bytes.fromhex("0b0e5ea1ed5ec2e7f00d0ddba11facade5deadbeef0badf00d12345678901234")
# Seconds the server namespace keeps an incomplete datagram (defaults: 30 s IPv4, 60 s IPv6).
REASSEMBLY_TIMEOUT_S = 2
# The server namespace's kernel answers every probe it would answer at all: short reassembly
# timeouts, and no ICMP rate limit (else the first answers would use up the budget and hide
# a later class of probe that also gets one).
SERVER_SYSCTLS = {
    "net.ipv4.ipfrag_time": REASSEMBLY_TIMEOUT_S,
    "net.ipv6.ip6frag_time": REASSEMBLY_TIMEOUT_S,
    "net.ipv4.icmp_ratelimit": 0,
    "net.ipv6.icmp.ratelimit": 0,
    "net.ipv4.icmp_msgs_per_sec": 100_000,
    "net.ipv4.icmp_msgs_burst": 100_000,
}
# Between two probes, so that no global limit of the kernel's drops an answer either.
PROBE_GAP_S = 0.001
# Link-local housekeeping that any IP host does, and that says nothing a prober on the
# Internet could see: neighbour discovery and multicast listener reports.
ICMPV6_LINK_TYPES = {130, 131, 132, 133, 134, 135, 136, 143}

A = dpkt.tcp
ALL_FLAGS = [A.TH_FIN, A.TH_SYN, A.TH_RST, A.TH_PUSH, A.TH_ACK, A.TH_URG, A.TH_ECE, A.TH_CWR]


# --- building probes (dpkt does the headers; checksums are computed, not faked) ----------


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.strip().replace(":", ""))


def _checksum(data: bytes) -> int:
    return int(dpkt.in_cksum(data))


def _pseudo4(src: str, dst: str, proto: int, length: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def _pseudo6(src: str, dst: str, proto: int, length: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!I3xB", length, proto))


def _with_checksum(segment: bytes, offset: int, pseudo: bytes) -> bytes:
    """segment (checksum field zero) with its checksum written at offset."""
    value = _checksum(pseudo + segment)
    return segment[:offset] + struct.pack("!H", value) + segment[offset + 2:]


def tcp(src: str, dst: str, dport: int, flags: int, sport: int = 0, seq: int | None = None,
        payload: bytes = b"") -> bytes:
    segment = bytes(dpkt.tcp.TCP(sport=sport or 30000 + secrets.randbelow(30000), dport=dport,
                                 seq=secrets.randbits(32) if seq is None else seq, ack=0, flags=flags,
                                 win=65535, data=payload))
    segment = segment[:16] + b"\0\0" + segment[18:]
    v6 = ":" in src
    pseudo = (_pseudo6 if v6 else _pseudo4)(src, dst, 6, len(segment))
    return _with_checksum(segment, 16, pseudo)


def udp(src: str, dst: str, dport: int, payload: bytes, sport: int = 0) -> bytes:
    segment = struct.pack("!HHHH", sport or 30000 + secrets.randbelow(30000), dport, 8 + len(payload), 0) + payload
    v6 = ":" in src
    pseudo = (_pseudo6 if v6 else _pseudo4)(src, dst, 17, len(segment))
    return _with_checksum(segment, 6, pseudo)


def icmp4(kind: int, code: int, body: bytes) -> bytes:
    return bytes(dpkt.icmp.ICMP(type=kind, code=code, data=body))


def icmp6(src: str, dst: str, kind: int, code: int, body: bytes) -> bytes:
    message = struct.pack("!BBH", kind, code, 0) + body
    return _with_checksum(message, 2, _pseudo6(src, dst, 58, len(message)))


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, opts: bytes = b"", offset: int = 0,
         more: bool = False, ident: int | None = None, ihl_words: int | None = None) -> bytes:
    """An IPv4 packet; `opts` raw option bytes (padded to 4 by the caller where wanted)."""
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=64,
                        id=secrets.randbelow(65536) if ident is None else ident, opts=opts, data=payload)
    packet.hl = ihl_words if ihl_words is not None else 5 + (len(opts) + 3) // 4
    packet.offset = offset
    packet.mf = int(more)
    packet.len = 20 + len(opts) + len(payload)
    return bytes(packet)


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    packet = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                          nxt=next_header, hlim=64, plen=len(payload))
    return bytes(packet.pack_hdr()) + payload


def ext_options(next_header: int, options: bytes) -> bytes:
    """A hop-by-hop or destination options header holding `options` (padded with PadN to 8n)."""
    body = options
    pad = (-(2 + len(body))) % 8
    if pad == 1:
        body += b"\x00"
    elif pad:
        body += bytes([1, pad - 2]) + bytes(pad - 2)
    return bytes([next_header, (2 + len(body)) // 8 - 1]) + body


def ext_routing(next_header: int, routing_type: int, segments_left: int, addresses: list[str]) -> bytes:
    body = bytes([routing_type, segments_left]) + bytes(4)
    body += b"".join(socket.inet_pton(socket.AF_INET6, a) for a in addresses)
    return bytes([next_header, (2 + len(body)) // 8 - 1]) + body


def ext_fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset // 8) << 3 | int(more), ident)


@dataclass(frozen=True)
class Probe:
    name: str
    frame: bytes


class Battery:
    """Every probe of the battery from one host to the server, as whole Ethernet frames."""

    def __init__(self, src_mac: bytes, dst_mac: bytes, src4: str, dst4: str, src6: str, dst6: str) -> None:
        self.src_mac, self.dst_mac = src_mac, dst_mac
        self.src4, self.dst4, self.src6, self.dst6 = src4, dst4, src6, dst6
        self.probes: list[Probe] = []

    def add4(self, name: str, packet: bytes) -> None:
        eth = dpkt.ethernet.Ethernet(src=self.src_mac, dst=self.dst_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=packet)
        self.probes.append(Probe(f"v4 {name}", bytes(eth)))

    def add6(self, name: str, packet: bytes) -> None:
        eth = dpkt.ethernet.Ethernet(src=self.src_mac, dst=self.dst_mac, type=dpkt.ethernet.ETH_TYPE_IP6,
                                     data=packet)
        self.probes.append(Probe(f"v6 {name}", bytes(eth)))

    # -- the targets a prober tries first --

    def targets4(self, door_ports: list[int]) -> list[tuple[str, int, bytes]]:
        s, d = self.src4, self.dst4
        junk_p1 = b"\x01\x01" + os.urandom(128)
        out = [("udp-control-p1-sized", 17, udp(s, d, CONTROL_PORT, junk_p1)),
               ("tcp-22-syn", 6, tcp(s, d, 22, A.TH_SYN)),
               ("icmp-echo", 1, icmp4(8, 0, struct.pack("!HH", 7, 1) + os.urandom(56))),
               ("udp-53", 17, udp(s, d, 53, os.urandom(40)))]
        out += [(f"tcp-door-{p}-syn", 6, tcp(s, d, p, A.TH_SYN)) for p in door_ports]
        return out

    def targets6(self, door_ports: list[int]) -> list[tuple[str, int, bytes]]:
        s, d = self.src6, self.dst6
        out = [("udp-control-p1-sized", 17, udp(s, d, CONTROL_PORT, b"\x01\x01" + os.urandom(128))),
               ("tcp-22-syn", 6, tcp(s, d, 22, A.TH_SYN)),
               ("icmp6-echo", 58, icmp6(s, d, 128, 0, struct.pack("!HH", 7, 1) + os.urandom(56))),
               ("udp-53", 17, udp(s, d, 53, os.urandom(40)))]
        out += [(f"tcp-door-{p}-syn", 6, tcp(s, d, p, A.TH_SYN)) for p in door_ports]
        return out

    # -- IPv4 --

    def ip_options(self, door_ports: list[int]) -> None:
        server = socket.inet_aton(self.dst4)
        options = {
            "nop": b"\x01\x01\x01\x01",
            "eol": b"\x00\x00\x00\x00",
            "rr-ok": b"\x07\x0b\x04" + bytes(8) + b"\x00",
            "rr-len2": b"\x07\x02\x00\x00",
            "rr-ptr-past": b"\x07\x07\x0c" + bytes(4) + b"\x00",
            "ts-ok": b"\x44\x0c\x05\x00" + bytes(8),
            "ts-ptr1": b"\x44\x0c\x01\x00" + bytes(8),
            "ts-flag-bad": b"\x44\x0c\x05\x0f" + bytes(8),
            "past-header": b"\x07\x28\x04\x00",
            "len0": b"\x99\x00\x00\x00",
            "lsrr-via-server": b"\x83\x07\x04" + server + b"\x00",
            "ssrr-via-server": b"\x89\x07\x04" + server + b"\x00",
            "lsrr-bad-ptr": b"\x83\x07\x02" + server + b"\x00",
            "router-alert": b"\x94\x04\x00\x00",
            "security": b"\x82\x0b" + bytes(9) + b"\x00",
            "unknown-copied": b"\x9e\x04\x00\x00",
            "unknown": b"\x1e\x04\x00\x00",
            "max-40-nops": b"\x01" * 40,
        }
        for option_name, opts in options.items():
            for target, proto, payload in self.targets4(door_ports[:1]):
                self.add4(f"option {option_name} {target}", ipv4(self.src4, self.dst4, proto, payload, opts=opts))
        # A header length that says options follow, and a datagram that ends before them.
        self.add4("ihl-past-datagram", ipv4(self.src4, self.dst4, 17, b"", ihl_words=15))

    def fragments4(self, door_ports: list[int]) -> None:
        s, d = self.src4, self.dst4
        for target, proto, whole in self.targets4(door_ports[:1]):
            whole = whole + os.urandom(max(0, 48 - len(whole)))  # room for three pieces
            ident = secrets.randbelow(65536)

            def piece(start: int, end: int | None, more: bool, ident: int = ident, whole: bytes = whole,
                      opts: bytes = b"", proto: int = proto) -> bytes:
                return ipv4(s, d, proto, whole[start:end], offset=start, more=more, ident=ident, opts=opts)

            self.add4(f"frag-first-alone {target}", piece(0, 16, True))
            self.add4(f"frag-tiny-first-alone {target}", piece(0, 8, True, ident + 1))
            self.add4(f"frag-middle-alone {target}", piece(16, 32, True, ident + 2))
            self.add4(f"frag-last-alone {target}", piece(16, None, False, ident + 3))
            self.add4(f"frag-first-twice {target}", piece(0, 16, True, ident + 4))
            self.add4(f"frag-first-twice-2 {target}", piece(0, 16, True, ident + 4))
            self.add4(f"frag-overlap-a {target}", piece(0, 24, True, ident + 5))
            self.add4(f"frag-overlap-b {target}", piece(16, None, False, ident + 5))
            self.add4(f"frag-complete-a {target}", piece(0, 16, True, ident + 6))
            self.add4(f"frag-complete-b {target}", piece(16, None, False, ident + 6))
            self.add4(f"frag-first-with-bad-option {target}",
                      piece(0, 16, True, ident + 7, opts=b"\x07\x02\x00\x00"))
            self.add4(f"frag-first-beyond-64k {target}", piece(0, 16, True, ident + 8)[:6]
                      + struct.pack("!H", 0x1FFF) + piece(0, 16, True, ident + 8)[8:])

    def tcp_flags4(self, door_ports: list[int]) -> None:
        for flags in range(256):
            self.add4(f"tcp-22 flags {flags:#04x}", ipv4(self.src4, self.dst4, 6, tcp(self.src4, self.dst4, 22, flags)))
        for port in [CONTROL_PORT, 443, 61234, *door_ports]:
            for flags in (0, A.TH_SYN, A.TH_ACK, A.TH_RST, A.TH_FIN, A.TH_SYN | A.TH_ACK,
                          A.TH_FIN | A.TH_PUSH | A.TH_URG, 0xFF):
                self.add4(f"tcp-{port} flags {flags:#04x}",
                          ipv4(self.src4, self.dst4, 6, tcp(self.src4, self.dst4, port, flags)))

    def udp4(self, door_ports: list[int]) -> None:
        for port in (7, 53, 67, 123, 137, 161, 500, 1900, 4500, 5353, 33434, 61234, 65535, *door_ports):
            self.add4(f"udp-{port}", ipv4(self.src4, self.dst4, 17, udp(self.src4, self.dst4, port, os.urandom(32))))
        for size in (0, 1, 81, 82, 83, 129, 130, 131, 300, 1400):
            self.add4(f"udp-control size {size}",
                      ipv4(self.src4, self.dst4, 17, udp(self.src4, self.dst4, CONTROL_PORT, os.urandom(size))))

    def icmp_types4(self) -> None:
        quoted = ipv4(self.dst4, self.src4, 17, udp(self.dst4, self.src4, 53, os.urandom(8)))[:28]
        for kind in range(256):
            body = quoted if kind in (3, 4, 5, 11, 12) else struct.pack("!HH", 9, kind) + os.urandom(32)
            for code in ((0, 1, 3, 4) if kind == 3 else (0,)):
                self.add4(f"icmp type {kind} code {code}", ipv4(self.src4, self.dst4, 1, icmp4(kind, code, body)))

    def protocols4(self) -> None:
        for proto in (0, 2, 4, 8, 41, 47, 50, 51, 89, 103, 112, 132, 136, 253, 255):
            self.add4(f"protocol {proto}", ipv4(self.src4, self.dst4, proto, os.urandom(40)))

    # -- IPv6 --

    def extension_headers6(self, door_ports: list[int]) -> None:
        s, d = self.src6, self.dst6
        for target, nxt, payload in self.targets6(door_ports[:1]):
            variants = {
                "hbh-padn": ext_options(nxt, b"\x01\x04" + bytes(4)),
                "hbh-unknown-skip": ext_options(nxt, b"\x3e\x04" + bytes(4)),
                "hbh-unknown-discard": ext_options(nxt, b"\x7e\x04" + bytes(4)),
                "hbh-unknown-report": ext_options(nxt, b"\xbe\x04" + bytes(4)),
                "hbh-unknown-report-unless-mcast": ext_options(nxt, b"\xfe\x04" + bytes(4)),
                "hbh-router-alert": ext_options(nxt, b"\x05\x02\x00\x00"),
                "hbh-jumbo-bad": ext_options(nxt, b"\xc2\x04" + bytes(4)),
                "hbh-option-past-header": ext_options(nxt, b"\x01\x20"),
                "dst-unknown-report": ext_options(nxt, b"\xbe\x04" + bytes(4)),
                "dst-unknown-discard": ext_options(nxt, b"\x7e\x04" + bytes(4)),
            }
            for name, header in variants.items():
                first = 60 if name.startswith("dst") else 0
                self.add6(f"ext {name} {target}", ipv6(s, d, first, header + payload))
            for rtype in (0, 2, 3, 4, 253):
                for left in (0, 1):
                    self.add6(f"ext routing type {rtype} left {left} {target}",
                              ipv6(s, d, 43, ext_routing(nxt, rtype, left, ["2001:db8:d::99"]) + payload))
            self.add6(f"ext hbh-after-dst {target}",
                      ipv6(s, d, 60, ext_options(0, b"\x01\x04" + bytes(4)) + ext_options(nxt, b"\x01\x04" + bytes(4))
                           + payload))
            self.add6(f"ext chain hbh-dst-routing {target}",
                      ipv6(s, d, 0, ext_options(60, b"\x01\x04" + bytes(4)) + ext_options(43, b"\x01\x04" + bytes(4))
                           + ext_routing(nxt, 0, 0, ["2001:db8:d::99"]) + payload))
        for nxt in (59, 253, 254, 143, 139, 140):
            self.add6(f"next header {nxt}", ipv6(s, d, nxt, os.urandom(40)))

    def fragments6(self, door_ports: list[int]) -> None:
        s, d = self.src6, self.dst6
        for target, nxt, whole in self.targets6(door_ports[:1]):
            whole = whole + os.urandom(max(0, 48 - len(whole)))
            ident = secrets.randbits(32)

            def piece(start: int, end: int | None, more: bool, ident: int, whole: bytes = whole,
                      nxt: int = nxt) -> bytes:
                return ipv6(s, d, 44, ext_fragment(nxt, start, more, ident) + whole[start:end])

            self.add6(f"frag-first-alone {target}", piece(0, 16, True, ident))
            self.add6(f"frag-tiny-first-alone {target}", piece(0, 8, True, ident + 1))
            self.add6(f"frag-middle-alone {target}", piece(16, 32, True, ident + 2))
            self.add6(f"frag-last-alone {target}", piece(16, None, False, ident + 3))
            self.add6(f"frag-atomic {target}", piece(0, None, False, ident + 4))
            self.add6(f"frag-overlap-a {target}", piece(0, 24, True, ident + 5))
            self.add6(f"frag-overlap-b {target}", piece(16, None, False, ident + 5))
            self.add6(f"frag-complete-a {target}", piece(0, 16, True, ident + 6))
            self.add6(f"frag-complete-b {target}", piece(16, None, False, ident + 6))
            self.add6(f"frag-first-not-multiple-of-8 {target}", piece(0, 13, True, ident + 7))
            self.add6(f"frag-hbh-then-fragment {target}",
                      ipv6(s, d, 0, ext_options(44, b"\xbe\x04" + bytes(4)) + ext_fragment(nxt, 0, True, ident + 8)
                           + whole[:16]))

    def tcp_flags6(self, door_ports: list[int]) -> None:
        for port in [22, CONTROL_PORT, 443, *door_ports]:
            for flags in (0, A.TH_SYN, A.TH_ACK, A.TH_RST, A.TH_FIN, A.TH_SYN | A.TH_ACK,
                          A.TH_FIN | A.TH_PUSH | A.TH_URG, 0xFF):
                self.add6(f"tcp-{port} flags {flags:#04x}", ipv6(self.src6, self.dst6, 6,
                                                                 tcp(self.src6, self.dst6, port, flags)))

    def udp6(self, door_ports: list[int]) -> None:
        for port in (7, 53, 123, 161, 500, 547, 5353, 33434, 61234, CONTROL_PORT, *door_ports):
            self.add6(f"udp-{port}", ipv6(self.src6, self.dst6, 17, udp(self.src6, self.dst6, port, os.urandom(32))))

    def icmp_types6(self) -> None:
        quoted = ipv6(self.dst6, self.src6, 17, udp(self.dst6, self.src6, 53, os.urandom(8)))
        for kind in range(256):
            if kind in (133, 134, 135, 136, 137):
                continue  # neighbour discovery and redirects: the link's business, answered as ARP is
            body = (bytes(4) + quoted) if kind < 128 else struct.pack("!HH", 9, kind) + os.urandom(32)
            self.add6(f"icmp6 type {kind}", ipv6(self.src6, self.dst6, 58, icmp6(self.src6, self.dst6, kind, 0, body)))

    def everything(self, door_ports: list[int]) -> list[Probe]:
        self.ip_options(door_ports)
        self.fragments4(door_ports)
        self.tcp_flags4(door_ports)
        self.udp4(door_ports)
        self.icmp_types4()
        self.protocols4()
        self.extension_headers6(door_ports)
        self.fragments6(door_ports)
        self.tcp_flags6(door_ports)
        self.udp6(door_ports)
        self.icmp_types6()
        return self.probes


# --- what came back --------------------------------------------------------------


def describe_leaks(path: Path) -> list[str]:
    """Every frame in the capture but link-local housekeeping, described in one line each."""
    leaks = []
    with path.open("rb") as handle:
        for _, raw in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(bytes(raw))
            packet = eth.data
            if eth.type == dpkt.ethernet.ETH_TYPE_ARP:
                continue
            if isinstance(packet, dpkt.ip6.IP6):
                transport = packet.data
                if isinstance(transport, dpkt.icmp6.ICMP6) and transport.type in ICMPV6_LINK_TYPES:
                    continue
                if packet.nxt == 0 and bytes(packet.dst).startswith(b"\xff\x02"):
                    continue  # an MLD report behind its hop-by-hop router alert, to the link's multicast
                leaks.append(f"IPv6 {socket.inet_ntop(socket.AF_INET6, packet.src)} -> "
                             f"{socket.inet_ntop(socket.AF_INET6, packet.dst)} next {packet.nxt} "
                             f"{type(transport).__name__} {getattr(transport, 'type', '')}/"
                             f"{getattr(transport, 'code', '')}")
            elif isinstance(packet, dpkt.ip.IP):
                transport = packet.data
                quoted = ""
                if isinstance(transport, dpkt.icmp.ICMP) and transport.type in (3, 4, 5, 11, 12):
                    inner = bytes(transport.data)[4:]  # past the unused / pointer word
                    quoted = f" quoting {inner[:min(len(inner), ((inner[0] & 15) * 4) + 4)].hex()}" if inner else ""
                leaks.append(f"IPv4 {socket.inet_ntoa(packet.src)} -> {socket.inet_ntoa(packet.dst)} proto {packet.p} "
                             f"{type(transport).__name__} {getattr(transport, 'type', '')}/"
                             f"{getattr(transport, 'code', '')} flags {getattr(transport, 'flags', '')}{quoted}")
            else:
                leaks.append(f"ethertype {eth.type:#06x}")
    return leaks


# --- the lab --------------------------------------------------------------------


@dataclass
class StealthLab:
    lab: NetLab
    stack: Stack
    sshd: SshdInfo
    workdir: Path
    key_file: Path

    def mac(self, host: Host) -> bytes:
        return _mac(self.lab.run(host, ["cat", f"/sys/class/net/{host.interface}/address"]).stdout)

    def battery(self, door_ports: list[int]) -> list[Probe]:
        attacker, server = self.lab.attacker, self.lab.server
        return Battery(self.mac(attacker), self.mac(server), attacker.ipv4, server.ipv4, attacker.ipv6,
                       server.ipv6).everything(door_ports)

    def inject(self, host: Host, frames: list[bytes], gap_s: float = 0.0) -> int:
        path = self.workdir / f"frames-{secrets.token_hex(4)}.txt"
        pause = f"sleep {gap_s}\n" if gap_s else ""
        path.write_text("".join(f.hex() + "\n" + pause for f in frames))
        path.chmod(0o644)
        done = self.lab.run(host, [PYTHON, str(INJECT_TOOL), host.interface, str(path)], timeout=120)
        return int(done.stdout.strip())

    def sniff(self, host: Host, bpf: str) -> AbstractContextManager[Path]:
        return self.lab.sniff(host, bpf, self.workdir / f"sniff-{secrets.token_hex(4)}.pcap")

    def knock(self) -> int:
        done = self.lab.run(self.lab.client, [CLIENT, "-u", "bob", "-k", str(self.key_file), "--timeout", "5",
                                              self.lab.server.ipv4], check=False, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return door_port(done.stdout + done.stderr)

    def probe_and_listen(self, door_ports: list[int]) -> tuple[int, list[str]]:
        """Send the whole battery from the attacker; what the server sent to the attacker meanwhile."""
        probes = self.battery(door_ports)
        server_mac = ":".join(f"{b:02x}" for b in self.mac(self.lab.server))
        with self.sniff(self.lab.attacker, f"ether src {server_mac}") as path:
            sent = self.inject(self.lab.attacker, [p.frame for p in probes], PROBE_GAP_S)
            # Not a handshake: long enough for every reassembly queue the battery started to expire
            # (and answer, if it would), the silence being what is tested.
            time.sleep(REASSEMBLY_TIMEOUT_S + 3)
        return sent, describe_leaks(path)


@pytest.fixture(scope="module")
def stealth_lab() -> Iterator[StealthLab]:
    with lab_stack(PREFIX, REPO / "supervisord.conf", [LabUser("bob", key=BOB_KEY)],
                   window_seconds=30) as (lab, stack, sshd):
        for key, value in SERVER_SYSCTLS.items():
            lab.run(lab.server, ["sysctl", "-q", "-w", f"{key}={value}"], check=True)
        # nf_conntrack is loaded by the gate's ruleset; set its IPv6 reassembly timeout now too.
        lab.run(lab.server, ["sysctl", "-q", "-w", f"net.netfilter.nf_conntrack_frag6_timeout={REASSEMBLY_TIMEOUT_S}"])
        write_key_file(stack.workdir / "bob.key", BOB_KEY)
        yield StealthLab(lab, stack, sshd, stack.workdir, stack.workdir / "bob.key")


def test_the_battery_is_what_it_says(stealth_lab: StealthLab) -> None:
    """The probes parse as the packets they claim to be (a battery of broken frames proves nothing)."""
    probes = stealth_lab.battery([61234])
    names = [p.name for p in probes]
    assert len(probes) > 1000
    for needle in ("option rr-len2", "option ts-ptr1", "option past-header", "frag-first-alone", "frag-middle-alone",
                   "frag-last-alone", "frag-overlap", "frag-tiny-first-alone", "icmp type 255", "icmp6 type 255",
                   "ext hbh-unknown-report", "ext routing type 0 left 1", "tcp-22 flags 0xff", "v6 frag-atomic"):
        assert any(needle in n for n in names), needle
    by_name = {p.name: p.frame for p in probes}
    first = dpkt.ethernet.Ethernet(by_name["v4 frag-first-alone tcp-22-syn"]).data
    assert first.mf == 1 and first.offset == 0 and len(first) == 20 + 16
    rr = dpkt.ethernet.Ethernet(by_name["v4 option rr-len2 udp-control-p1-sized"]).data
    assert rr.hl == 6 and rr.opts == b"\x07\x02\x00\x00"
    syn = dpkt.ethernet.Ethernet(by_name["v4 tcp-22 flags 0x02"]).data
    assert _checksum(_pseudo4(stealth_lab.lab.attacker.ipv4, stealth_lab.lab.server.ipv4, 6, len(syn.data))
                     + bytes(syn.data)) == 0


def test_server_answers_no_probe_without_a_door(stealth_lab: StealthLab) -> None:
    sent, leaks = stealth_lab.probe_and_listen([61234])
    assert sent > 1000
    assert leaks == [], f"{len(leaks)} packets left the server towards the prober: {Counter(leaks).most_common()}"


def test_server_answers_no_probe_with_a_door_open_for_another(stealth_lab: StealthLab) -> None:
    door = stealth_lab.knock()
    assert stealth_lab.lab.tcp_probe(stealth_lab.lab.attacker, stealth_lab.lab.server.ipv4, door) == "TimeoutError"
    sent, leaks = stealth_lab.probe_and_listen([door])
    assert sent > 1000
    assert leaks == [], f"{len(leaks)} packets left the server towards the prober: {Counter(leaks).most_common()}"


def test_a_door_and_an_ssh_session_still_work(stealth_lab: StealthLab) -> None:
    lab = stealth_lab.lab
    ssh = " ".join(stealth_lab.sshd.ssh_argv("{host}")) + " -p {port} echo through-the-door"
    done = lab.run(lab.client, [CLIENT, "-u", "bob", "-k", str(stealth_lab.key_file), "--timeout", "5", "--exec", ssh,
                                lab.server.ipv4], check=False, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "through-the-door" in done.stdout


ECHO_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
kind = socket.SOCK_DGRAM if sys.argv[3] == "udp" else socket.SOCK_STREAM
s = socket.socket(family, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(20)
if kind == socket.SOCK_DGRAM:
    print("listening", flush=True)
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
else:
    s.listen(1)
    print("listening", flush=True)
    c, _ = s.accept()
    c.settimeout(20)
    data = c.recv(2048)
    c.sendall(b"echo:" + data)
    c.recv(1)
"""

ECHO_CLIENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
kind = socket.SOCK_DGRAM if sys.argv[3] == "udp" else socket.SOCK_STREAM
s = socket.socket(family, kind)
s.settimeout(5)
if kind == socket.SOCK_DGRAM:
    for _ in range(20):
        s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
        try:
            print(s.recvfrom(2048)[0].decode())
            break
        except TimeoutError:
            pass
else:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"hello")
    print(s.recv(2048).decode())
"""


@pytest.mark.parametrize("kind", ["tcp", "udp"])
@pytest.mark.parametrize("family", [4, 6])
def test_the_servers_own_outbound_traffic_still_works(stealth_lab: StealthLab, kind: str, family: int) -> None:
    lab = stealth_lab.lab
    address = lab.client.ipv4 if family == 4 else lab.client.ipv6
    port = 7000 + secrets.randbelow(1000)
    server = lab.popen(lab.client, [sys.executable, "-c", ECHO_SERVER, address, str(port), kind],
                       stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"  # bound: a datagram or a SYN finds it
        done = lab.run(lab.server, [sys.executable, "-c", ECHO_CLIENT, address, str(port), kind], check=False,
                       timeout=30)
        assert done.stdout.strip() == "echo:hello", done.stdout + done.stderr
    finally:
        server.kill()
        server.wait(timeout=5)


PMTU_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"x" * 100)
s.recv(200)  # the echo: the 100 bytes went past the client's interface (and its sniffer)
print(s.getsockname()[1], flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_path_mtu_discovery_of_the_servers_own_connection_still_works(stealth_lab: StealthLab) -> None:
    """A router's ICMP "fragmentation needed" about the server's own TCP reaches the server's route."""
    lab = stealth_lab.lab
    port = 8000 + secrets.randbelow(1000)
    server = lab.popen(lab.client, [sys.executable, "-c", ECHO_SERVER, lab.client.ipv4, str(port), "tcp"],
                       stdout=subprocess.PIPE, text=True)
    router_mac, server_mac = stealth_lab.mac(lab.attacker), stealth_lab.mac(lab.server)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        with stealth_lab.sniff(lab.client, f"tcp and src host {lab.server.ipv4} and dst port {port}") as path:
            connection = lab.popen(lab.server, [sys.executable, "-c", PMTU_CLIENT, lab.client.ipv4, str(port), "8"],
                                   stdout=subprocess.PIPE, text=True)
            assert connection.stdout is not None
            local_port = int(connection.stdout.readline())
        data_segments = []
        with path.open("rb") as handle:
            for _, raw in dpkt.pcap.Reader(handle):
                segment = dpkt.ethernet.Ethernet(bytes(raw)).data.data
                if len(segment.data):
                    data_segments.append(segment)
        assert data_segments, "the server's data segment was not seen"
        last = data_segments[-1]
        next_seq = (last.seq + len(last.data)) % 2**32
        quoted = ipv4(lab.server.ipv4, lab.client.ipv4, 6,
                      tcp(lab.server.ipv4, lab.client.ipv4, port, A.TH_ACK | A.TH_PUSH, sport=local_port,
                          seq=next_seq))[:28]
        # A router on the path (the attacker's host plays it) reports an MTU of 1280.
        message = icmp4(3, 4, struct.pack("!HH", 0, 1280) + quoted)
        frame = dpkt.ethernet.Ethernet(src=router_mac, dst=server_mac, type=dpkt.ethernet.ETH_TYPE_IP,
                                       data=ipv4(lab.attacker.ipv4, lab.server.ipv4, 1, message))
        stealth_lab.inject(lab.attacker, [bytes(frame)])
        deadline = time.monotonic() + 5  # a bounded poll until the route has taken the report
        while "mtu 1280" not in (route := lab.run(lab.server, ["ip", "-4", "route", "get", lab.client.ipv4]).stdout):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "mtu 1280" in route, route
        connection.kill()
        connection.wait(timeout=5)
    finally:
        server.kill()
        server.wait(timeout=5)
        lab.run(lab.server, ["ip", "-4", "route", "flush", "cache"], check=False)

