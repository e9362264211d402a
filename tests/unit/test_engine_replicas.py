"""Auth replicas in the engine (invariant 14): a door opens only once its P1's nonce is
claimed in the shared store; a nonce another replica had is a replay; a store that cannot answer
is a refusal; stale users take no P1."""

from __future__ import annotations

import dataclasses

from dynknock.auth.engine import ClaimNonce, Engine, OpenDoor, SendReply, SetKnockFilter
from dynknock.auth.replay import ReplayCache
from dynknock.protocol import Status
from tests.unit.engine_support import (
    ALICE,
    ALL_USERS,
    CONFIG,
    KNOCKS,
    NOW,
    RID,
    Client,
    Rng,
    confirm,
    knock,
    of,
    one,
    rejected,
    send,
)

REPLICA = dataclasses.replace(CONFIG, shared_nonces=True)


def replica() -> Engine:
    rng = Rng()
    return Engine(REPLICA, dict(ALL_USERS), ReplayCache(), rng.random_bytes, rng.random_below)


def test_the_door_waits_for_the_claim() -> None:
    engine, alice = replica(), Client(ALICE)
    actions = send(engine, alice, alice.p1())
    claim = one(actions, ClaimNonce)
    assert claim.request_id == RID and claim.expiry_ms > NOW
    assert of(knock(engine, alice), OpenDoor) == []  # every knock seen, the nonce not yet this replica's
    door = one(engine.on_claim(RID, True, "", NOW + 2), OpenDoor)
    confirm(engine, door, NOW + 3)
    p3 = alice.read(one(send(engine, alice, alice.p2(NOW + 4), NOW + 4), SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, door.port)


def test_a_claim_before_the_knocks_opens_at_the_last_knock() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    assert engine.on_claim(RID, True, "", NOW + 1) == []
    assert one(knock(engine, alice), OpenDoor).user == "alice"


def test_a_p2_while_only_the_claim_is_out_waits_for_it() -> None:
    """Every knock is in and only the store's answer is missing: the P2 is not told PENDING (the client
    would resend its whole burst for nothing); the door's OPEN answers it."""
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice)
    assert of(send(engine, alice, alice.p2()), SendReply) == []
    assert not of(engine.on_timer(NOW + 1000), SendReply)  # nor PENDING at a hold deadline
    door = one(engine.on_claim(RID, True, "", NOW + 40), OpenDoor)
    p3 = alice.read(one(confirm(engine, door, NOW + 45), SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, door.port)


def test_a_p2_before_the_knocks_is_pending_as_ever() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert p3.status is Status.PENDING  # knocks missing: the client must resend them


def test_a_p2_waiting_for_the_claim_hears_unavailable_when_the_store_fails() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice)
    send(engine, alice, alice.p2())
    p3 = alice.read(one(engine.on_claim(RID, None, "store: unavailable", NOW + 2000), SendReply))
    assert p3.status is Status.UNAVAILABLE


def test_a_nonce_another_replica_had_is_a_replay_and_opens_nothing() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    actions = engine.on_claim(RID, False, "claimed by another replica", NOW + 2)
    assert rejected(actions) == ["replay"] and of(actions, OpenDoor) == []
    assert one(actions, SetKnockFilter).pairs == frozenset()  # its knocks are no longer awaited
    assert of(knock(engine, alice), OpenDoor) == [] and engine.unmatched_syns == 3
    assert rejected(send(engine, alice, alice.p2(NOW + 3), NOW + 3)) == ["no_request"]  # silent
    assert engine.open_doors() == []


def test_a_claim_lost_after_the_knocks_opens_nothing_either() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice)
    actions = engine.on_claim(RID, False, "claimed by another replica", NOW + 2)
    assert rejected(actions) == ["replay"] and of(actions, OpenDoor) == [] and engine.open_doors() == []


def test_a_store_that_cannot_answer_refuses_and_says_unavailable() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    actions = engine.on_claim(RID, None, "store: unavailable: no member answered", NOW + 2)
    assert rejected(actions) == ["store_unavailable"]
    assert one(actions, SetKnockFilter).pairs == frozenset()  # its knocks are no longer awaited
    assert of(knock(engine, alice), OpenDoor) == []
    p3 = alice.read(one(send(engine, alice, alice.p2(NOW + 3), NOW + 3), SendReply))
    assert p3.status is Status.UNAVAILABLE
    assert engine.rejections["store_unavailable"] == 1


def test_a_late_answer_for_a_request_gone_changes_nothing() -> None:
    engine, alice = replica(), Client(ALICE)
    send(engine, alice, alice.p1())
    second = bytes(range(2, 18))
    send(engine, alice, alice.p1(NOW + 1, rid=second), NOW + 1)  # replaces the first request
    assert engine.on_claim(RID, True, "", NOW + 2) == []
    assert engine.on_claim(RID, None, "late", NOW + 2) == []


def test_stale_users_take_no_p1() -> None:
    engine, alice = replica(), Client(ALICE)
    engine.users_current = False
    actions = send(engine, alice, alice.p1())
    assert rejected(actions) == ["store_unavailable"] and of(actions, ClaimNonce) == []
    engine.users_current = True
    assert of(send(engine, alice, alice.p1(NOW + 1), NOW + 1), ClaimNonce)


def test_one_host_claims_nothing() -> None:
    rng = Rng()
    engine, alice = Engine(CONFIG, dict(ALL_USERS), ReplayCache(), rng.random_bytes, rng.random_below), Client(ALICE)
    assert of(send(engine, alice, alice.p1()), ClaimNonce) == []
    assert one(knock(engine, alice, KNOCKS), OpenDoor).user == "alice"
