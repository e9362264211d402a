"""The catalogue of every bus message, its one codec, and every endpoint.

One msgpack codec (``use_bin_type=True``, ``raw=False``), a version field, no
pickles. A frame that does not decode to a known message of the right shape
raises :class:`BadMessage`; every receiver counts and drops it, never dies of it.

Control path (reliable while the stages are up; a stage that is down makes the
request fail closed, see auth/main.py):

==================  ===========  =========================  ========================
message             sender       receivers                   socket
==================  ===========  =========================  ========================
Datagram            capture      auth                        PUSH -> PULL ``packets``
Syn                 capture      auth                        PUSH -> PULL ``packets``
KnockFilter         auth         capture                     PUB -> SUB ``filter``
DoorOpen            auth         gate, relay (not kernel)    DEALER -> ROUTER ``gate``/``relay``
DoorClose           auth         gate, relay                 DEALER -> ROUTER
DoorResult          gate, relay  auth                        ROUTER -> DEALER (reply)
DoorUsed            gate, relay  auth                        ROUTER -> DEALER (unasked)
DoorSet             auth         gate, relay                 DEALER -> ROUTER (no answer)
Reply               auth         gate (fleet only)           DEALER -> ROUTER ``gate``
==================  ===========  =========================  ========================

Auth replicas (examples/ha) add no endpoint either: each replica binds its own packets,
knock_filter and events; a gateway's capture pushes each client's packets to one live replica and
subscribes to every replica's filters (KnockFilter and HintFilter name their replica), and its gate
and relay take door commands from every replica, each keeping the doors of its own.

A fleet (several gateway hosts, one auth host; docs/ARCHITECTURE.md) adds no endpoint:
auth keeps one DEALER per gateway's gate (and relay), capture names its gateway in
Datagram/Syn, and auth hands each P3 to the gateway the request came to as a Reply,
which that gateway's gate sends from its control port. Fields added since version 1
are optional with a default (a frame without them reads as from the one local
gateway), so BUS_VERSION stays 1: old and new stages of one host still understand
each other; a new kind (Reply) is refused as unknown by an old gate, nothing else.

Monitoring path (never on the control path): every stage publishes
:class:`Event` on hierarchical topics (``auth.request.rejected``,
``gate.rule.added``, ``relay.connection.closed``, ``<stage>.alive`` ...) to the
``events`` XSUB endpoint of knock-bus, which republishes them on ``tap`` (XPUB).
A monitor subscribes to ``tap`` by topic prefix. If knock-bus is down, events
are dropped, and nothing else changes.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

import msgpack

BUS_VERSION: Final = 1
# The stages that publish a heartbeat (<stage>.alive), in the order knock-status and the metrics list them.
STAGES: Final = ("capture", "auth", "gate", "relay")


class BadMessage(ValueError):
    """A frame that is not a valid message of this catalogue."""


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP payload to the control port that passed capture's size check."""

    KIND: ClassVar[str] = "datagram"
    source: str
    source_port: int
    destination: str
    payload: bytes
    gateway: str = ""  # the gateway whose capture saw it ("": the one local gateway)


@dataclass(frozen=True, slots=True)
class Syn:
    """A TCP SYN (without ACK) that may be a knock."""

    KIND: ClassVar[str] = "syn"
    source: str
    port: int
    isn: int
    gateway: str = ""  # as Datagram.gateway


@dataclass(frozen=True, slots=True)
class KnockFilter:
    """The (source, port) pairs of pending knocks; capture narrows its BPF filter to them.

    Sent whole (not as a diff) whenever it changes and every few seconds, so a
    capture that (re)starts is right again within one period.
    """

    KIND: ClassVar[str] = "knock_filter"
    pairs: list[list[Any]]  # [[address, port], ...]
    generation: int
    # The auth replica that sends it: a gateway's capture keeps each replica's pairs apart
    # and passes the union. "": the one auth.
    replica: str = ""


