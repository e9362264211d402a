"""knock-admin status over a fleet: one screen, every gateway by name."""

from __future__ import annotations

from dynknock import bus
from dynknock.status import Summary, render


def alive(stage: str, **fields: object) -> bus.Event:
    return bus.Event(f"{stage}.alive", stage, 0.0, dict(fields))


def test_each_gateway_is_shown_with_its_own_stages_and_doors_name_their_gateway() -> None:
    summary = Summary()
    summary.apply(alive("auth", doors=[{"user": "alice", "client": "198.18.0.2", "port": 63001,
                                        "expires_ms": 30_000, "gateway": "gw-b"}]))
    for stage in ("capture", "gate", "relay"):
        summary.apply(alive(stage, gateway="gw-a"))
    summary.apply(alive("capture", gateway="gw-b"))
    text = render(summary, 0)
    assert "  gateway gw-a: capture up  gate up  relay up" in text.splitlines()
    assert "  gateway gw-b: capture up  gate DOWN  relay DOWN" in text.splitlines()
    assert "port 63001    30 s left  at gw-b" in text


def test_one_host_shows_no_gateway_lines() -> None:
    summary = Summary()
    for stage in ("capture", "auth", "gate", "relay"):
        summary.apply(alive(stage))
    assert not [line for line in render(summary, 0).splitlines() if "gateway" in line]


def test_a_gateways_capture_without_a_knock_filter_from_auth_is_waiting() -> None:
    summary = Summary()
    summary.apply(alive("capture", gateway="gw-a", filter_generation=-1))
    assert "  gateway gw-a: capture waiting  gate DOWN  relay DOWN" in render(summary, 0).splitlines()
    summary.apply(alive("capture", gateway="gw-a", filter_generation=0))
    assert "  gateway gw-a: capture up  gate DOWN  relay DOWN" in render(summary, 0).splitlines()


# --- auth replicas on etcd ---------------------------------------------------------------


def test_a_replica_shows_itself_its_store_and_each_replica_as_the_gateways_see_them() -> None:
    summary = Summary()
    summary.apply(alive("auth", replica="auth-a", store={
        "quorum": True, "members_up": 3, "members": 3, "leader": "https://198.18.231.1:2379",
        "users_revision_taken": 12, "users_current": True, "claims_refused": {}, "advisories": ["CVE-X (...)"]}))
    summary.apply(alive("capture", gateway="gw-a", replicas={"auth-a": {"up": True}, "auth-b": {"up": False}}))
    lines = render(summary, 0).splitlines()
    assert "This is replica auth-a." in lines
    assert "  replicas as gateway gw-a's capture sees them: auth-a up  auth-b down" in lines
    assert ("Store: etcd, quorum (3 of 3 members reachable), leader https://198.18.231.1:2379, "
            "users revision 12") in lines
    assert "  advisory: CVE-X (...)" in lines


def test_a_store_without_quorum_says_every_knock_is_refused() -> None:
    summary = Summary()
    summary.apply(alive("auth", replica="auth-a", store={
        "quorum": False, "members_up": 1, "members": 3, "down": ["https://198.18.231.2:2379"],
        "users_current": False, "users_age_s": 12.4, "claims_refused": {"unavailable": 4}}))
    lines = render(summary, 0).splitlines()
    assert "Store: etcd quorum lost (1 of 3 members reachable): every knock is refused until it returns" in lines
    assert "  the users are not proven current (last proof 12 s ago): every knock is refused" in lines
    assert "  claims refused: unavailable 4" in lines
    assert "  unreachable: https://198.18.231.2:2379" in lines


def test_one_host_shows_no_store_line() -> None:
    summary = Summary()
    summary.apply(alive("auth"))
    assert not [line for line in render(summary, 0).splitlines() if "Store" in line or "replica" in line]
