"""Capture's shedding (capture/fairness.py) with plain values: replays, per-source / per-hint / total
budgets, bounded tables, round-robin order. Time is passed in, so floods are simulated exactly."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dynknock.capture.fairness import (
    DUPLICATE,
    HINT_BUDGET,
    SOURCE_BUDGET,
    SOURCES_PER_PAYLOAD,
    TOTAL_BUDGET,
    Limits,
    ReplayFilter,
    Shedder,
    fair_order,
)

ALICE = b"alice-h1"
BOB = b"bob-hint"
ALICE_HOME = b"\xc6\x12\x00\x02"
ATTACKER = b"\xc6\x12\x00\x03"


def junk(n: int, size: int = 130) -> bytes:
    return n.to_bytes(8, "big") + bytes(size - 8)


def spoofed(n: int) -> bytes:
    return (0xC6130000 + n % 65536).to_bytes(4, "big")


# --- replays ----------------------------------------------------------------------------------


def test_an_exact_copy_from_a_source_already_seen_is_shed() -> None:
    shedder = Shedder()
    p1 = junk(1)
    assert shedder.admit(ALICE, ALICE_HOME, p1, 0.0) is None
    assert shedder.admit(ALICE, ALICE_HOME, p1, 0.1) == DUPLICATE
    assert shedder.admit(ALICE, ATTACKER, p1, 0.2) is None  # auth refuses it (wrong source), without AEAD
    assert shedder.admit(ALICE, ATTACKER, p1, 0.3) == DUPLICATE
    assert shedder.admit(ALICE, ALICE_HOME, junk(2), 100.0) is None  # a new sealing passes
    assert shedder.dropped[DUPLICATE] == 2


def test_a_copy_raced_from_another_address_does_not_shed_the_clients_own() -> None:
    """PROTOCOL.md invariant 3: an on-path attacker's copy arrives first; the client's packet must still pass."""
    shedder = Shedder()
    p2 = junk(3, 82)
    assert shedder.admit(ALICE, ATTACKER, p2, 0.0) is None
    assert shedder.admit(ALICE, ALICE_HOME, p2, 0.01) is None


def test_copies_from_many_sources_pass_at_most_a_few_times() -> None:
    shedder = Shedder()
    p1 = junk(4)
    admitted = sum(shedder.admit(ALICE, spoofed(i), p1, i / 1000) is None for i in range(1000))
    assert admitted == SOURCES_PER_PAYLOAD


def test_a_replay_flood_is_shed_whole_and_costs_no_budget() -> None:
    shedder = Shedder()
    captured = [junk(1), junk(2, 82)]  # a P1 and a P2 seen on the wire
    for packet in captured:
        assert shedder.admit(ALICE, ALICE_HOME, packet, 0.0) is None
    admitted = sum(shedder.admit(ALICE, spoofed(i), captured[i % 2], i / 120_000) is None
                   for i in range(1, 240_001))  # 2 s at 120,000 packets/s from 65,536 addresses
    # Each captured packet from at most SOURCES_PER_PAYLOAD - 1 more sources, then never again.
    assert admitted == 2 * (SOURCES_PER_PAYLOAD - 1)
    assert shedder.dropped[DUPLICATE] == 240_000 - admitted
    # Alice's own next knock still has her whole budget.
    assert all(shedder.admit(ALICE, ALICE_HOME, junk(10 + n), 2.0) is None for n in range(10))


def test_replay_memory_is_bounded_by_count_and_age() -> None:
    replays = ReplayFilter(capacity=100, ttl_s=10.0)
    for n in range(1000):
        replays.remember(junk(n), ALICE_HOME, n / 1000)
    assert len(replays) == 100
    assert replays.seen(junk(999), ALICE_HOME, 1.0) and not replays.seen(junk(899), ALICE_HOME, 1.0)
    assert not replays.seen(junk(999), ALICE_HOME, 11.0)  # older than ttl
    replays.remember(junk(5000), ALICE_HOME, 20.0)  # and old entries go when the next comes
    assert len(replays) == 1


def test_distinct_junk_cannot_flush_a_replay_at_the_floods_rate() -> None:
    """Only forwarded payloads are remembered, and forwarding is budgeted: to push a captured P1 out
    of memory an attacker must get replay_capacity packets forwarded first."""
    limits = Limits(replay_capacity=3000)
    shedder = Shedder(limits)
    captured = junk(1)
    assert shedder.admit(ALICE, ALICE_HOME, captured, 0.0) is None
    replays_through = 0
    rate = 145_000
    for i in range(rate * 4):  # 4 s: distinct junk under Alice's hint, the replay every other packet
        now = i / rate
        if i % 2:
            replays_through += shedder.admit(ALICE, spoofed(i), captured, now) is None
        else:
            shedder.admit(ALICE, spoofed(i), junk(i + 10), now)
    forwarded = limits.hint_burst + 4 * limits.hint_rate
    assert forwarded < limits.replay_capacity  # 2,500 forwarded in 4 s: the captured P1 stays remembered
    # From spoofed sources a copy passes while its new sources are few, never at the flood's rate.
    assert replays_through <= SOURCES_PER_PAYLOAD - 1


# --- budgets --------------------------------------------------------------------------------------


def _flood(shedder: Shedder, hint: bytes, seconds: float, rate: int, source: bytes | None,
           other: tuple[bytes, bytes] | None = None, every: int = 1000) -> tuple[int, int, int]:
    """Distinct junk under hint; every `every` packets one datagram of `other` (hint, source).
    Returns (flood admitted, other admitted, other sent)."""
    flood = mine = sent = 0
    for i in range(int(seconds * rate)):
        now = i / rate
        flood += shedder.admit(hint, source or spoofed(i), junk(i), now) is None
        if other and i % every == 0:
            sent += 1
            mine += shedder.admit(other[0], other[1], junk(10_000_000 + i), now) is None
    return flood, mine, sent


def test_one_address_flooding_a_live_hint_leaves_that_users_own_address_through() -> None:
    limits = Limits()
    shedder = Shedder(limits)
    flood, mine, sent = _flood(shedder, ALICE, 2.0, 145_000, ATTACKER, other=(ALICE, ALICE_HOME), every=29_000)
    assert flood <= limits.source_burst + 2 * limits.source_rate + 1
    assert sent == 10 and mine == 10
    assert shedder.dropped[SOURCE_BUDGET] == 2 * 145_000 - flood


def test_a_flood_from_many_addresses_takes_at_most_one_hints_share_and_never_anothers() -> None:
    limits = Limits()
    shedder = Shedder(limits)
    flood, mine, sent = _flood(shedder, ALICE, 2.0, 145_000, None, other=(BOB, ALICE_HOME), every=14_500)
    assert flood <= limits.hint_burst + 2 * limits.hint_rate + 1
    assert flood >= limits.hint_burst + 2 * limits.hint_rate - 2  # the share is really used
    assert sent == 20 and mine == 20  # Bob: a datagram every 100 ms, every one admitted
    # The flood never reached the table of addresses (the hint's bucket sheds first): Bob's own bucket
    # is the only entry under his hint, and the flood's addresses made none.
    assert len(shedder.sources) <= flood + 1
    assert shedder.dropped[HINT_BUDGET] > 280_000


def test_many_hints_together_are_held_by_the_total_budget() -> None:
    limits = Limits(total_rate=1000, total_burst=100)
    shedder = Shedder(limits)
    admitted = sum(shedder.admit(junk(i, 8), ATTACKER, junk(i), i / 50_000) is None for i in range(50_000))
    assert admitted <= 100 + 1000 + 1
    assert shedder.dropped[TOTAL_BUDGET] == 50_000 - admitted


def test_a_shed_datagram_takes_nothing_from_the_other_buckets() -> None:
    limits = Limits(source_burst=2, source_rate=0.001, hint_burst=3, hint_rate=0.001)
    shedder = Shedder(limits)
    assert [shedder.admit(ALICE, ATTACKER, junk(i), 0.0) for i in range(4)] == [None, None, SOURCE_BUDGET,
                                                                                SOURCE_BUDGET]
    # The two the source budget shed cost the hint nothing: one token left for Alice's own address.
    assert shedder.admit(ALICE, ALICE_HOME, junk(10), 0.0) is None
    assert shedder.admit(ALICE, ALICE_HOME, junk(11), 0.0) == HINT_BUDGET


def test_buckets_refill_at_their_rate() -> None:
    limits = Limits(source_burst=5, source_rate=10)
    shedder = Shedder(limits)
    assert sum(shedder.admit(ALICE, ALICE_HOME, junk(i), 0.0) is None for i in range(20)) == 5
    assert sum(shedder.admit(ALICE, ALICE_HOME, junk(100 + i), 0.5) is None for i in range(20)) == 5
    assert sum(shedder.admit(ALICE, ALICE_HOME, junk(200 + i), 0.65) is None for i in range(20)) == 1


def test_a_real_clients_knocks_fit_the_budgets() -> None:
    """client/session.py at its quickest: P1 + P2 per burst, bursts 20, 40, 80 ms ... apart, 20 bursts."""
    shedder = Shedder()
    now, gap, admitted = 0.0, 0.02, 0
    for burst in range(20):
        for kind in range(2):
            admitted += shedder.admit(ALICE, ALICE_HOME, junk(burst * 2 + kind), now) is None
        now += min(gap, 2.0)
        gap *= 2
    assert admitted == 40


def test_tables_stay_bounded_under_spoofed_addresses_and_random_hints() -> None:
    limits = Limits(max_sources=500, max_hints=300, replay_capacity=400, total_rate=1e9, total_burst=1e9)
    shedder = Shedder(limits)
    for i in range(20_000):
        shedder.admit(junk(i % 997, 8), spoofed(i), junk(i), i / 1000)
    assert len(shedder.sources) <= 500 and len(shedder.hints) <= 300 and len(shedder.replays) <= 400


# --- order --------------------------------------------------------------------------------------


def test_fair_order_round_robin_over_hints() -> None:
    assert fair_order([(b"a", 1), (b"a", 2), (b"a", 3), (b"b", 4)]) == [1, 4, 2, 3]
    assert fair_order([(b"a", 1), (b"b", 2), (b"a", 3), (b"c", 4), (b"a", 5), (b"c", 6)]) == [1, 2, 4, 3, 6, 5]
    assert fair_order([]) == []
    assert fair_order([(b"a", 1), (b"a", 2)]) == [1, 2]


@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]), st.integers()), max_size=60))
def test_fair_order_keeps_everything_and_each_hints_order(items: list[tuple[bytes, int]]) -> None:
    tagged = [(key, (key, index)) for index, (key, _) in enumerate(items)]
    out = fair_order(tagged)
    assert sorted(out) == sorted(item for _, item in tagged)
    for key in {k for k, _ in items}:
        assert [i for k, i in out if k == key] == sorted(i for k, i in out if k == key)
    keys = len({k for k, _ in items})
    # Every hint's first datagram is within the first `keys` sent: none waits behind another's burst.
    assert {k for k, _ in out[:keys]} == {k for k, _ in items}


def test_fair_order_puts_a_lone_datagram_ahead_of_a_flood_batch() -> None:
    batch = [(ALICE, n) for n in range(60)]
    batch.insert(random.Random(1).randrange(60), (BOB, -1))
    assert fair_order(batch)[:2] in ([0, -1], [-1, 0])


def test_a_user_knocking_again_and_again_from_one_address_is_never_shed() -> None:
    """Doors one after another (a script, the latency benchmark): 80 a second, a P1 and a P2 each, 5 s.
    A per-address budget of 10/s shed these in the lab and made knocks wait 250 ms for a resend."""
    shedder = Shedder()
    sent = admitted = 0
    for door in range(400):
        for kind in range(2):
            sent += 1
            admitted += shedder.admit(ALICE, ALICE_HOME, junk(door * 2 + kind), door / 80) is None
    assert admitted == sent == 800
