"""Gate's door openers: with several auth replicas, each one's DoorSet and DoorClose concern its
own doors; with one auth, everything is as before replicas.

Read as scripts: what the kernel holds and a replica's command go in, the doors to spare (or a refusal)
come out.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynknock.gate import core
from dynknock.gate.core import GateSettings, Opener, Openers

NOW = 1_700_000_000_000
CLAIM_MS = 32_000  # a window and the slack
REPLICAS = frozenset({"auth@a", "auth@b"})
A, B = Opener("auth@a", b"\x00a1"), Opener("auth@b", b"\x00b1")
A_AGAIN = Opener("auth@a", b"\x00a2")  # replica a reconnected, or restarted: the same key, another identity
ONE = Opener("", b"\x00\x01")  # the one auth of a gate without replicas
KA1, KA2, KB1, KB2 = ("198.18.0.2", 41001), ("198.18.0.2", 41002), ("198.18.0.3", 41011), ("198.18.0.3", 41012)
UNTIL = NOW + 30_000


def replicated() -> Openers:
    openers = Openers(REPLICAS, CLAIM_MS)
    openers.opened(KA1, A, "a1", UNTIL)
    openers.opened(KA2, A, "a2", UNTIL)
    openers.opened(KB1, B, "b1", UNTIL)
    openers.opened(KB2, B, "b2", UNTIL)
    return openers


# --- a replica's DoorSet judges its own doors ------------------------------------------------------------


def test_a_replicas_door_set_empties_its_own_unlisted_doors_and_spares_the_others() -> None:
    openers = replicated()
    held = {KA1, KA2, KB1, KB2}
    # a lists KA1 only: KA2 is a's and goes; b's doors, unlisted by a, stay.
    assert openers.on_door_set(A, {KA1: "a1"}, held, NOW) == {KB1, KB2}
    # b lists nothing: its own doors go, a's stay.
    assert openers.on_door_set(B, {}, held, NOW) == {KA1, KA2}


def test_a_dead_replicas_doors_are_spared_by_every_other_door_set_until_their_records_end() -> None:
    openers = replicated()
    held = {KA1, KA2, KB1}
    for second in range(30):  # b's DoorSet every second while a is dead: a's doors stay
        assert openers.on_door_set(B, {KB1: "b1"}, held, NOW + second * 1000) == {KA1, KA2}
    # Past its end the kernel has dropped the element itself; a record that outlived it spares nothing.
    assert openers.owner(KA1, UNTIL + 1) is None


def test_a_replica_that_comes_back_lists_only_its_new_doors_and_its_old_ones_are_emptied() -> None:
    openers = replicated()
    ka3 = ("198.18.0.2", 41003)
    openers.opened(ka3, A_AGAIN, "a3", UNTIL)  # the new process opened one door
    spared = openers.on_door_set(A_AGAIN, {ka3: "a3"}, {KA1, KA2, ka3, KB1}, NOW)
    assert spared == {KB1}  # KA1 and KA2 (the old process's) are not spared: emptied, as for one auth


def test_the_door_set_feeds_the_kernels_reconcile() -> None:
    """What the gate's shell does with the answer: empty what the kernel holds beyond listed and spared."""
    settings = GateSettings(table="dynknock", door_port_low=40000, door_port_high=49999, window_seconds=30,
                            stealth=True)
    held = {core.Held("ronce4", *KA1), core.Held("ronce4", *KA2), core.Held("rmany4", *KB1)}
    openers = replicated()
    listed = {KA1: "a1"}
    keep = set(listed) | openers.on_door_set(A, listed, {(h.address, h.port) for h in held}, NOW)
    scripts = core.reconcile(settings, held, keep)
    assert len(scripts) == 1 and "198.18.0.2 . 41002" in scripts[0]  # a's unlisted door, nothing of b's


# --- doors the gate knows no opener of (the gate restarted) ----------------------------------------------


