"""capture/filters.py with several auth replicas: each replica's pairs and hints kept apart,
the union of the live replicas' passed, a replica gone taken out and forgotten. Plain values and a
passed-in clock, as test_capture_filters.py (which covers the one auth, replica "")."""

from __future__ import annotations

from dynknock.bus import HintFilter, KnockFilter
from dynknock.capture.filters import NARROW_AFTER_S, Filters

A, B, C = "198.18.0.2", "198.18.0.3", "198.18.0.4"
H1, H2 = b"hint-one", b"hint-two"


def replicated(*live: str, now: float = 0.0) -> Filters:
    """Filters of a capture serving replicas, `live` of them up."""
    filters = Filters(atomic=True)
    filters.set_live(live, now)
    return filters


def attach(filters: Filters) -> list[tuple[str, int]]:
    attached = list(filters.pairs)
    filters.installed("pairs")
    return attached


def test_the_union_of_the_live_replicas_pairs_passes() -> None:
    filters = replicated("a", "b")
    assert filters.generation == -1  # no live replica's knock filter yet: no knock passes
    assert filters.on_knocks(KnockFilter([[A, 1000]], 7, "a"), 1.0, "a")
    assert filters.due(1.0) and attach(filters) == [(A, 1000)]
    assert filters.on_knocks(KnockFilter([[B, 2000], [A, 1000]], 3, "b"), 1.1, "b")
    assert filters.due(1.1)  # B's pair is new: at once
    assert attach(filters) == [(A, 1000), (B, 2000)]  # A's pair once, though both name it
    assert filters.generation == 7 and filters.generations == {"a": 7, "b": 3}
    # Each replica's generations are its own: b's generation 7 is new, a's 7 again is a repeat.
    assert filters.on_knocks(KnockFilter([[C, 3000]], 7, "b"), 1.2, "b")
    assert filters.on_knocks(KnockFilter([], 7, "a"), 1.2, "a")
    assert attach(filters) == [(A, 1000), (C, 3000)]


def test_a_replica_gone_takes_its_pairs_and_hints_out_and_is_forgotten() -> None:
    filters = replicated("a", "b")
    filters.on_knocks(KnockFilter([[A, 1000]], 5, "a"), 1.0, "a")
    filters.on_knocks(KnockFilter([[B, 2000]], 5, "b"), 1.0, "b")
    filters.on_hints(HintFilter([H1], 5, "a"), "a")
    filters.on_hints(HintFilter([H2], 5, "b"), "b")
    attach(filters)
    assert filters.knows(H1) and filters.knows(H2)
    filters.set_live(["b"], 2.0)
    assert filters.pairs == [(B, 2000)] and filters.knows(H2) and not filters.knows(H1)
    assert not filters.due(2.0) and filters.due(2.0 + NARROW_AFTER_S)  # only narrows: soon, not at once
    assert "a" not in filters.generations and "a" not in filters.replica_hints
    # a's next life counts its generations from the start again: its first filter is new, not a repeat.
    filters.on_knocks(KnockFilter([[C, 3000]], 1, "a"), 3.0, "a")
    assert filters.pairs == [(B, 2000)]  # kept, not passed, while a is down
    filters.set_live(["a", "b"], 3.1)
    assert filters.due(3.1) and attach(filters) == [(C, 3000), (B, 2000)]


def test_until_a_live_replica_names_hints_every_hint_passes() -> None:
    filters = replicated("a", "b")
    assert filters.knows(H1) and filters.knows(H2)
    filters.on_hints(HintFilter([H1], 1, "a"), "a")
    assert filters.knows(H1) and not filters.knows(H2)
    assert filters.hints_generation == 1
    filters.on_hints(HintFilter([H2], 9, "b"), "b")
    assert filters.knows(H1) and filters.knows(H2) and filters.hints_generation == 9
    # Only b is up: a's hints no longer pass. Nobody is up: nobody has named hints; the packets are
    # then dropped for want of a replica (capture/routing.py), not here.
    filters.set_live(["b"], 1.0)
    assert not filters.knows(H1) and filters.knows(H2)
    filters.set_live([], 2.0)
    assert filters.hints is None and filters.pairs == [] and filters.generation == -1


def test_a_replica_not_yet_up_keeps_its_filters_for_when_it_is() -> None:
    filters = replicated("a")
    filters.on_hints(HintFilter([H1], 1, "a"), "a")
    filters.on_hints(HintFilter([H2], 1, "b"), "b")
    filters.on_knocks(KnockFilter([[B, 2000]], 1, "b"), 1.0, "b")
    assert not filters.knows(H2) and filters.pairs == [] and not filters.due(1.0)
    filters.set_live(["a", "b"], 1.5)
    assert filters.knows(H2) and filters.due(1.5) and attach(filters) == [(B, 2000)]


def test_a_bad_message_from_one_replica_leaves_the_others_alone() -> None:
    filters = replicated("a", "b")
    filters.on_knocks(KnockFilter([[A, 1000]], 1, "a"), 1.0, "a")
    filters.on_knocks(KnockFilter([[B, 2000]], 1, "b"), 1.0, "b")
    assert not filters.on_knocks(KnockFilter([["not an address", 1]], 2, "a"), 1.1, "a")
    assert not filters.on_hints(HintFilter([b"short"], 2, "b"), "b")
    assert filters.pairs == [(A, 1000), (B, 2000)] and filters.hints is None


def test_one_auth_is_replica_empty_and_always_live() -> None:
    """No [replicas]: the messages count as the one auth's whatever replica they name (as before)."""
    filters = Filters(atomic=True)
    assert filters.live == frozenset({""})
    filters.on_knocks(KnockFilter([[A, 1000], [A, 1000]], 4, "auth-a"), 1.0)
    assert filters.pairs == [(A, 1000), (A, 1000)] and filters.generation == 4  # exactly as auth sent them
