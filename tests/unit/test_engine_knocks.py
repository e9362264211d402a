"""The knocks awaited and the knock filter capture is told (auth/knocks.py).

A knock counts only from the source that sent the P1, and only on the declared port with the declared
ISN. The same knock declared by two requests from one address stays awaited by the one still pending
when the other times out; and a P1 denied after it replaced a pending request empties the knock filter.
"""

from __future__ import annotations

from dynknock.auth.engine import OpenDoor, SendReply, SetKnockFilter
from dynknock.protocol import Knock, Status
from tests.unit.engine_support import ALICE, BOB, KNOCKS, NOW, OTHER, RID_B, Client, knock, make_engine, of, one, send


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


def test_same_knock_declared_by_two_requests_from_one_address() -> None:
    engine = make_engine()
    alice, bob = Client(ALICE), Client(BOB)
    send(engine, alice, alice.p1())
    send(engine, bob, bob.p1(NOW + 5000, rid=RID_B), NOW + 5000)  # the very same knocks
    engine.on_tick(NOW + 10_001)  # alice's request times out; bob's must keep its knocks
    assert one(knock(engine, bob, now=NOW + 10_002), OpenDoor).user == "bob"


def test_service_denied_p1_replacing_a_request_clears_the_knock_filter() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    actions = send(engine, alice, alice.p1(rid=RID_B, service="web"))
    assert one(actions, SetKnockFilter) == SetKnockFilter(frozenset())
    assert knock(engine, alice) == []
