"""The knocks: SYNs built by hand and sent through a raw socket, or ordinary connect()s.

Two ways to send a knock, and the P1 says which (client/wire.py's KnockKind):

* SYN (the paper's): a TCP SYN carrying the declared destination port *and ISN* (the
  sequence number), which no ordinary socket lets us choose, so the segment is built here
  and sent through a raw socket (CAP_NET_RAW: root, or a capability). The kernel still
  writes the IP header (no IP_HDRINCL), which keeps TTL, routing and IPv6 extension
  handling its business; we only owe it a correct TCP checksum, which covers a
  pseudo-header holding both addresses.
* CONNECT: a non-blocking connect() to the declared port, closed at once. Any user may do
  it, on Linux and macOS alike, with Python's socket API alone. The kernel sends the SYN
  before connect() returns, with a sequence number of its own choosing, so the server
  matches the address and port only (docs/SECURITY.md says what that gives up). Closing a
  socket in SYN-SENT sends nothing more: no RST, and no retransmission, the socket is gone.

:func:`open_knocker` takes a raw socket when it may and connect() otherwise. Building is
pure (:func:`build_syn`, :func:`tcp_checksum`); the senders are the only parts that touch a
socket, and anything with the same ``send`` (:class:`SynSender`) can stand in for them,
which is how the tests knock without root.
"""

from __future__ import annotations

import _socket  # not socket: see client/knock.py
import errno
import ipaddress
import os
import struct

from dynknock.client.wire import KnockKind

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    import secrets
    from typing import Final, Protocol

    from dynknock.client.wire import IPAddress
else:  # the same without typing's and secrets' start-up (client/lean.py); SynSender is a plain base
    from dynknock.client.lean import secrets

    Protocol = object

# source port, destination port, sequence, acknowledgement, data offset,
# flags, window, checksum, urgent pointer
_TCP_HEADER: Final = struct.Struct("!HHIIBBHHH")
SYN_FLAG: Final = 0x02
IPPROTO_TCP: Final = 6
# Every real OS puts options on its SYNs; a bare 20-byte SYN is the signature
# of a port scanner and invites attention. One MSS option is the least we can do.
_MSS_OPTION: Final = struct.Struct("!BBH")
_MSS_KIND: Final = 2
MSS_IPV4: Final = 1460
MSS_IPV6: Final = 1440
SYN_LEN: Final = _TCP_HEADER.size + _MSS_OPTION.size  # 24 bytes, data offset 6 words
DEFAULT_WINDOW: Final = 64240  # what Linux advertises on a SYN
# Linux picks ephemeral ports here; a knock from this range looks like a connect().
EPHEMERAL_LOW: Final = 32768
EPHEMERAL_HIGH: Final = 60999


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(source: IPAddress, destination: IPAddress, length: int) -> bytes:
    """The addresses and length the TCP checksum covers (RFC 9293 3.1, RFC 8200 8.1)."""
    if isinstance(source, ipaddress.IPv4Address) and isinstance(destination, ipaddress.IPv4Address):
        return source.packed + destination.packed + struct.pack("!BBH", 0, IPPROTO_TCP, length)
    if isinstance(source, ipaddress.IPv6Address) and isinstance(destination, ipaddress.IPv6Address):
        return source.packed + destination.packed + struct.pack("!I3xB", length, IPPROTO_TCP)
    raise ValueError(f"source {source} and destination {destination} are of different families")


def tcp_checksum(source: IPAddress, destination: IPAddress, segment: bytes) -> int:
    """Checksum of a segment whose checksum field is zero."""
    return internet_checksum(pseudo_header(source, destination, len(segment)) + segment)


