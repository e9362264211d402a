"""Relay's pure core: which commands become doors, who a door lets in, when it closes.

Read as scripts: a command or a connection goes in, a verdict comes out.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynknock.bus import DoorOpen
from dynknock.relay import core
from dynknock.relay.core import Door, DoorTable, Invalid, RelaySettings, Verdict

NOW = 1_700_000_000_000
SSH = ("127.0.0.1", 22)
WEB = ("::1", 8080)
SETTINGS = RelaySettings(door_port_low=40000, door_port_high=49999, window_seconds=30,
                         targets=frozenset({SSH, WEB}))
WINDOW_MS = SETTINGS.window_seconds * 1000
CLIENT4 = "203.0.113.7"
CLIENT6 = "2001:db8::7"


def door_open(client: str = CLIENT4, port: int = 40001, target: tuple[str, int] = SSH,
              expires_at_ms: int = NOW + WINDOW_MS, door_id: str = "d1", single_use: bool = True,
              user: str = "alice") -> DoorOpen:
    return DoorOpen(door_id=door_id, user=user, client=client, port=port, target_host=target[0],
                    target_port=target[1], expires_at_ms=expires_at_ms, single_use=single_use)


def table_with(*commands: DoorOpen) -> DoorTable:
    table = DoorTable(SETTINGS)
    for command in commands:
        table.add(table.validate(command, NOW))
    return table


# --- validate ------------------------------------------------------------------------------


def test_validate_makes_a_door_from_a_good_command() -> None:
    door = DoorTable(SETTINGS).validate(door_open(), NOW)
    assert door == Door(door_id="d1", user="alice", client=ipaddress.IPv4Address(CLIENT4), port=40001,
                        target=SSH, expires_at_ms=NOW + WINDOW_MS, single_use=True, accepted=0)


@pytest.mark.parametrize("client,expected", [
    (CLIENT6, ipaddress.IPv6Address(CLIENT6)),
    ("::ffff:203.0.113.7", ipaddress.IPv4Address(CLIENT4)),  # compared as the IPv4 it is
    ("2001:DB8::7", ipaddress.IPv6Address(CLIENT6)),
])
def test_validate_normalises_the_client(client: str, expected: object) -> None:
    assert DoorTable(SETTINGS).validate(door_open(client=client), NOW).client == expected


def test_validate_does_not_add() -> None:
    table = DoorTable(SETTINGS)
    door = table.validate(door_open(), NOW)
    assert len(table) == 0 and table.get("d1") is None
    table.add(door)
    assert len(table) == 1 and table.get("d1") is door and table.doors() == [door]


@pytest.mark.parametrize("target", [("127.0.0.1", 23), ("127.0.0.2", 22), ("::1", 22), ("localhost", 22),
                                    ("10.0.0.1", 22), ("127.0.0.1", 8080)])
def test_validate_refuses_targets_that_are_not_configured(target: tuple[str, int]) -> None:
    with pytest.raises(Invalid, match="is not a configured service"):
        DoorTable(SETTINGS).validate(door_open(target=target), NOW)


def test_validate_accepts_every_configured_target() -> None:
    for target in (SSH, WEB):
        assert DoorTable(SETTINGS).validate(door_open(target=target), NOW).target == target


@pytest.mark.parametrize("port", [0, 22, 39999, 50000, 65535, 70000, -1])
def test_validate_refuses_ports_outside_the_range(port: int) -> None:
    with pytest.raises(Invalid, match="outside the door range"):
        DoorTable(SETTINGS).validate(door_open(port=port), NOW)


@pytest.mark.parametrize("port", [40000, 49999])
def test_validate_accepts_the_range_edges(port: int) -> None:
    assert DoorTable(SETTINGS).validate(door_open(port=port), NOW).port == port


@pytest.mark.parametrize("client", ["", "alice", "203.0.113.256", "203.0.113.7/32", "[2001:db8::7]"])
def test_validate_refuses_clients_that_are_not_addresses(client: str) -> None:
    with pytest.raises(Invalid, match="not an IP address"):
        DoorTable(SETTINGS).validate(door_open(client=client), NOW)


@pytest.mark.parametrize("late_ms", [0, 1, 60_000])
def test_validate_refuses_expired_commands(late_ms: int) -> None:
    with pytest.raises(Invalid, match=f"arrived {late_ms} ms after"):
        DoorTable(SETTINGS).validate(door_open(expires_at_ms=NOW - late_ms), NOW)


def test_validate_refuses_expiry_beyond_the_window() -> None:
    limit = WINDOW_MS + core.TIMEOUT_SLACK_MS
    assert DoorTable(SETTINGS).validate(door_open(expires_at_ms=NOW + limit), NOW).expires_at_ms == NOW + limit
    with pytest.raises(Invalid, match="beyond the window"):
        DoorTable(SETTINGS).validate(door_open(expires_at_ms=NOW + limit + 1), NOW)


def test_validate_refuses_a_port_that_is_already_a_door() -> None:
    table = table_with(door_open(door_id="d1", port=40001))
    with pytest.raises(Invalid, match="port 40001 is already a door"):
        table.validate(door_open(door_id="d2", port=40001, client=CLIENT6), NOW)
    # Another port is fine, and so is the same command again (a retried open).
    assert table.validate(door_open(door_id="d2", port=40002), NOW).port == 40002
    assert table.validate(door_open(door_id="d1", port=40001), NOW).door_id == "d1"


def test_a_removed_door_frees_its_port() -> None:
    table = table_with(door_open(door_id="d1", port=40001))
    door = table.get("d1")
    assert door is not None
    table.remove(door)
    assert len(table) == 0 and table.get("d1") is None
    assert table.validate(door_open(door_id="d2", port=40001), NOW).door_id == "d2"
    table.remove(door)  # removing twice is harmless
    assert len(table) == 0


# --- on_connection -----------------------------------------------------------------------------


@pytest.mark.parametrize("client,peer", [
    (CLIENT4, CLIENT4),
    (CLIENT4, "::ffff:203.0.113.7"),  # a dual-stack listener reports IPv4 peers mapped
    (CLIENT4, "::FFFF:cb00:7107"),
    ("::ffff:203.0.113.7", CLIENT4),
    (CLIENT6, CLIENT6),
    (CLIENT6, "2001:0db8:0000:0000:0000:0000:0000:0007"),
    ("fe80::1", "fe80::1%eth0"),  # a link-local peer comes with its scope
])
def test_on_connection_accepts_the_client_address(client: str, peer: str) -> None:
    table = table_with(door_open(client=client, single_use=False))
    verdict, door = table.on_connection(40001, peer)
    assert verdict is Verdict.ACCEPT
    assert door is table.get("d1") and door is not None and door.accepted == 1


@pytest.mark.parametrize("client,peer", [
    (CLIENT4, "203.0.113.8"),
    (CLIENT4, "::ffff:203.0.113.8"),
    (CLIENT4, "::203.0.113.7"),  # IPv4-compatible, not IPv4-mapped: a different address
    (CLIENT4, "2002:cb00:7107::1"),  # 6to4 of the client: still not the client
    (CLIENT4, "127.0.0.1"),
    (CLIENT6, "2001:db8::8"),
    (CLIENT6, "::ffff:203.0.113.7"),
    (CLIENT6, CLIENT4),
    (CLIENT4, "not an address"),
    (CLIENT4, ""),
])
def test_on_connection_refuses_other_peers(client: str, peer: str) -> None:
    table = table_with(door_open(client=client))
    verdict, door = table.on_connection(40001, peer)
    assert verdict is Verdict.REFUSE
    assert door is table.get("d1") and door is not None
    assert door.accepted == 0
    assert not table.should_close(door, NOW)  # a stranger does not use up a single-use door


def test_on_connection_unknown_port() -> None:
    table = table_with(door_open(port=40001))
    assert table.on_connection(40002, CLIENT4) == (Verdict.UNKNOWN, None)
    assert DoorTable(SETTINGS).on_connection(40001, CLIENT4) == (Verdict.UNKNOWN, None)


def test_on_connection_after_remove_is_unknown() -> None:
    table = table_with(door_open())
    door = table.get("d1")
    assert door is not None
    table.remove(door)
    assert table.on_connection(40001, CLIENT4) == (Verdict.UNKNOWN, None)


def test_doors_are_independent() -> None:
    table = table_with(door_open(door_id="d1", port=40001, client=CLIENT4),
                       door_open(door_id="d2", port=40002, client=CLIENT6, target=WEB, user="bob"))
    assert table.on_connection(40001, CLIENT6)[0] is Verdict.REFUSE
    assert table.on_connection(40002, CLIENT4)[0] is Verdict.REFUSE
    verdict, door = table.on_connection(40002, CLIENT6)
    assert verdict is Verdict.ACCEPT and door is not None and door.user == "bob" and door.target == WEB
    first = table.get("d1")
    assert first is not None and first.accepted == 0


# --- closing --------------------------------------------------------------------------------------


def test_single_use_door_closes_after_the_first_accept() -> None:
    table = table_with(door_open(single_use=True))
    door = table.get("d1")
    assert door is not None
    assert not table.should_close(door, NOW)
    assert table.expired(NOW) == []
    assert table.on_connection(40001, CLIENT4)[0] is Verdict.ACCEPT
    assert table.should_close(door, NOW)
    assert table.expired(NOW) == [door]


def test_multi_use_door_stays_open_through_its_window() -> None:
    table = table_with(door_open(single_use=False))
    door = table.get("d1")
    assert door is not None
    for count in (1, 2, 3):
        assert table.on_connection(40001, CLIENT4)[0] is Verdict.ACCEPT
        assert door.accepted == count
    assert not table.should_close(door, NOW + WINDOW_MS - 1)
    assert table.expired(NOW + WINDOW_MS - 1) == []
    assert table.should_close(door, NOW + WINDOW_MS)


@pytest.mark.parametrize("single_use", [True, False])
def test_window_expiry(single_use: bool) -> None:
    table = table_with(door_open(single_use=single_use))
    door = table.get("d1")
    assert door is not None
    end = NOW + WINDOW_MS
    assert not table.should_close(door, end - 1)
    assert table.should_close(door, end)
    assert table.should_close(door, end + 10**6)
    assert table.expired(end - 1) == []
    assert table.expired(end) == [door]


def test_expired_lists_exactly_the_doors_to_close() -> None:
    table = table_with(door_open(door_id="a", port=40001, expires_at_ms=NOW + 1000),
                       door_open(door_id="b", port=40002, expires_at_ms=NOW + 5000),
                       door_open(door_id="c", port=40003, expires_at_ms=NOW + 20_000, client=CLIENT6),
                       door_open(door_id="d", port=40004, expires_at_ms=NOW + 20_000, single_use=False))
    assert table.on_connection(40003, CLIENT6)[0] is Verdict.ACCEPT  # c: used up
    assert table.on_connection(40004, CLIENT4)[0] is Verdict.ACCEPT  # d: may be used again
    assert {d.door_id for d in table.expired(NOW)} == {"c"}
    assert {d.door_id for d in table.expired(NOW + 1000)} == {"a", "c"}
    assert {d.door_id for d in table.expired(NOW + 5000)} == {"a", "b", "c"}
    assert {d.door_id for d in table.expired(NOW + 20_000)} == {"a", "b", "c", "d"}
    # expired() only reports; the caller removes.
    assert len(table) == 4
    for door in table.expired(NOW + 5000):
        table.remove(door)
    assert [d.door_id for d in table.doors()] == ["d"]


def test_expired_on_an_empty_table() -> None:
    assert DoorTable(SETTINGS).expired(NOW) == []


# --- normalise_peer -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1", ipaddress.IPv4Address("192.0.2.1")),
    ("::ffff:192.0.2.1", ipaddress.IPv4Address("192.0.2.1")),
    ("2001:db8::1", ipaddress.IPv6Address("2001:db8::1")),
    ("fe80::1%eth0", ipaddress.IPv6Address("fe80::1")),
    ("::1", ipaddress.IPv6Address("::1")),
])
def test_normalise_peer(text: str, expected: object) -> None:
    assert core.normalise_peer(text) == expected


@given(st.ip_addresses(v=4))
def test_every_ipv4_peer_is_its_own_mapped_form(address: ipaddress.IPv4Address) -> None:
    assert core.normalise_peer(f"::ffff:{address}") == address
    assert core.normalise_peer(str(address)) == address


@given(client=st.ip_addresses(), peer=st.ip_addresses())
def test_only_the_client_is_accepted(client: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                     peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    table = table_with(door_open(client=str(client), single_use=False))
    verdict, _ = table.on_connection(40001, str(peer))
    same = core.normalise_peer(str(client)) == core.normalise_peer(str(peer))
    assert verdict is (Verdict.ACCEPT if same else Verdict.REFUSE)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        SETTINGS.window_seconds = 60  # type: ignore[misc]
    assert replace(SETTINGS, window_seconds=60).window_seconds == 60


# --- listener refusals and the descriptor budget ----------------------------------------------


@pytest.mark.parametrize("number,prefix", [
    (errno.EADDRINUSE, "address_in_use: "),  # auth moves the door to another port on exactly this prefix
    (errno.EMFILE, "out_of_descriptors: "),
    (errno.ENFILE, "out_of_descriptors: "),
    (errno.EACCES, "listener failed: "),
])
def test_listener_refusal_names_the_cause(number: int, prefix: str) -> None:
    detail = core.listener_refusal(OSError(number, os.strerror(number)))
    assert detail.startswith(prefix) and os.strerror(number) in detail


def test_the_address_in_use_prefix_is_the_one_auth_reads() -> None:
    from dynknock.auth.engine import ADDRESS_IN_USE
    assert core.ADDRESS_IN_USE == ADDRESS_IN_USE


def test_budget_keeps_the_reserve_and_room_for_connections() -> None:
    budget = core.DescriptorBudget(limit=128, baseline=12)
    free = 128 - 12 - core.RESERVED_FDS
    # Doors stop while DOOR_ROOM_CONNECTIONS connections still fit.
    doors = max(d for d in range(free + 1) if budget.can_open_door(d - 1, 0))
    assert doors == free - core.CONNECTION_FDS * core.DOOR_ROOM_CONNECTIONS
    assert not budget.can_open_door(doors, 0)
    for connections in range(core.DOOR_ROOM_CONNECTIONS):
        assert budget.can_accept(doors, connections)
    assert not budget.can_accept(doors, core.DOOR_ROOM_CONNECTIONS)
    assert budget.can_accept(0, free // core.CONNECTION_FDS - 1)
    assert not budget.can_accept(0, free // core.CONNECTION_FDS)


def test_budget_below_the_reserve_allows_nothing() -> None:
    budget = core.DescriptorBudget(limit=40, baseline=12)
    assert not budget.can_open_door(0, 0) and not budget.can_accept(0, 0)
