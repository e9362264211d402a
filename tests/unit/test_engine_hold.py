"""auth/engine.py: a P2 that arrives while its request still awaits knocks is held a few ms (p2_hold_ms)
instead of answered PENDING at once, so that the client's echoed SYNs (client/session.py, knock_echo_s)
complete the request and the same P2 gets OPEN. Bounded: held P2s per user and in all are capped
(past the caps: PENDING at once, as before), and the hold ends at a deadline the shell polls for."""

from __future__ import annotations

import dataclasses
import ipaddress

from dynknock.auth.engine import CloseDoor, EngineConfig, OpenDoor, SendReply
from dynknock.protocol import Status
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CONFIG,
    KNOCKS,
    KNOCKS_B,
    NOW,
    OTHER,
    RID,
    RID_B,
    Client,
    confirm,
    knock,
    make_engine,
    of,
    one,
    send,
)

ALICE_A, ALICE_B, ALICE_C = (ipaddress.ip_address(f"203.0.113.{i}") for i in (20, 21, 22))
HOLD = dataclasses.replace(CONFIG, p2_hold_ms=40, max_held_p2_per_user=2, max_held_p2_total=3)


def test_the_default_answers_pending_at_once() -> None:
    assert EngineConfig(CONFIG.services, 1, 2).p2_hold_ms == 0


def test_a_p2_before_its_knocks_is_held_and_gets_open_when_the_echo_completes() -> None:
    engine = make_engine(config=HOLD)
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:1])
    assert send(engine, alice, alice.p2(), NOW + 5) == []  # no PENDING: held
    assert engine.next_deadline_ms() == NOW + 5 + 40
    assert engine.on_timer(NOW + 20) == []
    door = one(knock(engine, alice, KNOCKS[1:], NOW + 10), OpenDoor)  # the echo
    p3 = alice.read(one(confirm(engine, door, NOW + 12), SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, door.port)
    assert engine.next_deadline_ms() is None
    assert engine.on_timer(NOW + 100) == []  # nothing left to answer


def test_a_held_p2_whose_knocks_never_come_gets_pending_at_its_deadline() -> None:
    engine = make_engine(config=HOLD)
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    assert send(engine, alice, alice.p2(), NOW + 5) == []
    assert engine.on_timer(NOW + 44) == []
    p3 = alice.read(one(engine.on_timer(NOW + 45), SendReply))
    assert p3.status is Status.PENDING
    assert engine.next_deadline_ms() is None
    # The client's resend after PENDING is answered PENDING at once (one hold per request), then
    # the knocks open the door on that P2.
    assert alice.read(one(send(engine, alice, alice.p2(NOW + 70), NOW + 70), SendReply)).status is Status.PENDING
    door = one(knock(engine, alice, KNOCKS, NOW + 75), OpenDoor)
    assert alice.read(one(confirm(engine, door, NOW + 76), SendReply)).status is Status.OPEN


def test_a_replayed_held_p2_is_still_refused() -> None:
    engine = make_engine(config=HOLD)
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    p2 = alice.p2()
    assert send(engine, alice, p2, NOW + 5) == []
    again = send(engine, alice, p2, NOW + 6)
    assert not of(again, SendReply)
    assert engine.rejections["replay"] == 1


def test_held_p2s_are_capped_per_user_and_in_all() -> None:
    engine = make_engine(config=HOLD)
    clients = [Client(ALICE, address=a) for a in (ALICE_A, ALICE_B, ALICE_C)]
    rids = [bytes([0xA0 + i]) * 16 for i in range(3)]
    for client, rid in zip(clients, rids, strict=True):
        send(engine, client, client.p1(rid=rid))
    assert send(engine, clients[0], clients[0].p2(rid=rids[0]), NOW + 1) == []
    assert send(engine, clients[1], clients[1].p2(rid=rids[1]), NOW + 1) == []
    third = one(send(engine, clients[2], clients[2].p2(rid=rids[2]), NOW + 1), SendReply)  # alice's cap of 2
    assert clients[2].read(third).status is Status.PENDING
    bob = Client(BOB, address=OTHER)
    send(engine, bob, bob.p1(rid=RID_B, knocks=KNOCKS_B))
    assert send(engine, bob, bob.p2(rid=RID_B), NOW + 1) == []  # the third held in all
    carol = Client(BOB, address=ALICE_C, port=50001)
    send(engine, carol, carol.p1(rid=bytes(16), knocks=KNOCKS_B))
    answer = one(send(engine, carol, carol.p2(rid=bytes(16)), NOW + 1), SendReply)  # the total cap of 3
    assert carol.read(answer).status is Status.PENDING
    released = engine.on_timer(NOW + 41)
    assert len(of(released, SendReply)) == 3


def test_a_request_replaced_while_its_p2_is_held_forgets_the_hold() -> None:
    engine = make_engine(config=HOLD)
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    assert send(engine, alice, alice.p2(), NOW + 1) == []
    send(engine, alice, alice.p1(NOW + 2, rid=RID_B, knocks=KNOCKS_B), NOW + 2)  # replaces RID
    assert engine.on_timer(NOW + 100) == []
    assert engine.next_deadline_ms() is None
    assert not of(knock(engine, alice, KNOCKS, NOW + 3), OpenDoor)
    assert RID != RID_B and not of(engine.on_tick(NOW + 4), CloseDoor)
