"""The door table: which door holds which port, how many each user holds, and the ports to draw.

A door port is held from OpenDoor until its window ends, even if its request is replaced meanwhile
(engine invariant 5), unless it is revoked (invariant 11) or, single-use, its connection came
(invariant 10). A user holds at most max_doors_per_user doors, everyone together max_doors_total,
and a user opens at most doors_per_minute doors a minute (a bucket of as many). Pure: time and the
random draw are passed in.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dynknock.auth.actions import DOOR_STAGES, KERNEL_DOOR_STAGES, CloseDoor, OpenDoor
from dynknock.auth.settings import EngineConfig, Service
from dynknock.auth.state import Request
from dynknock.limits import TokenBuckets
from dynknock.protocol import IPAddress, RejectReason

# The detail of a DoorResult(ok=False) when the port is held by another socket (the relay
# binds it): the door moves to another port instead of failing.
ADDRESS_IN_USE = "address_in_use"
# Random draws before a nearly full range is scanned from a random place.
DRAWS = 32


@dataclass(frozen=True, slots=True)
class Door:
    """A door port held from OpenDoor until its window ends (or it is revoked)."""

    door_id: str
    user: str
    client: IPAddress
    port: int
    service: str
    expires_ms: int
    gateway: str = ""
    stages: frozenset[str] = DOOR_STAGES  # who opened it, and so who may report its connection
    single_use: bool = True


def door_stages(service: Service, client: IPAddress) -> frozenset[str]:
    """The stages that open a door of this service for this client (NAT cannot change the address
    family: a kernel service whose target is IPv4 serves IPv6 clients through the relay)."""
    same_family = ipaddress.ip_address(service.host).version == client.version
    return KERNEL_DOOR_STAGES if service.forward == "kernel" and same_family else DOOR_STAGES


def close_door(services: dict[str, Service], door_id: str, client: IPAddress, port: int, gateway: str,
               service: str, stages: frozenset[str]) -> CloseDoor:
    """The CloseDoor of a door; a kernel door's names its service, whose map entry the gate empties."""
    target = services.get(service)
    kernel = target is not None and stages == KERNEL_DOOR_STAGES
    return CloseDoor(door_id, client, port, gateway, (target.host, target.port) if kernel and target else None)


class DoorTable:
    def __init__(self, config: EngineConfig, random_below: Callable[[int], int]) -> None:
        self._config = config
        self._random_below = random_below
        self._doors: dict[int, Door] = {}  # port -> door
        self._ports: dict[str, int] = {}  # door id -> its port, while it is in _doors
        self._of: Counter[str] = Counter()  # user -> doors held
        self._rate = TokenBuckets(config.doors_per_minute / 60, config.doors_per_minute)  # user -> doors left
        self._busy: dict[int, int] = {}  # port -> until when not to draw it again (address in use)

    def __len__(self) -> int:
        return len(self._doors)

    def __iter__(self) -> Iterator[Door]:
        return iter(list(self._doors.values()))  # a copy: the caller may release as it goes

    def held_by(self, user: str) -> int:
        return self._of[user]

    def by_id(self, door_id: str) -> Door | None:
        port = self._ports.get(door_id)
        return self._doors.get(port) if port is not None else None

    def at(self, gateway: str) -> list[Door]:
        return [d for d in self._doors.values() if d.gateway == gateway]

    def draw(self, user: str, now_ms: int) -> int | tuple[RejectReason, str]:
        """A free port for a new door of this user's (its token taken from the user's bucket), or why not."""
        config = self._config
        rate = self._rate.has(user, now_ms / 1000)
        if self._of[user] >= config.max_doors_per_user:
            return RejectReason.TOO_MANY_DOORS, f"user holds {config.max_doors_per_user} unused"
        if rate is None:
            return RejectReason.TOO_MANY_DOORS, f"user opened {config.doors_per_minute} in a minute"
        if len(self._doors) >= config.max_doors_total:
            return RejectReason.TOO_MANY_DOORS, f"server holds {config.max_doors_total}"
        port = self.free_port()
        if port is None:
            return RejectReason.NO_DOOR_PORT, ""
        rate[0] -= 1.0  # the bucket's token: only a door really asked for takes one
        return port

    def free_port(self) -> int | None:
        """A port no door holds and none was found busy at lately, drawn at random; None: the range is full."""
        low, high = self._config.door_port_low, self._config.door_port_high
        size = high - low + 1
        if len(self._doors) + len(self._busy) >= size:
            return None
        for _ in range(DRAWS):
            port = low + self._random_below(size)
            if port not in self._doors and port not in self._busy:
                return port
        start = self._random_below(size)  # a nearly full range: scan from a random place
        for offset in range(size):
            port = low + (start + offset) % size
            if port not in self._doors and port not in self._busy:
                return port
        return None

    def open(self, request: Request, port: int, door_id: str, now_ms: int) -> OpenDoor:
        """The request's door, on this port and by this id, for a window from now: held here, and asked for."""
        config = self._config
        service = config.services[request.service]
        request.confirmed.clear()
        request.door_port, request.door_id = port, door_id
        request.door_expires_ms = now_ms + config.window_seconds * 1000
        request.door_stages = door_stages(service, request.client)
        door = Door(door_id, request.user, request.client, port, request.service, request.door_expires_ms,
                    request.gateway, request.door_stages, config.single_use)
        self._doors[port] = door
        self._ports[door_id] = port
        self._of[door.user] += 1
        return OpenDoor(door_id, request.user, request.client, port, service.name, service.host, service.port,
                        request.door_expires_ms, request.door_stages, request.gateway)

    def close(self, door: Door) -> CloseDoor:
        return close_door(self._config.services, door.door_id, door.client, door.port, door.gateway, door.service,
                          door.stages)

    def close_for(self, request: Request) -> CloseDoor:
        """The CloseDoor of the door the request asked for last."""
        return close_door(self._config.services, request.door_id, request.client, request.door_port, request.gateway,
                          request.service, request.door_stages)

    def release(self, port: int) -> None:
        """The port is free again and its door no longer counts against its user."""
        door = self._doors.pop(port, None)
        if door is not None:
            del self._ports[door.door_id]
            self._of[door.user] -= 1
            if self._of[door.user] <= 0:
                del self._of[door.user]

    def busy(self, port: int, until_ms: int) -> None:
        """A local process holds the port: not drawn again before until_ms."""
        self._busy[port] = until_ms

    def sweep(self, now_ms: int) -> None:
        for port, until in list(self._busy.items()):
            if until <= now_ms:
                del self._busy[port]
        self._rate.forget_full(now_ms / 1000)
