"""Relay's doors and the auth replicas that opened them.

Each door belongs to the replica whose key opened it: only that replica's DoorSet or DoorClose closes it,
no other replica's command takes its port or its id; with one auth (opener "") all is as before.
"""

from __future__ import annotations

import pytest

from dynknock.bus import DoorOpen
from dynknock.relay.core import DoorTable, Invalid, RelaySettings

NOW = 1_700_000_000_000
SETTINGS = RelaySettings(door_port_low=40000, door_port_high=49999, window_seconds=30,
                         targets=frozenset({("127.0.0.1", 22)}))


def door_open(door_id: str, port: int, client: str = "198.18.0.2") -> DoorOpen:
    return DoorOpen(door_id=door_id, user="alice", client=client, port=port, target_host="127.0.0.1",
                    target_port=22, expires_at_ms=NOW + 30_000, single_use=True)


def table_of(*doors: tuple[str, int, str]) -> DoorTable:
    table = DoorTable(SETTINGS)
    for door_id, port, opener in doors:
        table.add(table.validate(door_open(door_id, port), NOW, opener))
    return table


def test_a_door_remembers_its_opener() -> None:
    table = table_of(("a1", 40001, "auth@a"), ("b1", 40011, "auth@b"))
    assert [(d.door_id, d.opener) for d in table.doors()] == [("a1", "auth@a"), ("b1", "auth@b")]
    assert table.by_opener() == {"auth@a": 1, "auth@b": 1}
    assert table_of(("d1", 40001, "")).by_opener() == {"auth": 1}


def test_a_replicas_door_set_judges_only_its_own_doors() -> None:
    table = table_of(("a1", 40001, "auth@a"), ("a2", 40002, "auth@a"), ("b1", 40011, "auth@b"))
    assert [d.door_id for d in table.unknown_to("auth@a", {"a1"})] == ["a2"]
    assert table.unknown_to("auth@b", {"b1"}) == []
    # b does not list a's doors, and they are not b's to close; a back with nothing lists none of its own.
    assert [d.door_id for d in table.unknown_to("auth@b", set())] == ["b1"]
    assert [d.door_id for d in table.unknown_to("auth@a", set())] == ["a1", "a2"]


def test_with_one_auth_its_door_set_judges_every_door() -> None:
    table = table_of(("d1", 40001, ""), ("d2", 40002, ""))
    assert [d.door_id for d in table.unknown_to("", {"d2"})] == ["d1"]


def test_a_replica_may_close_its_own_door_only() -> None:
    table = table_of(("a1", 40001, "auth@a"))
    door = table.get("a1")
    assert door is not None
    assert table.close_refusal(door, "auth@a") == ""
    assert table.close_refusal(door, "auth@b") == "the door is auth@a's, not auth@b's"
    one = table_of(("d1", 40001, ""))
    only = one.get("d1")
    assert only is not None and one.close_refusal(only, "") == ""


def test_another_replica_takes_neither_the_port_nor_the_id_of_a_door() -> None:
    table = table_of(("a1", 40001, "auth@a"))
    # Its port: auth moves b's door elsewhere, as for a port a local socket holds.
    with pytest.raises(Invalid, match="^address_in_use: port 40001 is already a door of auth@a$"):
        table.validate(door_open("b1", 40001, client="198.18.0.3"), NOW, "auth@b")
    with pytest.raises(Invalid, match="door a1 is auth@a's, not auth@b's"):
        table.validate(door_open("a1", 40001), NOW, "auth@b")  # a's very command, replayed with b's key
    with pytest.raises(Invalid, match="door a1 is auth@a's"):
        table.validate(door_open("a1", 40002), NOW, "auth@b")
    # a's retried open of its own door is fine, as with one auth.
    assert table.validate(door_open("a1", 40001), NOW, "auth@a").opener == "auth@a"
