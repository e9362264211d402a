"""One sentence per event topic, in the SIG^2 daemon's words where it had them.

Used by the stages' own log lines and by knock-tap, so both read the same.
"""

from __future__ import annotations

import time
from typing import Any

from dynknock.bus import Event
from dynknock.topics import REJECTIONS, Topic

# Keyed by Topic; a topic read off the wire is a plain str and finds its sentence all the same
# (a member of the str enum is its string).
_TEMPLATES: dict[str, str] = {
    Topic.AUTH_REQUEST_RECEIVED: "Port request received from {user}. ({client}, {source})",
    Topic.AUTH_REQUEST_RETRY: "Port request repeated by {user}. ({client})",
    Topic.AUTH_REQUEST_REPLACED: "Older request of {user} replaced by a newer one. ({client})",
    Topic.AUTH_KNOCK_MATCHED: "Knock from {user} ({client}) on port {port}, {left} to go.",
    Topic.AUTH_KNOCK_COMPLETE: "Correct knock sequence received from {user} ({client}, {client}).",
    Topic.AUTH_DOOR_OPENED: "Binded port {port} for {user}. ({client}) in {latency_ms} ms",
    Topic.AUTH_DOOR_EXPIRED: "Port {port} for {client} timeout and closed.",
    Topic.AUTH_DOOR_USED: "Port {port} for {user} ({client}) used: its one connection came ({seen_by}).",
    Topic.AUTH_USERS_RELOADED: "Users file reloaded: {users} users.",
    Topic.AUTH_STARTED: "Server started.",
    Topic.GATE_RULE_ADDED: "Firewall opened port {port} for {client} ({timeout_ms} ms).",
    Topic.GATE_RULE_REMOVED: "Firewall closed port {port} for {client}.",
    Topic.GATE_RULE_REFUSED: "Firewall refused port {port} for {client}: {reason}",
    Topic.GATE_BACKEND_NONE: "WARNING: no firewall backend: {warning}",
    Topic.GATE_CONNECTION_OPENED: "Connection from {client} through the kernel door on port {port}.",
    Topic.GATE_CONNECTION_CLOSED: "Connection from {client} through the kernel door on port {port} closed: "
                                  "{bytes_in} bytes in, {bytes_out} bytes out (IP packets).",
    Topic.RELAY_DOOR_LISTENING: "Relay listening on port {port} for {client}.",
    Topic.RELAY_DOOR_REFUSED: "Relay refused port {port} for {client}: {reason}",
    Topic.RELAY_DOOR_CLOSED: "Relay closed port {port} for {client} ({why}).",
    Topic.RELAY_CONNECTION_ACCEPTED: "Connection from {client} on port {port} accepted.",
    Topic.RELAY_CONNECTION_REFUSED: "Connection to port {port} from {peer} refused: {reason}.",
    Topic.RELAY_CONNECTION_CLOSED: "Connection from {client} on port {port} closed: "
                                   "{bytes_to_service} bytes in, {bytes_to_client} bytes out.",
    Topic.CAPTURE_STARTED: "Capture started on {interface}.",
}


def describe(event: Event) -> str:
    if event.topic in REJECTIONS:
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
