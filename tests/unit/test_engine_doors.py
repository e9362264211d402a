"""Doors (auth/doors.py, auth/opener.py): confirmed, failed, expired, closed, and the ports they hold.

A door is open, and a held P2 answered OPEN, only once every stage asked has confirmed it: the gate and
the relay, or for a service the kernel forwards the gate alone, unless the client's address family
differs from the target's and the relay forwards after all. A stage's refusal, or no confirmation in
time, closes the door and answers UNAVAILABLE; a door expires at the end of its window; an open door
keeps its port when its request is replaced, an opening one is closed. Ports are drawn from the range
configured, never one in use; when none is free the request is refused (no_door_port) until doors expire.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock.auth.engine import CloseDoor, EngineConfig, Notify, OpenDoor, SendReply, Service
from dynknock.protocol import Status
from dynknock.topics import Topic
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CLIENT,
    CONFIG,
    KNOCKS_B,
    NOW,
    RID_B,
    SERVICES,
    Client,
    Rng,
    confirm,
    knock,
    make_engine,
    of,
    one,
    open_door,
    rejected,
    send,
    topics,
)

# --- confirmations, failures, expiry and closes -----------------------------------


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
