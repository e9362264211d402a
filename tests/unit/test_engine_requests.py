"""The requests the engine holds (auth/requests.py): one per user and client address, found by request id.

A newer P1 of the same user from the same address replaces the older request (its knocks stop counting);
a retransmitted P1, same request id under a fresh nonce, keeps the knocks already seen; a request id that
another client's request holds is refused as a replay; a user holds at most max_requests_per_user; and a
source outside the user's allowed networks makes no request at all.
"""

from __future__ import annotations

import ipaddress

from dynknock.auth.engine import EngineConfig, OpenDoor, SendReply, SetKnockFilter
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CLIENT,
    DAVE_NET,
    KNOCKS,
    KNOCKS_B,
    NOW,
    OTHER,
    RID,
    RID_B,
    SERVICES,
    Client,
    knock,
    make_engine,
    of,
    one,
    open_door,
    rejected,
    send,
    topics,
)

# --- who may make a request -------------------------------------------------------


def test_source_outside_the_users_cidrs() -> None:
    engine = make_engine()
    inside, outside = Client(DAVE_NET, ipaddress.ip_address("203.0.113.5")), Client(DAVE_NET, OTHER)
    assert rejected(send(engine, outside, outside.p1())) == ["source_not_allowed"]
    assert knock(engine, outside) == []
    assert not of(send(engine, outside, outside.p2()), SendReply)
    assert open_door(engine, inside).client == inside.address


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
