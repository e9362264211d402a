"""knock-admin status over a fleet: one screen, every gateway by name (issue 14)."""

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
