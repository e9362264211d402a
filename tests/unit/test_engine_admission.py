"""Admission (auth/admission.py): which datagrams become an authentic, fresh P1 or P2 of a known user.

A timestamp outside the clock-skew window is stale or future (the window's edges are inside it); a copy
of a P1 or P2 already seen is a replay, after a restart too (the nonce journal), until its timestamp has
left the window and the timestamp check alone refuses it; a packet sealed with another key is a bad tag;
an unknown user, an expired account and a P3 reflected back at the server are refused. Each refusal is
counted under its own reason, and none of these packets makes a request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynknock.auth.engine import Notify, OpenDoor, SendReply
from dynknock.auth.replay import ReplayCache, ReplayJournal
from dynknock.keys import SessionKeys
from dynknock.protocol import Status
from tests.unit.engine_support import (
    ALICE,
    BOB,
    ERIN_EXPIRED,
    KNOCKS,
    NOW,
    RID_B,
    Client,
    knock,
    make_engine,
    of,
    one,
    rejected,
    send,
    topics,
)

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


def test_p3_reflected_at_the_server_is_refused() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    send(engine, alice, alice.p1())
    reply = one(send(engine, alice, alice.p2()), SendReply)
    actions = send(engine, alice, reply.payload)
    assert rejected(actions) == ["bad_type"] and not of(actions, SendReply)
