"""Capture's pure core: the kernel filter it asks for, and the frame parser.

Capture holds no keys. It passes on only what can matter, cheapest check first:

1. In the kernel (BPF): UDP to the control port at one of the exact sizes of P1
   and P2 with the right version and type bytes, and, only while requests are
   pending, TCP SYNs (without ACK) from the (source, port) pairs those requests
   declared. With nothing pending, no SYN reaches Python at all, so a port scan
   or SYN flood costs the kernel a few instructions per packet.
2. In Python (this module): addresses, ports and sizes again, since the
   generic filter is used when too many pairs are pending.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import dpkt

from auth.protocol import PACKET_LEN, VERSION, PacketType
from dynknock.bus import Datagram, Syn

# Past this many pending (source, port) pairs every SYN to us passes the kernel and
# auth's look-up does the narrowing. Each change of the pairs is compiled anew: 32
# pairs compile in ~0.3 ms, 200 took 8-17 ms, and 1,000 clients knocking within
# 3 s then kept capture seconds behind (bench/ANALYSIS.md). The kernel's own limit
# (4096 BPF instructions) would allow about 200.
MAX_FILTER_PAIRS = 32

DLT_EN10MB = 1
DLT_RAW = 12
DLT_LINUX_SLL = 113
DLT_RAW_ALT = 101


def _udp_sizes_v4(control_port: int) -> str:
    parts = [f"(udp[4:2] = {8 + size} and udp[8] = {VERSION} and udp[9] = {kind.value})"
             for kind, size in PACKET_LEN.items() if kind is not PacketType.P3]
    return f"(ip and udp dst port {control_port} and ({' or '.join(parts)}))"


def _udp_sizes_v6(control_port: int) -> str:
    # libpcap cannot index the UDP header of IPv6 (udp[] is IPv4 only): read it at
    # fixed offsets from the IPv6 header, which assumes no extension headers
    # (ip6[6] = 17 checks that the next header is UDP straight away).
    parts = [f"(ip6[4:2] = {8 + size} and ip6[48] = {VERSION} and ip6[49] = {kind.value})"
             for kind, size in PACKET_LEN.items() if kind is not PacketType.P3]
    return f"(ip6 and ip6[6] = 17 and ip6[42:2] = {control_port} and ({' or '.join(parts)}))"


_SYN_V4 = "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn)"
_SYN_V6 = "(ip6 and ip6[6] = 6 and ip6[53] & 0x12 = 0x02)"


def build_filter(addresses: Iterable[str], control_port: int, pairs: Iterable[tuple[str, int]], *,
                 all_syns: bool = False) -> str:
    """The BPF program text for the current pending knocks (all_syns: too many to list)."""
    to_us = " or ".join(f"dst host {a}" for a in addresses)
    udp = f"{_udp_sizes_v4(control_port)} or {_udp_sizes_v6(control_port)}"
    pair_list = sorted(set(pairs))
    if not pair_list and not all_syns:
        return f"({to_us}) and ({udp})"
    if all_syns or len(pair_list) > MAX_FILTER_PAIRS:
        syn = f"{_SYN_V4} or {_SYN_V6}"
    else:
        wanted = " or ".join(f"(src host {a} and tcp dst port {p})" for a, p in pair_list)
        syn = f"({_SYN_V4} or {_SYN_V6}) and ({wanted})"
    return f"({to_us}) and (({udp}) or ({syn}))"


CLIENT_SIZES = frozenset(size for kind, size in PACKET_LEN.items() if kind is not PacketType.P3)


def _network_layer(linktype: int, frame: bytes) -> object | None:
    if linktype == DLT_EN10MB:
        network: object = dpkt.ethernet.Ethernet(frame).data
        return network
    if linktype == DLT_LINUX_SLL:
        cooked: object = dpkt.sll.SLL(frame).data
        return cooked
    if linktype in (DLT_RAW, DLT_RAW_ALT):
        version = frame[0] >> 4 if frame else 0
        return dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
    return None


HINT_LEN = 8


def datagram_hint(linktype: int, frame: bytes) -> bytes | None:
    """The hint of an Ethernet IPv4 (no options) or IPv6 (no extension headers) UDP frame, read at
    fixed offsets without parsing; None for anything else (which parse_frame then judges)."""
    if linktype != DLT_EN10MB:
        return None
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 52 and frame[14] == 0x45 and frame[23] == 17:
        return bytes(frame[44:52])
    if ethertype == b"\x86\xdd" and len(frame) >= 72 and frame[20] == 17:
        return bytes(frame[64:72])
    return None


def valid_hints(raw: list[Any]) -> frozenset[bytes] | None:
    if not all(isinstance(h, bytes) and len(h) == HINT_LEN for h in raw):
        return None
    return frozenset(raw)


def parse_frame(linktype: int, frame: bytes, addresses: frozenset[str],
                control_port: int) -> Datagram | Syn | str:
    """A bus message for a frame that may matter, or the reason it was dropped."""
    try:
        packet = _network_layer(linktype, frame)
    except Exception:  # noqa: BLE001 - dpkt raises more than UnpackError on hostile input (e.g. an
        # AttributeError on some IPv6 extension header chains); a frame from outside never crashes us
        return "malformed"
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address
    if isinstance(packet, dpkt.ip.IP):
        source, destination = ipaddress.IPv4Address(packet.src), ipaddress.IPv4Address(packet.dst)
        if packet.offset & dpkt.ip.IP_OFFMASK or packet.mf:
            return "fragment"  # fragments are never ours: P1/P2 fit one packet
    elif isinstance(packet, dpkt.ip6.IP6):
        source, destination = ipaddress.IPv6Address(packet.src), ipaddress.IPv6Address(packet.dst)
        if dpkt.ip.IP_PROTO_FRAGMENT in packet.extension_hdrs:
            return "fragment"  # as for IPv4; dpkt would read a first fragment's transport header
    else:
        return "not_ip"
    if str(destination) not in addresses:
        return "not_for_us"
    transport = packet.data
    if isinstance(transport, dpkt.udp.UDP):
        payload = bytes(transport.data)
        if transport.dport != control_port:
            return "wrong_port"
        if len(payload) not in CLIENT_SIZES or transport.ulen != 8 + len(payload):
            return "wrong_size"
        return Datagram(str(source), transport.sport, str(destination), payload)
    if isinstance(transport, dpkt.tcp.TCP):
        if transport.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK) != dpkt.tcp.TH_SYN:
            return "not_syn"
        return Syn(str(source), transport.dport, transport.seq)
    return "other_protocol"


def valid_pairs(raw: list[list[Any]]) -> list[tuple[str, int]] | None:
    """The pairs as (address, port), or None if any is malformed: they go into BPF text."""
    pairs = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and type(pair[1]) is int
                and 1 <= pair[1] <= 65535):
            return None
        try:
            address = ipaddress.ip_address(pair[0])
        except ValueError:
            return None
        if getattr(address, "scope_id", None):
            return None
        pairs.append((str(address), pair[1]))
    return pairs
