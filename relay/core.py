"""Relay's pure core: which doors listen, who may come in, when a listener closes.

Invariants:
1. A door's listener accepts a connection only from the door's client address;
   any other peer is closed at once and reported.
2. A listener closes when its window ends, or after its first accepted
   connection when the door is single-use (as in the paper). Connections
   already accepted outlive the window.
3. The relay connects only to the targets of configured services, whatever a
   command says, so a confused or compromised auth cannot aim it elsewhere.
4. With several auth replicas, each door belongs to the one that opened it (its
   key's name, ``Door.opener``): only its DoorSet or DoorClose closes it, and no
   other replica's command takes its port or its id. A replica that dies leaves
   its doors open to the end of their windows; back (the same key), its DoorSet
   closes those it no longer knows. With one auth every opener is "".
"""

from __future__ import annotations

import enum
import errno
import ipaddress
from dataclasses import dataclass

from dynknock.bus import DoorOpen

TIMEOUT_SLACK_MS = 2000


class Invalid(ValueError):
    pass


# Prefixes of DoorResult.detail that auth acts on (auth/engine.py): a port held by another
# socket moves the door to another port; no descriptor left is a refusal to retry later.
ADDRESS_IN_USE = "address_in_use"
OUT_OF_DESCRIPTORS = "out_of_descriptors"
DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})


# Descriptors: a door's listener is one; a connection is six (door socket, service socket,
# a pipe each way). RESERVED_FDS are never spent on doors or connections, because libzmq
# aborts the process when it cannot accept a new bus peer for want of one
# ("Too many open files (src/ipc_listener.cpp:297)"), and it opens some of its own.
CONNECTION_FDS = 6
RESERVED_FDS = 32
DOOR_ROOM_CONNECTIONS = 4  # a new door still leaves room for this many connections


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """How many descriptors doors and connections may use (the relay counts its own)."""

    limit: int  # RLIMIT_NOFILE in force
    baseline: int  # open at start: standard streams, zmq sockets and their signalers

    def _in_use(self, doors: int, connections: int) -> int:
        return self.baseline + doors + CONNECTION_FDS * connections + RESERVED_FDS

    def can_open_door(self, doors: int, connections: int) -> bool:
        return self._in_use(doors + 1, connections + DOOR_ROOM_CONNECTIONS) <= self.limit

    def can_accept(self, doors: int, connections: int) -> bool:
        return self._in_use(doors, connections + 1) <= self.limit


def listener_refusal(exc: OSError) -> str:
    """The DoorResult detail for a listener that could not be opened."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return f"{ADDRESS_IN_USE}: {text}"
    if exc.errno in DESCRIPTOR_ERRNOS:
        return f"{OUT_OF_DESCRIPTORS}: the relay is short of file descriptors ({text})"
    return f"listener failed: {text}"


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REFUSE = "refuse"  # wrong peer: close it at once
    UNKNOWN = "unknown"  # no such door (listener already gone)


@dataclass(slots=True)
class Door:
    door_id: str
    user: str
    client: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    target: tuple[str, int]
    expires_at_ms: int
    single_use: bool
    accepted: int = 0
    opener: str = ""  # the auth replica's key name (auth@a) that opened it; "": the one auth


@dataclass(frozen=True, slots=True)
class RelaySettings:
    door_port_low: int
    door_port_high: int
    window_seconds: int
    targets: frozenset[tuple[str, int]]


def normalise_peer(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; compare them as IPv4."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


class DoorTable:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self._by_port: dict[int, Door] = {}
        self._by_id: dict[str, Door] = {}

    def __len__(self) -> int:
        return len(self._by_port)

    def doors(self) -> list[Door]:
        return list(self._by_port.values())

    def validate(self, command: DoorOpen, now_ms: int, opener: str = "") -> Door:
        s = self.settings
        try:
            client = normalise_peer(command.client)
        except ValueError:
            raise Invalid(f"client {command.client!r} is not an IP address") from None
        if not s.door_port_low <= command.port <= s.door_port_high:
            raise Invalid(f"port {command.port} outside the door range")
        if (command.target_host, command.target_port) not in s.targets:
            raise Invalid(f"target {command.target_host}:{command.target_port} is not a configured service")
        left = command.expires_at_ms - now_ms
        if left <= 0:
            raise Invalid(f"command arrived {-left} ms after the door's end")
        if left > s.window_seconds * 1000 + TIMEOUT_SLACK_MS:
            raise Invalid("expiry beyond the window")
        holder = self._by_port.get(command.port)
        if holder is not None and holder.door_id != command.door_id:
            if holder.opener != opener:
                # Replicas draw door ports apart: auth moves this door to another port (as for a port a local
                # socket holds), and the DoorClose of its move names its own door id, not the holder's.
                raise Invalid(f"{ADDRESS_IN_USE}: port {command.port} is already a door of "
                              f"{holder.opener or 'the auth'}")
            raise Invalid(f"port {command.port} is already a door")
        same_id = self._by_id.get(command.door_id)
        if same_id is not None and same_id.opener != opener:
            raise Invalid(f"door {command.door_id} is {same_id.opener or 'the auth'}'s, not {opener or 'the auth'}'s")
        return Door(command.door_id, command.user, client, command.port,
                    (command.target_host, command.target_port), command.expires_at_ms, command.single_use,
                    opener=opener)

    def add(self, door: Door) -> None:
        self._by_port[door.port] = door
        self._by_id[door.door_id] = door

    def get(self, door_id: str) -> Door | None:
        return self._by_id.get(door_id)

    def close_refusal(self, door: Door, opener: str) -> str:
        """Why `opener` may not close `door` ("": it may): a replica closes its own doors only."""
        if door.opener == opener:
            return ""
        return f"the door is {door.opener or 'the auth'}'s, not {opener or 'the auth'}'s"

    def unknown_to(self, opener: str, believed: set[str]) -> list[Door]:
        """The doors of `opener` its DoorSet (door ids `believed`) no longer lists; another's are not its to judge."""
        return [d for d in self._by_port.values() if d.opener == opener and d.door_id not in believed]

    def by_opener(self) -> dict[str, int]:
        """Doors per opener (heartbeat); the one auth of a relay without replicas is "auth"."""
        counts: dict[str, int] = {}
        for door in self._by_port.values():
            counts[door.opener or "auth"] = counts.get(door.opener or "auth", 0) + 1
        return counts

    def on_connection(self, port: int, peer: str) -> tuple[Verdict, Door | None]:
        """Decide on a new connection; after ACCEPT of a single-use door, the caller closes the listener."""
        door = self._by_port.get(port)
        if door is None:
            return Verdict.UNKNOWN, None
        try:
            address = normalise_peer(peer)
        except ValueError:
            return Verdict.REFUSE, door
        if address != door.client:
            return Verdict.REFUSE, door
        door.accepted += 1
        return Verdict.ACCEPT, door

    def should_close(self, door: Door, now_ms: int) -> bool:
        return now_ms >= door.expires_at_ms or (door.single_use and door.accepted > 0)

    def remove(self, door: Door) -> None:
        self._by_port.pop(door.port, None)
        self._by_id.pop(door.door_id, None)

    def expired(self, now_ms: int) -> list[Door]:
        return [d for d in self._by_port.values() if self.should_close(d, now_ms)]
