"""The auth engine driven with plain values: a fixed clock, deterministic randomness.

Each test reads as a script: a datagram or SYN goes in, the expected actions
come out. Clients are simulated with the real codec (dynknock/protocol.py), and
every P3 the engine sends is opened with the user's server-to-client key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import bus
from dynknock import config as dkconfig
from dynknock import protocol as proto
from dynknock.auth.engine import (
    Action,
    CloseDoor,
    Engine,
    EngineConfig,
    Notify,
    OpenDoor,
    SendReply,
    Service,
    SetKnockFilter,
    engine_config,
)
from dynknock.auth.replay import ReplayCache, ReplayJournal
from dynknock.auth.users import User
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import IPAddress, Knock, PacketType, Status
from dynknock.topics import Topic

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


def _user(name: str, seed: int, **kw: object) -> User:
    return User(name, hashlib.sha256(bytes([seed])).digest(), **kw)  # type: ignore[arg-type]


ALICE = _user("alice", 1, services=("ssh",))
BOB = _user("bob", 2, services=("ssh", "web"))
CAROL_NAT = _user("carol", 3, services=("ssh",), nat=True)
DAVE_NET = _user("dave", 4, services=("ssh",), sources=(ipaddress.ip_network("203.0.113.0/28"),))
ERIN_EXPIRED = _user("erin", 5, services=("ssh",), expires=dt.datetime.fromtimestamp(NOW / 1000 - 1, dt.UTC))
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


# --- the happy path ---------------------------------------------------------------


def test_happy_path_knocks_in_any_order_with_duplicates() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    actions = send(engine, alice, alice.p1())
    assert topics(actions) == ["auth.request.received"]
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset((str(CLIENT), k.port) for k in KNOCKS))
    assert not of(actions, SendReply)  # a P1 is never answered

    third, first, second = KNOCKS
    assert topics(knock(engine, alice, [first])) == ["auth.knock.matched"]
    assert knock(engine, alice, [first]) == []  # a duplicate SYN changes nothing
    assert engine.unmatched_syns == 1
    assert topics(knock(engine, alice, [third])) == ["auth.knock.matched"]
    actions = knock(engine, alice, [second], now=NOW + 2000)
    door = one(actions, OpenDoor)
    assert (door.user, door.client, door.service, door.target_host, door.target_port) == \
        ("alice", CLIENT, "ssh", "127.0.0.1", 22)
    assert 40000 <= door.port <= 40009
    assert door.expires_at_ms == NOW + 2000 + CONFIG.window_seconds * 1000
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset())  # every knock seen: stop passing SYNs
    assert "auth.knock.complete" in topics(actions)

    assert engine.on_door_result(door.door_id, "gate", True, "", NOW + 2100) == []
    actions = engine.on_door_result(door.door_id, "relay", True, "", NOW + 2200)
    assert topics(actions) == ["auth.door.opened"]
    assert not of(actions, SendReply)  # no P2 yet: nobody to tell

    reply = one(send(engine, alice, alice.p2(NOW + 3000), NOW + 3000), SendReply)
    assert reply.payload[2:10] == user_hint(alice.keys, hint_epoch((NOW + 3000) / 1000))
    p3 = alice.read(reply)
    assert p3.status is Status.OPEN
    assert p3.door_port == door.port
    assert p3.request_id == RID
    assert p3.seen_address == CLIENT
    assert p3.window_seconds == 29  # 30 s from the knock at +2 s, asked at +3 s
    assert p3.timestamp_ms == NOW + 3000
    assert engine.open_doors() == [{"user": "alice", "client": str(CLIENT), "port": door.port,
                                    "expires_ms": door.expires_at_ms}]


def test_ipv6_client() -> None:
    engine = make_engine()
    bob = Client(BOB, ipaddress.ip_address("2001:db8::7"))
    door = open_door(engine, bob)
    assert door.client == bob.address
    confirm(engine, door)
    p3 = bob.read(one(send(engine, bob, bob.p2()), SendReply))
    assert (p3.status, p3.door_port, p3.seen_address) == (Status.OPEN, door.port, bob.address)


def test_p2_before_knocks_complete_is_pending() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:2])
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert (p3.status, p3.door_port, p3.window_seconds) == (Status.PENDING, 0, 0)


def test_p2_while_opening_is_answered_when_both_stages_confirm() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    assert send(engine, alice, alice.p2()) == []  # held until the door is confirmed
    assert engine.on_door_result(door.door_id, "relay", True, "", NOW + 10) == []
    assert engine.on_door_result(door.door_id, "nobody", True, "", NOW + 10) == []  # unknown stage ignored
    actions = engine.on_door_result(door.door_id, "gate", True, "", NOW + 20)
    assert topics(actions) == ["auth.door.opened"]
    p3 = alice.read(one(actions, SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, door.port)


def test_open_p3_only_after_both_confirmations() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    assert engine.on_door_result(door.door_id, "gate", True, "", NOW) == []
    assert engine.on_door_result(door.door_id, "gate", True, "", NOW) == []  # a repeated ack is not the relay's
    assert send(engine, alice, alice.p2()) == []  # still OPENING: no P3 at all, not even PENDING
    assert engine.open_doors()[0]["port"] == door.port


# --- knocks that must not count ---------------------------------------------------


def test_syn_from_another_source_never_completes() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    assert knock(engine, alice, source=OTHER) == []
    assert engine.unmatched_syns == 3
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert p3.status is Status.PENDING
    assert of(knock(engine, alice), OpenDoor)  # the real knocks still work


def test_syn_with_wrong_isn_never_completes() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    wrong = [Knock(k.port, (k.isn + 1) % 2**32) for k in KNOCKS]
    assert knock(engine, alice, wrong) == []
    assert knock(engine, alice, [Knock(k.port + 1, k.isn) for k in KNOCKS]) == []
    assert engine.unmatched_syns == 6
    assert of(knock(engine, alice), OpenDoor)


# --- time and replay --------------------------------------------------------------


@pytest.mark.parametrize(("offset", "reason"), [(-60_001, "stale"), (60_001, "future")])
def test_timestamp_outside_the_window(offset: int, reason: str) -> None:
    engine = make_engine()
    alice = Client(ALICE)
    assert rejected(send(engine, alice, alice.p1(NOW + offset))) == [reason]
    assert knock(engine, alice) == []  # no request was made
    assert rejected(send(engine, alice, alice.p2(NOW + offset))) == [reason]
    assert engine.rejections[reason] == 2


@pytest.mark.parametrize("offset", [-60_000, 60_000])
def test_timestamp_at_the_edge_of_the_window_is_accepted(offset: int) -> None:
    engine = make_engine()
    alice = Client(ALICE)
    assert topics(send(engine, alice, alice.p1(NOW + offset))) == ["auth.request.received"]
    assert alice.read(one(send(engine, alice, alice.p2(NOW + offset)), SendReply)).status is Status.PENDING


def test_replayed_p1_and_p2_are_refused() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1()
    send(engine, alice, p1)
    knock(engine, alice, KNOCKS[:1])
    assert rejected(send(engine, alice, p1, NOW + 1000)) == ["replay"]
    # The replay did not reset the request: the first knock still counts.
    assert of(knock(engine, alice, KNOCKS[1:]), OpenDoor)
    p2 = alice.p2()
    assert of(send(engine, alice, p2), SendReply) == []  # OPENING: held
    actions = send(engine, alice, p2, NOW + 1000)
    assert rejected(actions) == ["replay"] and not of(actions, SendReply)
    assert engine.rejections["replay"] == 2


def test_replay_is_refused_after_a_restart(tmp_path: Path) -> None:
    journal_path = tmp_path / "replay.journal"
    journal = ReplayJournal(journal_path)
    engine = make_engine(replay=ReplayCache(journal, NOW))
    alice = Client(ALICE)
    p1, p2 = alice.p1(), alice.p2(NOW + 100)
    assert topics(send(engine, alice, p1)) == ["auth.request.received"]
    assert of(send(engine, alice, p2, NOW + 100), SendReply)
    journal.close()
    assert journal_path.stat().st_size == 2 * 32  # two records: expiry (8) + nonce (24)

    # "Restart": a new engine and a new cache loading the same journal. The
    # requests are gone, but the nonces are not.
    journal = ReplayJournal(journal_path)
    engine = make_engine(replay=ReplayCache(journal, NOW + 5000))
    assert rejected(send(engine, alice, p1, NOW + 5000)) == ["replay"]
    assert rejected(send(engine, alice, p2, NOW + 5000)) == ["replay"]
    assert knock(engine, alice, now=NOW + 5000) == []
    # A fresh P1 of the same user is fine.
    assert topics(send(engine, alice, alice.p1(NOW + 5000, rid=RID_B), NOW + 5000)) == ["auth.request.received"]
    journal.close()

    # Once the timestamps have left the window, compaction drops the records
    # and the timestamp check alone refuses the old packets.
    later = NOW + 61_000
    journal = ReplayJournal(journal_path)
    engine = make_engine(replay=ReplayCache(journal, later))
    assert journal_path.stat().st_size == 32  # only the P1 sent at +5 s is still inside its window
    assert rejected(send(engine, alice, p1, later)) == ["stale"]
    journal.close()


def test_replay_cache_forgets_nonces_only_after_the_window() -> None:
    replay = ReplayCache()
    engine = make_engine(replay=replay)
    alice = Client(ALICE)
    p1 = alice.p1()
    send(engine, alice, p1)
    assert len(replay) == 1
    engine.on_tick(NOW + 60_000)  # the last millisecond of the window: kept
    assert len(replay) == 1
    assert rejected(send(engine, alice, p1, NOW + 60_000)) == ["replay"]
    engine.on_tick(NOW + 70_000)  # (sweeps run at most every 10 s)
    assert len(replay) == 0
    assert rejected(send(engine, alice, p1, NOW + 70_000)) == ["stale"]


# --- who may ask ------------------------------------------------------------------


def test_wrong_key_is_bad_tag() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    other_keys = SessionKeys.from_master(bytes(32))
    actions = send(engine, alice, alice.p1(keys=other_keys))  # alice's hint, someone else's key
    assert rejected(actions) == ["bad_tag"]
    assert engine.rejections["bad_tag"] == 1
    assert knock(engine, alice) == []


def test_unknown_user() -> None:
    engine = make_engine(users=[BOB])
    alice = Client(ALICE)
    actions = send(engine, alice, alice.p1())
    assert rejected(actions) == ["unknown_user"]
    assert "user" not in one(actions, Notify).fields  # nothing authenticated, nobody named
    actions = send(engine, alice, alice.p2())
    assert rejected(actions) == ["unknown_user"] and not of(actions, SendReply)
    assert engine.rejections["unknown_user"] == 2


def test_expired_user() -> None:
    engine = make_engine()
    erin = Client(ERIN_EXPIRED)
    assert rejected(send(engine, erin, erin.p1())) == ["user_expired"]
    assert knock(engine, erin) == []
    assert rejected(send(engine, erin, erin.p2())) == ["user_expired"]


def test_declared_public_address_differs_from_source() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    actions = send(engine, alice, alice.p1(address=PUBLIC))
    assert rejected(actions) == ["wrong_source"]
    assert knock(engine, alice) == [] and knock(engine, alice, source=PUBLIC) == []
    actions = send(engine, alice, alice.p2())  # a public address: no mismatch answer
    assert rejected(actions) == ["no_request"] and not of(actions, SendReply)


def test_as_seen_address_refused_without_nat_flag() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    assert rejected(send(engine, alice, alice.p1(address=None))) == ["wrong_source"]
    assert knock(engine, alice) == []
    assert not of(send(engine, alice, alice.p2()), SendReply)


def test_as_seen_address_with_nat_flag_binds_the_seen_source() -> None:
    engine = make_engine()
    carol = Client(CAROL_NAT)
    door = open_door(engine, carol, address=None)  # P1 declares "as seen"
    assert door.client == CLIENT
    confirm(engine, door)
    p3 = carol.read(one(send(engine, carol, carol.p2()), SendReply))
    assert (p3.status, p3.seen_address) == (Status.OPEN, CLIENT)


def test_private_declared_address_gets_address_mismatch_on_p2() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    inside = ipaddress.ip_address("10.0.0.5")
    assert rejected(send(engine, alice, alice.p1(address=inside))) == ["wrong_source"]
    assert knock(engine, alice) == []
    # The P2 from the source the P1 came from learns (encrypted) what the server saw.
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert (p3.status, p3.seen_address, p3.request_id, p3.door_port) == (Status.ADDRESS_MISMATCH, CLIENT, RID, 0)
    # A P2 from anywhere else learns nothing.
    actions = send(engine, alice, alice.p2(), source=OTHER)
    assert rejected(actions) == ["no_request"] and not of(actions, SendReply)
    # Another user cannot read alice's mismatch with alice's request id.
    bob = Client(BOB)
    assert not of(send(engine, bob, bob.p2()), SendReply)
    # The note is dropped after the knock timeout.
    engine.on_tick(NOW + CONFIG.knock_timeout_seconds * 1000)
    assert not of(send(engine, alice, alice.p2(NOW + 10_000), NOW + 10_000), SendReply)


def test_address_mismatch_note_is_not_overwritten_by_a_spoofed_replay() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1(address=ipaddress.ip_address("10.0.0.5"))
    send(engine, alice, p1)
    send(engine, alice, p1, source=OTHER)  # a sniffer replays it from elsewhere
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert (p3.status, p3.seen_address) == (Status.ADDRESS_MISMATCH, CLIENT)


def test_source_outside_the_users_cidrs() -> None:
    engine = make_engine()
    inside, outside = Client(DAVE_NET, ipaddress.ip_address("203.0.113.5")), Client(DAVE_NET, OTHER)
    assert rejected(send(engine, outside, outside.p1())) == ["source_not_allowed"]
    assert knock(engine, outside) == []
    assert not of(send(engine, outside, outside.p2()), SendReply)
    assert open_door(engine, inside).client == inside.address


@pytest.mark.parametrize(("user", "service"), [(ALICE, "web"), (BOB, "ftp")])
def test_service_not_allowed(user: User, service: str) -> None:
    """alice may not use web; ftp is not a service of this server at all."""
    engine = make_engine()
    client = Client(user)
    actions = send(engine, client, client.p1(service=service))
    assert rejected(actions) == ["service_not_allowed"]
    assert engine.rejections["service_not_allowed"] == 1
    assert knock(engine, client) == []  # no knocks are awaited
    p3 = client.read(one(send(engine, client, client.p2()), SendReply))
    assert (p3.status, p3.door_port) == (Status.SERVICE_NOT_ALLOWED, 0)


def test_service_denied_p1_replacing_a_request_clears_the_knock_filter() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    actions = send(engine, alice, alice.p1(rid=RID_B, service="web"))
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset())
    assert knock(engine, alice) == []


def test_p3_reflected_at_the_server_is_refused() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    reply = one(send(engine, alice, alice.p2()), SendReply)
    actions = send(engine, alice, reply.payload)
    assert rejected(actions) == ["bad_type"] and not of(actions, SendReply)


# --- one outstanding request ------------------------------------------------------


def test_newer_p1_replaces_older() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:2])
    actions = send(engine, alice, alice.p1(NOW + 1000, rid=RID_B, knocks=KNOCKS_B), NOW + 1000)
    assert topics(actions) == ["auth.request.replaced", "auth.request.received"]
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset((str(CLIENT), k.port) for k in KNOCKS_B))
    assert knock(engine, alice, KNOCKS[2:]) == []  # the old request's knocks no longer count
    assert rejected(send(engine, alice, alice.p2(rid=RID))) == ["no_request"]
    assert of(knock(engine, alice, KNOCKS_B), OpenDoor)


def test_p1_retransmission_keeps_state() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:2])
    actions = send(engine, alice, alice.p1(NOW + 500), NOW + 500)  # same request id, fresh nonce
    assert topics(actions) == ["auth.request.retry"]
    assert not of(actions, SetKnockFilter)
    assert of(knock(engine, alice, KNOCKS[2:]), OpenDoor)  # the two earlier knocks still count


def test_request_id_of_another_clients_request_is_refused() -> None:
    engine = make_engine()
    alice, alice_elsewhere = Client(ALICE), Client(ALICE, OTHER)
    send(engine, alice, alice.p1())
    assert rejected(send(engine, alice_elsewhere, alice_elsewhere.p1())) == ["replay"]
    assert knock(engine, alice_elsewhere) == []


def test_too_many_requests_per_user() -> None:
    config = EngineConfig(SERVICES, 40000, 40009, max_requests_per_user=2)
    engine = make_engine(config=config)
    clients = [Client(BOB, ipaddress.ip_address(f"203.0.113.{i}")) for i in (1, 2, 3)]
    for i, c in enumerate(clients[:2]):
        assert topics(send(engine, c, c.p1(rid=bytes([i]) * 16))) == ["auth.request.received"]
    assert rejected(send(engine, clients[2], clients[2].p1(rid=b"\x09" * 16))) == ["too_many_requests"]


# --- timeouts and doors -----------------------------------------------------------


def test_knock_timeout_on_tick() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:1])
    assert engine.on_tick(NOW + 10_000) == []
    actions = engine.on_tick(NOW + 10_001)
    assert rejected(actions) == ["knock_timeout"]
    assert one(actions, Notify).fields["detail"] == "2 knocks missing"
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset())
    assert engine.rejections["knock_timeout"] == 1
    assert knock(engine, alice, KNOCKS[1:], NOW + 10_002) == []
    assert rejected(send(engine, alice, alice.p2(NOW + 10_002), NOW + 10_002)) == ["no_request"]


def test_open_timeout_closes_the_door_and_answers_unavailable() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    assert send(engine, alice, alice.p2()) == []
    engine.on_door_result(door.door_id, "gate", True, "", NOW + 100)  # the relay never answers
    assert engine.on_tick(NOW + 3000) == []
    actions = engine.on_tick(NOW + 3001)
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)
    assert rejected(actions) == ["door_failed"]
    assert alice.read(one(actions, SendReply)).status is Status.UNAVAILABLE
    assert engine.on_door_result(door.door_id, "relay", True, "", NOW + 3002) == []  # too late
    assert engine.open_doors() == []


def test_door_nack_closes_the_door_and_answers_unavailable() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    engine.on_door_result(door.door_id, "relay", True, "", NOW)
    actions = engine.on_door_result(door.door_id, "gate", False, "nft failed", NOW)
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)
    assert one(actions, Notify).fields["detail"] == "gate: nft failed"
    assert not of(actions, SendReply)  # no P2 yet
    assert alice.read(one(send(engine, alice, alice.p2()), SendReply)).status is Status.UNAVAILABLE
    assert engine.rejections["door_failed"] == 1
    assert engine.open_doors() == []  # the port is free again


def test_door_expiry_event_on_tick() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    confirm(engine, door)
    assert engine.on_tick(door.expires_at_ms - 1) == []
    actions = engine.on_tick(door.expires_at_ms)
    assert actions == [Notify(Topic.AUTH_DOOR_EXPIRED, {"user": "alice", "client": str(CLIENT), "port": door.port})]
    assert engine.open_doors() == []
    t = door.expires_at_ms + 1
    assert rejected(send(engine, alice, alice.p2(t), t)) == ["no_request"]


def test_open_door_outlives_its_replaced_request() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    first = open_door(engine, alice)
    confirm(engine, first)
    second = open_door(engine, alice, NOW + 1000, rid=RID_B, knocks=KNOCKS_B)
    assert second.port != first.port  # the first door still holds its port
    assert {d["port"] for d in engine.open_doors()} == {first.port, second.port}


def test_request_replaced_while_opening_closes_its_door() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    actions = send(engine, alice, alice.p1(NOW + 100, rid=RID_B, knocks=KNOCKS_B), NOW + 100)
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)
    assert confirm(engine, door) == []  # confirmations of the abandoned door change nothing
    assert engine.open_doors() == []


def test_removed_user_loses_pending_requests_and_opening_doors() -> None:
    engine = make_engine()
    alice, bob = Client(ALICE), Client(BOB, OTHER)
    door = open_door(engine, alice)
    assert topics(send(engine, bob, bob.p1(rid=RID_B, knocks=KNOCKS_B))) == ["auth.request.received"]
    actions = engine.replace_users({"bob": BOB})
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)
    assert "auth.users.reloaded" in topics(actions)
    assert rejected(send(engine, alice, alice.p2())) == ["unknown_user"]
    assert of(knock(engine, bob, KNOCKS_B), OpenDoor)  # bob is untouched


def test_same_knock_declared_by_two_requests_from_one_address() -> None:
    engine = make_engine()
    alice, bob = Client(ALICE), Client(BOB)
    send(engine, alice, alice.p1())
    send(engine, bob, bob.p1(NOW + 5000, rid=RID_B), NOW + 5000)  # the very same knocks
    engine.on_tick(NOW + 10_001)  # alice's request times out; bob's must keep its knocks
    assert one(knock(engine, bob, now=NOW + 10_002), OpenDoor).user == "bob"


# --- door ports -------------------------------------------------------------------


def _clients(n: int) -> list[Client]:
    return [Client(BOB, ipaddress.ip_address(f"198.51.100.{i + 1}")) for i in range(n)]


@pytest.mark.parametrize("below", [lambda n: 0, lambda n: n - 1], ids=["always-low", "always-high"])
def test_port_allocation_exhausts_the_range_then_fails(below: Callable[[int], int]) -> None:
    config = EngineConfig(SERVICES, 40000, 40004, max_requests_per_user=100)
    engine = make_engine(config=config, rng=Rng(below))
    clients = _clients(6)
    ports = [open_door(engine, c, rid=bytes([i]) * 16).port for i, c in enumerate(clients[:5])]
    assert sorted(ports) == [40000, 40001, 40002, 40003, 40004]
    last = clients[5]
    send(engine, last, last.p1(rid=b"\x55" * 16))
    actions = knock(engine, last)
    assert not of(actions, OpenDoor)
    assert rejected(actions) == ["no_door_port"]
    assert engine.rejections["no_door_port"] == 1
    assert last.read(one(send(engine, last, last.p2(rid=b"\x55" * 16)), SendReply)).status is Status.UNAVAILABLE


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 12))
def test_port_allocation_never_gives_a_port_in_use(seed: int, size: int) -> None:
    config = EngineConfig(SERVICES, 50000, 50000 + size - 1, max_requests_per_user=100, max_doors_per_user=100)
    engine = make_engine(config=config, rng=Rng(random.Random(seed).randrange))
    in_use: set[int] = set()
    for i, c in enumerate(_clients(size)):
        door = open_door(engine, c, rid=i.to_bytes(16, "big"))
        assert door.port not in in_use and 50000 <= door.port < 50000 + size
        in_use.add(door.port)
        confirm(engine, door)
    extra = Client(BOB, ipaddress.ip_address("198.51.100.200"))
    send(engine, extra, extra.p1(rid=b"\xee" * 16))
    assert rejected(knock(engine, extra)) == ["no_door_port"]
    # When the doors expire their ports are free again.
    t = NOW + CONFIG.window_seconds * 1000
    engine.on_tick(t)
    assert engine.open_doors() == []
    again = Client(BOB, ipaddress.ip_address("198.51.100.201"))
    assert open_door(engine, again, t, rid=b"\xdd" * 16).port in in_use


# --- flood ------------------------------------------------------------------------


def test_unauthenticated_rejection_events_are_rate_limited() -> None:
    config = EngineConfig(SERVICES, 40000, 40009, reject_events_per_second=5)
    engine = make_engine(config=config)
    junk = bytes(130)
    events = [a for i in range(20) for a in engine.on_datagram(OTHER, 1, SERVER, junk, NOW + i)]
    assert len(events) == 5
    assert engine.rejections["bad_version"] == 20  # but every one is counted
    assert len(engine.on_datagram(OTHER, 1, SERVER, junk, NOW + 1000)) == 1  # a new second, a new budget
    # A bad tag under a valid hint is no more authentic than junk: also limited.
    alice = Client(ALICE)
    forged = alice.p1(keys=SessionKeys.from_master(bytes(32)))
    events = [a for i in range(20) for a in send(engine, alice, forged, NOW + 2000 + i)]
    assert rejected(events) == ["bad_tag"] * 5
    # every one is counted: the first ten cost a tag check, then that source waits for the next second
    assert engine.rejections["bad_tag"] == 10 and engine.rejections["hint_over_budget"] == 10
    # A rejection after a good tag is limited as well: a replayed copy carries a good tag,
    # and its sender no key (issue 11 §3). The budget is alice's: bob is still reported.
    assert not rejected(send(engine, alice, alice.p1(NOW - 61_000), NOW + 2000))
    assert engine.rejections["stale"] == 1
    bob = Client(BOB)
    assert rejected(send(engine, bob, bob.p1(NOW - 61_000), NOW + 2000)) == ["stale"]


def test_rate_limit_budget_starts_full_at_time_zero() -> None:
    engine = make_engine()
    assert rejected(engine.on_datagram(OTHER, 1, SERVER, b"x", 0)) == ["bad_size"]


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.binary(min_size=130, max_size=130).map(lambda b: b"\x01\x01" + b[2:]))
def test_nothing_unauthenticated_gets_a_reply_or_opens_anything(junk: bytes) -> None:
    engine = make_engine()
    actions = engine.on_datagram(OTHER, 1, SERVER, junk, NOW)
    assert all(isinstance(a, Notify) for a in actions)
    assert sum(engine.rejections.values()) == 1


# --- the engine's settings from the server's config --------------------------------------------------

def test_engine_config_takes_the_servers_settings_by_their_names() -> None:
    document: dict[str, dict[str, Any]] = {
        "server": {"interface": "eth0", "addresses": ["198.18.0.1"], "window_seconds": 45,
                   "clock_skew_seconds": 90, "knock_timeout_seconds": 7, "max_doors_per_user": 3,
                   "max_doors_total": 50, "door_ports": "50000-50015"},
        "services": {"ssh": {"target": "127.0.0.1:22"}}}
    config = dkconfig.parse(document, "/x.toml")
    settings = engine_config(config, p2_hold_ms=20)
    assert (settings.window_seconds, settings.clock_skew_seconds, settings.knock_timeout_seconds,
            settings.max_doors_per_user, settings.max_doors_total) == (45, 90, 7, 3, 50)
    assert (settings.door_port_low, settings.door_port_high, settings.p2_hold_ms) == (50000, 50015, 20)
    assert settings.services == config.services and settings.versions == proto.ALL_VERSIONS
    assert not settings.bound_only
    # what the file leaves out, the engine's defaults say alike
    del document["server"]["window_seconds"]
    plain = engine_config(dkconfig.parse(document, "/x.toml"))
    assert plain.window_seconds == EngineConfig(SERVICES, 1, 2).window_seconds == 30


def test_a_fleet_engine_takes_unbound_packets_only_when_told() -> None:
    gateways = {"gw-a": {"addresses": ["198.18.0.11"], "gate": "tcp://198.18.0.11:7003"}}
    endpoints = {name: f"tcp://198.18.0.9:{7100 + i}" for i, name in enumerate(bus.ENDPOINT_NAMES)}
    document: dict[str, dict[str, Any]] = {
        "server": {"interface": "eth0", "addresses": ["198.18.0.1"]},
        "bus": {"transport": "tcp", "tcp_endpoints": endpoints},
        "services": {"ssh": {"target": "127.0.0.1:22"}}, "gateways": gateways}
    strict = engine_config(dkconfig.parse(document, "/x.toml"))
    assert (strict.versions, strict.bound_only) == ((proto.BOUND_VERSION, proto.PAIR_VERSION), True)
    document["server"]["fleet_accepts_v1"] = True
    lenient = engine_config(dkconfig.parse(document, "/x.toml"))
    assert (lenient.versions, lenient.bound_only) == (proto.ALL_VERSIONS, False)


# --- doors the kernel forwards (services.NAME.forward = "kernel") ------------------------------------

KERNEL_CONFIG = EngineConfig({"ssh": Service("ssh", "127.0.0.1", 22, "kernel"),
                              "web6": Service("web6", "2001:db8::1", 8080, "kernel")},
                             door_port_low=40000, door_port_high=40009)
CLIENT6 = ipaddress.ip_address("2001:db8:77::7")


def test_a_kernel_door_opens_with_the_gates_confirmation_alone() -> None:
    engine = make_engine(config=KERNEL_CONFIG)
    alice = Client(ALICE)
    door = open_door(engine, alice)
    assert door.stages == frozenset({"gate"})
    assert engine.on_door_result(door.door_id, "relay", True, "", NOW) == []  # not asked, not counted
    actions = engine.on_door_result(door.door_id, "gate", True, "", NOW)
    assert "auth.door.opened" in topics(actions)
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert p3.status is Status.OPEN and p3.door_port == door.port


def test_a_relay_restart_does_not_fail_a_kernel_door() -> None:
    engine = make_engine(config=KERNEL_CONFIG)
    alice = Client(ALICE)
    door = open_door(engine, alice)
    engine.on_door_result(door.door_id, "gate", True, "", NOW)
    assert not of(engine.on_door_stage_lost("relay", NOW + 10), CloseDoor)
    assert alice.read(one(send(engine, alice, alice.p2(NOW + 20), NOW + 20), SendReply)).status is Status.OPEN


def test_an_ipv6_client_of_an_ipv4_kernel_service_is_relayed() -> None:
    engine = make_engine(config=KERNEL_CONFIG)
    alice = Client(ALICE, address=CLIENT6)
    door = open_door(engine, alice)
    assert door.stages == frozenset({"gate", "relay"})
    assert engine.on_door_result(door.door_id, "gate", True, "", NOW) == []  # the relay must confirm too
    assert "auth.door.opened" in topics(engine.on_door_result(door.door_id, "relay", True, "", NOW))


def test_relayed_services_still_need_both_stages() -> None:
    engine = make_engine()
    door = open_door(engine, Client(ALICE))
    assert door.stages == frozenset({"gate", "relay"})
    assert engine.on_door_result(door.door_id, "gate", True, "", NOW) == []


def test_a_p2_copy_answered_address_mismatch_does_not_refuse_the_clients_own() -> None:
    """The lab's race (tests/e2e/attacks/test_replay.py): an on-path attacker sends the client's first burst
    from its own address before the client's arrives. Its P1 copy is refused (wrong source) and leaves
    the NAT note for its address; its P2 copy is answered ADDRESS_MISMATCH (sealed: it learns nothing).
    The client's own P1, knocks and P2, arriving late and unchanged, must open and answer the door
    (invariant 3), with no AEAD for any further copy."""
    engine = make_engine()
    alice = Client(ALICE, address=ipaddress.ip_address("198.18.0.2"))  # not global: the NAT note applies
    attacker = ipaddress.ip_address("198.18.0.3")
    p1, p2 = alice.p1(), alice.p2()
    assert rejected(send(engine, alice, p1, source=attacker)) == ["wrong_source"]
    copy = one(send(engine, alice, p2, source=attacker), SendReply)
    assert copy.destination == attacker
    assert Client(ALICE, address=attacker).read(copy).status is Status.ADDRESS_MISMATCH
    assert not of(send(engine, alice, p2, source=attacker), SendReply)  # one answer per nonce
    door = one(send(engine, alice, p1) + knock(engine, alice), OpenDoor)
    confirm(engine, door)
    answer = alice.read(one(send(engine, alice, p2), SendReply))
    assert (answer.status, answer.door_port) == (Status.OPEN, door.port)
