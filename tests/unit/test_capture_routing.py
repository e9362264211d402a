"""capture/routing.py: which auth replica gets a client's packets, and when a replica counts as alive.

Plain values and a passed-in clock: no zmq, no sleep. The fairness figures are exact (the hash is a
fixed function), so the tolerances below are checks of the spread, not of luck.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from dynknock.capture.routing import (
    DISCONNECTED,
    FILTERS,
    PACKETS,
    SILENT,
    UP,
    Change,
    Router,
    choose,
    packed,
)

ADDRESSES = 10_000
# Each replica's share of ADDRESSES is within this fraction of ADDRESSES / replicas. With 5 replicas
# a fair share is 2,000 and a binomial draw's standard deviation is 40: 10% (200) is 5 of them.
SHARE_TOLERANCE = 0.10
FAILOVER_S = 1.5


def ipv4_clients(count: int = ADDRESSES) -> list[str]:
    """Consecutive addresses of 198.18.0.0/15 from 198.18.0.1: neighbours must spread as well as any."""
    first = int(ipaddress.IPv4Address("198.18.0.1"))
    return [str(ipaddress.IPv4Address(first + i)) for i in range(count)]


def ipv6_clients(count: int = ADDRESSES) -> list[str]:
    """Addresses of 2001:db8::/32 that differ in one /64's last bits, and others in their prefix only."""
    base = int(ipaddress.IPv6Address("2001:db8::"))
    half = count // 2
    near = [str(ipaddress.IPv6Address(base + 1 + i)) for i in range(half)]
    prefixes = [str(ipaddress.IPv6Address(base + ((i + 1) << 64) + 1)) for i in range(count - half)]
    return near + prefixes


def shares(replicas: list[str], clients: list[str]) -> Counter[str | None]:
    return Counter(choose(replicas, client) for client in clients)


def up_router(*names: str, now: float = 0.0) -> Router:
    """A router whose replicas are all up at `now` (both links connected, filters heard)."""
    router = Router(names, FAILOVER_S, now)
    for name in names:
        router.connected(name, PACKETS, now)
        router.connected(name, FILTERS, now)
        router.heard(name, now)
    assert router.live == tuple(sorted(names))
    return router


# --- the hash ------------------------------------------------------------------------------------------------


def test_a_client_always_gets_the_same_replica_whatever_the_order_of_the_list() -> None:
    for client in ipv4_clients(200) + ipv6_clients(200):
        first = choose(["a", "b", "c"], client)
        assert first is not None
        assert choose(["c", "a", "b"], client) == first and choose(("b", "c", "a"), client) == first


def test_text_and_packed_forms_of_an_address_are_one_client() -> None:
    assert packed("198.18.0.7") == bytes([198, 18, 0, 7])
    assert packed("2001:db8::1") == packed("2001:0db8:0000:0000:0000:0000:0000:0001")
    for client in ["198.18.3.4", "2001:db8::7", "2001:db8:1:2:3:4:5:6"]:
        assert choose(["a", "b", "c"], client) == choose(["a", "b", "c"], packed(client))
    with pytest.raises(ValueError):
        packed(b"\x01\x02\x03")  # neither 4 nor 16 bytes
    with pytest.raises(OSError):
        packed("not an address")


def test_no_replica_no_choice() -> None:
    assert choose([], "198.18.0.1") is None


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("count", [2, 3, 5])
def test_every_replica_gets_a_fair_share_of_ten_thousand_clients(family: str, count: int) -> None:
    clients = ipv4_clients() if family == "ipv4" else ipv6_clients()
    replicas = [f"auth-{chr(ord('a') + i)}" for i in range(count)]
    got = shares(replicas, clients)
    fair = ADDRESSES / count
    assert set(got) == set(replicas)
    for replica in replicas:
        assert abs(got[replica] - fair) <= SHARE_TOLERANCE * fair, (replica, dict(got))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_replica_gone_moves_only_its_clients_and_its_return_moves_them_back(family: str) -> None:
    clients = ipv4_clients() if family == "ipv4" else ipv6_clients()
    everyone = ["a", "b", "c"]
    before = {client: choose(everyone, client) for client in clients}
    without_b = {client: choose(["a", "c"], client) for client in clients}
    moved = {client for client in clients if before[client] != without_b[client]}
    assert moved == {client for client in clients if before[client] == "b"}  # b's, and only b's
    # b's clients spread over both others, not all onto one.
    spread = Counter(without_b[client] for client in moved)
    assert spread["a"] > 0.4 * len(moved) and spread["c"] > 0.4 * len(moved)
    # b returns: exactly the first map again.
    assert {client: choose(everyone, client) for client in clients} == before
    # A fourth replica takes a share from each, and moves nobody between the first three.
    grown = {client: choose([*everyone, "d"], client) for client in clients}
    assert all(grown[client] in (before[client], "d") for client in clients)
    assert abs(sum(1 for r in grown.values() if r == "d") - ADDRESSES / 4) <= SHARE_TOLERANCE * ADDRESSES / 4


