"""Capture's pure core: the BPF filter text, what libpcap makes of it, and the frame parser.

The filter is checked three ways:
1. its text, for no pairs, some pairs and more than MAX_FILTER_PAIRS pairs;
2. libpcap compiles it (on a savefile handle, so no root and no interface), and
   the compiled program stays far below the kernel's 4096-instruction limit;
3. its meaning: a savefile of crafted frames is read through it, and exactly
   the expected frames come out.

parse_frame is driven through every branch, IPv4 and IPv6, Ethernet, Linux
cooked and raw IP, and fuzzed: no bytes make it raise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pcap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock.bus import Datagram, Syn
from dynknock.capture import core
from dynknock.capture.core import MAX_FILTER_PAIRS, build_filter, parse_frame
from dynknock.protocol import PACKET_LEN, PAIR_PACKET_LEN, VERSION, PacketType

SERVER4 = "198.18.0.1"
SERVER6 = "fd00::1"
OTHER_SERVER4 = "198.18.0.7"
OTHER_SERVER6 = "fd00::7"
CLIENT4 = "10.0.0.3"
CLIENT6 = "fd00::3"
STRANGER4 = "10.0.0.9"
STRANGER6 = "fd00::9"
CONTROL = 62201
ADDRESSES = frozenset({SERVER4, SERVER6})
P1_LEN = PACKET_LEN[PacketType.P1]
P2_LEN = PACKET_LEN[PacketType.P2]
P3_LEN = PACKET_LEN[PacketType.P3]
PAIR_P1_LEN = PAIR_PACKET_LEN[PacketType.P1]
# The pending knocks of the semantic tests: one IPv4, one IPv6 client.
KNOCK4 = 1111
KNOCK6 = 2222
PAIRS = [(CLIENT4, KNOCK4), (CLIENT6, KNOCK6)]
# Enough other pairs to push the filter past MAX_FILTER_PAIRS into its generic form.
FILLER = [(f"10.1.{i // 250}.{i % 250 + 1}", 3000 + i) for i in range(MAX_FILTER_PAIRS)]

REASONS = frozenset({"malformed", "fragment", "not_ip", "not_for_us", "wrong_port", "wrong_size",
                     "not_syn", "other_protocol"})

LINKTYPE_RAW_FILE = 101  # what a savefile says for raw IP; libpcap reports it as DLT_RAW


# --- frame builders (dpkt) --------------------------------------------------------


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def control_payload(size: int, kind: int, version: int = VERSION) -> bytes:
    """A payload whose first bytes are what the filter looks at: version, type."""
    return bytes([version, kind]) + bytes(i % 256 for i in range(size - 2))


def udp(src: str, dst: str, dport: int, payload: bytes, sport: int = 40000) -> dpkt.Packet:
    segment = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    segment.ulen = 8 + len(payload)
    return ip_packet(src, dst, dpkt.ip.IP_PROTO_UDP, segment)


def tcp(src: str, dst: str, dport: int, flags: int, seq: int = 0x01020304, sport: int = 40001) -> dpkt.Packet:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, win=65535)
    return ip_packet(src, dst, dpkt.ip.IP_PROTO_TCP, segment)


def ip_packet(src: str, dst: str, proto: int, transport: dpkt.Packet | bytes) -> dpkt.Packet:
    family = _family(src)
    body_len = len(bytes(transport))
    if family == socket.AF_INET:
        return dpkt.ip.IP(src=socket.inet_pton(family, src), dst=socket.inet_pton(family, dst), p=proto,
                          len=20 + body_len, ttl=64, data=transport)
    return dpkt.ip6.IP6(src=socket.inet_pton(family, src), dst=socket.inet_pton(family, dst), nxt=proto,
                        plen=body_len, hlim=64, data=transport)


def ether(network: dpkt.Packet | bytes, ethertype: int | None = None) -> bytes:
    if ethertype is None:
        ethertype = dpkt.ethernet.ETH_TYPE_IP6 if isinstance(network, dpkt.ip6.IP6) else dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(dst=b"\x02\x00\x00\x00\x00\x01", src=b"\x02\x00\x00\x00\x00\x02",
                                        type=ethertype, data=network))


def sll(network: dpkt.Packet) -> bytes:
    ethertype = dpkt.ethernet.ETH_TYPE_IP6 if isinstance(network, dpkt.ip6.IP6) else dpkt.ethernet.ETH_TYPE_IP
    # Linux cooked header: packet type, ARPHRD, address length, address (8), protocol.
    return struct.pack(">HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x02\x00\x00", ethertype) + bytes(network)


def ipv6_with_extension(src: str, dst: str, extension: bytes, next_header: int, transport: bytes) -> dpkt.Packet:
    """An IPv6 packet whose first header is an extension header (raw bytes) before the transport."""
    packet = ip_packet(src, dst, next_header, extension + transport)
    return packet


def fragment_header(next_header: int, offset_units: int, more: bool) -> bytes:
    return struct.pack(">BBHI", next_header, 0, (offset_units << 3) | int(more), 0x12345678)


HOP_BY_HOP_UDP = 0  # next header value of a hop-by-hop options header


def hop_by_hop(next_header: int) -> bytes:
    return bytes([next_header, 0, 1, 4, 0, 0, 0, 0])  # 8 bytes: PadN of 4


def udp_bytes(dport: int, payload: bytes, src: str, dst: str) -> bytes:
    """A UDP segment with a correct checksum over the given pseudo-header."""
    packet = udp(src, dst, dport, payload)
    return bytes(packet.data)


# --- 1. the filter text -------------------------------------------------------------


def test_filter_without_pairs_passes_only_control_datagrams() -> None:
    text = build_filter([SERVER4, SERVER6], CONTROL, [])
    udp4 = (f"(ip and udp dst port {CONTROL} and ((udp[4:2] = {8 + P1_LEN} and udp[8] >= 1 and udp[8] <= 2"
            f" and udp[9] = 1) or (udp[4:2] = {8 + P2_LEN} and udp[8] >= 1 and udp[8] <= 2 and udp[9] = 2)"
            # version 3 (key-pair users): a signed P1 of its own size, the bound flag in the type byte's top bit
            f" or (udp[4:2] = {8 + PAIR_P1_LEN} and udp[8] = 3 and udp[9] & 127 = 1)"
            f" or (udp[4:2] = {8 + P2_LEN} and udp[8] = 3 and udp[9] & 127 = 2)))")
    udp6 = (f"(ip6 and ip6[6] = 17 and ip6[42:2] = {CONTROL} and ((ip6[4:2] = {8 + P1_LEN} and ip6[48] >= 1"
            f" and ip6[48] <= 2 and ip6[49] = 1) or (ip6[4:2] = {8 + P2_LEN} and ip6[48] >= 1 and ip6[48] <= 2"
            f" and ip6[49] = 2) or (ip6[4:2] = {8 + PAIR_P1_LEN} and ip6[48] = 3 and ip6[49] & 127 = 1)"
            f" or (ip6[4:2] = {8 + P2_LEN} and ip6[48] = 3 and ip6[49] & 127 = 2)))")
    assert text == f"(dst host {SERVER4} or dst host {SERVER6}) and ({udp4} or {udp6}) and not vlan"
    assert "tcp" not in text  # no SYN reaches Python while nothing is pending
    assert f"= {8 + P3_LEN}" not in text  # P3 is the server's, never the client's


def test_filter_with_pairs_names_each_pair_once_in_order() -> None:
    pairs = [(CLIENT6, KNOCK6), (CLIENT4, KNOCK4), (CLIENT4, KNOCK4)]
    text = build_filter([SERVER4], CONTROL, pairs)
    no_pairs = build_filter([SERVER4], CONTROL, [])
    udp_part = no_pairs.split(" and (", 1)[1].removesuffix(") and not vlan")
    syn = ("((ip and tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn) or (ip6 and ip6[6] = 6 and ip6[53] & 0x12 = 0x02))"
           f" and ((src host {CLIENT4} and tcp dst port {KNOCK4}) or (src host {CLIENT6} and tcp dst port {KNOCK6}))")
    assert text == f"(dst host {SERVER4}) and (({udp_part}) or ({syn})) and not vlan"
    assert text.count(f"src host {CLIENT4}") == 1  # duplicates collapse


def test_filter_is_independent_of_pair_order() -> None:
    assert build_filter([SERVER4], CONTROL, PAIRS) == build_filter([SERVER4], CONTROL, list(reversed(PAIRS)))


def test_filter_at_the_limit_still_lists_pairs() -> None:
    pairs = FILLER[:MAX_FILTER_PAIRS]
    text = build_filter([SERVER4], CONTROL, pairs)
    assert text.count("src host ") == MAX_FILTER_PAIRS


def test_filter_past_the_limit_narrows_to_the_pending_sources() -> None:
    """Linux cooked and raw-IP captures use this text (Ethernet's knock part is written by capture/bpf.py):
    past MAX_FILTER_PAIRS it names the pending sources, any port, not every SYN to us (a SYN scan)."""
    pairs = FILLER + [(CLIENT4, KNOCK4)]
    assert len(set(pairs)) == MAX_FILTER_PAIRS + 1
    text = build_filter([SERVER4, SERVER6], CONTROL, pairs, linktype=core.DLT_LINUX_SLL)
    sources = sorted({source for source, _ in pairs})
    assert text.count("src host ") == len(sources) and "dst port" not in text.split(" or ((", 1)[1]
    for source in sources:
        assert f"src host {source}" in text


def test_filter_past_the_source_limit_lets_every_syn_to_us_through() -> None:
    pairs = [(f"198.19.{i // 250}.{i % 250 + 1}", 40000) for i in range(core.MAX_FILTER_SOURCES + 1)]
    text = build_filter([SERVER4, SERVER6], CONTROL, pairs)
    udp_part = build_filter([SERVER4, SERVER6], CONTROL, []).split(" and (", 1)[1].removesuffix(") and not vlan")
    syn = "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn) or (ip6 and ip6[6] = 6 and ip6[53] & 0x12 = 0x02)"
    assert text == f"(dst host {SERVER4} or dst host {SERVER6}) and (({udp_part}) or ({syn})) and not vlan"
    assert "src host" not in text


def test_filter_admits_an_admitted_sources_syns_to_any_port() -> None:
    text = build_filter([SERVER4], CONTROL, [(CLIENT6, KNOCK6)], admitted=[CLIENT4], linktype=core.DLT_RAW)
    assert f"(src host {CLIENT4})" in text and f"(src host {CLIENT6} and tcp dst port {KNOCK6})" in text


def test_filter_uses_the_control_port_given() -> None:
    text = build_filter([SERVER4], 5353, [])
    assert "udp dst port 5353" in text and "ip6[42:2] = 5353" in text
    assert str(CONTROL) not in text


# --- 2. libpcap compiles it ------------------------------------------------------------


def empty_savefile(path: Path, linktype: int = core.DLT_EN10MB) -> Path:
    """A pcap savefile with only its 24-byte global header."""
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
    return path


def open_savefile(path: Path) -> pcap.pcap:
    return pcap.pcap(name=str(path), promisc=False, immediate=False, timeout_ms=0)


FILTER_CASES = {
    "no pairs": ([SERVER4, SERVER6], []),
    "ipv4 server only": ([SERVER4], []),
    "ipv6 server only": ([SERVER6], []),
    "some pairs": ([SERVER4, SERVER6], PAIRS),
    "ipv6 pairs only": ([SERVER6], [(CLIENT6, KNOCK6), (STRANGER6, 9)]),
    "exactly max pairs": ([SERVER4, SERVER6], FILLER),
    "max ipv6 pairs": ([SERVER4, SERVER6], [(f"2001:db8::{i:x}", 1000 + i) for i in range(MAX_FILTER_PAIRS)]),
    "past max pairs": ([SERVER4, SERVER6], FILLER + PAIRS),
    "many addresses": ([SERVER4, OTHER_SERVER4, SERVER6, OTHER_SERVER6], FILLER),
    "port edges": ([SERVER4], [(CLIENT4, 1), (CLIENT6, 65535)]),
}


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, LINKTYPE_RAW_FILE, core.DLT_LINUX_SLL])
@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_libpcap_compiles_every_filter(tmp_path: Path, case: str, linktype: int) -> None:
    addresses, pairs = FILTER_CASES[case]
    handle = open_savefile(empty_savefile(tmp_path / "empty.pcap", linktype))
    expression = build_filter(addresses, CONTROL, pairs, linktype=linktype)
    handle.setfilter(expression)
    assert handle.filter == expression
    assert list(handle.readpkts()) == []


def test_libpcap_really_rejects_bad_filters(tmp_path: Path) -> None:
    """The compile check above means something: a broken expression does fail."""
    handle = open_savefile(empty_savefile(tmp_path / "empty.pcap"))
    with pytest.raises(OSError):
        handle.setfilter(build_filter([SERVER4], CONTROL, []) + " and (")


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


def bpf_instruction_count(expression: str, linktype: int) -> int:
    """The length of the optimised program libpcap would hand the kernel (as pypcap compiles it)."""
    name = ctypes.util.find_library("pcap")
    assert name is not None, "libpcap is what pypcap links against; it must be findable"
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    handle = lib.pcap_open_dead(linktype, 65535)
    program = _BpfProgram()
    try:
        assert lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) == 0
        count = int(program.bf_len)
        lib.pcap_freecode(ctypes.byref(program))
        return count
    finally:
        lib.pcap_close(handle)


BPF_MAXINSNS = 4096  # linux/bpf_common.h: longer programs are refused by SO_ATTACH_FILTER


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, core.DLT_RAW, core.DLT_LINUX_SLL])
def test_worst_case_filter_fits_the_kernel(linktype: int) -> None:
    addresses = [SERVER4, OTHER_SERVER4, SERVER6, OTHER_SERVER6]
    ipv6_pairs = [(f"2001:db8::{i:x}", 1000 + i) for i in range(MAX_FILTER_PAIRS)]
    ipv6_sources = [(f"2001:db8::{i:x}", 1000) for i in range(core.MAX_FILTER_SOURCES)]
    pairs_form = bpf_instruction_count(build_filter(addresses, CONTROL, ipv6_pairs, linktype=linktype), linktype)
    sources_form = bpf_instruction_count(build_filter(addresses, CONTROL, ipv6_sources, linktype=linktype), linktype)
    generic = bpf_instruction_count(build_filter(addresses, CONTROL, ipv6_sources + PAIRS, linktype=linktype),
                                    linktype)
    assert pairs_form < BPF_MAXINSNS and sources_form < BPF_MAXINSNS
    # Past the source limit the program shrinks to a constant size, whatever the number of pairs.
    assert generic < 100 < pairs_form


# --- 3. what the filter lets through -------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    name: str
    network: dpkt.Packet
    without_pairs: bool  # passes the filter built with no pending pair
    with_pairs: bool  # passes the filter built with PAIRS
    generic: bool  # passes the filter built past MAX_FILTER_SOURCES (every SYN to us)


SYN = dpkt.tcp.TH_SYN
ACK = dpkt.tcp.TH_ACK
RST = dpkt.tcp.TH_RST
UDP_PROTO = dpkt.ip.IP_PROTO_UDP


def _datagram(name: str, network: dpkt.Packet, passes: bool) -> Frame:
    return Frame(name, network, passes, passes, passes)


def _frames() -> list[Frame]:
    frames: list[Frame] = []
    for fam, client, server, other in ((4, CLIENT4, SERVER4, OTHER_SERVER4), (6, CLIENT6, SERVER6, OTHER_SERVER6)):
        frames += [
            _datagram(f"v{fam} P1", udp(client, server, CONTROL, control_payload(P1_LEN, 1)), True),
            _datagram(f"v{fam} P2", udp(client, server, CONTROL, control_payload(P2_LEN, 2)), True),
            _datagram(f"v{fam} P1 size, P2 type", udp(client, server, CONTROL, control_payload(P1_LEN, 2)), False),
            _datagram(f"v{fam} P2 size, P1 type", udp(client, server, CONTROL, control_payload(P2_LEN, 1)), False),
            _datagram(f"v{fam} P1 size, P3 type", udp(client, server, CONTROL, control_payload(P1_LEN, 3)), False),
            _datagram(f"v{fam} P3", udp(client, server, CONTROL, control_payload(P3_LEN, 3)), False),
            _datagram(f"v{fam} P1 version 2 (bound to the gateway)",
                      udp(client, server, CONTROL, control_payload(P1_LEN, 1, VERSION + 1)), True),
            _datagram(f"v{fam} P2 version 2", udp(client, server, CONTROL, control_payload(P2_LEN, 2, 2)), True),
            _datagram(f"v{fam} P1 wrong version",
                      udp(client, server, CONTROL, control_payload(P1_LEN, 1, VERSION + 2)), False),
            _datagram(f"v{fam} P2 version 0", udp(client, server, CONTROL, control_payload(P2_LEN, 2, 0)), False),
            # Version 3 (key-pair users): a signed P1 of its own size; the type byte's top bit says "bound".
            _datagram(f"v{fam} P1 version 3", udp(client, server, CONTROL, control_payload(PAIR_P1_LEN, 1, 3)), True),
            _datagram(f"v{fam} P1 version 3 bound",
                      udp(client, server, CONTROL, control_payload(PAIR_P1_LEN, 0x81, 3)), True),
            _datagram(f"v{fam} P2 version 3 bound", udp(client, server, CONTROL, control_payload(P2_LEN, 0x82, 3)),
                      True),
            _datagram(f"v{fam} P1 version 3 at version 1's size",
                      udp(client, server, CONTROL, control_payload(P1_LEN, 1, 3)), False),
            _datagram(f"v{fam} P1 version 1 at version 3's size",
                      udp(client, server, CONTROL, control_payload(PAIR_P1_LEN, 1, 1)), False),
            _datagram(f"v{fam} P1 version 2 with the bound flag",
                      udp(client, server, CONTROL, control_payload(P1_LEN, 0x81, 2)), False),
            _datagram(f"v{fam} P3 version 3 bound", udp(client, server, CONTROL, control_payload(P3_LEN, 0x83, 3)),
                      False),
            _datagram(f"v{fam} P1 version 3, another flag",
                      udp(client, server, CONTROL, control_payload(PAIR_P1_LEN, 0x41, 3)), False),
            _datagram(f"v{fam} P1 one byte short", udp(client, server, CONTROL, control_payload(P1_LEN - 1, 1)), False),
            _datagram(f"v{fam} P1 one byte long", udp(client, server, CONTROL, control_payload(P1_LEN + 1, 1)), False),
            _datagram(f"v{fam} P2 one byte long", udp(client, server, CONTROL, control_payload(P2_LEN + 1, 2)), False),
            _datagram(f"v{fam} P1 wrong port", udp(client, server, CONTROL + 1, control_payload(P1_LEN, 1)), False),
            _datagram(f"v{fam} P1 to another host", udp(client, other, CONTROL, control_payload(P1_LEN, 1)), False),
            _datagram(f"v{fam} TCP data to the control port",
                      tcp(client, server, CONTROL, ACK | dpkt.tcp.TH_PUSH), False),
        ]
    frames += [
        # IPv4: the pending pair (CLIENT4, KNOCK4).
        Frame("v4 SYN pending", tcp(CLIENT4, SERVER4, KNOCK4, SYN), False, True, True),
        Frame("v4 SYN with ECN flags pending", tcp(CLIENT4, SERVER4, KNOCK4, SYN | 0xC0), False, True, True),
        Frame("v4 SYN-ACK pending", tcp(CLIENT4, SERVER4, KNOCK4, SYN | ACK), False, False, False),
        Frame("v4 ACK pending", tcp(CLIENT4, SERVER4, KNOCK4, ACK), False, False, False),
        Frame("v4 RST pending", tcp(CLIENT4, SERVER4, KNOCK4, RST), False, False, False),
        Frame("v4 RST-ACK pending", tcp(CLIENT4, SERVER4, KNOCK4, RST | ACK), False, False, False),
        Frame("v4 SYN pending source, other port", tcp(CLIENT4, SERVER4, KNOCK4 + 1, SYN), False, False, True),
        Frame("v4 SYN pending source, v6 client's port", tcp(CLIENT4, SERVER4, KNOCK6, SYN), False, False, True),
        Frame("v4 SYN stranger on pending port", tcp(STRANGER4, SERVER4, KNOCK4, SYN), False, False, True),
        Frame("v4 SYN-ACK stranger", tcp(STRANGER4, SERVER4, KNOCK4, SYN | ACK), False, False, False),
        Frame("v4 SYN pending pair to another host", tcp(CLIENT4, OTHER_SERVER4, KNOCK4, SYN), False, False, False),
        Frame("v4 SYN pending port as source port", tcp(STRANGER4, SERVER4, 80, SYN, sport=KNOCK4),
              False, False, True),
        # IPv6: the pending pair (CLIENT6, KNOCK6).
        Frame("v6 SYN pending", tcp(CLIENT6, SERVER6, KNOCK6, SYN), False, True, True),
        Frame("v6 SYN-ACK pending", tcp(CLIENT6, SERVER6, KNOCK6, SYN | ACK), False, False, False),
        Frame("v6 ACK pending", tcp(CLIENT6, SERVER6, KNOCK6, ACK), False, False, False),
        Frame("v6 RST pending", tcp(CLIENT6, SERVER6, KNOCK6, RST), False, False, False),
        Frame("v6 SYN pending source, other port", tcp(CLIENT6, SERVER6, KNOCK6 + 1, SYN), False, False, True),
        Frame("v6 SYN pending source, v4 client's port", tcp(CLIENT6, SERVER6, KNOCK4, SYN), False, False, True),
        Frame("v6 SYN stranger on pending port", tcp(STRANGER6, SERVER6, KNOCK6, SYN), False, False, True),
        Frame("v6 SYN pending pair to another host", tcp(CLIENT6, OTHER_SERVER6, KNOCK6, SYN), False, False, False),
        # The filter reads IPv6's UDP at fixed offsets, so it refuses extension headers outright.
        _datagram("v6 P1 behind hop-by-hop options",
                  ipv6_with_extension(CLIENT6, SERVER6, hop_by_hop(UDP_PROTO), HOP_BY_HOP_UDP,
                                      udp_bytes(CONTROL, control_payload(P1_LEN, 1), CLIENT6, SERVER6)), False),
        _datagram("v6 P1 in an atomic fragment",
                  ipv6_with_extension(CLIENT6, SERVER6, fragment_header(UDP_PROTO, 0, False),
                                      dpkt.ip.IP_PROTO_FRAGMENT,
                                      udp_bytes(CONTROL, control_payload(P1_LEN, 1), CLIENT6, SERVER6)), False),
        _datagram("v4 ICMP echo to us", ip_packet(CLIENT4, SERVER4, dpkt.ip.IP_PROTO_ICMP,
                                                  dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1))),
                  False),
    ]
    return frames


FRAMES = _frames()


def write_savefile(path: Path, frames: list[bytes], linktype: int) -> Path:
    with path.open("wb") as out:
        writer = dpkt.pcap.Writer(out, linktype=linktype)
        for index, frame in enumerate(frames):
            writer.writepkt(frame, ts=index + 1)  # the timestamp names the frame
    return path


def passing(tmp_path: Path, expression: str, linktype: int) -> set[str]:
    raw = [bytes(frame.network) for frame in FRAMES]
    link = [ether(frame.network) for frame in FRAMES] if linktype == core.DLT_EN10MB else raw
    handle = open_savefile(write_savefile(tmp_path / "frames.pcap", link, linktype))
    handle.setfilter(expression)
    passed = set()
    for timestamp, data in handle.readpkts():
        frame = FRAMES[int(timestamp) - 1]
        assert bytes(data) == link[int(timestamp) - 1]
        passed.add(frame.name)
    return passed


def test_frame_names_are_unique() -> None:
    assert len({f.name for f in FRAMES}) == len(FRAMES)


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, LINKTYPE_RAW_FILE])
def test_filter_without_pairs_passes_exactly_the_client_datagrams(tmp_path: Path, linktype: int) -> None:
    expression = build_filter([SERVER4, SERVER6], CONTROL, [], linktype=linktype)
    assert passing(tmp_path, expression, linktype) == {f.name for f in FRAMES if f.without_pairs}
    assert passing(tmp_path, expression, linktype) == {
        f"v{fam} {name}" for fam in (4, 6)
        for name in ("P1", "P2", "P2 version 2", "P1 version 2 (bound to the gateway)", "P1 version 3",
                     "P1 version 3 bound", "P2 version 3 bound")}


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, LINKTYPE_RAW_FILE])
def test_filter_with_pairs_adds_exactly_the_pending_syns(tmp_path: Path, linktype: int) -> None:
    expression = build_filter([SERVER4, SERVER6], CONTROL, PAIRS, linktype=linktype)
    assert passing(tmp_path, expression, linktype) == {f.name for f in FRAMES if f.with_pairs}


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, LINKTYPE_RAW_FILE])
def test_generic_filter_passes_every_syn_to_us(tmp_path: Path, linktype: int) -> None:
    many = [(f"10.2.{i // 250}.{i % 250 + 1}", 3000) for i in range(core.MAX_FILTER_SOURCES)]
    expression = build_filter([SERVER4, SERVER6], CONTROL, many + PAIRS, linktype=linktype)
    assert passing(tmp_path, expression, linktype) == {f.name for f in FRAMES if f.generic}


def test_filter_for_an_ipv4_only_server_passes_no_ipv6(tmp_path: Path) -> None:
    expression = build_filter([SERVER4], CONTROL, PAIRS)
    expected = {f.name for f in FRAMES if f.with_pairs and f.name.startswith("v4")}
    assert passing(tmp_path, expression, core.DLT_EN10MB) == expected


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.name)
def test_what_the_generic_filter_passes_parse_frame_passes_too(frame: Frame) -> None:
    """Python narrows further, never drops what the kernel was asked to pass."""
    parsed = parse_frame(core.DLT_EN10MB, ether(frame.network), ADDRESSES, CONTROL)
    if frame.generic:
        assert isinstance(parsed, Datagram | Syn)
    if frame.name.startswith("v6 P1 in an atomic fragment"):
        assert parsed == "fragment"


# --- parse_frame ----------------------------------------------------------------------------


def link_frames(network: dpkt.Packet) -> list[tuple[int, bytes]]:
    raw = bytes(network)
    return [(core.DLT_EN10MB, ether(network)), (core.DLT_RAW, raw), (core.DLT_RAW_ALT, raw),
            (core.DLT_LINUX_SLL, sll(network))]


@pytest.mark.parametrize("kind,size", [(PacketType.P1, P1_LEN), (PacketType.P2, P2_LEN)])
@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
def test_parse_frame_datagram(kind: PacketType, size: int, client: str, server: str) -> None:
    payload = control_payload(size, kind.value)
    for linktype, frame in link_frames(udp(client, server, CONTROL, payload, sport=5555)):
        assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == Datagram(client, 5555, server, payload)


def test_parse_frame_datagram_leaves_version_and_type_to_auth() -> None:
    payload = control_payload(P1_LEN, 9, 9)
    frame = ether(udp(CLIENT4, SERVER4, CONTROL, payload))
    assert parse_frame(core.DLT_EN10MB, frame, ADDRESSES, CONTROL) == Datagram(CLIENT4, 40000, SERVER4, payload)


def test_parse_frame_datagram_ignores_ethernet_padding() -> None:
    payload = control_payload(P2_LEN, 2)
    frame = ether(udp(CLIENT4, SERVER4, CONTROL, payload)) + bytes(4)  # trailer after the IP packet
    assert parse_frame(core.DLT_EN10MB, frame, ADDRESSES, CONTROL) == Datagram(CLIENT4, 40000, SERVER4, payload)


def test_parse_frame_ipv6_address_is_compared_in_canonical_form() -> None:
    long_form = "fd00:0:0:0:0:0:0:1"
    frame = ether(udp(CLIENT6, long_form, CONTROL, control_payload(P1_LEN, 1)))
    parsed = parse_frame(core.DLT_EN10MB, frame, ADDRESSES, CONTROL)
    assert isinstance(parsed, Datagram) and parsed.destination == SERVER6


@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
@pytest.mark.parametrize("flags", [SYN, SYN | 0xC0, SYN | dpkt.tcp.TH_PUSH])
def test_parse_frame_syn(client: str, server: str, flags: int) -> None:
    for linktype, frame in link_frames(tcp(client, server, 4242, flags, seq=0xDEADBEEF)):
        assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == Syn(client, 4242, 0xDEADBEEF)


@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
@pytest.mark.parametrize("flags", [SYN | ACK, ACK, RST, RST | ACK, dpkt.tcp.TH_FIN | ACK, 0])
def test_parse_frame_not_syn(client: str, server: str, flags: int) -> None:
    for linktype, frame in link_frames(tcp(client, server, 4242, flags)):
        assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "not_syn"


@pytest.mark.parametrize("client,server,other", [(CLIENT4, SERVER4, OTHER_SERVER4), (CLIENT6, SERVER6, OTHER_SERVER6)])
def test_parse_frame_not_for_us(client: str, server: str, other: str) -> None:
    for network in (udp(client, other, CONTROL, control_payload(P1_LEN, 1)), tcp(client, other, 4242, SYN),
                    udp(server, client, CONTROL, control_payload(P1_LEN, 1))):
        for linktype, frame in link_frames(network):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "not_for_us"


@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
def test_parse_frame_wrong_port(client: str, server: str) -> None:
    for port in (CONTROL - 1, CONTROL + 1, 53):
        for linktype, frame in link_frames(udp(client, server, port, control_payload(P1_LEN, 1))):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "wrong_port"


@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
@pytest.mark.parametrize("size", [0, 2, P1_LEN - 1, P1_LEN + 1, P2_LEN - 1, P2_LEN + 1, P3_LEN, 1200])
def test_parse_frame_wrong_size(client: str, server: str, size: int) -> None:
    payload = control_payload(size, 1) if size >= 2 else bytes(size)
    for linktype, frame in link_frames(udp(client, server, CONTROL, payload)):
        assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "wrong_size"


@pytest.mark.parametrize("client,server", [(CLIENT4, SERVER4), (CLIENT6, SERVER6)])
@pytest.mark.parametrize("ulen", [8, 8 + P2_LEN, 8 + P1_LEN + 1, 0])
def test_parse_frame_wrong_size_when_udp_length_disagrees(client: str, server: str, ulen: int) -> None:
    network = udp(client, server, CONTROL, control_payload(P1_LEN, 1))
    network.data.ulen = ulen
    network.data.sum = 0
    for linktype, frame in link_frames(network):
        assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "wrong_size"


def test_parse_frame_fragment_ipv4() -> None:
    payload = control_payload(P1_LEN, 1)
    first = udp(CLIENT4, SERVER4, CONTROL, payload)
    first.mf = 1
    later = udp(CLIENT4, SERVER4, CONTROL, payload)
    later.offset = 185  # in 8-byte units
    last = tcp(CLIENT4, SERVER4, 4242, SYN)
    last.offset = 1
    for network in (first, later, last):
        for linktype, frame in link_frames(network):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "fragment"


def test_parse_frame_ipv4_dont_fragment_is_not_a_fragment() -> None:
    network = tcp(CLIENT4, SERVER4, 4242, SYN)
    network.df = 1
    assert parse_frame(core.DLT_EN10MB, ether(network), ADDRESSES, CONTROL) == Syn(CLIENT4, 4242, 0x01020304)


@pytest.mark.parametrize("offset,more", [(0, True), (0, False), (16, False), (16, True)])
def test_parse_frame_fragment_ipv6(offset: int, more: bool) -> None:
    datagram = udp_bytes(CONTROL, control_payload(P1_LEN, 1), CLIENT6, SERVER6)
    syn = bytes(tcp(CLIENT6, SERVER6, 4242, SYN).data)
    for proto, transport in ((UDP_PROTO, datagram), (dpkt.ip.IP_PROTO_TCP, syn)):
        network = ipv6_with_extension(CLIENT6, SERVER6, fragment_header(proto, offset, more),
                                      dpkt.ip.IP_PROTO_FRAGMENT, transport)
        for linktype, frame in link_frames(network):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "fragment"


def test_parse_frame_ipv6_other_extension_headers_are_read_through() -> None:
    payload = control_payload(P1_LEN, 1)
    network = ipv6_with_extension(CLIENT6, SERVER6, hop_by_hop(UDP_PROTO), HOP_BY_HOP_UDP,
                                  udp_bytes(CONTROL, payload, CLIENT6, SERVER6))
    assert parse_frame(core.DLT_EN10MB, ether(network), ADDRESSES, CONTROL) == Datagram(CLIENT6, 40000, SERVER6,
                                                                                           payload)


def test_parse_frame_other_protocol() -> None:
    icmp = ip_packet(CLIENT4, SERVER4, dpkt.ip.IP_PROTO_ICMP, dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo()))
    icmp6 = ip_packet(CLIENT6, SERVER6, dpkt.ip.IP_PROTO_ICMP6, dpkt.icmp6.ICMP6(type=128, data=b"\x00" * 4))
    gre = ip_packet(CLIENT4, SERVER4, dpkt.ip.IP_PROTO_GRE, b"\x00" * 4)
    sctp = ip_packet(CLIENT6, SERVER6, 132, b"\x00" * 12)
    no_next = ip_packet(CLIENT6, SERVER6, 59, b"")
    for network in (icmp, icmp6, gre, sctp, no_next):
        for linktype, frame in link_frames(network):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "other_protocol"


def test_parse_frame_truncated_transport_is_other_protocol_not_a_message() -> None:
    """A UDP or TCP header cut short is left as bytes by dpkt: never a Datagram or a Syn."""
    for network in (ip_packet(CLIENT4, SERVER4, UDP_PROTO, b"\xf2\xf9\x00"),
                    ip_packet(CLIENT6, SERVER6, dpkt.ip.IP_PROTO_TCP, b"\x00\x01" * 5)):
        for linktype, frame in link_frames(network):
            assert parse_frame(linktype, frame, ADDRESSES, CONTROL) == "other_protocol"


def test_parse_frame_not_ip() -> None:
    arp = ether(dpkt.arp.ARP(), ethertype=dpkt.ethernet.ETH_TYPE_ARP)
    assert parse_frame(core.DLT_EN10MB, arp, ADDRESSES, CONTROL) == "not_ip"
    # An Ethernet frame claiming IP whose header does not parse: dpkt leaves it as bytes.
    assert parse_frame(core.DLT_EN10MB, ether(b"\x45\x00\x00"), ADDRESSES, CONTROL) == "not_ip"
    raw = bytes(udp(CLIENT4, SERVER4, CONTROL, control_payload(P1_LEN, 1)))
    for version in (0, 5, 7, 15):
        assert parse_frame(core.DLT_RAW, bytes([version << 4 | 5]) + raw[1:], ADDRESSES, CONTROL) == "not_ip"
    assert parse_frame(core.DLT_RAW, b"", ADDRESSES, CONTROL) == "not_ip"
    # A link type capture does not know.
    assert parse_frame(105, raw, ADDRESSES, CONTROL) == "not_ip"


def test_parse_frame_malformed() -> None:
    raw4 = bytes(udp(CLIENT4, SERVER4, CONTROL, control_payload(P1_LEN, 1)))
    raw6 = bytes(udp(CLIENT6, SERVER6, CONTROL, control_payload(P1_LEN, 1)))
    assert parse_frame(core.DLT_EN10MB, b"\x02" * 13, ADDRESSES, CONTROL) == "malformed"
    assert parse_frame(core.DLT_LINUX_SLL, b"\x00" * 15, ADDRESSES, CONTROL) == "malformed"
    assert parse_frame(core.DLT_RAW, raw4[:19], ADDRESSES, CONTROL) == "malformed"
    assert parse_frame(core.DLT_RAW_ALT, raw6[:39], ADDRESSES, CONTROL) == "malformed"
    # An IPv4 header length below 20 bytes.
    assert parse_frame(core.DLT_RAW, b"\x44" + raw4[1:], ADDRESSES, CONTROL) == "malformed"


def test_parse_frame_with_no_addresses_is_never_for_us() -> None:
    frame = ether(udp(CLIENT4, SERVER4, CONTROL, control_payload(P1_LEN, 1)))
    assert parse_frame(core.DLT_EN10MB, frame, frozenset(), CONTROL) == "not_for_us"


LINKTYPES = st.sampled_from([core.DLT_EN10MB, core.DLT_RAW, core.DLT_RAW_ALT, core.DLT_LINUX_SLL, 0, 105, 276])


def _check(result: object) -> None:
    assert isinstance(result, Datagram | Syn) or result in REASONS
    if isinstance(result, Datagram):
        assert len(result.payload) in core.CLIENT_SIZES
        assert result.destination in ADDRESSES


@settings(max_examples=1500)
@given(linktype=LINKTYPES, frame=st.binary(max_size=200))
def test_parse_frame_never_raises_on_random_bytes(linktype: int, frame: bytes) -> None:
    _check(parse_frame(linktype, frame, ADDRESSES, CONTROL))


SEEDS = [bytes(f.network) for f in FRAMES] + [
    bytes(ipv6_with_extension(CLIENT6, SERVER6, fragment_header(UDP_PROTO, 0, False), dpkt.ip.IP_PROTO_FRAGMENT,
                              udp_bytes(CONTROL, control_payload(P1_LEN, 1), CLIENT6, SERVER6)))]


@settings(max_examples=1500)
@given(seed=st.sampled_from(SEEDS), ethernet=st.booleans(),
       edits=st.lists(st.tuples(st.integers(0, 250), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 250))
def test_parse_frame_never_raises_on_mutated_frames(seed: bytes, ethernet: bool, edits: list[tuple[int, int]],
                                                    cut: int) -> None:
    """Random bytes rarely get past the link header; flipping bytes of real frames reaches the deep branches."""
    frame = bytearray(ether(seed) if ethernet else seed)
    for position, value in edits:
        if position < len(frame):
            frame[position] = value
    linktype = core.DLT_EN10MB if ethernet else core.DLT_RAW
    _check(parse_frame(linktype, bytes(frame[:len(frame) - cut % (len(frame) + 1)]), ADDRESSES, CONTROL))


@pytest.mark.parametrize("raw,expected", [
    ([["198.18.0.2", 4000], ["2001:db8:d::2", 65535]], [("198.18.0.2", 4000), ("2001:db8:d::2", 65535)]),
    ([], []),
    ([["198.18.0.2", 0]], None),
    ([["198.18.0.2", 65536]], None),
    ([["198.18.0.2", True]], None),
    ([["198.18.0.2", "80"]], None),
    ([["not an address", 80]], None),
    ([["1.2.3.4) or (tcp", 80]], None),  # would otherwise be spliced into the BPF text
    ([["fe80::1%eth0", 80]], None),
    ([["198.18.0.2"]], None),
    (["198.18.0.2"], None),
])
def test_valid_pairs_checks_what_goes_into_the_filter_text(raw: list[object], expected: object) -> None:
    assert core.valid_pairs(raw) == expected  # type: ignore[arg-type]  # hostile shapes on purpose