@dataclass(frozen=True, slots=True)
class HintFilter:
    """The user hints auth accepts now (every user, every epoch of the clock window).

    Capture drops a P1/P2-sized datagram whose hint is not among them before parsing it
    or passing it on, so junk that passes the kernel filter costs a set look-up, not a
    parse, a bus message and a look-up in auth. Hints travel in clear on the wire: this
    gives capture no secret. Sent when the set changes (each minute, users reloaded) and
    every few seconds, like KnockFilter.
    """

    KIND: ClassVar[str] = "hint_filter"
    hints: list[bytes]
    generation: int
    replica: str = ""  # as KnockFilter's


@dataclass(frozen=True, slots=True)
class DoorOpen:
    KIND: ClassVar[str] = "door_open"
    door_id: str
    user: str
    client: str
    port: int
    target_host: str
    target_port: int
    expires_at_ms: int  # wall clock; a command that arrives too late must open nothing
    single_use: bool
    # True: the gate forwards the door's connection in the kernel (nftables DNAT) and the
    # relay is not asked; False: the gate only admits the client, the relay forwards.
    kernel: bool = False
    sent_ms: int = 0  # auth's wall clock when it sent this: the receiver's backlog shows as its age


@dataclass(frozen=True, slots=True)
class DoorClose:
    KIND: ClassVar[str] = "door_close"
    door_id: str
    client: str
    port: int
    # A kernel door's target: the gate empties its forwarding entry in one transaction that cannot fail
    # (it must name the value the map holds). "" and 0: not a kernel door, or not known (an old auth).
    target_host: str = ""
    target_port: int = 0
    sent_ms: int = 0


@dataclass(frozen=True, slots=True)
class DoorSet:
    """Every door auth believes open at a gateway: (door id, client, port) each. The gate empties any door
    element of another (client, port), the relay closes any listener of another door id, so no door
    outlives auth's knowledge of it (a backlog, a crash, a restart of either side). Sent every few seconds
    and after a stage (re)connects; in order with the door commands on the same socket."""

    KIND: ClassVar[str] = "door_set"
    doors: list[list[Any]]
    sent_ms: int


