"""The socket shell around :class:`client.session.ClientSession`.

It owns one connected UDP socket for the whole run: P1 and P2 leave from it and
P3 comes back to it, so a NAT on the way keeps one mapping for the exchange,
and the kernel drops datagrams from anyone but the server before we see them.
It carries out the session's commands and turns socket events into session
inputs; every decision stays in the session.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress
import time
from collections.abc import Callable

from dynknock.client import wire
from dynknock.client.session import ClientSession, Finished, Pause, SendDatagram, SendKnocks

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from typing import NamedTuple

    from dynknock.client.syn import SynSender
    from dynknock.client.wire import IPAddress
else:  # typing.NamedTuple without typing's start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple

# Sockets come from _socket, the C module that the socket module wraps: socket.py turns every
# constant into an enum member and imports selectors, ~1.5 ms of knock-client's start-up, and
# adds nothing used here (its exceptions are _socket's and the builtins). client/syn.py and
# client/app.py do the same.

RECV_SIZE = 2048  # larger than any packet of ours, so an oversized one is seen whole and refused


class ResolveError(Exception):
    """The host has no usable address (unknown name, no route, family unavailable)."""


# A NamedTuple, not a dataclass: creating a frozen slots dataclass costs knock-client ~0.5-1 ms of
# start-up each (bench/client_startup.py), a NamedTuple ~0.05 ms.
class Endpoint(NamedTuple):
    """The server as reached by our UDP socket, and the local address the kernel picked."""

    sock: _socket.socket
    server: IPAddress
    local: IPAddress
    peer: tuple[object, ...]  # the socket's peer address, kept for IPv6 scope ids

    @property
    def family(self) -> int:
        return _socket.AF_INET if isinstance(self.server, ipaddress.IPv4Address) else _socket.AF_INET6


def parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def connect_udp(host: str, port: int, family: int = _socket.AF_UNSPEC) -> Endpoint:
    """Resolve and connect. Connecting a UDP socket sends nothing; it only asks
    the routing table, which tells us our source address and whether a route exists."""
    try:
        # An ASCII name goes as bytes: a str is always run through the idna codec, whose
        # import costs start-up ~1 ms, and is unchanged by it (non-ASCII names still go as str).
        name: str | bytes = host.encode("ascii") if host.isascii() else host
        infos = _socket.getaddrinfo(name, port, family, _socket.SOCK_DGRAM, _socket.IPPROTO_UDP)
    except _socket.gaierror as exc:
        wanted = {_socket.AF_INET: " IPv4", _socket.AF_INET6: " IPv6"}.get(family, "")
        raise ResolveError(f"cannot resolve {host!r} to an{wanted} address: {exc.strerror}") from None
    errors: list[str] = []
    for af, kind, proto_num, _, sockaddr in infos:
        sock = _socket.socket(af, kind, proto_num)
        try:
            sock.connect(sockaddr)
            local = sock.getsockname()
        except OSError as exc:
            sock.close()
            errors.append(f"{sockaddr[0]}: {exc.strerror or exc}")
            continue
        peer = sock.getpeername()
        return Endpoint(sock, parse_ip(str(peer[0])), parse_ip(str(local[0])), tuple(peer))
    raise ResolveError(f"no route to {host}: " + "; ".join(errors))


class Outcome(NamedTuple):
    answer: wire.P3 | None
    bursts: int
    pending: int
    ignored: dict[str, int]
    refused: int = 0  # ICMP port unreachable seen on the socket


class Clock(NamedTuple):
    monotonic: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
    sleep: Callable[[float], None] = time.sleep


def run_session(session: ClientSession, endpoint: Endpoint, syn: SynSender, clock: Clock | None = None,
                idle: Callable[[], object] | None = None) -> Outcome:
    """Drive one session to its end: an authentic final P3, or giving up.

    ``idle`` runs once, in the first wait (a pause of the session, or the wait for its
    answer), which it shortens by as long as it takes: work the run needs only once the
    exchange is over, done while the server works (--proxy loads its threads there)."""
    clock = clock or Clock()
    sock = endpoint.sock
    refused = 0
    commands = session.start(clock.monotonic(), clock.wall_ms())
    while True:
        for command in commands:
            if isinstance(command, Finished):
                return Outcome(command.answer, session.bursts, session.pending, dict(session.ignored), refused)
            if isinstance(command, SendDatagram):
                refused += _send(sock, command.payload)
            elif isinstance(command, SendKnocks):
                for knock in command.knocks:
                    syn.send(endpoint.local, endpoint.server, knock.port, knock.isn)
            elif isinstance(command, Pause):
                seconds = command.seconds
                if idle is not None:
                    began = clock.monotonic()
                    idle()
                    idle = None
                    seconds -= clock.monotonic() - began
                if seconds > 0:
                    clock.sleep(seconds)
            else:
                raise RuntimeError(f"unexpected command {command!r}")
        if idle is not None:
            idle()
            idle = None
        now = clock.monotonic()
        if now >= session.wake_at:
            commands = session.on_wake(now, clock.wall_ms())
            continue
        sock.settimeout(max(0.001, session.wake_at - now))
        try:
            packet = sock.recv(RECV_SIZE)
        except TimeoutError:
            commands = []
            continue
        except ConnectionRefusedError:
            # ICMP port unreachable for an earlier datagram: nothing listens and no
            # firewall drops it. Worth telling the user; keep trying until the deadline.
            refused += 1
            commands = []
            continue
        commands = session.on_datagram(packet, clock.monotonic())


def _send(sock: _socket.socket, payload: bytes) -> int:
    """Send one datagram; returns how many pending ICMP port unreachables surfaced."""
    refused = 0
    for _ in range(2):
        try:
            sock.send(payload)
        except ConnectionRefusedError:
            # The error belonged to an earlier datagram and this one was not sent:
            # the error is now cleared, so try once more.
            refused += 1
            continue
        except OSError as exc:
            # A transient route change must not kill the exchange; the deadline will.
            if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOBUFS):
                raise
        break
    return refused
