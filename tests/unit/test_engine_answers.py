"""What a P2 is told (auth/answers.py): PENDING, SERVICE_NOT_ALLOWED, and the NAT notes' ADDRESS_MISMATCH.

A P1 that declares an address other than its source is refused (wrong_source). If that address is
private, most likely a NAT's inside, the source seen is noted, and a P2 from that same source, and only
from it, is told (sealed) ADDRESS_MISMATCH and the address the server saw. A declared public address, or
"as seen" from a user without the NAT flag, gets no such answer; with the flag, "as seen" binds the
source. The first source wins: a copy replayed from elsewhere overwrites no note, and a P2 copy answered
ADDRESS_MISMATCH does not stop the client's own packets from opening the door.
"""

from __future__ import annotations

import ipaddress

import pytest

from dynknock.auth.engine import OpenDoor, SendReply
from dynknock.auth.users import User
from dynknock.protocol import Status
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CAROL_NAT,
    CLIENT,
    CONFIG,
    KNOCKS,
    NOW,
    OTHER,
    PUBLIC,
    RID,
    Client,
    confirm,
    knock,
    make_engine,
    of,
    one,
    open_door,
    rejected,
    send,
)

# --- what a P2 is told ------------------------------------------------------------


def test_p2_before_knocks_complete_is_pending() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    knock(engine, alice, KNOCKS[:2])
    p3 = alice.read(one(send(engine, alice, alice.p2()), SendReply))
    assert (p3.status, p3.door_port, p3.window_seconds) == (Status.PENDING, 0, 0)


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


# --- the NAT notes ----------------------------------------------------------------


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
