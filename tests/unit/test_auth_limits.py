"""Issue 11, auth side: replays cost no cryptography, one hint cannot starve another,
one user cannot hold every door, a door whose port is taken moves, revoke closes doors,
and the replay journal stays bounded on a server that runs for months.

Driven like the engine tests (tests/unit/engine_support.py): plain values, a fixed clock, the real codec.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dynknock import config as dkconfig
from dynknock import protocol as proto
from dynknock.auth.engine import CloseDoor, EngineConfig, Notify, OpenDoor, SendReply
from dynknock.auth.replay import ReplayCache, ReplayJournal
from dynknock.keys import SessionKeys
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
    RID_B,
    SERVER,
    SERVICES,
    Client,
    confirm,
    knock,
    make_engine,
    make_user,
    of,
    one,
    open_door,
    rejected,
    send,
    topics,
)


class AeadCounter:
    def __init__(self) -> None:
        self.calls = 0


@pytest.fixture
def aead(monkeypatch: pytest.MonkeyPatch) -> Iterator[AeadCounter]:
    """Counts every tag check (proto.open_packet) the engine makes."""
    counter = AeadCounter()
    real = proto.open_packet

    def counting(keys: SessionKeys, header: proto.Header, packet: bytes,
                 server: proto.IPAddress | None = None) -> proto.Message | proto.Reject:
        counter.calls += 1
        return real(keys, header, packet, server)

    monkeypatch.setattr(proto, "open_packet", counting)  # the engine calls it as proto.open_packet
    yield counter


def _events(actions: Sequence[object]) -> list[Notify]:
    return [a for a in actions if isinstance(a, Notify)]


# --- §3 replays cost no cryptography and are not "authenticated" ---------------------


def test_replayed_accepted_packet_costs_no_tag_check(aead: AeadCounter) -> None:
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1()
    assert topics(send(engine, alice, p1)) == ["auth.request.received"]
    assert aead.calls == 1
    for i in range(1000):
        send(engine, alice, p1, NOW + i)
    assert aead.calls == 1  # a dict look-up each, no AEAD
    assert engine.rejections["replay"] == 1000


def test_replay_after_a_restart_costs_no_tag_check(tmp_path: Path, aead: AeadCounter) -> None:
    journal = ReplayJournal(tmp_path / "replay.journal")
    engine = make_engine(replay=ReplayCache(journal, NOW))
    alice = Client(ALICE)
    p1 = alice.p1()
    send(engine, alice, p1)
    journal.close()
    journal = ReplayJournal(tmp_path / "replay.journal")
    engine = make_engine(replay=ReplayCache(journal, NOW + 1000))
    calls = aead.calls
    assert rejected(send(engine, alice, p1, NOW + 1000)) == ["replay"]
    assert aead.calls == calls
    journal.close()


def test_replayed_refused_packet_costs_no_tag_check(aead: AeadCounter) -> None:
    """A P1 refused after a good tag (here: replayed from a spoofed source) is not remembered
    as accepted (invariant 3), but its copies must not cost a tag check each either."""
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1()
    for i in range(500):
        assert rejected(send(engine, alice, p1, NOW + i, source=OTHER)) in (["wrong_source"], [])
    assert aead.calls == 1
    # ... and the real packet from the real address is still accepted (invariant 3).
    assert topics(send(engine, alice, p1, NOW + 600)) == ["auth.request.received"]
    assert aead.calls == 1


def test_old_packet_replayed_after_its_window_costs_no_tag_check(aead: AeadCounter) -> None:
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1()
    send(engine, alice, p1)
    for t in range(NOW, NOW + 5 * 60_000, 10_000):  # until its hint is long gone
        engine.on_tick(t)
        send(engine, alice, p1, t)
    assert aead.calls == 1


def test_forged_packet_with_a_seen_nonce_is_not_taken_for_the_cached_one() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    p1 = alice.p1(address=OTHER)  # refused (wrong source), so its nonce is only in the tag cache
    send(engine, alice, p1)
    forged = p1[:40] + bytes([p1[40] ^ 1]) + p1[41:]  # same header and nonce, altered body
    assert rejected(send(engine, alice, forged, NOW + 1)) == ["bad_tag"]
    assert not engine.open_doors()


def test_replays_are_rate_limited_like_unauthenticated_packets() -> None:
    config = EngineConfig(SERVICES, 40000, 40009, reject_events_per_second=5)
    engine = make_engine(config=config)
    alice = Client(ALICE)
    p1 = alice.p1()
    send(engine, alice, p1)
    events = [e for i in range(200) for e in _events(send(engine, alice, p1, NOW + i))]
    assert len(events) == 5 and engine.rejections["replay"] == 200
    spoofed = alice.p1(rid=RID_B)
    events = [e for i in range(200) for e in _events(send(engine, alice, spoofed, NOW + 1000 + i, source=OTHER))]
    assert len(events) == 5 and engine.rejections["wrong_source"] == 200


def test_one_users_rejection_flood_does_not_silence_anothers() -> None:
    config = EngineConfig(SERVICES, 40000, 40009, reject_events_per_second=5)
    engine = make_engine(config=config)
    alice, bob = Client(ALICE), Client(BOB, OTHER)
    p1 = alice.p1()
    send(engine, alice, p1)
    for i in range(100):
        send(engine, alice, p1, NOW + i)
    assert rejected(send(engine, bob, bob.p1(NOW - 61_000), NOW + 100)) == ["stale"]


# --- §3 work under one hint is capped, and cannot starve another -----------------------


def _junk(hint_of: Client) -> bytes:
    forged = hint_of.p1(keys=SessionKeys.from_master(os.urandom(32)))
    return forged


def test_junk_under_one_hint_is_capped_per_second(aead: AeadCounter) -> None:
    config = EngineConfig(SERVICES, 40000, 40009, hint_checks_per_second=50, bad_tags_per_source_per_second=3)
    engine = make_engine(config=config)
    alice, bob = Client(ALICE), Client(BOB, OTHER)
    junk = _junk(alice)
    for i in range(2000):  # from 2,000 spoofed sources
        engine.on_datagram(ipaddress.ip_address(f"198.51.{i // 250}.{i % 250 + 1}"), 1, SERVER, junk, NOW + i // 10)
    assert aead.calls == 50
    assert engine.rejections["hint_over_budget"] == 1950
    # another user's packets are checked as ever
    assert topics(send(engine, bob, bob.p1(rid=RID_B), NOW + 300)) == ["auth.request.received"]
    # the next second, the hint has a budget again
    assert topics(send(engine, alice, alice.p1(NOW + 1000), NOW + 1000)) == ["auth.request.received"]


def test_junk_from_a_few_sources_leaves_the_users_own_address_its_budget(aead: AeadCounter) -> None:
    config = EngineConfig(SERVICES, 40000, 40009, hint_checks_per_second=50, bad_tags_per_source_per_second=3)
    engine = make_engine(config=config)
    alice = Client(ALICE)
    junk = _junk(alice)
    for i in range(5000):
        engine.on_datagram(OTHER, 1, SERVER, junk, NOW + i // 10)
    assert aead.calls == 3  # one attacking address costs 3 checks a second
    assert topics(send(engine, alice, alice.p1(), NOW + 499)) == ["auth.request.received"]


def test_a_key_holders_flood_is_capped_too() -> None:
    config = EngineConfig(SERVICES, 40000, 40009, hint_checks_per_second=20)
    engine = make_engine(config=config)
    alice = Client(ALICE)
    received = sum(topics(send(engine, alice, alice.p1(rid=os.urandom(16)), NOW)).count("auth.request.received")
                   for _ in range(100))
    assert received == 20


# --- §4 doors per user and in all ------------------------------------------------------


def _clients_of(user: object, n: int, net: str = "198.51.100") -> list[Client]:
    return [Client(user, ipaddress.ip_address(f"{net}.{i + 1}")) for i in range(n)]  # type: ignore[arg-type]


def test_one_user_can_hold_only_max_doors_per_user() -> None:
    config = EngineConfig(SERVICES, 40000, 40099, max_doors_per_user=3, max_requests_per_user=100)
    engine = make_engine(config=config)
    hog = _clients_of(BOB, 5)
    for i, c in enumerate(hog[:3]):
        confirm(engine, open_door(engine, c, rid=bytes([i]) * 16))
    fourth = hog[3]
    send(engine, fourth, fourth.p1(rid=b"\x44" * 16))
    actions = knock(engine, fourth)
    assert not of(actions, OpenDoor)
    assert rejected(actions) == ["too_many_doors"]
    assert fourth.read(one(send(engine, fourth, fourth.p2(rid=b"\x44" * 16)), SendReply)).status is Status.UNAVAILABLE
    # another user still gets in
    alice = Client(ALICE, ipaddress.ip_address("203.0.113.50"))
    door = open_door(engine, alice)
    confirm(engine, door)
    assert alice.read(one(send(engine, alice, alice.p2()), SendReply)).status is Status.OPEN
    # once the hog's doors expire, it may open again
    later = NOW + CONFIG.window_seconds * 1000
    engine.on_tick(later)
    assert open_door(engine, hog[4], later, rid=b"\x55" * 16).user == "bob"


def test_a_door_being_opened_counts_towards_the_cap() -> None:
    config = EngineConfig(SERVICES, 40000, 40099, max_doors_per_user=1)
    engine = make_engine(config=config)
    a, b = _clients_of(BOB, 2)
    open_door(engine, a)  # OPENING, never confirmed yet
    send(engine, b, b.p1(rid=RID_B, knocks=KNOCKS_B))
    assert rejected(knock(engine, b, KNOCKS_B)) == ["too_many_doors"]


def test_all_users_together_hold_at_most_max_doors_total() -> None:
    config = EngineConfig(SERVICES, 40000, 40099, max_doors_per_user=10, max_doors_total=4, max_requests_per_user=100)
    engine = make_engine(config=config)
    users = [make_user(f"u{i}", 50 + i, services=("ssh",)) for i in range(5)]
    engine.replace_users({u.name: u for u in users})
    clients = [Client(u, ipaddress.ip_address(f"198.51.100.{i + 1}")) for i, u in enumerate(users)]
    for i, c in enumerate(clients[:4]):
        confirm(engine, open_door(engine, c, rid=bytes([i]) * 16))
    last = clients[4]
    send(engine, last, last.p1(rid=b"\x44" * 16))
    assert rejected(knock(engine, last)) == ["too_many_doors"]


# --- §5 a door port taken by a local process: another port -----------------------------


def test_address_in_use_moves_the_door_to_another_port() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    assert send(engine, alice, alice.p2()) == []
    assert engine.on_door_result(door.door_id, "gate", True, "", NOW + 5) == []
    actions = engine.on_door_result(door.door_id, "relay", False, "address_in_use: [Errno 98]", NOW + 10)
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)  # the gate's element goes
    moved = one(actions, OpenDoor)
    assert moved.port != door.port and moved.door_id != door.door_id
    assert (moved.user, moved.client, moved.service) == (door.user, door.client, door.service)
    assert not rejected(actions) and not of(actions, SendReply)
    assert actions.index(one(actions, CloseDoor)) < actions.index(moved)
    assert "auth.door.moved" in topics(actions)
    assert [d["port"] for d in engine.open_doors()] == [moved.port]
    # late answers for the old door change nothing; the new one opens as usual
    assert engine.on_door_result(door.door_id, "relay", True, "", NOW + 11) == []
    actions = confirm(engine, moved, NOW + 20)
    p3 = alice.read(one(actions, SendReply))
    assert (p3.status, p3.door_port) == (Status.OPEN, moved.port)


def test_a_port_found_in_use_is_not_drawn_again_soon() -> None:
    config = EngineConfig(SERVICES, 40000, 40015, door_retries=20)
    engine = make_engine(config=config)
    alice = Client(ALICE)
    door = open_door(engine, alice)
    taken = {door.port}
    for _ in range(10):
        door = one(engine.on_door_result(door.door_id, "relay", False, "address_in_use: x", NOW), OpenDoor)
        assert door.port not in taken
        taken.add(door.port)


def test_address_in_use_everywhere_gives_up_after_the_retries() -> None:
    config = EngineConfig(SERVICES, 40000, 40099, door_retries=3)
    engine = make_engine(config=config)
    alice = Client(ALICE)
    door = open_door(engine, alice)
    for _ in range(3):
        door = one(engine.on_door_result(door.door_id, "relay", False, "address_in_use: x", NOW), OpenDoor)
    actions = engine.on_door_result(door.door_id, "relay", False, "address_in_use: x", NOW)
    assert not of(actions, OpenDoor)
    assert one(actions, CloseDoor).door_id == door.door_id
    assert rejected(actions) == ["door_failed"]
    assert alice.read(one(send(engine, alice, alice.p2()), SendReply)).status is Status.UNAVAILABLE
    assert engine.open_doors() == []


def test_other_door_failures_are_not_retried() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    actions = engine.on_door_result(door.door_id, "relay", False, "too many open files", NOW)
    assert not of(actions, OpenDoor) and rejected(actions) == ["door_failed"]


def test_default_door_range_is_outside_the_ephemeral_range_and_the_control_port() -> None:
    low, high = dkconfig.default_of("door_ports")
    eph_low, eph_high = 32768, 60999  # Linux's default net.ipv4.ip_local_port_range
    assert high < eph_low or low > eph_high
    assert not low <= dkconfig.default_of("control_port") <= high
    assert high - low + 1 >= 1000


def test_overlap_with_the_ephemeral_range_is_reported(tmp_path: Path) -> None:
    proc = tmp_path / "ip_local_port_range"
    proc.write_text("32768\t60999\n")
    assert dkconfig.ephemeral_overlap(40000, 49999, proc) == (32768, 60999)
    assert dkconfig.ephemeral_overlap(63000, 65535, proc) is None
    assert dkconfig.ephemeral_overlap(63000, 65535, tmp_path / "missing") is None


# --- §6 revoke closes doors ------------------------------------------------------------


def test_removing_a_user_closes_their_open_doors() -> None:
    engine = make_engine()
    alice, bob = Client(ALICE), Client(BOB, OTHER)
    first = open_door(engine, alice)
    confirm(engine, first)
    second = open_door(engine, alice, NOW + 100, rid=RID_B, knocks=KNOCKS_B)  # replaces the request; door stays
    confirm(engine, second, NOW + 100)
    bobs = open_door(engine, bob, NOW + 200, rid=bytes(16))
    confirm(engine, bobs, NOW + 200)
    actions = engine.replace_users({"bob": BOB})
    assert sorted(of(actions, CloseDoor), key=lambda c: c.port) == sorted(
        [CloseDoor(first.door_id, CLIENT, first.port), CloseDoor(second.door_id, CLIENT, second.port)],
        key=lambda c: c.port)
    assert topics(actions).count("auth.door.revoked") == 2
    assert [d["user"] for d in engine.open_doors()] == ["bob"]
    assert rejected(send(engine, alice, alice.p2(rid=RID_B))) == ["unknown_user"]
    # a revoked door is gone for good: when the windows end, only bob's door expires
    expired = [e.fields["user"] for e in _events(engine.on_tick(bobs.expires_at_ms))
               if e.topic == "auth.door.expired"]
    assert expired == ["bob"]


def test_a_new_key_or_a_service_taken_away_closes_the_doors_it_opened() -> None:
    engine = make_engine()
    alice, bob = Client(ALICE), Client(BOB, OTHER)
    a = open_door(engine, alice)
    confirm(engine, a)
    b = open_door(engine, bob, rid=RID_B, knocks=KNOCKS_B)
    confirm(engine, b)
    new_alice = make_user("alice", 99, services=("ssh",))
    bob_web_only = make_user("bob", 2, services=("web",))
    actions = engine.replace_users({"alice": new_alice, "bob": bob_web_only})
    assert {c.door_id for c in of(actions, CloseDoor)} == {a.door_id, b.door_id}
    assert engine.open_doors() == []


def test_unchanged_users_keep_their_doors_over_a_reload() -> None:
    engine = make_engine()
    alice = Client(ALICE)
    door = open_door(engine, alice)
    confirm(engine, door)
    actions = engine.replace_users(dict({"alice": ALICE, "bob": BOB}))
    assert not of(actions, CloseDoor)
    assert [d["port"] for d in engine.open_doors()] == [door.port]


def test_a_user_whose_account_expires_loses_their_doors() -> None:
    import datetime as dt
    expiring = make_user("frank", 6, services=("ssh",), expires=dt.datetime.fromtimestamp((NOW + 5000) / 1000, dt.UTC))
    engine = make_engine(users=[expiring])
    frank = Client(expiring)
    door = open_door(engine, frank)
    confirm(engine, door)
    assert not of(engine.on_tick(NOW + 4999), CloseDoor)
    actions = engine.on_tick(NOW + 5000)
    assert one(actions, CloseDoor) == CloseDoor(door.door_id, CLIENT, door.port)
    assert engine.open_doors() == []


# --- §6 the replay journal is compacted while running ----------------------------------


def test_replay_journal_stays_bounded_while_running(tmp_path: Path) -> None:
    path = tmp_path / "replay.journal"
    journal = ReplayJournal(path)
    engine = make_engine(replay=ReplayCache(journal, NOW))
    alice = Client(ALICE)
    sizes = []
    t = NOW
    for second in range(3600):  # an hour of one user knocking every second: 7,200 nonces
        t = NOW + second * 1000
        rid = second.to_bytes(16, "big")
        last = alice.p1(t, rid=rid, knocks=KNOCKS)
        send(engine, alice, last, t)
        send(engine, alice, alice.p2(t, rid=rid), t)
        engine.on_tick(t)
        sizes.append(path.stat().st_size)  # appended records show in the size before any fsync
    assert sizes[-1] < 7200 * 32 / 2  # without compaction it would hold all 7,200 records
    # bound: the live nonces (about two minutes' worth) plus the slack allowed before compacting
    assert max(sizes) <= (2 * 2 * 130 + 4096) * 32, max(sizes)
    journal.sync()
    journal.close()
    # after the compactions the journal still refuses a packet of the last minute
    journal = ReplayJournal(path)
    engine = make_engine(replay=ReplayCache(journal, t))
    assert rejected(send(engine, alice, last, t)) == ["replay"]
    journal.close()


def test_journal_compaction_keeps_every_live_nonce(tmp_path: Path) -> None:
    path = tmp_path / "replay.journal"
    journal = ReplayJournal(path)
    cache = ReplayCache(journal, NOW)
    for i in range(5000):
        cache.remember(i.to_bytes(24, "big"), NOW + 1000)  # soon dead
    for i in range(5000, 5010):
        cache.remember(i.to_bytes(24, "big"), NOW + 3_600_000)  # alive an hour
    cache.sweep(NOW + 2000)
    assert path.stat().st_size == 10 * 32
    cache.remember((9999).to_bytes(24, "big"), NOW + 3_600_000)
    journal.sync()
    journal.close()
    reloaded = ReplayCache(ReplayJournal(path), NOW + 3000)
    assert len(reloaded) == 11
    assert all(reloaded.seen(i.to_bytes(24, "big"), NOW + 3000) for i in [*range(5000, 5010), 9999])

