"""Every event topic on the bus, declared once.

A topic is `<stage>.<subject>.<what>`; knock-tap and Prometheus subscribe by prefix
(`auth.door.` gets every door event of auth). Topic is a str enum, so a member is the very
string on the wire and compares equal to it: tools and tests that hold plain strings still match.
dynknock/events.py gives each its sentence.
"""

from __future__ import annotations

from enum import StrEnum


class Topic(StrEnum):
    # auth: requests, knocks and doors (auth/engine.py), and its own life (auth/main.py)
    AUTH_REQUEST_RECEIVED = "auth.request.received"
    AUTH_REQUEST_RETRY = "auth.request.retry"
    AUTH_REQUEST_REPLACED = "auth.request.replaced"
    AUTH_REQUEST_REJECTED = "auth.request.rejected"
    AUTH_KNOCK_MATCHED = "auth.knock.matched"
    AUTH_KNOCK_COMPLETE = "auth.knock.complete"
    AUTH_DOOR_OPENED = "auth.door.opened"
    AUTH_DOOR_EXPIRED = "auth.door.expired"
    AUTH_DOOR_MOVED = "auth.door.moved"
    AUTH_DOOR_REVOKED = "auth.door.revoked"
    AUTH_DOOR_USED = "auth.door.used"  # a single-use door's connection came: it stops counting
    AUTH_USERS_RELOADED = "auth.users.reloaded"
    AUTH_STARTED = "auth.started"
    AUTH_ALIVE = "auth.alive"
    # capture
    CAPTURE_STARTED = "capture.started"
    CAPTURE_PACKET_REJECTED = "capture.packet.rejected"
    CAPTURE_ALIVE = "capture.alive"
    # gate
    GATE_RULE_ADDED = "gate.rule.added"
    GATE_RULE_REMOVED = "gate.rule.removed"
    GATE_RULE_REFUSED = "gate.rule.refused"
    GATE_BACKEND_NONE = "gate.backend.none"
    GATE_CONNECTION_OPENED = "gate.connection.opened"
    GATE_CONNECTION_CLOSED = "gate.connection.closed"
    GATE_MESSAGE_DROPPED = "gate.message.dropped"
    GATE_ALIVE = "gate.alive"
    # relay
    RELAY_DOOR_LISTENING = "relay.door.listening"
    RELAY_DOOR_REFUSED = "relay.door.refused"
    RELAY_DOOR_CLOSED = "relay.door.closed"
    RELAY_CONNECTION_ACCEPTED = "relay.connection.accepted"
    RELAY_CONNECTION_REFUSED = "relay.connection.refused"
    RELAY_CONNECTION_CLOSED = "relay.connection.closed"
    RELAY_MESSAGE_DROPPED = "relay.message.dropped"
    RELAY_ALIVE = "relay.alive"


# Each stage's heartbeat, by stage name (dynknock/stage.py publishes f"{stage}.alive").
ALIVE: dict[str, Topic] = {topic.split(".")[0]: topic for topic in Topic if topic.endswith(".alive")}
REJECTIONS = (Topic.AUTH_REQUEST_REJECTED, Topic.CAPTURE_PACKET_REJECTED)
