"""The session engine's settings (auth/engine.py and the small objects it coordinates)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from dynknock import protocol as proto
from dynknock.config import Config, GatewayConfig, ServiceConfig, default_of

# A service as [services.NAME] declares it; forward "kernel": doors of same-family clients are
# forwarded by the gate alone.
Service = ServiceConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's settings. A field the server's Config has too has its name, and its default from
    there (dynknock/config.py); :func:`engine_config` copies those. The others are the engine's own."""

    services: dict[str, Service]
    door_port_low: int
    door_port_high: int
    window_seconds: int = default_of("window_seconds")
    clock_skew_seconds: int = default_of("clock_skew_seconds")
    knock_timeout_seconds: int = default_of("knock_timeout_seconds")
    open_timeout_s: int = 3
    max_requests_per_user: int = 16
    # Rejections are counted always but reported one by one only this often per second
    # per user named (and as often for packets naming nobody), so a flood cannot flood
    # the bus or the logs, and a flood under one user's hint cannot mute the others.
    reject_events_per_second: int = 20
    max_doors_per_user: int = default_of("max_doors_per_user")
    max_doors_total: int = default_of("max_doors_total")
    doors_per_minute: int = default_of("doors_per_minute")
    single_use: bool = default_of("single_use")
    connect_knocks: bool = default_of("connect_knocks")
    # A tag check costs ~37 us in Python: 500 a second is ~2% of a core per flooded hint,
    # and far above what a user's clients send (a P1 and a P2 or two per door).
    hint_checks_per_second: int = 500
    # Bad tags from one source under one hint: past this, that source's packets under that
    # hint wait for the next second, so a flood from a few addresses does not spend the
    # hint's budget, and the user's own address keeps its checks.
    bad_tags_per_source_per_second: int = 10
    # Another port after "address_in_use", this often per request. Ports found busy are avoided
    # for a window, so each retry learns; a range mostly squatted still leaves a free port within these.
    door_retries: int = 32
    # Packets whose tag was checked, remembered by their bytes (~0.7 KB each with the decoded
    # message): only good tags make entries, at most hint_checks_per_second per user for ~3 min.
    checked_cache_max: int = 50_000
    # Wire protocol versions accepted (dynknock/protocol.py): a fleet takes only packets bound to
    # the gateway they were sent to (version 2, or 3 with the bound flag; server.fleet_accepts_v1).
    versions: tuple[int, ...] = proto.ALL_VERSIONS
    bound_only: bool = False
    # Signature checks (key-pair users' P1s, ~0.3 ms each) one hint may cost a second: past this a
    # holder of that user's pair key (the user, or a thief of the server's key) waits for the next second.
    hint_signatures_per_second: int = 20
    # A P2 that arrives while its request still awaits knocks is held this long before it is
    # answered PENDING: the client echoes its SYNs 5 ms after P2 (client/session.py), and a SYN
    # that raced capture's filter then completes the request and this same P2 gets OPEN, instead
    # of the client's PENDING round. Once per request, at most max_held_p2_per_user per user and
    # max_held_p2_total in all (past those: PENDING at once). 0: PENDING at once, always.
    p2_hold_ms: int = 0
    # Auth replicas (store.kind = "etcd"): each new request's P1 nonce is claimed in the shared store
    # before its door opens (invariant 14).
    shared_nonces: bool = False
    max_held_p2_per_user: int = 8
    max_held_p2_total: int = 1024
    # A fleet ([gateways.NAME]; empty: one host, one implicit gateway): each gateway's addresses, and
    # which gateway each capture key speaks for (z85 public key, ZeroMQ's User-Id -> gateway name).
    gateways: dict[str, GatewayConfig] = field(default_factory=dict)
    capture_keys: dict[str, str] = field(default_factory=dict)
    path: str = ""  # the config file these came from, named where a refusal points to it


def engine_config(config: Config, **own: Any) -> EngineConfig:
    """The engine's settings from the server's config: every field the two share, by its name, and
    the engine's `own` settings. A fleet takes only protocol version 2 (bound to the gateway address)
    unless server.fleet_accepts_v1 says otherwise."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineConfig) if hasattr(config, f.name)}
    strict = config.fleet and not config.fleet_accepts_v1
    versions = (proto.BOUND_VERSION, proto.PAIR_VERSION) if strict else proto.ALL_VERSIONS
    return EngineConfig(**{**shared, "versions": versions, "bound_only": strict, **own})
