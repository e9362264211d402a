"""The hand-built TCP SYN knocks: byte layout, checksums (checked by dpkt, which
computes its own), and one real send through a raw socket when we are root."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynknock.client.syn import SYN_FLAG, SYN_LEN, RawSynSender, build_syn, internet_checksum, tcp_checksum
from dynknock.protocol import IPAddress

V4_SRC, V4_DST = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("198.51.100.7")
V6_SRC, V6_DST = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8:ffff::2")


def dpkt_checksum(src: IPAddress, dst: IPAddress, segment: bytes) -> int:
    """dpkt's own checksum of the segment: zero ours, let dpkt serialise, read back."""
    tcp = dpkt.tcp.TCP(segment)
    tcp.sum = 0
    if src.version == 4:
        packet = dpkt.ip.IP(src=src.packed, dst=dst.packed, p=dpkt.ip.IP_PROTO_TCP, data=tcp)
        return int(dpkt.ip.IP(bytes(packet)).data.sum)
    packet6 = dpkt.ip6.IP6(src=src.packed, dst=dst.packed, nxt=dpkt.ip.IP_PROTO_TCP, hlim=64,
                           plen=len(segment), data=tcp)
    return int(dpkt.ip6.IP6(bytes(packet6)).data.sum)


def test_syn_fields_as_dpkt_reads_them() -> None:
    segment = build_syn(V4_SRC, V4_DST, 40000, 15075, 0x54841860)
    tcp = dpkt.tcp.TCP(segment)
    assert len(segment) == SYN_LEN == 24
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (40000, 15075, 0x54841860, 0)
    assert tcp.flags == SYN_FLAG == dpkt.tcp.TH_SYN  # SYN only: no ACK, RST, FIN
    assert tcp.off == 6 and tcp.data == b""
    assert dpkt.tcp.parse_opts(tcp.opts) == [(dpkt.tcp.TCP_OPT_MSS, struct.pack("!H", 1460))]


def test_syn_exact_bytes() -> None:
    # Pinned so an accidental change of layout shows up as a diff of bytes.
    segment = build_syn(V4_SRC, V4_DST, 40000, 15075, 0x54841860)
    # ports 9c40 3ae3, seq, ack 0, offset 6 words, SYN, window 64240, checksum, urgent 0, MSS 1460
    assert segment == bytes.fromhex("9c403ae3" "54841860" "00000000" "6002" "faf0" "6cf1" "0000" "020405b4")
    assert segment[16:18] == struct.pack("!H", dpkt_checksum(V4_SRC, V4_DST, segment))


def test_ipv4_checksum_matches_dpkt() -> None:
    segment = build_syn(V4_SRC, V4_DST, 40000, 15075, 0x54841860)
    assert dpkt.tcp.TCP(segment).sum == dpkt_checksum(V4_SRC, V4_DST, segment)


def test_ipv6_checksum_matches_dpkt_and_uses_ipv6_mss() -> None:
    segment = build_syn(V6_SRC, V6_DST, 51000, 4174, 0xE2AA5A03)
    tcp = dpkt.tcp.TCP(segment)
    assert tcp.sum == dpkt_checksum(V6_SRC, V6_DST, segment)
    assert dpkt.tcp.parse_opts(tcp.opts) == [(dpkt.tcp.TCP_OPT_MSS, struct.pack("!H", 1440))]


def test_checksum_depends_on_the_pseudo_header() -> None:
    # The addresses are in the sum: a SYN built for one source is wrong from another,
    # which is why the client checksums with its real local address, not a declared one.
    a = build_syn(V4_SRC, V4_DST, 40000, 15075, 1)
    b = build_syn(ipaddress.IPv4Address("192.0.2.2"), V4_DST, 40000, 15075, 1)
    assert a[16:18] != b[16:18] and a[:16] == b[:16]


def _address_pairs(size: int) -> st.SearchStrategy[tuple[IPAddress, IPAddress]]:
    address = st.binary(min_size=size, max_size=size).map(ipaddress.ip_address)
    return st.tuples(address, address)


