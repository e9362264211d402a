"""The values a packet's fields take, shared by the server's codec and the client's.

dynknock/protocol.py (every direction, records as dataclasses) and client/wire.py (knock-client's
lean copy of its own directions) both use these very types, so that a client's request goes into
a server's P1 as it is, and ``answer.status is Status.OPEN`` holds whichever module Status came
from. A module apart from dynknock/rules.py, which ``knock-client --help`` imports: creating these
classes is work only a knock needs.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which knock-client would pay for
if TYPE_CHECKING:
    from typing import NamedTuple

    class Knock(NamedTuple):
        """One knock a P1 declares: a SYN to `port` with sequence number `isn` (0 for a connect() knock)."""

        port: int
        isn: int
else:  # the same class without typing's start-up
    from collections import namedtuple

    Knock = namedtuple("Knock", ("port", "isn"))


class PacketType(enum.IntEnum):
    P1 = 1  # client -> server: request, declares the knocks
    P2 = 2  # client -> server: status request
    P3 = 3  # server -> client: answer


class Status(enum.IntEnum):
    """The answer a P3 carries."""

    OPEN = 0  # door open at door_port for window_seconds
    PENDING = 1  # knocks not all seen yet, or door being opened: send knocks / P2 again
    ADDRESS_MISMATCH = 2  # the source the server saw differs from the declared one
    SERVICE_NOT_ALLOWED = 3
    UNAVAILABLE = 4  # the server could not open a door now; try again later
    KNOCK_KIND_REFUSED = 5  # the server takes only SYN knocks with a chosen ISN (server.connect_knocks)


class KnockKind(enum.IntEnum):
    """How the P1's knocks are sent, and so what of them the server can match (P1 byte 75)."""

    SYN = 0  # SYNs built by hand with a chosen ISN (a raw socket): matched by address, port and ISN
    CONNECT = 1  # ordinary connect()s, the ISN the kernel's: matched by address and port; ISNs are 0
