"""Prometheus metrics built from bus events (knock-tap --metrics).

A pure model (`MetricsModel.apply(event)`) folds events into counts; a
prometheus_client collector renders the model at scrape time. Cumulative
figures owned by a stage (auth's rejection counters, capture's pcap stats)
come from that stage's heartbeat, so they are exact even though individual
rejection events are rate limited under a flood.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dynknock.bus import Event

STAGES = ("capture", "auth", "gate", "relay")
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

    def apply(self, event: Event) -> None:
        topic, fields = event.topic, event.fields
        stage = topic.split(".", 1)[0]
        if topic.endswith(".alive"):
            self.last_seen[stage] = event.time
        if topic == "auth.alive":
            rejections = fields.get("rejections", {})
            if isinstance(rejections, dict):
                self.rejections = {str(k): int(v) for k, v in rejections.items() if isinstance(v, int)}
            doors = fields.get("doors", [])
            self.doors_open = len(doors) if isinstance(doors, list) else self.doors_open
        elif topic == "capture.alive":
            self.capture = {k: int(v) for k, v in fields.items()
                            if k in ("received", "kernel_dropped", "interface_dropped", "forwarded", "dropped",
                                     "bus_full", "unknown_hints") and isinstance(v, int)}
        elif topic == "auth.request.received":
            self.requests["received"] += 1
        elif topic == "auth.door.opened":
            self.requests["door_opened"] += 1
        elif topic in ("auth.request.rejected", "capture.packet.rejected"):
            self.requests["rejected"] += 1
        elif topic == "relay.connection.accepted":
            self.relay_connections["accepted"] += 1
        elif topic == "relay.connection.refused":
            self.relay_connections["refused"] += 1
        elif topic == "relay.connection.closed":
            for direction in ("to_service", "to_client"):
                value = fields.get(f"bytes_{direction}", 0)
                if isinstance(value, int):
                    self.relay_bytes[direction] += value
        elif topic.startswith("gate.rule."):
            self.gate_rules[topic.rsplit(".", 1)[1]] += 1


class ModelCollector(Collector):
    def __init__(self, model: MetricsModel) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        m = self.model
        requests = CounterMetricFamily("dynknock_requests", "Request events seen on the bus", labels=["outcome"])
        for outcome in ("received", "door_opened", "rejected"):
            requests.add_metric([outcome], m.requests[outcome])
        yield requests
        rejections = CounterMetricFamily("dynknock_rejections", "Packets auth rejected, by reason (exact)",
                                         labels=["reason"])
        # Capture drops datagrams with no current user's hint before auth sees them:
        # they are auth's unknown_user rejections, made earlier.
        counts = dict(m.rejections)
        counts["unknown_user"] = counts.get("unknown_user", 0) + m.capture.get("unknown_hints", 0)
        for reason, count in sorted(counts.items()):
            rejections.add_metric([reason], count)
        yield rejections
        yield GaugeMetricFamily("dynknock_doors_open", "Doors open now", value=m.doors_open)
        connections = CounterMetricFamily("dynknock_relay_connections", "Door connections", labels=["result"])
        for result in ("accepted", "refused"):
            connections.add_metric([result], m.relay_connections[result])
        yield connections
        relayed = CounterMetricFamily("dynknock_relay_bytes", "Bytes relayed (closed connections)",
                                      labels=["direction"])
        for direction in ("to_service", "to_client"):
            relayed.add_metric([direction], m.relay_bytes[direction])
        yield relayed
        rules = CounterMetricFamily("dynknock_gate_rules", "Firewall rule operations", labels=["operation"])
        for operation in ("added", "removed", "refused"):
            rules.add_metric([operation], m.gate_rules[operation])
        yield rules
        capture = GaugeMetricFamily("dynknock_capture_packets", "libpcap and capture counters since capture start",
                                    labels=["kind"])
        for kind, value in sorted(m.capture.items()):
            capture.add_metric([kind], value)
        yield capture
        now = time.time()
        up = GaugeMetricFamily("dynknock_stage_up", "1 if the stage's heartbeat was seen recently", labels=["stage"])
        for stage in STAGES:
            up.add_metric([stage], 1.0 if now - m.last_seen.get(stage, 0.0) <= ALIVE_WITHIN_S else 0.0)
        yield up


def serve(model: MetricsModel, listen: str) -> Any:
    """Start the HTTP endpoint on `listen` ("127.0.0.1:9877"); returns the server."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(ModelCollector(model))
    host, _, port = listen.rpartition(":")
    return start_http_server(int(port), addr=host.strip("[]"), registry=registry)
