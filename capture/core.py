"""Capture's pure core: the kernel filter it asks for, and the frame parser.

Capture holds no keys. It passes on only what can matter, cheapest check first:

1. In the kernel (BPF): UDP to the control port at one of the exact sizes of P1
   and P2 with the right version and type bytes, and, only while requests are
   pending, TCP SYNs (without ACK) from the (source, port) pairs those requests
   declared. With nothing pending, no SYN reaches Python at all, so a port scan
   or SYN flood costs the kernel a few instructions per packet.
2. In Python, before any parsing (peek_datagram): the hint, read at offsets taken
   from the headers themselves, so that junk under no current user's hint costs
   one set look-up whatever wrapping it came in.
3. In Python (parse_frame): addresses, ports and sizes again, since the
   generic filter is used when too many pairs are pending.

The wrappings capture accepts are Ethernet (or raw IP, or Linux cooked) carrying
IPv4 with any header length (options included: libpcap's udp[] and tcp[] follow
the IHL) or IPv6 with UDP or TCP straight after the fixed header. Everything else
is dropped in the kernel: IPv6 extension headers (the filter reads UDP at fixed
offsets and checks next header = UDP) and every VLAN tag. A VLAN tag needs care:
Linux takes the outer 802.1Q/802.1ad tag off the frame before a packet socket's
filter runs (libpcap puts it back afterwards for the reader), so a filter that
does not say `vlan` passes tagged frames as if they were plain; `and not vlan`
asks the kernel's tag metadata. It comes last because libpcap's first `vlan`
changes the offsets of everything after it. An inner tag (QinQ) stays in the
frame and fails the ethertype test. Tagged frames are refused rather than read
because Linux hands the IP stack only untagged and VLAN 0 frames on the
interface we listen on: knocks from a tagged frame could never reach a door.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import dpkt

from dynknock import protocol as proto
from dynknock.bus import Datagram, Syn
from dynknock.protocol import PACKET_LEN, VERSIONS, PacketType

# Past this many pending (source, port) pairs libpcap's text names the pending sources alone, any
# port, and auth's look-up does the narrowing: the text is compiled anew at every change, and the
# compile's cost grows with its terms (docs/BENCHMARKS.md). On Ethernet capture/bpf.py writes the
# knock part itself and this limit does not apply.
MAX_FILTER_PAIRS = 32
MAX_FILTER_SOURCES = 256  # libpcap's text only (non-Ethernet link types): then every SYN to us

DLT_EN10MB = 1
DLT_RAW = 12
DLT_LINUX_SLL = 113
DLT_RAW_ALT = 101


def _udp_terms(version_at: str, type_at: str, length_at: str) -> str:
    """The client packets (dynknock/protocol.py CLIENT_PACKETS) as BPF terms on the byte offsets given:
    versions 1 and 2 (2: bound to the gateway address, a fleet) share their sizes and type bytes; version 3
    (key-pair users) has its own sizes and may set the bound flag in the type byte. Auth decides which
    versions it takes."""
    parts = [f"({length_at} = {8 + size} and {version_at} >= {min(VERSIONS)} and {version_at} <= {max(VERSIONS)} "
             f"and {type_at} = {kind.value})"
             for kind, size in PACKET_LEN.items() if kind is not PacketType.P3]
    parts += [f"({length_at} = {8 + size} and {version_at} = {proto.PAIR_VERSION} "
              f"and {type_at} & {0xFF & ~proto.BOUND_FLAG} = {kind.value})"
              for kind, size in proto.PAIR_PACKET_LEN.items() if kind is not PacketType.P3]
    return " or ".join(parts)


def _udp_sizes_v4(control_port: int) -> str:
    return f"(ip and udp dst port {control_port} and ({_udp_terms('udp[8]', 'udp[9]', 'udp[4:2]')}))"


def _udp_sizes_v6(control_port: int) -> str:
    # libpcap cannot index the UDP header of IPv6 (udp[] is IPv4 only): read it at
    # fixed offsets from the IPv6 header, which assumes no extension headers
    # (ip6[6] = 17 checks that the next header is UDP straight away).
    terms = _udp_terms("ip6[48]", "ip6[49]", "ip6[4:2]")
    return f"(ip6 and ip6[6] = 17 and ip6[42:2] = {control_port} and ({terms}))"


NOT_VLAN = " and not vlan"  # the end of every Ethernet filter (capture/bpf.py reads it there)
_SYN_V4 = "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn)"
_SYN_V6 = "(ip6 and ip6[6] = 6 and ip6[53] & 0x12 = 0x02)"


def text_form(pairs: Iterable[tuple[str, int]], admitted: Iterable[str] = (), *, all_syns: bool = False
              ) -> tuple[str, list[tuple[str, int]], list[str]]:
    """How narrowly build_filter's text passes SYNs: "none" (nothing pending), "pairs", "sources"
    (past MAX_FILTER_PAIRS terms) or "all" (past MAX_FILTER_SOURCES sources); and the sorted pairs
    (those of admitted sources left out: any port passes for them) and admitted sources it names."""
    admitted_list = sorted(set(admitted))
    admitted_set = set(admitted_list)
    pair_list = sorted(pair for pair in set(pairs) if pair[0] not in admitted_set)
    sources = {a for a, _ in pair_list} | admitted_set
    if all_syns or len(sources) > MAX_FILTER_SOURCES:
        form = "all"
    elif not sources:
        form = "none"
    elif len(pair_list) + len(admitted_list) > MAX_FILTER_PAIRS:
        form = "sources"
    else:
        form = "pairs"
    return form, pair_list, admitted_list


def build_filter(addresses: Iterable[str], control_port: int, pairs: Iterable[tuple[str, int]], *,
                 admitted: Iterable[str] = (), all_syns: bool = False, linktype: int = DLT_EN10MB) -> str:
    """The BPF program text for the current pending knocks (all_syns: every SYN to us), for the
    link type of the handle (only Ethernet has VLAN tags, and libpcap refuses `vlan` elsewhere).

    `admitted`: sources whose SYNs pass to any port (capture/fairness.py Admissions). Past
    MAX_FILTER_PAIRS terms the text names the pending sources alone, any port (the compile cost
    grows with the terms); past MAX_FILTER_SOURCES sources, every SYN to us. (On Ethernet the knock
    part is written by capture/bpf.py instead, with much higher limits.)"""
    to_us = " or ".join(f"dst host {a}" for a in addresses)
    udp = f"{_udp_sizes_v4(control_port)} or {_udp_sizes_v6(control_port)}"
    form, pair_list, admitted_list = text_form(pairs, admitted, all_syns=all_syns)
    syns = f"{_SYN_V4} or {_SYN_V6}"
    if form == "none":
        text = f"({to_us}) and ({udp})"
    elif form == "all":
        text = f"({to_us}) and (({udp}) or ({syns}))"
    elif form == "sources":
        wanted = " or ".join(f"src host {a}" for a in sorted({a for a, _ in pair_list} | set(admitted_list)))
        text = f"({to_us}) and (({udp}) or (({syns}) and ({wanted})))"
    else:
        wanted = " or ".join([*(f"(src host {a} and tcp dst port {p})" for a, p in pair_list),
                              *(f"(src host {a})" for a in admitted_list)])
        text = f"({to_us}) and (({udp}) or (({syns}) and ({wanted})))"
    # Last: libpcap's first `vlan` shifts the offsets of whatever follows it (module docstring).
    return text + NOT_VLAN if linktype == DLT_EN10MB else text


CLIENT_SIZES = frozenset(size for _, _, size in proto.CLIENT_PACKETS)


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


_IPV4 = 0x0800
_IPV6 = 0x86DD
# 802.1Q, 802.1ad (QinQ) and the old pre-standard QinQ tag: wrappings capture refuses.
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_UDP = 17
_TCP = 6
WRAPPED = "wrapped"  # the drop reason for a wrapping capture does not accept


def peek_datagram(linktype: int, frame: bytes) -> tuple[bytes, bytes, bytes] | str | None:
    """(hint, source address, payload) of a client datagram, read at offsets taken from the headers
    without parsing, in every wrapping the kernel filter accepts; a drop reason for what capture never
    forwards (a VLAN tag, IPv6 extension headers, a size that is not P1's or P2's, a frame cut short);
    None for the rest (SYNs, non-first fragments, non-IP), which parse_frame judges.

    This runs for every packet that passes the kernel, so it is kept to slices and integer tests."""
    if linktype == DLT_EN10MB:
        if len(frame) < 14:
            return None
        ethertype = frame[12] << 8 | frame[13]
        start = 14
    elif linktype == DLT_LINUX_SLL:
        if len(frame) < 16:
            return None
        ethertype = frame[14] << 8 | frame[15]
        start = 16
    elif linktype in (DLT_RAW, DLT_RAW_ALT):
        version = frame[0] >> 4 if frame else 0
        ethertype = _IPV4 if version == 4 else _IPV6 if version == 6 else 0
        start = 0
    else:
        return None
    if ethertype == _IPV4:
        if len(frame) < start + 20 or frame[start] >> 4 != 4:
            return None
        protocol = frame[start + 9]
        if protocol != _UDP or (frame[start + 6] & 0x1F) | frame[start + 7]:
            return None  # TCP, or a later fragment (no UDP header in it): parse_frame says which
        header_len = (frame[start] & 0x0F) * 4
        if header_len < 20:
            return "malformed"
        udp = start + header_len
        source = frame[start + 12:start + 16]
    elif ethertype == _IPV6:
        if len(frame) < start + 40 or frame[start] >> 4 != 6:
            return None
        next_header = frame[start + 6]
        if next_header == _TCP:
            return None
        if next_header != _UDP:
            return WRAPPED  # an extension header first: the kernel filter refuses these too
        udp = start + 40
        source = frame[start + 8:start + 24]
    elif ethertype in VLAN_TPIDS:
        return WRAPPED
    else:
        return None
    if len(frame) < udp + 8:
        return "malformed"
    size = (frame[udp + 4] << 8 | frame[udp + 5]) - 8
    if size not in CLIENT_SIZES:
        return "wrong_size"
    payload = frame[udp + 8:udp + 8 + size]
    if len(payload) != size:
        return "malformed"
    return bytes(payload[2:2 + HINT_LEN]), bytes(source), bytes(payload)


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
