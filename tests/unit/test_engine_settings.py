"""The engine's settings from the server's config (auth/settings.py, engine_config).

Each setting the engine shares with the server's config is copied by its name, and one the file leaves
out has the same default on both sides. A fleet engine takes only packets bound to the gateway address
(versions 2 and 3) unless server.fleet_accepts_v1 lets version 1 in.
"""

from __future__ import annotations

from typing import Any

from dynknock import bus
from dynknock import config as dkconfig
from dynknock import protocol as proto
from dynknock.auth.engine import EngineConfig, engine_config
from tests.unit.engine_support import SERVICES


def test_engine_config_takes_the_servers_settings_by_their_names() -> None:
    document: dict[str, dict[str, Any]] = {
        "server": {"interface": "eth0", "addresses": ["198.18.0.1"], "window_seconds": 45,
                   "clock_skew_seconds": 90, "knock_timeout_seconds": 7, "max_doors_per_user": 3,
                   "max_doors_total": 50, "door_ports": "50000-50015"},
        "services": {"ssh": {"target": "127.0.0.1:22"}}}
    config = dkconfig.parse(document, "/x.toml")
    settings = engine_config(config, p2_hold_ms=20)
    assert (settings.window_seconds, settings.clock_skew_seconds, settings.knock_timeout_seconds,
            settings.max_doors_per_user, settings.max_doors_total) == (45, 90, 7, 3, 50)
    assert (settings.door_port_low, settings.door_port_high, settings.p2_hold_ms) == (50000, 50015, 20)
    assert settings.services == config.services and settings.versions == proto.ALL_VERSIONS
    assert not settings.bound_only
    # what the file leaves out, the engine's defaults say alike
    del document["server"]["window_seconds"]
    plain = engine_config(dkconfig.parse(document, "/x.toml"))
    assert plain.window_seconds == EngineConfig(SERVICES, 1, 2).window_seconds == 30


def test_a_fleet_engine_takes_unbound_packets_only_when_told() -> None:
    gateways = {"gw-a": {"addresses": ["198.18.0.11"], "gate": "tcp://198.18.0.11:7003"}}
    endpoints = {name: f"tcp://198.18.0.9:{7100 + i}" for i, name in enumerate(bus.ENDPOINT_NAMES)}
    document: dict[str, dict[str, Any]] = {
        "server": {"interface": "eth0", "addresses": ["198.18.0.1"]},
        "bus": {"transport": "tcp", "tcp_endpoints": endpoints},
        "services": {"ssh": {"target": "127.0.0.1:22"}}, "gateways": gateways}
    strict = engine_config(dkconfig.parse(document, "/x.toml"))
    assert (strict.versions, strict.bound_only) == ((proto.BOUND_VERSION, proto.PAIR_VERSION), True)
    document["server"]["fleet_accepts_v1"] = True
    lenient = engine_config(dkconfig.parse(document, "/x.toml"))
    assert (lenient.versions, lenient.bound_only) == (proto.ALL_VERSIONS, False)
