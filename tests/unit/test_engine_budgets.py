"""Rejection budgets (auth/budgets.py): a flood of refused packets floods neither the bus nor the logs.

Every rejection is counted, but the events reporting them are limited per second: those of junk and of
bad tags (nobody authenticated), and those that follow a good tag too, such as a replayed copy's, per
user named, so that one user's flood mutes nobody else's. A hint's tag checks have a budget of their
own. The budgets start full, at time zero too, and nothing unauthenticated gets a reply or opens a door.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock.auth.engine import EngineConfig, Notify
from dynknock.keys import SessionKeys
from tests.unit.engine_support import ALICE, BOB, NOW, OTHER, SERVER, SERVICES, Client, make_engine, rejected, send


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
    # and its sender no key. The budget is alice's: bob is still reported.
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