@dataclass(frozen=True, slots=True)
class DoorResult:
    KIND: ClassVar[str] = "door_result"
    door_id: str
    stage: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DoorUsed:
    """A door's connection came: the gate saw the kernel forward it (conntrack), or the relay accepted
    it. Sent to the auth that opened the door; a single-use door stops counting against its user's
    cap then (auth/engine.py). An auth that predates this message drops it as unknown and keeps counting
    the door."""

    KIND: ClassVar[str] = "door_used"
    door_id: str
    stage: str
    client: str
    port: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A sealed P3 for a gateway's gate to send from (source, control port) to the client.

    In a fleet the auth host has no control port of the gateways' addresses: the P3 must
    leave from the address and port the client knocked at, or the client's NAT drops it.
    No answer is sent back (UDP is lossy anyway: the client sends P2 again).
    """

    KIND: ClassVar[str] = "reply"
    source: str  # the gateway address the request was sent to
    destination: str
    port: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Event:
    KIND: ClassVar[str] = "event"
    topic: str
    stage: str
    time: float
    fields: dict[str, Any] = field(default_factory=dict)


Message = (Datagram | Syn | KnockFilter | HintFilter | DoorOpen | DoorClose | DoorSet | DoorResult | DoorUsed | Reply
           | Event)
_CATALOGUE: Final[dict[str, type[Any]]] = {
    cls.KIND: cls for cls in (Datagram, Syn, KnockFilter, HintFilter, DoorOpen, DoorClose, DoorSet, DoorResult,
                              DoorUsed, Reply, Event)
}
_PY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "str": (str,), "int": (int,), "bytes": (bytes,), "bool": (bool,), "float": (float, int),
    "list[list[Any]]": (list,), "list[bytes]": (list,), "dict[str, Any]": (dict,),
}
_FIELDS: Final = {
    kind: [(f.name, _PY_TYPES[str(f.type)], f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING) for f in dataclasses.fields(cls)]
    for kind, cls in _CATALOGUE.items()
}


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"v": BUS_VERSION, "k": message.KIND}
    for name, _, _ in _FIELDS[message.KIND]:
        body[name] = getattr(message, name)
    packed = msgpack.packb(body, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def decode(frame: bytes) -> Message:
    """Decode and validate one frame. Raises BadMessage, never anything else."""
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True, max_bin_len=65536,
                               max_str_len=65536, max_array_len=100_000, max_map_len=1024)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise BadMessage(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise BadMessage("not a map")
    version = body.get("v")
    # type(): True and 1.0 compare equal to 1 but are not our version field.
    if type(version) is not int or version != BUS_VERSION:
        raise BadMessage(f"unsupported version {version!r}")
    kind = body.get("k")
    if not isinstance(kind, str) or kind not in _CATALOGUE:
        raise BadMessage(f"unknown kind {kind!r}")
    values: dict[str, Any] = {}
    for name, types, required in _FIELDS[kind]:
        if name not in body:
            if required:
                raise BadMessage(f"{kind}: missing {name}")
            continue
        value = body[name]
        # bool is an int in Python; an int field must not accept True.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadMessage(f"{kind}: {name} has type {type(value).__name__}")
        # msgpack allows bytes keys too; a dict[str, Any] field (Event.fields) is splatted and sorted downstream.
        if isinstance(value, dict) and not all(isinstance(key, str) for key in value):
            raise BadMessage(f"{kind}: {name} has a key that is not a string")
        values[name] = value
    message: Message = _CATALOGUE[kind](**values)
    return message


M = TypeVar("M")


def decode_as(frame: bytes, kind: type[M]) -> M:
    message = decode(frame)
    if not isinstance(message, kind):
        raise BadMessage(f"expected {kind.__name__}, got {type(message).__name__}")
    return message


def event(topic: str, stage: str, /, **fields: Any) -> list[bytes]:
    """The two frames of a published event: topic (for prefix subscription), body."""
    return [topic.encode(), encode(Event(topic, stage, time.time(), fields))]


# --- endpoints --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Role:
    """What an endpoint is for: its ipc socket's name, the stage that binds it, and the keys
    (dynknock/transport.py) of the peers it admits over tcp."""

    socket: str
    owner: str
    peers: frozenset[str]


def _endpoint(socket: str, owner: str, *peers: str) -> Any:
    return field(metadata={"role": Role(socket, owner, frozenset(peers))})


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Every bus endpoint, declared once: its address here, its role (:data:`ROLES`) beside it."""

    # Packets come only from capture, which alone may read the knock filter (pending knocks and
    # hints); door commands only from auth; events only from the stages; the tap (read only: an
    # XPUB takes nothing from a subscriber but its subscriptions) only from monitors.
    packets: str = _endpoint("packets", "auth", "capture")
    knock_filter: str = _endpoint("filter", "auth", "capture")
    gate: str = _endpoint("gate", "gate", "auth")
    relay: str = _endpoint("relay", "relay", "auth")
    events: str = _endpoint("events", "bus", "auth", "gate", "relay", "capture")
    tap: str = _endpoint("tap", "bus", "tap")

    @classmethod
    def in_directory(cls, runtime_dir: Path) -> Endpoints:
        return cls(**{name: f"ipc://{runtime_dir}/{role.socket}.sock" for name, role in ROLES.items()})


ROLES: Final[dict[str, Role]] = {f.name: f.metadata["role"] for f in dataclasses.fields(Endpoints)}
ENDPOINT_NAMES: Final = tuple(ROLES)


class RuntimeDirError(RuntimeError):
    pass


def ensure_runtime_dir(path: Path, config_file: str = "") -> None:
    """Create the bus directory 0750, or refuse one that others could enter.

    The ipc sockets inside carry "open a door" commands: a local user who can
    connect to them could open doors, so only the service's user and group may
    reach them. Sockets are created with umask 007 (group may connect).
    """
    where = f" (key bus.runtime_dir in {config_file})" if config_file else ""
    try:
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
    except PermissionError:
        raise RuntimeDirError(f"cannot create bus directory {path}{where}: permission denied") from None
    except OSError as exc:  # a file in the way, or a parent that is not a directory
        raise RuntimeDirError(f"cannot create bus directory {path}{where}: {exc.strerror}") from None
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(f"bus directory {path} is owned by uid {st.st_uid}, not by us "
                              f"(uid {os.geteuid()}){where}")
    if st.st_mode & 0o007:
        raise RuntimeDirError(f"bus directory {path} has mode {stat.S_IMODE(st.st_mode):04o}: other users "
                              f"could inject commands; expected 0750{where}")
    os.umask(0o007)
