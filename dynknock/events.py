"""One sentence per event topic, in the SIG^2 daemon's words where it had them.

Used by the stages' own log lines and by knock-tap, so both read the same.
"""

from __future__ import annotations

import time
from typing import Any

from dynknock.bus import Event

_TEMPLATES: dict[str, str] = {
    "auth.request.received": "Port request received from {user}. ({client}, {source})",
    "auth.request.retry": "Port request repeated by {user}. ({client})",
    "auth.request.replaced": "Older request of {user} replaced by a newer one. ({client})",
    "auth.knock.matched": "Knock from {user} ({client}) on port {port}, {left} to go.",
    "auth.knock.complete": "Correct knock sequence received from {user} ({client}, {client}).",
    "auth.door.opened": "Binded port {port} for {user}. ({client}) in {latency_ms} ms",
    "auth.door.expired": "Port {port} for {client} timeout and closed.",
    "auth.users.reloaded": "Users file reloaded: {users} users.",
    "auth.started": "Server started.",
    "gate.rule.added": "Firewall opened port {port} for {client} ({timeout_ms} ms).",
    "gate.rule.removed": "Firewall closed port {port} for {client}.",
    "gate.rule.refused": "Firewall refused port {port} for {client}: {reason}",
    "gate.backend.none": "WARNING: no firewall backend: {warning}",
    "gate.connection.opened": "Connection from {client} through the kernel door on port {port}.",
    "gate.connection.closed": "Connection from {client} through the kernel door on port {port} closed: "
                              "{bytes_in} bytes in, {bytes_out} bytes out (IP packets).",
    "relay.door.listening": "Relay listening on port {port} for {client}.",
    "relay.door.refused": "Relay refused port {port} for {client}: {reason}",
    "relay.door.closed": "Relay closed port {port} for {client} ({why}).",
    "relay.connection.accepted": "Connection from {client} on port {port} accepted.",
    "relay.connection.refused": "Connection to port {port} from {peer} refused: {reason}.",
    "relay.connection.closed": "Connection from {client} on port {port} closed: "
                               "{bytes_to_service} bytes in, {bytes_to_client} bytes out.",
    "capture.started": "Capture started on {interface}.",
}


def describe(event: Event) -> str:
    if event.topic in ("auth.request.rejected", "capture.packet.rejected"):
        who = f"{event.fields['user']} " if "user" in event.fields else ""
        detail = f" ({event.fields['detail']})" if event.fields.get("detail") else ""
        return f"Rejected {who}from {event.fields.get('source', '?')}: {event.fields.get('reason')}{detail}."
    template = _TEMPLATES.get(event.topic)
    if template is not None:
        try:
            return template.format(**event.fields)
        except (KeyError, IndexError, ValueError):
            pass
    fields = " ".join(f"{k}={v}" for k, v in sorted(event.fields.items()))
    return f"{event.topic} {fields}".strip() or repr(event.topic)


def paper_line(event: Event) -> str:
    """`2004-05-02 14:39.50 Port request received from foobar. (10.0.0.3, 10.0.0.3)`"""
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M.%S", time.localtime(event.time))
    except (OverflowError, ValueError, OSError):  # inf, NaN or out of time_t: a line all the same
        stamp = "????-??-?? ??:??.??"
    return f"{stamp} {describe(event)}"


def as_json(event: Event) -> dict[str, Any]:
    return {"time": event.time, "topic": event.topic, "stage": event.stage, **event.fields}
