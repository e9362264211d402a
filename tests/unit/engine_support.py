"""What the engine's unit tests share: a fixed clock, deterministic randomness, users, simulated clients.

The engine is driven with plain values, and each test of tests/unit/test_engine_*.py reads as a
script: a datagram or SYN goes in, the expected actions come out. Clients are simulated with the real
codec (dynknock/protocol.py), and every P3 the engine sends is opened with the user's server-to-client
key. No tests live here: pytest collects test_*.py files only, so this module is imported, never run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from dynknock import protocol as proto
from dynknock.auth.engine import Action, Engine, EngineConfig, Notify, OpenDoor, SendReply, Service
from dynknock.auth.replay import ReplayCache
from dynknock.auth.users import User
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import IPAddress, Knock, PacketType

NOW = 1_700_000_000_000  # ms; any fixed value will do
SERVER = ipaddress.ip_address("192.0.2.1")
CLIENT = ipaddress.ip_address("203.0.113.7")
OTHER = ipaddress.ip_address("203.0.113.99")
PUBLIC = ipaddress.ip_address("8.8.8.8")  # is_global: a declared address that is not a NAT's inside
SERVICES = {"ssh": Service("ssh", "127.0.0.1", 22), "web": Service("web", "127.0.0.1", 8080)}
CONFIG = EngineConfig(SERVICES, door_port_low=40000, door_port_high=40009)
KNOCKS = (Knock(15075, 0x54841860), Knock(4174, 0xE2AA5A03), Knock(44809, 0x902AC754))
KNOCKS_B = (Knock(1001, 1), Knock(1002, 2), Knock(1003, 3))
RID = bytes(range(16))
RID_B = bytes(range(1, 17))
T = TypeVar("T")


def make_user(name: str, seed: int, **kw: object) -> User:
    """A user with a key of her own: the same seed gives the same master key in every test."""
    return User(name, hashlib.sha256(bytes([seed])).digest(), **kw)  # type: ignore[arg-type]


ALICE = make_user("alice", 1, services=("ssh",))
BOB = make_user("bob", 2, services=("ssh", "web"))
CAROL_NAT = make_user("carol", 3, services=("ssh",), nat=True)
DAVE_NET = make_user("dave", 4, services=("ssh",), sources=(ipaddress.ip_network("203.0.113.0/28"),))
ERIN_EXPIRED = make_user("erin", 5, services=("ssh",), expires=dt.datetime.fromtimestamp(NOW / 1000 - 1, dt.UTC))
ALL_USERS = {u.name: u for u in (ALICE, BOB, CAROL_NAT, DAVE_NET, ERIN_EXPIRED)}


class Rng:
    """Deterministic stand-ins for os.urandom and secrets.randbelow."""

    def __init__(self, below: Callable[[int], int] | None = None) -> None:
        self._counter = itertools.count(1)
        self._below = below or random.Random(7).randrange

    def random_bytes(self, n: int) -> bytes:
        return hashlib.sha256(next(self._counter).to_bytes(8, "big")).digest()[:n]

    def random_below(self, n: int) -> int:
        value = self._below(n)
        assert 0 <= value < n
        return value


_nonces = itertools.count(1)


def fresh_nonce() -> bytes:
    """A nonce not used before in this run, shared by every test module, so no packet is taken for a replay."""
    return next(_nonces).to_bytes(24, "big")


@dataclass
class Client:
    """A knock client reduced to the packets it sends."""

    user: User
    address: IPAddress = CLIENT
    port: int = 50000
    keys: SessionKeys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = SessionKeys.from_master(self.user.master_key)

    def _seal(self, message: proto.Message, keys: SessionKeys | None = None) -> bytes:
        hint = user_hint(self.keys, hint_epoch(message.timestamp_ms / 1000))
        return proto.seal(keys or self.keys, message, hint, fresh_nonce())

    def p1(self, ts: int = NOW, *, rid: bytes = RID, address: IPAddress | None | str = "self", service: str = "ssh",
           knocks: tuple[Knock, Knock, Knock] = KNOCKS, keys: SessionKeys | None = None) -> bytes:
        declared = self.address if address == "self" else address
        assert not isinstance(declared, str)
        return self._seal(proto.P1(ts, rid, declared, service, knocks), keys)

    def p2(self, ts: int = NOW, *, rid: bytes = RID) -> bytes:
        return self._seal(proto.P2(ts, rid))

    def read(self, action: SendReply) -> proto.P3:
        """Open a reply as the client does; it must be a P3 for us, sealed with our key."""
        assert isinstance(action, SendReply)
        assert (action.destination, action.port, action.source) == (self.address, self.port, SERVER)
        header = proto.parse_header(action.payload, (PacketType.P3,))
        assert isinstance(header, proto.Header)
        message = proto.open_packet(self.keys, header, action.payload)
        assert isinstance(message, proto.P3)
        return message


def make_engine(users: Iterable[User] = ALL_USERS.values(), config: EngineConfig = CONFIG,
                replay: ReplayCache | None = None, rng: Rng | None = None) -> Engine:
    rng = rng or Rng()
    replay = replay if replay is not None else ReplayCache()  # (an empty cache is falsy: it has __len__)
    return Engine(config, {u.name: u for u in users}, replay, rng.random_bytes, rng.random_below)


def send(engine: Engine, client: Client, payload: bytes, now: int = NOW,
         source: IPAddress | None = None) -> list[Action]:
    return engine.on_datagram(source or client.address, client.port, SERVER, payload, now)


def knock(engine: Engine, client: Client, knocks: Iterable[Knock] = KNOCKS, now: int = NOW,
          source: IPAddress | None = None) -> list[Action]:
    actions: list[Action] = []
    for k in knocks:
        actions += engine.on_syn(source or client.address, k.port, k.isn, now)
    return actions


def of(actions: list[Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def one(actions: list[Action], kind: type[T]) -> T:
    found = of(actions, kind)
    assert len(found) == 1, actions
    return found[0]


def topics(actions: list[Action]) -> list[str]:
    return [a.topic for a in actions if isinstance(a, Notify)]


def rejected(actions: list[Action]) -> list[str]:
    return [a.fields["reason"] for a in actions if isinstance(a, Notify) and a.topic == "auth.request.rejected"]


def open_door(engine: Engine, client: Client, now: int = NOW, *, rid: bytes = RID,
              knocks: tuple[Knock, Knock, Knock] = KNOCKS, address: IPAddress | None | str = "self") -> OpenDoor:
    actions = send(engine, client, client.p1(now, rid=rid, knocks=knocks, address=address), now)
    assert "auth.request.received" in topics(actions), actions
    return one(knock(engine, client, knocks, now), OpenDoor)


def confirm(engine: Engine, door: OpenDoor, now: int = NOW) -> list[Action]:
    return engine.on_door_result(door.door_id, "gate", True, "", now) + \
        engine.on_door_result(door.door_id, "relay", True, "", now)
