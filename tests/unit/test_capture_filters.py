"""capture/filters.py: what capture keeps about auth's filters and its admissions, and when it
attaches a new kernel filter. Plain values and a passed-in clock: no pcap, no zmq, no sleep."""

from __future__ import annotations

from dynknock.bus import HintFilter, KnockFilter
from dynknock.capture.fairness import Admissions
from dynknock.capture.filters import ADMITTED_WAIT_MS, IDLE_WAIT_MS, NARROW_AFTER_S, Filters

A, B = "198.18.0.2", "198.18.0.3"
H1, H2 = b"hint-one", b"hint-two"


def attach(filters: Filters) -> tuple[list[tuple[str, int]], list[str]]:
    """What the shell attaches when the filter is due: the pairs and the admitted sources."""
    attached = (list(filters.pairs), filters.admitted.sources())
    filters.installed("pairs")
    return attached


def test_before_auth_speaks_every_hint_passes_and_no_knock() -> None:
    filters = Filters(atomic=True)
    assert filters.knows(H1) and filters.generation == -1 and filters.pairs == []
    assert not filters.due(0.0) and filters.wait_ms(0.0) == IDLE_WAIT_MS


def test_live_hints_replace_the_set_once_per_generation_and_a_bad_one_is_refused() -> None:
    filters = Filters(atomic=True)
    assert filters.on_hints(HintFilter([H2], 1))
    assert filters.knows(H2) and not filters.knows(H1)
    assert filters.on_hints(HintFilter([H1], 1))  # the same generation again: nothing changes
    assert not filters.knows(H1)
    assert not filters.on_hints(HintFilter([b"short"], 2))
    assert filters.knows(H2) and filters.hints_generation == 1  # the old set stays


def test_a_new_pair_is_attached_at_once() -> None:
    filters = Filters(atomic=True)
    assert filters.on_knocks(KnockFilter([[A, 1000]], 1), 5.0)
    assert filters.due(5.0) and filters.wait_ms(5.0) == 0
    assert attach(filters) == ([(A, 1000)], [])
    assert not filters.due(5.0) and filters.changes == 1 and filters.generation == 1


def test_a_repeated_generation_changes_nothing_and_a_bad_pair_keeps_the_old_pairs() -> None:
    filters = Filters(atomic=True)
    filters.on_knocks(KnockFilter([[A, 1000]], 1), 5.0)
    attach(filters)
    assert filters.on_knocks(KnockFilter([[B, 2000]], 1), 6.0)  # auth's refresh of generation 1
    assert filters.pairs == [(A, 1000)] and not filters.due(6.0)
    assert not filters.on_knocks(KnockFilter([["not an address", 2000]], 2), 6.0)
    assert filters.pairs == [(A, 1000)] and filters.generation == 2 and not filters.due(6.0)


def test_a_narrowing_waits_for_a_widening_and_goes_with_it() -> None:
    filters = Filters(atomic=True)
    filters.on_knocks(KnockFilter([[A, 1000], [B, 2000]], 1), 5.0)
    attach(filters)
    filters.on_knocks(KnockFilter([[B, 2000]], 2), 6.0)  # A's knocks came: only narrows
    assert not filters.due(6.0)
    assert 0 < filters.wait_ms(6.0) <= NARROW_AFTER_S * 1000 + 1  # wakes for it, not IDLE_WAIT_MS later
    filters.on_knocks(KnockFilter([[B, 2000], [A, 1001]], 3), 6.01)  # a new knock: both at once
    assert filters.due(6.01)
    assert attach(filters) == ([(B, 2000), (A, 1001)], [])
    assert filters.changes == 2


def test_a_narrowing_alone_is_attached_by_its_time() -> None:
    filters = Filters(atomic=True)
    filters.on_knocks(KnockFilter([[A, 1000]], 1), 5.0)
    attach(filters)
    filters.on_knocks(KnockFilter([], 2), 6.0)
    assert not filters.due(6.0 + NARROW_AFTER_S / 2)
    assert filters.due(6.0 + NARROW_AFTER_S)
    assert attach(filters) == ([], [])


def test_a_p1_under_a_live_hint_admits_its_sender_until_auth_names_it() -> None:
    filters = Filters(atomic=True, admitted=Admissions(seconds=1.0, syns=3))
    filters.on_p1(A, H1, 5.0)  # auth has named no hints yet: no admission
    assert not filters.due(5.0) and len(filters.admitted) == 0
    filters.on_hints(HintFilter([H1], 1))
    filters.on_p1(A, H1, 5.0)
    assert filters.due(5.0) and attach(filters) == ([], [A])
    assert filters.wait_ms(5.0) == ADMITTED_WAIT_MS  # admissions run out on their own: look again soon
    filters.on_knocks(KnockFilter([[A, 1000]], 1), 5.1)  # auth read the P1: its exact pairs take over
    assert len(filters.admitted) == 0
    assert not filters.due(5.1)  # A passes already (admitted when attached): only narrows
    assert filters.due(5.1 + NARROW_AFTER_S) and attach(filters) == ([(A, 1000)], [])


def test_an_admission_ends_by_time_or_by_too_many_syns() -> None:
    filters = Filters(atomic=True, admitted=Admissions(seconds=1.0, syns=2))
    filters.on_hints(HintFilter([H1], 1))
    filters.on_p1(A, H1, 5.0)
    filters.on_p1(B, H1, 5.5)
    attach(filters)
    filters.on_syn(A, 5.6)
    assert not filters.due(5.6)
    filters.on_syn(A, 5.7)  # more SYNs than it may send: shut out now
    assert filters.due(5.7) and attach(filters) == ([], [B])
    filters.expire(6.4)
    assert not filters.due(6.4)
    filters.expire(6.5)
    assert filters.due(6.5) and attach(filters) == ([], [])


def test_without_an_atomic_swap_a_p1_admits_nobody() -> None:
    """libpcap's setfilter loses packets while it swaps (capture/bpf.py): not worth it per P1."""
    filters = Filters(atomic=False)
    filters.on_hints(HintFilter([H1], 1))
    filters.on_p1(A, H1, 5.0)
    assert not filters.due(5.0) and len(filters.admitted) == 0
