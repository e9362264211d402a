"""`knock-admin status`: a one-screen summary read from the bus.

Listens to the tap for a little longer than one heartbeat period, then shows
which stages are alive, the doors open now (user, address, port, time left) and
the rejections seen: counts by reason from auth's heartbeat, and the latest few
individual ones.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from dynknock import bus
from dynknock.events import paper_line
from dynknock.reasons import ProgramState
from dynknock.topics import Topic
from dynknock.transport import GATEWAY_ROLES, Transport

# What "recent" shows: a request, a connection or a firewall rule refused.
_REFUSALS = (Topic.AUTH_REQUEST_REJECTED, Topic.RELAY_CONNECTION_REFUSED, Topic.GATE_RULE_REFUSED)


@dataclass
class Summary:
    alive: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> heartbeat fields
    recent: deque[bus.Event] = field(default_factory=lambda: deque(maxlen=5))
    # A fleet: gateway name -> stage -> heartbeat fields, from events that name their gateway.
    gateways: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def apply(self, event: bus.Event) -> None:
        stage = event.topic.split(".", 1)[0]
        if event.topic.endswith(".alive"):
            self.alive[stage] = event.fields
            gateway = event.fields.get("gateway")
            if isinstance(gateway, str) and gateway:
                self.gateways.setdefault(gateway, {})[stage] = event.fields
        elif event.topic in _REFUSALS:
            self.recent.append(event)


def collect(transport: Transport, seconds: float = 2.5) -> Summary:
    summary = Summary()
    context: zmq.Context[Any] = zmq.Context()
    try:
        sock: zmq.Socket[Any] = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        transport.connect(sock, "tap")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1):
                continue
            frames = sock.recv_multipart()
            try:
                summary.apply(bus.decode_as(frames[-1], bus.Event))
            except bus.BadMessage:
                continue
    finally:
        context.destroy(0)
    return summary


def _state(stage: str, stages: dict[str, dict[str, Any]]) -> str:
    if stage not in stages:
        return "DOWN"
    # A capture that has no knock filter from auth yet passes P1/P2 but no knock: not ready.
    if stage == "capture" and stages[stage].get("filter_generation") == -1:
        return "waiting"
    return "up"


def render(summary: Summary, now_ms: int, programs: list[ProgramState] | None = None,
           supervisor_note: str = "") -> str:
    """`programs`: supervisord's view of this host's programs (each one not running says why);
    `supervisor_note`: why it could not be asked."""
    lines = ["Stages: " + "  ".join(f"{s} {'up' if s in summary.alive else 'DOWN'}" for s in bus.STAGES)]
    for program in programs or ():
        if not program.running:
            lines.append(f"  {program.name}: {program.describe()}")
    if supervisor_note and any(s not in summary.alive for s in bus.STAGES):
        lines.append(f"  (why a stage is down: {supervisor_note})")
    for gateway, stages in sorted(summary.gateways.items()):  # a fleet: each gateway heard from, by host
        lines.append(f"  gateway {gateway}: " + "  ".join(f"{s} {_state(s, stages)}" for s in GATEWAY_ROLES))
    auth = summary.alive.get("auth", {})
    lines += _replica_lines(auth, summary.gateways)
    doors = auth.get("doors", []) if isinstance(auth.get("doors"), list) else []
    lines.append(f"Doors open: {len(doors)}")
    for door in sorted(doors, key=lambda d: d.get("expires_ms", 0)):
        left = max(0, (int(door.get("expires_ms", 0)) - now_ms) // 1000)
        lines.append(f"  {door.get('user', '?'):<16} {door.get('client', '?'):<40} port {door.get('port', '?'):<6}"
                     f" {left:>4} s left" + (f"  at {door['gateway']}" if door.get("gateway") else ""))
    rejections = auth.get("rejections", {})
    if isinstance(rejections, dict) and rejections:
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(rejections.items()))
        lines.append(f"Rejections since auth started: {counts}")
    else:
        lines.append("Rejections since auth started: none")
    gate = summary.alive.get("gate", {})
    behind = []
    if isinstance(auth.get("doors_opening"), int) and auth["doors_opening"]:
        behind.append(f"auth waits for {auth['doors_opening']} door(s) to be confirmed, the oldest for "
                      f"{auth.get('opening_age_ms', 0)} ms")
    if isinstance(gate.get("backlog"), int) and gate["backlog"] > 1:
        behind.append(f"the gate found {gate['backlog']} commands waiting, the oldest {gate.get('command_age_ms', 0)} "
                      f"ms old")
    if behind:
        lines.append("Falling behind: " + "; ".join(behind))
    capture = summary.alive.get("capture", {})
    if capture:
        lines.append(f"Capture: {capture.get('received', 0)} packets received, "
                     f"{capture.get('kernel_dropped', 0)} dropped by the kernel buffer, "
                     f"{capture.get('forwarded', 0)} passed to auth")
    if summary.recent:
        lines.append("Recent rejections:")
        lines += [f"  {paper_line(e)}" for e in summary.recent]
    return "\n".join(lines)


def _replica_lines(auth: dict[str, Any], gateways: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Auth replicas: this replica, the shared store's health as its auth sees it, and each
    replica as each gateway's capture sees it (the capture routes clients to the live ones)."""
    lines: list[str] = []
    if isinstance(auth.get("replica"), str) and auth["replica"]:
        lines.append(f"This is replica {auth['replica']}.")
    for gateway, stages in sorted(gateways.items()):
        seen = stages.get("capture", {}).get("replicas")
        if isinstance(seen, dict) and seen:
            states = "  ".join(f"{name} {'up' if isinstance(v, dict) and v.get('up') else 'down'}"
                               for name, v in sorted(seen.items()))
            lines.append(f"  replicas as gateway {gateway}'s capture sees them: {states}")
    store = auth.get("store")
    if not isinstance(store, dict):
        return lines
    members = f"{store.get('members_up', '?')} of {store.get('members', '?')} members reachable"
    if store.get("quorum"):
        lines.append(f"Store: etcd, quorum ({members}), leader {store.get('leader') or '?'}, users revision "
                     f"{store.get('users_revision_taken', '?')}")
    elif "quorum" in store:
        lines.append(f"Store: etcd quorum lost ({members}): every knock is refused until it returns")
    else:
        lines.append("Store: etcd, no health report yet")
    if store.get("users_current") is False:
        age = store.get("users_age_s")
        proof = "never" if age is None else f"last proof {age:.0f} s ago"
        lines.append(f"  the users are not proven current ({proof}): every knock is refused")
    if store.get("claim_txns"):
        lines.append(f"  claims: {store.get('claims_sent', 0)} since start; last heartbeat period: "
                     f"{store['claim_txns']} txns, up to {store.get('claim_batch_max', 0)} nonces each, the slowest "
                     f"{store.get('claim_txn_ms_max', 0)} ms, up to {store.get('claims_waiting_max', 0)} waiting "
                     f"(since start: {store.get('claim_txn_ms_max_all', 0)} ms, "
                     f"{store.get('claims_waiting_max_all', 0)})")
        lines.append(f"  P1 to its claim's answer: p50 {store.get('claim_wait_ms_p50', 0)} ms, p99 "
                     f"{store.get('claim_wait_ms_p99', 0)} ms (last 1,000); {store.get('claims_after_knocks', 0)} "
                     "doors waited for the store after their knocks")
    refused = store.get("claims_refused")
    if isinstance(refused, dict) and refused:
        lines.append("  claims refused: " + ", ".join(f"{kind} {n}" for kind, n in sorted(refused.items())))
    if store.get("down"):
        lines.append("  unreachable: " + ", ".join(str(url) for url in store["down"]))
    if store.get("alarms"):
        lines.append("  ALARMS: " + ", ".join(str(a) for a in store["alarms"]))
    for advisory in store.get("advisories", []) if isinstance(store.get("advisories"), list) else []:
        lines.append(f"  advisory: {advisory}")
    return lines