# --- the replicas' state --------------------------------------------------------------------------------------


def test_a_replica_is_up_only_with_both_links_and_a_filter_heard() -> None:
    router = Router(["a", "b"], FAILOVER_S, 0.0)
    assert list(router.live) == [] and router.route("198.18.0.1") is None and router.dropped == 1
    assert router.connected("a", PACKETS, 0.1) is None
    assert router.heard("a", 0.2) is None  # its filters link has no handshake yet
    assert router.connected("a", FILTERS, 0.3) == Change("a", True, UP)
    assert list(router.live) == ["a"]
    assert router.route("198.18.0.1") == "a" and router.replicas["a"].routed == 1
    # A filter heard before the links are up counts only while it is fresh.
    assert router.heard("b", 0.3) is None
    assert router.connected("b", PACKETS, 0.3) is None
    assert router.connected("b", FILTERS, 0.3 + FAILOVER_S) is None  # too late: silent since
    assert router.heard("b", 2.0) == Change("b", True, UP) and list(router.live) == ["a", "b"]


def test_a_closed_link_is_down_at_once_and_up_again_only_once_it_speaks() -> None:
    router = up_router("a", "b")
    assert router.disconnected("a", PACKETS, 1.0) == Change("a", False, DISCONNECTED, PACKETS)
    assert list(router.live) == ["b"]
    assert router.disconnected("a", FILTERS, 1.0) is None  # the second link of the same death: said once
    assert router.replicas["a"].why == DISCONNECTED and router.replicas["a"].since == 1.0
    router.connected("a", PACKETS, 1.2)
    # The handshakes of its next life are not enough: what it said before it died does not count.
    assert router.connected("a", FILTERS, 1.2) is None and list(router.live) == ["b"]
    assert router.heard("a", 1.3) == Change("a", True, UP) and list(router.live) == ["a", "b"]


def test_a_silent_replica_goes_down_after_failover_after_s_and_not_before() -> None:
    router = up_router("a", "b", now=10.0)
    router.heard("b", 10.5)
    assert router.expire(10.0 + FAILOVER_S - 0.001) == []
    assert router.wait_ms(10.0) == int(FAILOVER_S * 1000) + 1  # the loop wakes for a's deadline
    assert router.expire(10.0 + FAILOVER_S) == [Change("a", False, SILENT)]
    assert list(router.live) == ["b"] and router.replicas["a"].why == SILENT
    assert router.expire(10.5 + FAILOVER_S) == [Change("b", False, SILENT)]
    assert list(router.live) == [] and router.wait_ms(20.0) == -1
    # Silent, not disconnected: its next filter brings it back (the host was only cut off a while).
    assert router.heard("a", 30.0) == Change("a", True, UP)


def test_routing_follows_the_live_replicas_and_counts_what_each_got() -> None:
    router = up_router("a", "b", "c")
    clients = ipv4_clients(3000)
    first = {client: router.route(client) for client in clients}
    assert first == {client: choose(["a", "b", "c"], client) for client in clients}
    router.disconnected("c", PACKETS, 1.0)
    second = {client: router.route(client) for client in clients}
    assert all(second[c] == first[c] for c in clients if first[c] != "c")
    assert all(second[c] in ("a", "b") for c in clients)
    counted = Counter(first.values()) + Counter(second.values())
    assert {name: router.replicas[name].routed for name in "abc"} == {name: counted[name] for name in "abc"}
    router.disconnected("a", PACKETS, 1.0)
    router.disconnected("b", FILTERS, 1.0)
    assert router.route(clients[0]) is None and router.dropped == 1  # fail closed: no replica, no packet


def test_the_heartbeat_figures_say_state_why_since_and_routed() -> None:
    router = up_router("a", "b", now=100.0)
    router.route("198.18.0.1")
    router.disconnected("b", FILTERS, 101.0)
    figures = router.figures(now=102.0, wall=1_000_002.0)
    routed = {name: router.replicas[name].routed for name in ("a", "b")}
    assert figures == {"a": {"up": True, "why": UP, "since": 1_000_000.0, "routed": routed["a"]},
                       "b": {"up": False, "why": DISCONNECTED, "since": 1_000_001.0, "routed": routed["b"]}}


def test_a_router_needs_a_replica() -> None:
    with pytest.raises(ValueError):
        Router([], FAILOVER_S, 0.0)