@given(st.integers(1, 65535), st.integers(1, 65535), st.integers(0, 2**32 - 1),
       st.one_of(_address_pairs(4), _address_pairs(16)))
def test_checksum_property(sport: int, dport: int, isn: int, addresses: tuple[IPAddress, IPAddress]) -> None:
    s, d = addresses
    segment = build_syn(s, d, sport, dport, isn)
    assert dpkt.tcp.TCP(segment).sum == dpkt_checksum(s, d, segment)
    # And the receiver's check: the sum over pseudo-header and segment folds to zero.
    assert tcp_checksum(s, d, segment) == 0


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, complemented 220d.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert internet_checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length pads with a zero byte


@pytest.mark.parametrize("bad", [dict(source_port=0), dict(destination_port=65536), dict(isn=2**32), dict(isn=-1)])
def test_build_refuses_out_of_range(bad: dict[str, int]) -> None:
    args = dict(source_port=40000, destination_port=15075, isn=1) | bad
    with pytest.raises(ValueError):
        build_syn(V4_SRC, V4_DST, **args)


def test_mixed_families_refused() -> None:
    with pytest.raises(ValueError, match="different families"):
        build_syn(V4_SRC, V6_DST, 40000, 15075, 1)


# --- the real raw path ------------------------------------------------------------


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HANG_S = 30
FAMILIES = [pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
            pytest.param(socket.AF_INET6, "::1", id="ipv6",
                         marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1"))]


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw socket needs root or CAP_NET_RAW")
@pytest.mark.parametrize(("family", "address"), FAMILIES)
def test_raw_syn_to_a_closed_local_port_draws_the_kernel_rst(family: socket.AddressFamily, address: str) -> None:
    """Send a real SYN to a closed port on loopback (harmless) and watch for the
    kernel's RST: it answers only a segment whose checksum is right, and its
    acknowledgement number must be our ISN + 1."""
    # Bound but never listening: a closed port that no other test can grab meanwhile.
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.bind((address, 0))
    closed_port = holder.getsockname()[1]
    ip = ipaddress.ip_address(address)
    isn = 0x5EED0000 | (os.getpid() & 0xFFFF)
    sniffer = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
    # Nothing here is timed: the loop ends when both segments are seen. The timeout only turns
    # a lost segment (a hang) into a failure, however long the machine takes to deliver.
    sniffer.settimeout(HANG_S)
    sender = RawSynSender(family)
    try:
        sender.send(ip, ip, closed_port, isn)  # must not raise
        seen_syn = seen_rst = False
        while not (seen_syn and seen_rst):
            try:
                packet = sniffer.recv(4096)
            except TimeoutError:
                break  # nothing at all on loopback for HANG_S: ours is lost
            # An IPv4 raw socket hands us the IP header too; an IPv6 one does not.
            offset = (packet[0] & 0x0F) * 4 if family == socket.AF_INET else 0
            tcp = dpkt.tcp.TCP(packet[offset:])
            if tcp.dport == closed_port and tcp.flags == dpkt.tcp.TH_SYN and tcp.seq == isn:
                seen_syn = True
            if tcp.sport == closed_port and tcp.flags & dpkt.tcp.TH_RST and tcp.ack == (isn + 1) % 2**32:
                seen_rst = True
        assert seen_syn, "our SYN never showed up on loopback"
        assert seen_rst, "the kernel did not answer with RST: is the checksum wrong?"
    finally:
        sender.close()
        sniffer.close()
        holder.close()


def test_raw_sender_opens_when_the_kernel_refuses_the_tiny_receive_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The small SO_RCVBUF only saves memory on Linux; a kernel that refuses it (EINVAL)
    # must not turn into "cannot open a raw socket for the SYN knocks".
    import errno

    class RefusingSocket:
        def __init__(self, *args: object) -> None:
            self.closed = False

        def setsockopt(self, *args: object) -> None:
            raise OSError(errno.EINVAL, "Invalid argument")

        def close(self) -> None:
            self.closed = True

    import _socket  # what client/syn.py opens its socket with

    monkeypatch.setattr(_socket, "socket", RefusingSocket)
    sender = RawSynSender(socket.AF_INET)
    sender.close()
