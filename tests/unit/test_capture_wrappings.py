"""Every wrapping of a client datagram: what the kernel filter does with it, and the cheap hint check.

Issue 11 §2: junk with an IPv4 option or in an 802.1Q frame passed the kernel filter
but not the cheap hint check, so it was parsed and forwarded to auth. The rule tested
here: every wrapping capture accepts is as cheap to reject as the plain one (peek_datagram
finds the hint in it, where parse_frame would find the payload), and every wrapping it
does not accept is refused by the kernel filter (peek_datagram refuses it too, should one
ever reach Python).

Frames are built with dpkt. The filter is run over a savefile here, where a VLAN tag is
still in the frame; on a live Linux handle the kernel takes the outer tag off first,
which tests/e2e/test_capture_wrappings.py covers with real packets.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pcap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock.bus import Datagram
from dynknock.capture import core
from dynknock.capture.core import WRAPPED, build_filter, parse_frame, peek_datagram
from dynknock.protocol import PACKET_LEN, VERSION, PacketType

SERVER4 = "198.18.0.1"
SERVER6 = "2001:db8:d::1"
CLIENT4 = "198.18.0.3"
CLIENT6 = "2001:db8:d::3"
CONTROL = 62201
ADDRESSES = frozenset({SERVER4, SERVER6})
HINT = bytes.fromhex("a1b2c3d4e5f60718")
SRC_MAC = b"\x02\x00\x00\x00\x00\x03"
DST_MAC = b"\x02\x00\x00\x00\x00\x01"


def payload(kind: PacketType = PacketType.P1, hint: bytes = HINT) -> bytes:
    body = bytes(i % 251 for i in range(PACKET_LEN[kind] - 10))
    return bytes([VERSION, kind.value]) + hint + body


def udp(data: bytes) -> dpkt.udp.UDP:
    return dpkt.udp.UDP(sport=40000, dport=CONTROL, ulen=8 + len(data), data=data)


def ipv4(data: bytes, options: bytes = b"") -> dpkt.ip.IP:
    assert len(options) % 4 == 0 and len(options) <= 40
    segment = udp(data)
    return dpkt.ip.IP(src=socket.inet_aton(CLIENT4), dst=socket.inet_aton(SERVER4), p=dpkt.ip.IP_PROTO_UDP,
                      ttl=64, opts=options, hl=5 + len(options) // 4, len=20 + len(options) + len(segment),
                      data=segment)


def ipv6(data: bytes, extensions: list[tuple[int, bytes]] | None = None) -> dpkt.ip6.IP6:
    """IPv6 with the given extension headers (next-header value of each, its bytes) before UDP."""
    segment = bytes(udp(data))
    chain = extensions or []
    raw = b""
    for index, (_kind, header) in enumerate(chain):
        following = chain[index + 1][0] if index + 1 < len(chain) else dpkt.ip.IP_PROTO_UDP
        raw += bytes([following]) + header[1:]
    first = chain[0][0] if chain else dpkt.ip.IP_PROTO_UDP
    return dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, CLIENT6), dst=socket.inet_pton(socket.AF_INET6, SERVER6),
                        nxt=first, plen=len(raw) + len(segment), hlim=64, data=raw + segment)


def ether(network: dpkt.Packet, tags: list[tuple[int, int]] | None = None) -> bytes:
    """An Ethernet frame; tags: (TPID, VLAN id) from the outside in, as dpkt packs them."""
    if not tags:
        return bytes(dpkt.ethernet.Ethernet(dst=DST_MAC, src=SRC_MAC, data=network))
    vlan_tags = [dpkt.ethernet.VLANtag8021Q(id=vid) for _tpid, vid in tags]
    frame = dpkt.ethernet.Ethernet(dst=DST_MAC, src=SRC_MAC, type=tags[0][0], vlan_tags=vlan_tags, data=network)
    raw = bytes(frame)
    if len(tags) == 2:  # dpkt writes 0x8100 inside; put the inner TPID asked for
        raw = raw[:16] + struct.pack("!H", tags[1][0]) + raw[18:]
    return raw


def sll(network: dpkt.Packet) -> bytes:
    cooked = dpkt.sll.SLL(type=0, hrd=1, hlen=6, hdr=SRC_MAC + b"\x00\x00",
                          ethtype=dpkt.ethernet.ETH_TYPE_IP6 if isinstance(network, dpkt.ip6.IP6)
                          else dpkt.ethernet.ETH_TYPE_IP, data=network)
    return bytes(cooked)


# IPv4 options of several kinds and every length the header allows (IHL 6..15).
OPTIONS = {
    "nop": b"\x01\x01\x01\x01",
    "eol": b"\x00\x00\x00\x00",
    "record route": b"\x07\x07\x04" + bytes(4) + b"\x00",  # RR with one slot, then EOL
    "timestamp": b"\x44\x0c\x05\x00" + bytes(8),
    "router alert": b"\x94\x04\x00\x00",
    "security": b"\x82\x0b" + bytes(9) + b"\x00",
    "loose source route": b"\x83\x07\x04" + socket.inet_aton("198.18.0.9") + b"\x01",
    "unknown kind 0x9e": b"\x9e\x04\xff\xff",
    **{f"{n * 4} bytes of nops": b"\x01" * (n * 4) for n in range(2, 11)},
}
IPV6_EXTENSIONS = {
    "hop-by-hop": [(0, bytes([0, 0, 1, 4, 0, 0, 0, 0]))],
    "destination options": [(60, bytes([0, 0, 1, 4, 0, 0, 0, 0]))],
    "routing type 0": [(43, bytes([0, 2, 0, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, SERVER6))],
    "atomic fragment": [(44, bytes([0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]))],
    "hop-by-hop then destination": [(0, bytes([0, 0, 1, 4, 0, 0, 0, 0])), (60, bytes([0, 0, 1, 4, 0, 0, 0, 0]))],
}
VLANS = {
    "802.1Q vlan 0": [(0x8100, 0)],
    "802.1Q vlan 1": [(0x8100, 1)],
    "802.1Q vlan 5": [(0x8100, 5)],
    "802.1Q vlan 4095": [(0x8100, 4095)],
    "802.1ad": [(0x88A8, 7)],
    "0x9100": [(0x9100, 7)],
    "QinQ 802.1ad + 802.1Q": [(0x88A8, 7), (0x8100, 5)],
    "double 802.1Q": [(0x8100, 7), (0x8100, 5)],
    "802.1ad + 802.1Q vlan 0": [(0x88A8, 0), (0x8100, 0)],
}


@dataclass(frozen=True)
class Wrapping:
    name: str
    linktype: int
    frame: bytes
    accepted: bool
    source: str
    payload: bytes


def _wrappings() -> list[Wrapping]:
    out: list[Wrapping] = []
    for kind in (PacketType.P1, PacketType.P2):
        data = payload(kind)
        k = kind.name
        out.append(Wrapping(f"{k} ethernet ipv4", core.DLT_EN10MB, ether(ipv4(data)), True, CLIENT4, data))
        out.append(Wrapping(f"{k} ethernet ipv6", core.DLT_EN10MB, ether(ipv6(data)), True, CLIENT6, data))
        for name, options in OPTIONS.items():
            out.append(Wrapping(f"{k} ethernet ipv4 option {name}", core.DLT_EN10MB, ether(ipv4(data, options)),
                                True, CLIENT4, data))
            out.append(Wrapping(f"{k} raw ipv4 option {name}", core.DLT_RAW, bytes(ipv4(data, options)), True,
                                CLIENT4, data))
            out.append(Wrapping(f"{k} cooked ipv4 option {name}", core.DLT_LINUX_SLL, sll(ipv4(data, options)),
                                True, CLIENT4, data))
        for name, extensions in IPV6_EXTENSIONS.items():
            out.append(Wrapping(f"{k} ethernet ipv6 {name}", core.DLT_EN10MB, ether(ipv6(data, extensions)), False,
                                CLIENT6, data))
        for name, tags in VLANS.items():
            out.append(Wrapping(f"{k} {name} ipv4", core.DLT_EN10MB, ether(ipv4(data), tags), False, CLIENT4, data))
            out.append(Wrapping(f"{k} {name} ipv4 with options", core.DLT_EN10MB,
                                ether(ipv4(data, OPTIONS["record route"]), tags), False, CLIENT4, data))
            out.append(Wrapping(f"{k} {name} ipv6", core.DLT_EN10MB, ether(ipv6(data), tags), False, CLIENT6, data))
        out.append(Wrapping(f"{k} raw ipv4", core.DLT_RAW, bytes(ipv4(data)), True, CLIENT4, data))
        out.append(Wrapping(f"{k} raw ipv6", core.DLT_RAW_ALT, bytes(ipv6(data)), True, CLIENT6, data))
        out.append(Wrapping(f"{k} cooked ipv6", core.DLT_LINUX_SLL, sll(ipv6(data)), True, CLIENT6, data))
    return out


WRAPPINGS = _wrappings()
ACCEPTED = [w for w in WRAPPINGS if w.accepted]
REFUSED = [w for w in WRAPPINGS if not w.accepted]


def test_wrapping_names_are_unique() -> None:
    assert len({w.name for w in WRAPPINGS}) == len(WRAPPINGS)


def test_dpkt_built_the_frames_asked_for() -> None:
    """The builders are right: dpkt reads back the IHL, the tags and the extension headers."""
    frame = dpkt.ethernet.Ethernet(ether(ipv4(payload(), b"\x01" * 40)))
    assert isinstance(frame.data, dpkt.ip.IP) and frame.data.hl == 15
    tagged = dpkt.ethernet.Ethernet(ether(ipv4(payload()), VLANS["QinQ 802.1ad + 802.1Q"]))
    assert [t.id for t in tagged.vlan_tags] == [7, 5] and tagged.vlan_tags[1].type == dpkt.ethernet.ETH_TYPE_IP
    assert ether(ipv4(payload()), VLANS["QinQ 802.1ad + 802.1Q"])[12:18] == bytes.fromhex("88a80007" "8100")
    six = dpkt.ethernet.Ethernet(ether(ipv6(payload(), IPV6_EXTENSIONS["hop-by-hop then destination"])))
    assert isinstance(six.data, dpkt.ip6.IP6) and list(six.data.extension_hdrs) == [0, 60]


# --- the cheap hint check --------------------------------------------------------------------


@pytest.mark.parametrize("wrapping", ACCEPTED, ids=lambda w: w.name)
def test_hint_is_found_in_every_accepted_wrapping(wrapping: Wrapping) -> None:
    peeked = peek_datagram(wrapping.linktype, wrapping.frame)
    assert peeked == (HINT, socket.inet_pton(socket.AF_INET6 if ":" in wrapping.source else socket.AF_INET,
                                             wrapping.source), wrapping.payload)
    # ... and it is what parse_frame would forward: the cheap check reads the same datagram.
    parsed = parse_frame(wrapping.linktype, wrapping.frame, ADDRESSES, CONTROL)
    assert isinstance(parsed, Datagram) and parsed.payload == wrapping.payload and parsed.source == wrapping.source


@pytest.mark.parametrize("wrapping", REFUSED, ids=lambda w: w.name)
def test_refused_wrappings_are_dropped_without_parsing(wrapping: Wrapping) -> None:
    assert peek_datagram(wrapping.linktype, wrapping.frame) == WRAPPED


def test_hint_check_refuses_sizes_and_cut_frames_cheaply() -> None:
    good = ether(ipv4(payload(), OPTIONS["timestamp"]))
    assert peek_datagram(core.DLT_EN10MB, good[:-1]) == "malformed"
    assert peek_datagram(core.DLT_EN10MB, good[:14 + 32 + 4]) == "malformed"  # UDP header cut
    odd = ipv4(payload(), OPTIONS["nop"])
    odd.data.ulen = 8 + PACKET_LEN[PacketType.P3]
    assert peek_datagram(core.DLT_EN10MB, ether(odd)) == "wrong_size"
    low = bytearray(ether(ipv4(payload())))
    low[14] = 0x44  # IHL 4: shorter than the fixed header
    assert peek_datagram(core.DLT_EN10MB, bytes(low)) == "malformed"


def test_hint_check_leaves_syns_and_later_fragments_to_parse_frame() -> None:
    syn = dpkt.ip.IP(src=socket.inet_aton(CLIENT4), dst=socket.inet_aton(SERVER4), p=dpkt.ip.IP_PROTO_TCP, ttl=64,
                     data=dpkt.tcp.TCP(sport=1, dport=2, flags=dpkt.tcp.TH_SYN))
    assert peek_datagram(core.DLT_EN10MB, ether(syn)) is None
    later = ipv4(payload())
    later.offset = 8
    assert peek_datagram(core.DLT_EN10MB, ether(later)) is None
    assert parse_frame(core.DLT_EN10MB, ether(later), ADDRESSES, CONTROL) == "fragment"
    for short in (b"", b"\x02" * 13):
        assert peek_datagram(core.DLT_EN10MB, short) is None
    assert peek_datagram(105, bytes(ipv4(payload()))) is None


@settings(max_examples=500)
@given(options=st.binary(min_size=0, max_size=40), kind=st.sampled_from([PacketType.P1, PacketType.P2]),
       hint=st.binary(min_size=8, max_size=8))
def test_hint_is_found_behind_any_ipv4_options(options: bytes, kind: PacketType, hint: bytes) -> None:
    options += bytes(-len(options) % 4)
    peeked = peek_datagram(core.DLT_EN10MB, ether(ipv4(payload(kind, hint), options)))
    assert isinstance(peeked, tuple) and peeked[0] == hint


@settings(max_examples=1500)
@given(linktype=st.sampled_from([core.DLT_EN10MB, core.DLT_RAW, core.DLT_RAW_ALT, core.DLT_LINUX_SLL, 0, 276]),
       frame=st.binary(max_size=260))
def test_hint_check_never_raises(linktype: int, frame: bytes) -> None:
    result = peek_datagram(linktype, frame)
    assert result is None or result in (WRAPPED, "malformed", "wrong_size") or (
        isinstance(result, tuple) and len(result[0]) == 8 and len(result[2]) in core.CLIENT_SIZES)


# --- the kernel filter --------------------------------------------------------------------------


def test_filter_refuses_vlan_tags_last_and_only_on_ethernet() -> None:
    for pairs in ([], [(CLIENT4, 1111)], [(f"198.19.0.{i}", 1000 + i) for i in range(core.MAX_FILTER_PAIRS + 1)]):
        text = build_filter([SERVER4, SERVER6], CONTROL, pairs)
        assert text.endswith(" and not vlan") and text.count("vlan") == 1  # after it, offsets would shift
        for linktype in (core.DLT_RAW, core.DLT_LINUX_SLL):
            assert "vlan" not in build_filter([SERVER4, SERVER6], CONTROL, pairs, linktype=linktype)


def _passing(tmp_path: Path, linktype: int, wrappings: list[Wrapping]) -> set[str]:
    path = tmp_path / f"wrappings-{linktype}.pcap"
    with path.open("wb") as out:
        writer = dpkt.pcap.Writer(out, linktype=linktype, snaplen=65535)
        for index, wrapping in enumerate(wrappings):
            writer.writepkt(wrapping.frame, ts=index + 1)
    handle = pcap.pcap(name=str(path), promisc=False, immediate=False, timeout_ms=0)
    handle.setfilter(build_filter([SERVER4, SERVER6], CONTROL, [], linktype=linktype))
    return {wrappings[int(ts) - 1].name for ts, _ in handle.readpkts()}


@pytest.mark.parametrize("linktype", [core.DLT_EN10MB, core.DLT_RAW_ALT, core.DLT_LINUX_SLL])
def test_filter_passes_exactly_the_accepted_wrappings(tmp_path: Path, linktype: int) -> None:
    """(A savefile says 101 for raw IP, which libpcap reads as DLT_RAW.)"""
    mine = [w for w in WRAPPINGS if w.linktype == linktype or (linktype == core.DLT_RAW_ALT and
                                                                 w.linktype == core.DLT_RAW)]
    assert len(mine) > 10
    assert _passing(tmp_path, linktype, mine) == {w.name for w in mine if w.accepted}
