"""MetricsModel folds relay events into figures (dynknock/metrics.py), rendered as Prometheus text."""

from __future__ import annotations

import time

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from dynknock.bus import Event
from dynknock.metrics import MetricsModel, ModelCollector


def render(model: MetricsModel) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(ModelCollector(model))
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in generate_latest(registry).decode().splitlines()
             if line.startswith("dynknock_"))}


def test_relay_bytes_are_summed_per_direction() -> None:
    model = MetricsModel()
    for up, down in ((10, 100_000), (3721, 3653)):
        model.apply(Event("relay.connection.closed", "relay", 1.0,
                          {"bytes_to_service": up, "bytes_to_client": down}))
    figures = render(model)
    assert figures['dynknock_relay_bytes_total{direction="to_service"}'] == 10 + 3721
    assert figures['dynknock_relay_bytes_total{direction="to_client"}'] == 100_000 + 3653


def test_relay_heartbeat_gives_open_connections_and_deferred_accepts() -> None:
    model = MetricsModel()
    assert render(model)["dynknock_relay_deferred_accepts_total"] == 0
    model.apply(Event("relay.alive", "relay", 1.0, {"doors": 3, "connections": 4, "deferred_accepts": 7}))
    figures = render(model)
    assert figures["dynknock_relay_connections_open"] == 4
    assert figures["dynknock_relay_deferred_accepts_total"] == 7
    model.apply(Event("relay.alive", "relay", 2.0, {"connections": True, "deferred_accepts": "x"}))  # junk
    assert render(model)["dynknock_relay_deferred_accepts_total"] == 0


def test_kernel_door_connections_and_bytes_from_the_gates_conntrack_events() -> None:
    model = MetricsModel()
    model.apply(Event("gate.connection.opened", "gate", 1.0, {"client": "198.18.0.2", "port": 64000}))
    for up, down in ((278, 5268), (1200, 310_000)):
        model.apply(Event("gate.connection.closed", "gate", 2.0, {"bytes_in": up, "bytes_out": down}))
    model.apply(Event("gate.connection.closed", "gate", 3.0, {"bytes_in": None, "bytes_out": True}))  # unknown
    figures = render(model)
    assert figures['dynknock_kernel_door_connections_total{event="opened"}'] == 1
    assert figures['dynknock_kernel_door_connections_total{event="closed"}'] == 3
    assert figures['dynknock_kernel_door_bytes_total{direction="to_service"}'] == 278 + 1200
    assert figures['dynknock_kernel_door_bytes_total{direction="to_client"}'] == 5268 + 310_000


def test_a_fleet_shows_each_gateways_stages_labelled_by_gateway() -> None:
    import time

    model = MetricsModel()
    now = time.time()
    model.apply(Event("gate.alive", "gate", now, {"gateway": "gw-a"}))
    model.apply(Event("gate.alive", "gate", now - 60, {"gateway": "gw-b"}))  # gw-b's gate went silent
    model.apply(Event("capture.alive", "capture", now, {"gateway": "gw-b"}))
    figures = render(model)
    assert figures['dynknock_gateway_stage_up{gateway="gw-a",stage="gate"}'] == 1.0
    assert figures['dynknock_gateway_stage_up{gateway="gw-b",stage="gate"}'] == 0.0
    assert figures['dynknock_gateway_stage_up{gateway="gw-b",stage="capture"}'] == 1.0
    assert not [name for name in render(MetricsModel()) if name.startswith("dynknock_gateway")]  # one host: none


def test_a_replica_exports_its_store_and_each_replica_as_each_gateway_sees_it() -> None:
    model = MetricsModel()
    model.apply(Event("auth.alive", "auth", time.time(), {"store": {
        "quorum": False, "members_up": 1, "users_current": False, "claims_refused": {"unavailable": 3}}}))
    model.apply(Event("capture.alive", "capture", time.time(), {"gateway": "gw-a", "replicas": {
        "auth-a": {"up": True}, "auth-b": {"up": False}}}))
    figures = render(model)
    assert figures["dynknock_store_quorum"] == 0 and figures["dynknock_store_members_up"] == 1
    assert figures["dynknock_store_users_current"] == 0
    assert figures['dynknock_store_claims_refused_total{kind="unavailable"}'] == 3
    assert figures['dynknock_replica_up{gateway="gw-a",replica="auth-a"}'] == 1
    assert figures['dynknock_replica_up{gateway="gw-a",replica="auth-b"}'] == 0


def test_one_host_exports_no_store_figures() -> None:
    model = MetricsModel()
    model.apply(Event("auth.alive", "auth", time.time(), {"rejections": {}}))
    assert not [name for name in render(model) if "store" in name or "replica" in name]
