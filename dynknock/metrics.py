"""Prometheus metrics built from bus events (knock-tap --metrics).

A pure model (`MetricsModel.apply(event)`) folds events into counts; a
prometheus_client collector renders the model at scrape time. Cumulative
figures owned by a stage (auth's rejection counters, capture's pcap stats)
come from that stage's heartbeat, so they are exact even though individual
rejection events are rate limited under a flood.

Only the dynknock group may read the figures (docs/SECURITY.md): the endpoint
answers a scrape only with ``Authorization: Bearer <token>``, the token being
the content of metrics.token_file (root:dynknock or dynknock:dynknock, mode
0640 at most). Unset, that file is ``<bus.runtime_dir>/metrics.token``, made
with a fresh random token when missing; so filesystem permissions decide, and
Prometheus reads it with ``authorization: {credentials_file: ...}``. Any other
request gets a bare 401 (or 404), never a figure.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from dynknock.bus import STAGES, Event
from dynknock.keys import secret_file_problem
from dynknock.topics import REJECTIONS, Topic

ALIVE_WITHIN_S = 6.0  # three missed heartbeats


@dataclass
class MetricsModel:
    requests: Counter[str] = field(default_factory=Counter)  # outcome -> count
    rejections: dict[str, int] = field(default_factory=dict)  # reason -> count (from auth.alive)
    doors_open: int = 0
    relay_connections: Counter[str] = field(default_factory=Counter)
    relay_bytes: Counter[str] = field(default_factory=Counter)
    capture: dict[str, int] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    gate_rules: Counter[str] = field(default_factory=Counter)
    relay: dict[str, int] = field(default_factory=dict)  # from relay.alive: connections, deferred_accepts
    # Doors the kernel forwards (gate.connection.*, from conntrack): bytes are whole IP packets.
    kernel_connections: Counter[str] = field(default_factory=Counter)
    kernel_bytes: Counter[str] = field(default_factory=Counter)
    # A fleet: (gateway, stage) -> last heartbeat, from the stages that name their gateway.
    gateway_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    # A stage falling behind (the last heartbeat's figures): door commands a gate turn found waiting and the
    # oldest one's age; doors auth asked for and has not seen confirmed, and the oldest one's age.
    backlog: dict[str, int] = field(default_factory=dict)
    # Auth replicas: the shared store as this replica's auth sees it (auth.alive "store"), and
    # each replica as each gateway's capture sees it ((gateway, replica) -> up).
    store: dict[str, Any] = field(default_factory=dict)
    replicas_seen: dict[tuple[str, str], bool] = field(default_factory=dict)

    def apply(self, event: Event) -> None:
        topic, fields = event.topic, event.fields
        stage = topic.split(".", 1)[0]
        if topic.endswith(".alive"):
            self.last_seen[stage] = event.time
            gateway = fields.get("gateway")
            if isinstance(gateway, str) and gateway:
                self.gateway_seen[(gateway, stage)] = event.time
        if topic == Topic.AUTH_ALIVE:
            rejections = fields.get("rejections", {})
            if isinstance(rejections, dict):
                self.rejections = {str(k): int(v) for k, v in rejections.items() if isinstance(v, int)}
            doors = fields.get("doors", [])
            self.doors_open = len(doors) if isinstance(doors, list) else self.doors_open
            self._backlog(fields, auth_doors_opening="doors_opening", auth_opening_age_ms="opening_age_ms")
            store = fields.get("store")
            if isinstance(store, dict):
                self.store = store
        elif topic == Topic.GATE_ALIVE:
            self._backlog(fields, gate_backlog="backlog", gate_command_age_ms="command_age_ms",
                          gate_reconciled="reconciled")
        elif topic == Topic.CAPTURE_ALIVE:
            self.capture = {k: int(v) for k, v in fields.items()
                            if k in ("received", "kernel_dropped", "interface_dropped", "forwarded", "dropped",
                                     "bus_full", "unknown_hints") and isinstance(v, int)}
            replicas, gateway = fields.get("replicas"), fields.get("gateway")
            if isinstance(replicas, dict):
                for name, state in replicas.items():
                    up = isinstance(state, dict) and bool(state.get("up"))
                    self.replicas_seen[(str(gateway or ""), str(name))] = up
        elif topic == Topic.RELAY_ALIVE:
            self.relay = {k: v for k, v in fields.items()
                          if k in ("connections", "deferred_accepts") and type(v) is int}
        elif topic == Topic.AUTH_REQUEST_RECEIVED:
            self.requests["received"] += 1
        elif topic == Topic.AUTH_DOOR_OPENED:
            self.requests["door_opened"] += 1
        elif topic in REJECTIONS:
            self.requests["rejected"] += 1
        elif topic == Topic.RELAY_CONNECTION_ACCEPTED:
            self.relay_connections["accepted"] += 1
        elif topic == Topic.RELAY_CONNECTION_REFUSED:
            self.relay_connections["refused"] += 1
        elif topic == Topic.RELAY_CONNECTION_CLOSED:
            for direction in ("to_service", "to_client"):
                value = fields.get(f"bytes_{direction}", 0)
                if isinstance(value, int):
                    self.relay_bytes[direction] += value
        elif topic == Topic.GATE_CONNECTION_OPENED:
            self.kernel_connections["opened"] += 1
        elif topic == Topic.GATE_CONNECTION_CLOSED:
            self.kernel_connections["closed"] += 1
            for direction, key in (("to_service", "bytes_in"), ("to_client", "bytes_out")):
                value = fields.get(key)
                if type(value) is int:
                    self.kernel_bytes[direction] += value
        elif topic.startswith("gate.rule."):
            self.gate_rules[topic.rsplit(".", 1)[1]] += 1


    def _backlog(self, fields: dict[str, object], **names: str) -> None:
        for name, key in names.items():
            value = fields.get(key)
            if type(value) is int:
                self.backlog[name] = value


def _family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str, label: str,
            counts: Mapping[str, float], keys: Iterable[str] | None = None) -> Metric:
    """A metric with one label: a sample for each key (each key of `counts`, sorted, if none are given)."""
    family = kind(name, documentation, labels=[label])
    for key in sorted(counts) if keys is None else keys:
        family.add_metric([key], counts.get(key, 0))
    return family


class ModelCollector(Collector):
    def __init__(self, model: MetricsModel) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        m = self.model
        counter, gauge = CounterMetricFamily, GaugeMetricFamily
        yield _family(counter, "dynknock_requests", "Request events seen on the bus", "outcome", m.requests,
                      ("received", "door_opened", "rejected"))
        # Capture drops datagrams with no current user's hint before auth sees them:
        # they are auth's unknown_user rejections, made earlier.
        counts = dict(m.rejections)
        counts["unknown_user"] = counts.get("unknown_user", 0) + m.capture.get("unknown_hints", 0)
        yield _family(counter, "dynknock_rejections", "Packets auth rejected, by reason (exact)", "reason", counts)
        yield GaugeMetricFamily("dynknock_doors_open", "Doors open now", value=m.doors_open)
        yield _family(counter, "dynknock_relay_connections", "Door connections", "result", m.relay_connections,
                      ("accepted", "refused"))
        yield _family(counter, "dynknock_relay_bytes", "Bytes relayed (closed connections)", "direction",
                      m.relay_bytes, ("to_service", "to_client"))
        yield GaugeMetricFamily("dynknock_relay_connections_open", "Connections the relay carries now",
                                value=m.relay.get("connections", 0))
        # Non-zero: the relay ran short of file descriptors and a connection had to wait.
        yield CounterMetricFamily("dynknock_relay_deferred_accepts",
                                  "Accepts the relay put off for want of a file descriptor (since relay start)",
                                  value=m.relay.get("deferred_accepts", 0))
        yield _family(counter, "dynknock_kernel_door_connections", "Connections through doors the kernel forwards",
                      "event", m.kernel_connections, ("opened", "closed"))
        yield _family(counter, "dynknock_kernel_door_bytes", "Bytes through kernel doors, closed connections "
                      "(whole IP packets, conntrack accounting)", "direction", m.kernel_bytes,
                      ("to_service", "to_client"))
        yield _family(counter, "dynknock_gate_rules", "Firewall rule operations", "operation", m.gate_rules,
                      ("added", "removed", "refused"))
        yield _family(gauge, "dynknock_capture_packets", "libpcap and capture counters since capture start", "kind",
                      m.capture)
        # A stage that falls behind says so: auth's doors waiting for confirmation, the gate's queue of commands.
        yield GaugeMetricFamily("dynknock_doors_opening", "Doors asked of the gate and relay, not yet confirmed",
                                value=m.backlog.get("auth_doors_opening", 0))
        yield GaugeMetricFamily("dynknock_doors_opening_age_seconds", "Age of the oldest door not yet confirmed",
                                value=m.backlog.get("auth_opening_age_ms", 0) / 1000)
        yield GaugeMetricFamily("dynknock_gate_backlog", "Most door commands one gate turn found waiting "
                                "(last heartbeat period)", value=m.backlog.get("gate_backlog", 0))
        yield GaugeMetricFamily("dynknock_gate_command_age_seconds", "Oldest door command's age when the gate read "
                                "it (last heartbeat period)", value=m.backlog.get("gate_command_age_ms", 0) / 1000)
        yield CounterMetricFamily("dynknock_gate_reconciled_doors", "Door elements the gate emptied because auth "
                                  "no longer knew them (since gate start)", value=m.backlog.get("gate_reconciled", 0))
        now = time.time()
        up = GaugeMetricFamily("dynknock_stage_up", "1 if the stage's heartbeat was seen recently", labels=["stage"])
        for stage in STAGES:
            up.add_metric([stage], 1.0 if now - m.last_seen.get(stage, 0.0) <= ALIVE_WITHIN_S else 0.0)
        yield up
        if m.store:  # an auth replica: the shared store's health, as the last heartbeat of auth said
            yield GaugeMetricFamily("dynknock_store_quorum", "1 if the etcd store has a quorum (auth's view)",
                                    value=1.0 if m.store.get("quorum") else 0.0)
            yield GaugeMetricFamily("dynknock_store_members_up", "etcd members reachable",
                                    value=float(m.store.get("members_up", 0) or 0))
            yield GaugeMetricFamily("dynknock_store_users_current", "1 if the users document is proven current (else "
                                    "every knock is refused)", value=1.0 if m.store.get("users_current") else 0.0)
            refused = m.store.get("claims_refused")
            yield _family(counter, "dynknock_store_claims_refused", "Requests refused because the store could not "
                          "claim their nonce, by error kind", "kind", refused if isinstance(refused, dict) else {})
        if m.replicas_seen:  # each replica as each gateway's capture sees it
            replica_up = GaugeMetricFamily("dynknock_replica_up", "1 if the gateway's capture routes clients to this "
                                           "replica", labels=["gateway", "replica"])
            for (gateway, replica), is_up in sorted(m.replicas_seen.items()):
                replica_up.add_metric([gateway, replica], 1.0 if is_up else 0.0)
            yield replica_up
        if m.gateway_seen:  # a fleet: each gateway's stages, by host (a gateway once heard from stays listed)
            gateway_up = GaugeMetricFamily("dynknock_gateway_stage_up", "1 if this gateway's stage's heartbeat "
                                           "was seen recently", labels=["gateway", "stage"])
            for (gateway, stage), seen in sorted(m.gateway_seen.items()):
                gateway_up.add_metric([gateway, stage], 1.0 if now - seen <= ALIVE_WITHIN_S else 0.0)
            yield gateway_up


TOKEN_NAME = "metrics.token"
MIN_TOKEN_CHARS = 16


class TokenError(ValueError):
    """The token file cannot be used; the message is one line naming the key and the file."""


def token_path(token_file: str, runtime_dir: Path) -> tuple[Path, bool]:
    """The token file, and whether we may create it (only the default one, in our own directory)."""
    if token_file:
        return Path(token_file), False
    return runtime_dir / TOKEN_NAME, True


def load_token(path: Path, create: bool) -> str:
    """Read (or, if allowed, first make) the token; refuse a file others may read or anyone write."""
    where = f"metrics.token_file {path}"
    if create and not os.path.lexists(path):
        # Written whole under a private name, then linked in: a reader never sees it half made,
        # and of two starters racing, one token wins (link fails if the name exists).
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                os.fchmod(out.fileno(), 0o640)  # not the umask's: the group must read it
                out.write(secrets.token_urlsafe(32) + "\n")
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
        except OSError as exc:
            raise TokenError(f"{where}: cannot create it ({exc.strerror}); make one, "
                             "or set metrics.token_file") from None
        finally:
            try:
                os.unlink(draft)
            except OSError:
                pass
    try:
        # Our own default file, in our own directory, is never a link; the admin's may be one.
        fd = os.open(path, os.O_RDONLY | (os.O_NOFOLLOW if create else 0))
    except FileNotFoundError:
        raise TokenError(f"{where}: not found; make it with (umask 027; head -c 32 /dev/urandom | base64 > "
                         f"{path}) && chgrp dynknock {path}") from None
    except OSError as exc:
        raise TokenError(f"{where}: {exc.strerror}") from None
    try:
        # of the file opened, not of whatever the name points to later; only the dynknock group may read it
        problem = secret_file_problem(os.fstat(fd), path, group_may_read=True)
        if problem:
            raise TokenError(f"{where}: {problem}")
        token = os.read(fd, 4096).decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"{where}: the token must be one word of at least {MIN_TOKEN_CHARS} characters")
    return token


def authorised(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if header is None:
        return False
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


def _handler(registry: CollectorRegistry, token: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # a client that sends nothing holds a thread only this long

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?", 1)[0] != "/metrics":
                self._bare(404)
            elif not authorised(self.headers.get("Authorization"), token):
                self._bare(401, {"WWW-Authenticate": 'Bearer realm="dynknock"'})
            else:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _bare(self, code: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # a scraper every 15 s, or a prober, must not fill the log

    return Handler


def serve(model: MetricsModel, listen: str, token: str) -> ThreadingHTTPServer:
    """Start the HTTP endpoint on `listen` ("127.0.0.1:9877") in a thread; returns the server."""
    registry = CollectorRegistry()
    registry.register(ModelCollector(model))
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, int(port)), _handler(registry, token))
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