def build_syn(source: IPAddress, destination: IPAddress, source_port: int, destination_port: int,
              isn: int, window: int = DEFAULT_WINDOW) -> bytes:
    """A TCP SYN segment (header and MSS option, no payload) with a correct checksum."""
    if not (1 <= source_port <= 65535 and 1 <= destination_port <= 65535):
        raise ValueError("ports must be 1-65535")
    if not 0 <= isn < 2**32:
        raise ValueError("ISN must be 32 bits")
    mss = MSS_IPV4 if isinstance(destination, ipaddress.IPv4Address) else MSS_IPV6
    data_offset = (SYN_LEN // 4) << 4
    header = _TCP_HEADER.pack(source_port, destination_port, isn, 0, data_offset, SYN_FLAG, window, 0, 0)
    segment = header + _MSS_OPTION.pack(_MSS_KIND, _MSS_OPTION.size, mss)
    checksum = tcp_checksum(source, destination, segment)
    return segment[:16] + struct.pack("!H", checksum) + segment[18:]


def random_source_port() -> int:
    return EPHEMERAL_LOW + secrets.randbelow(EPHEMERAL_HIGH - EPHEMERAL_LOW + 1)


class KnockError(Exception):
    """A knock that could not leave this machine; the message says why, in one line."""


class SynSender(Protocol):
    """Sends one knock from ``source`` (the real local address: it enters the checksum, so
    it is never the address declared for NAT) to ``destination``; ``kind`` is what the P1
    must declare (a connect() knock cannot carry the ISN). Raises KnockError."""

    kind: KnockKind

    def send(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None: ...

    def close(self) -> None: ...


def _sockaddr(family: int, address: IPAddress, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    if family == _socket.AF_INET:
        return (str(address), port)
    assert isinstance(address, ipaddress.IPv6Address)
    # A link-local address needs its interface; Python would otherwise set scope 0.
    scope = address.scope_id or ""
    index = int(scope) if scope.isdigit() else (_socket.if_nametoindex(scope) if scope else 0)
    return (str(ipaddress.IPv6Address(address.packed)), port, 0, index)


# connect()'s errors that mean the SYN could not leave, in the words of what to check.
_CONNECT_REFUSALS = {
    errno.EPERM: "this machine's firewall refused it",
    errno.EACCES: "this machine's firewall refused it",
    errno.ECONNREFUSED: "refused at once, so by this machine's firewall (a reset), not by the server",
    errno.EHOSTUNREACH: "refused at once: this machine's firewall rejects it, or there is no route",
    errno.ENETUNREACH: "no route to the server",
    errno.EADDRNOTAVAIL: "the local address is no longer this machine's",
}


class ConnectKnocker:
    """Knocks with ordinary non-blocking connect()s, closed at once: no privilege needed."""

    kind = KnockKind.CONNECT

    def __init__(self, family: int) -> None:
        self._family = family

    def send(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None:
        sock = _socket.socket(self._family, _socket.SOCK_STREAM)
        try:
            # From the address P1 and P2 leave from (a host with several addresses would otherwise
            # pick by its own rules), any port.
            sock.bind(_sockaddr(self._family, source, 0))
            sock.setblocking(False)
            code = sock.connect_ex(_sockaddr(self._family, destination, port))
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                # A local firewall's reject (ICMP) is on the socket already when connect() returns; a
                # drop is never reported (the server's PENDING tells, and the client explains it).
                code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR) or errno.EINPROGRESS
        except OSError as exc:
            raise KnockError(f"knock to {destination} port {port}: {exc.strerror or exc}") from None
        finally:
            sock.close()  # in SYN-SENT: nothing more is sent, nothing is retransmitted
        if code in (0, errno.EINPROGRESS):  # the SYN is out (0: and answered at once, by a peer on this host)
            return
        why = _CONNECT_REFUSALS.get(code, "")
        raise KnockError(f"knock to {destination} port {port} could not be sent: {why + ' ' if why else ''}"
                         f"(connect: {os.strerror(code)})")

    def close(self) -> None:
        pass


def open_knocker(family: int) -> SynSender:
    """The paper's SYN knocks if this process may open a raw socket, else connect() knocks."""
    try:
        return RawSynSender(family)
    except PermissionError:
        return ConnectKnocker(family)


class RawSynSender:
    """A raw TCP socket. Opening it is the privileged step, so the CLI opens it
    before sending anything: a client that cannot knock must not send a P1."""

    kind = KnockKind.SYN

    def __init__(self, family: int) -> None:
        # PermissionError here means no CAP_NET_RAW; the caller explains that.
        self._sock = _socket.socket(family, _socket.SOCK_RAW, _socket.IPPROTO_TCP)
        self._family = family
        self._bound: IPAddress | None = None
        # A raw TCP socket also receives a copy of every incoming TCP segment (on Linux;
        # BSDs and macOS never pass TCP to raw sockets); we never read them, so keep the
        # buffer that silently fills as small as allowed. Only an optimisation: a kernel
        # that refuses the size must not stop the knock.
        try:
            self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1)
        except OSError:
            pass

    def send(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None:
        try:
            if self._bound != source:
                # Binding fixes the source address the kernel writes into the IP
                # header, which must be the one our checksum was computed with.
                self._sock.bind(_sockaddr(self._family, source, 0))
                self._bound = source
            segment = build_syn(source, destination, random_source_port(), port, isn)
            # Port 0: for a raw IPv6 socket a nonzero "port" is read as a protocol number.
            self._sock.sendto(segment, _sockaddr(self._family, destination, 0))
        except OSError as exc:
            raise KnockError(f"knock to {destination} port {port} could not be sent: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._sock.close()
