"""What the session engine asks its shell to do: plain, frozen values, carried out in order by auth/main.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from dynknock.protocol import IPAddress
from dynknock.topics import Topic

# Who opens a door: the gate admits the client and the relay forwards; or, for a door the
# kernel forwards (services.NAME.forward), the gate alone.
DOOR_STAGES = frozenset({"gate", "relay"})
KERNEL_DOOR_STAGES = frozenset({"gate"})


@dataclass(frozen=True, slots=True)
class SendReply:
    destination: IPAddress
    port: int
    source: IPAddress  # the server address the request came to, so the reply passes NAT
    payload: bytes
    gateway: str = ""  # the gateway that address belongs to ("": the one local gateway)


@dataclass(frozen=True, slots=True)
class OpenDoor:
    door_id: str
    user: str
    client: IPAddress
    port: int
    service: str
    target_host: str
    target_port: int
    expires_at_ms: int  # absolute: a command delivered late must not open a door for longer
    stages: frozenset[str] = DOOR_STAGES  # {"gate"}: the kernel forwards it; with "relay": the relay does
    gateway: str = ""  # where: the gateway whose capture saw the request ("": the one local gateway)


@dataclass(frozen=True, slots=True)
class CloseDoor:
    door_id: str
    client: IPAddress
    port: int
    gateway: str = ""
    target: tuple[str, int] | None = None  # a kernel door's service (the gate empties its map entry with it)


@dataclass(frozen=True, slots=True)
class SetKnockFilter:
    """The (source address, destination port) pairs whose SYNs capture should pass."""

    pairs: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Notify:
    """Publish this event on the bus (the shell stamps it with the stage and the time: a bus.Event)."""

    topic: Topic
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimNonce:
    """Auth replicas (shared_nonces): claim this P1's nonce in the shared store, then call
    Engine.on_claim with the request id and the outcome. Its door waits for the claim."""

    request_id: bytes
    nonce: bytes
    expiry_ms: int


@dataclass(frozen=True, slots=True)
class GatewayRefused:
    """A packet from capture dropped for the gateway it claims (auth/fleet.py): counted by the engine;
    the shell logs `detail`, within its budget for lines about bad input."""

    reason: str  # unknown_gateway, other_gateways_key or not_its_address
    detail: str


Action: TypeAlias = SendReply | OpenDoor | CloseDoor | SetKnockFilter | Notify | ClaimNonce | GatewayRefused
