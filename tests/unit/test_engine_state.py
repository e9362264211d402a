"""The life cycle of a request (auth/state.py): the TRANSITIONS table itself, and the engine walking it.

The table is tested directly: every (state, event) pair it lacks raises IllegalTransition and leaves the
request as it was, every pair it lists moves the request to the listed state and restarts its state clock
(state_since_ms), every state can be reached from a fresh P1 and forgotten, and GONE has no way out. Then
the engine drives whole lives through it: P1, knocks in any order, both stages' confirmations and the P2's
OPEN, over IPv4 and IPv6; a knock timeout; and a user removed while her requests await knocks or doors.
"""

from __future__ import annotations

import ipaddress

import pytest

from dynknock.auth.engine import CloseDoor, Notify, OpenDoor, SendReply, SetKnockFilter
from dynknock.auth.state import TRANSITIONS, Event, IllegalTransition, Request, State, transition
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import Status
from tests.unit.engine_support import (
    ALICE,
    BOB,
    CLIENT,
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
    open_door,
    rejected,
    send,
    topics,
)

# --- the TRANSITIONS table, read directly -----------------------------------------

FRESH = State.AWAITING_KNOCKS  # what an authenticated P1 makes
LISTED = [(state, event) for state in State for event in Event if event in TRANSITIONS[state]]
LACKED = [(state, event) for state in State for event in Event if event not in TRANSITIONS[state]]


def pair_id(pair: tuple[State, Event]) -> str:
    state, event = pair
    return f"{state.value}-{event.value}"


def events_to(target: State) -> list[Event]:
    """The shortest way through the table from a fresh request to target (breadth first)."""
    ways: dict[State, list[Event]] = {FRESH: []}
    frontier = [FRESH]
    while frontier:
        state = frontier.pop(0)
        for event, following in TRANSITIONS[state].items():
            if following not in ways:
                ways[following] = [*ways[state], event]
                frontier.append(following)
    assert target in ways, f"{target.value} cannot be reached from {FRESH.value}"
    return ways[target]


def request_in(state: State) -> Request:
    """A request of alice's, taken to state through the table alone, every change at NOW."""
    request = Request("alice", SessionKeys.from_master(ALICE.master_key), CLIENT, RID, "ssh", NOW,
                      {(k.port, k.isn) for k in KNOCKS})
    for event in events_to(state):
        transition(request, event, NOW)
    assert (request.state, request.state_since_ms) == (state, NOW)
    return request


def test_the_table_has_a_row_for_every_state_and_each_is_reached_from_a_fresh_request() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in State:
        assert request_in(state).state is state


@pytest.mark.parametrize(("state", "event"), LISTED, ids=[pair_id(pair) for pair in LISTED])
def test_a_listed_change_moves_to_the_listed_state_and_restarts_its_clock(state: State, event: Event) -> None:
    request = request_in(state)
    assert transition(request, event, NOW + 1234) is TRANSITIONS[state][event]
    assert request.state is TRANSITIONS[state][event]
    assert request.state_since_ms == NOW + 1234  # the timeouts of the new state count from here


@pytest.mark.parametrize(("state", "event"), LACKED, ids=[pair_id(pair) for pair in LACKED])
def test_a_change_the_table_lacks_raises_and_changes_nothing(state: State, event: Event) -> None:
    request = request_in(state)
    with pytest.raises(IllegalTransition, match=f"state {state.value}: no transition on {event.value}"):
        transition(request, event, NOW + 1234)
    assert (request.state, request.state_since_ms) == (state, NOW)


def test_every_state_but_gone_can_be_forgotten() -> None:
    for state in State:
        if state is not State.GONE:
            assert TRANSITIONS[state][Event.FORGOTTEN] is State.GONE


def test_gone_has_no_way_out() -> None:
    assert TRANSITIONS[State.GONE] == {}
    request = request_in(State.GONE)
    for event in Event:
        with pytest.raises(IllegalTransition):
            transition(request, event, NOW + 1234)
    assert (request.state, request.state_since_ms) == (State.GONE, NOW)


# --- whole lives, driven through the engine ---------------------------------------


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