def test_after_a_gate_restart_a_door_is_claimed_by_the_replica_that_lists_it() -> None:
    openers = Openers(REPLICAS, CLAIM_MS)  # the new gate process: the kernel still holds four doors
    held = {KA1, KA2, KB1, KB2}
    # b speaks first and lists its two: they are b's now; a's, unknown, are spared (a was not heard).
    assert openers.on_door_set(B, {KB1: "b1", KB2: "b2"}, held, NOW) == {KA1, KA2}
    assert openers.owner(KB1, NOW) == core.Owned(B, "b1", NOW + CLAIM_MS)
    # a lists KA1 only: it claims KA1; KA2 is listed by no replica, every replica has been heard: emptied.
    assert openers.on_door_set(A, {KA1: "a1"}, held, NOW + 100) == {KB1, KB2}
    # From now on each replica's DoorSet judges its own, and b may not close a's.
    assert openers.on_door_set(B, {}, {KA1, KB1, KB2}, NOW + 200) == {KA1}
    assert openers.refusal(KA1, "auth@b", NOW + 200) == "the door is auth@a's, not auth@b's"


def test_after_a_gate_restart_an_unknown_door_waits_while_a_replica_is_silent() -> None:
    openers = Openers(REPLICAS, CLAIM_MS)
    held = {KA1, KB1}
    for second in range(40):  # a is dead: b's DoorSets never empty the door that may be a's
        assert openers.on_door_set(B, {KB1: "b1"}, held, NOW + second * 1000) == {KA1}


def test_a_listed_door_of_another_replica_is_not_claimed() -> None:
    openers = replicated()
    openers.on_door_set(B, {KA1: "a1", KB1: "b1"}, {KA1, KB1}, NOW)  # a confused b lists a's door
    owned = openers.owner(KA1, NOW)
    assert owned is not None and owned.opener == A


# --- DoorClose and DoorOpen of another replica's door -------------------------------------------------------


def test_a_replica_may_not_close_or_take_another_replicas_door() -> None:
    openers = replicated()
    assert openers.refusal(KA1, "auth@a", NOW) == ""
    assert openers.refusal(KA1, "auth@b", NOW) == "the door is auth@a's, not auth@b's"
    assert openers.refusal(("198.18.0.9", 41999), "auth@b", NOW) == ""  # no one's: not refused
    openers.closed(KA1)
    assert openers.refusal(KA1, "auth@b", NOW) == ""
    assert openers.refusal(KA2, "auth@b", UNTIL + 1) == ""  # past its end the kernel has dropped it


# --- one auth: as before replicas --------------------------------------------------------------------------

keys = st.tuples(st.sampled_from(["198.18.0.2", "198.18.0.3", "2001:db8::2"]), st.integers(41000, 41010))


@given(held=st.sets(keys, max_size=12), owned=st.sets(keys, max_size=12), listed=st.sets(keys, max_size=12))
def test_with_one_auth_a_door_set_empties_every_door_it_does_not_list(
        held: set[tuple[str, int]], owned: set[tuple[str, int]], listed: set[tuple[str, int]]) -> None:
    openers = Openers(frozenset(), CLAIM_MS)
    for key in owned:
        openers.opened(key, ONE, "d", UNTIL)
    assert openers.on_door_set(ONE, dict.fromkeys(listed, "d"), held, NOW) == set()
    # Another connection of the one auth (it restarted) is the same auth: nothing is refused.
    assert all(openers.refusal(key, "", NOW) == "" for key in held | owned)


def test_counts_per_opener_and_records_forgotten_after_their_end() -> None:
    openers = replicated()
    openers.opened(("198.18.0.4", 41020), B, "b3", NOW + 1000)
    assert openers.counts(NOW) == {"auth@a": 2, "auth@b": 3}
    assert openers.counts(NOW + 2000) == {"auth@a": 2, "auth@b": 2}
    openers.forget_expired(UNTIL + 1)
    assert len(openers) == 0 and openers.counts(UNTIL + 1) == {}
    one = Openers()
    one.opened(KA1, ONE, "d", UNTIL)
    assert one.counts(NOW) == {"auth": 1}
