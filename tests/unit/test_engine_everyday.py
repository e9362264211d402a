"""Everyday use in the engine: connect() knocks, and doors that stop counting once used.

A client without raw sockets knocks with connect(): its P1 declares knock kind CONNECT and
ports only, and the server matches (address, port). A single-use door whose connection a
stage reported (DoorUsed) stops counting against its user's cap and frees its port, so one
user can open a door per ssh connection, all day; a per-user bucket of doors_per_minute
bounds what a key holder can make the stages do.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from dynknock import protocol as proto
from dynknock.auth.engine import CloseDoor, Engine, EngineConfig, OpenDoor, SendReply
from dynknock.keys import hint_epoch, user_hint
from dynknock.protocol import Knock, KnockKind, Status
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CONFIG,
    KNOCKS,
    NOW,
    RID,
    Client,
    confirm,
    fresh_nonce,
    knock,
    make_engine,
    of,
    one,
    open_door,
    rejected,
    send,
    topics,
)

PORTS_ONLY = (Knock(KNOCKS[0].port, 0), Knock(KNOCKS[1].port, 0), Knock(KNOCKS[2].port, 0))


def knocks_from(base: int) -> tuple[Knock, Knock, Knock]:
    """Three knocks of their own for each request of a test."""
    return (Knock(base, 1), Knock(base + 1, 2), Knock(base + 2, 3))


def connect_p1(client: Client, ts: int = NOW, rid: bytes = RID) -> bytes:
    message = proto.P1(ts, rid, client.address, "ssh", PORTS_ONLY, KnockKind.CONNECT)
    return proto.seal(client.keys, message, user_hint(client.keys, hint_epoch(ts / 1000)), fresh_nonce())


def test_connect_knocks_match_by_address_and_port_whatever_the_isn() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    actions = send(engine, alice, connect_p1(alice))
    assert "auth.request.received" in topics(actions)
    # The kernel chose the ISNs: any will do, each port once.
    assert topics(engine.on_syn(alice.address, KNOCKS[0].port, 0x12345678, NOW)) == ["auth.knock.matched"]
    assert engine.on_syn(alice.address, KNOCKS[0].port, 0x9999, NOW) == []  # the port is done
    assert engine.on_syn(ipaddress.ip_address("203.0.113.8"), KNOCKS[1].port, 1, NOW) == []  # another source
    engine.on_syn(alice.address, KNOCKS[1].port, 7, NOW)
    door = one(engine.on_syn(alice.address, KNOCKS[2].port, 8, NOW), OpenDoor)
    confirm(engine, door)
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, door.port)


def test_syn_knocks_still_need_their_isn() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    assert engine.on_syn(alice.address, KNOCKS[0].port, KNOCKS[0].isn ^ 1, NOW) == []
    assert engine.unmatched_syns == 1


def test_a_server_that_refuses_connect_knocks_says_so_to_the_p2() -> None:
    engine = make_engine(config=dataclasses.replace(CONFIG, connect_knocks=False))
    alice = Client(ALICE)
    actions = send(engine, alice, connect_p1(alice))
    assert rejected(actions) == ["knock_kind_refused"]
    assert knock(engine, alice, PORTS_ONLY) == []  # no knock is awaited
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert p3.status is Status.KNOCK_KIND_REFUSED
    # SYN knocks still open.
    assert one(knock(engine, alice, KNOCKS) + send(engine, alice, alice.p1(rid=bytes(16))) +
               knock(engine, alice, KNOCKS), OpenDoor)


def open_and_use(engine: Engine, client: Client, n: int, now: int = NOW) -> OpenDoor:
    rid = n.to_bytes(16, "big")
    door = open_door(engine, client, now, rid=rid, knocks=knocks_from(1000 + 3 * n))
    confirm(engine, door, now)
    used = engine.on_door_used(door.door_id, "relay", now)
    assert one(used, CloseDoor) == CloseDoor(door.door_id, door.client, door.port)
    assert "auth.door.used" in topics(used)
    return door


def test_a_used_single_use_door_stops_counting_so_sixty_in_a_minute_open() -> None:
    engine = make_engine(config=dataclasses.replace(CONFIG, door_port_low=40000, door_port_high=40099))
    alice = Client(ALICE)
    ports = [open_and_use(engine, alice, n, NOW + n * 900).port for n in range(60)]  # 60 in 54 s
    assert len(ports) == 60 and engine.open_doors() == []  # every one used: none held


def test_unused_doors_still_count_against_the_cap() -> None:
    engine = make_engine(config=dataclasses.replace(CONFIG, max_doors_per_user=2))
    alice = Client(ALICE)
    for n in range(2):
        door = open_door(engine, alice, rid=n.to_bytes(16, "big"), knocks=knocks_from(1000 + 3 * n))
        confirm(engine, door)
    send(engine, alice, alice.p1(rid=bytes([9]) * 16, knocks=knocks_from(2000)))
    actions = knock(engine, alice, knocks_from(2000))
    assert not of(actions, OpenDoor) and rejected(actions) == ["too_many_doors"]


def test_door_used_reports_that_do_not_fit_change_nothing() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    # While opening: the client was told nothing yet, it still counts.
    assert engine.on_door_used(door.door_id, "relay", NOW) == []
    confirm(engine, door)
    assert engine.on_door_used("00" * 8, "relay", NOW) == []  # unknown door
    assert engine.on_door_used(door.door_id, "relay", NOW, gateway="gw-b") == []  # another gateway's stage
    assert engine.on_door_used(door.door_id, "capture", NOW) == []  # a stage that did not open it
    assert len(engine.open_doors()) == 1
    assert of(engine.on_door_used(door.door_id, "relay", NOW), CloseDoor)
    assert engine.on_door_used(door.door_id, "gate", NOW) == []  # reported twice: done once
    assert engine.open_doors() == []


def test_a_door_of_many_connections_counts_until_its_window_ends() -> None:
    engine = make_engine(config=dataclasses.replace(CONFIG, single_use=False))
    alice = Client(ALICE)
    door = open_door(engine, alice)
    confirm(engine, door)
    assert engine.on_door_used(door.door_id, "relay", NOW) == []
    assert len(engine.open_doors()) == 1


def test_doors_per_minute_bounds_a_key_holder_and_refills() -> None:
    config: EngineConfig = dataclasses.replace(CONFIG, door_port_high=40099, doors_per_minute=10)
    engine = make_engine(config=config)
    alice, bob = Client(ALICE), Client(BOB, ipaddress.ip_address("203.0.113.50"))
    for n in range(10):
        open_and_use(engine, alice, n)
    send(engine, alice, alice.p1(rid=bytes([99]) * 16, knocks=knocks_from(3000)))
    actions = knock(engine, alice, knocks_from(3000))
    assert not of(actions, OpenDoor) and rejected(actions) == ["too_many_doors"]
    assert open_door(engine, bob)  # another user is not touched
    # A sixth of a minute later the bucket holds one more door of alice's.
    later = NOW + 6_001
    assert open_and_use(engine, alice, 50, later)
