"""Event sentences: the SIG^2 daemon's lines, the rejection line, and the fallback that never raises."""

from __future__ import annotations

import math
import os
import re
import time
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import bus
from dynknock import events as ev
from dynknock.bus import Event

T0 = 1_083_508_790.0  # 2004-05-02 14:39:50 UTC, the paper's era


def event(topic: str, t: float = T0, **fields: Any) -> Event:
    """A sample event as its stage (the topic's first word) publishes it, at `t`."""
    return Event(topic, topic.split(".", 1)[0], t, fields)


# --- the paper's lines --------------------------------------------------------------------------------

PAPER_LINES = [
    (event("auth.request.received", user="foobar", client="10.0.0.3", source="10.0.0.3"),
     "Port request received from foobar. (10.0.0.3, 10.0.0.3)"),
    (event("auth.request.received", user="alice", client="203.0.113.7", source="192.168.1.20"),
     "Port request received from alice. (203.0.113.7, 192.168.1.20)"),
    (event("auth.knock.complete", user="foobar", client="10.0.0.3"),
     "Correct knock sequence received from foobar (10.0.0.3, 10.0.0.3)."),
    (event("auth.door.opened", user="foobar", client="10.0.0.3", port=45123, latency_ms=12),
     "Binded port 45123 for foobar. (10.0.0.3) in 12 ms"),
    (event("auth.door.expired", user="foobar", client="10.0.0.3", port=45123),
     "Port 45123 for 10.0.0.3 timeout and closed."),
    (event("auth.door.used", user="foobar", client="10.0.0.3", port=45123, seen_by="gate"),
     "Port 45123 for foobar (10.0.0.3) used: its one connection came (gate)."),
    (event("auth.knock.matched", user="bob", client="2001:db8::7", port=15075, left=2),
     "Knock from bob (2001:db8::7) on port 15075, 2 to go."),
    (event("auth.request.retry", user="bob", client="10.0.0.4"), "Port request repeated by bob. (10.0.0.4)"),
    (event("auth.request.replaced", user="bob", client="10.0.0.4"),
     "Older request of bob replaced by a newer one. (10.0.0.4)"),
    (event("auth.users.reloaded", users=3), "Users file reloaded: 3 users."),
    (event("auth.started", control_port=62201), "Server started."),
    (event("gate.rule.added", port=40001, client="10.0.0.3", timeout_ms=30000),
     "Firewall opened port 40001 for 10.0.0.3 (30000 ms)."),
    (event("gate.rule.removed", port=40001, client="10.0.0.3"), "Firewall closed port 40001 for 10.0.0.3."),
    (event("gate.rule.refused", port=40001, client="10.0.0.3", reason="late"),
     "Firewall refused port 40001 for 10.0.0.3: late"),
    (event("gate.backend.none", warning="relay only"), "WARNING: no firewall backend: relay only"),
    (event("relay.door.listening", port=40001, client="10.0.0.3"), "Relay listening on port 40001 for 10.0.0.3."),
    (event("relay.door.refused", port=40001, client="10.0.0.3", reason="busy"),
     "Relay refused port 40001 for 10.0.0.3: busy"),
    (event("relay.door.closed", port=40001, client="10.0.0.3", why="window"),
     "Relay closed port 40001 for 10.0.0.3 (window)."),
    (event("relay.connection.accepted", port=40001, client="10.0.0.3"),
     "Connection from 10.0.0.3 on port 40001 accepted."),
    (event("relay.connection.refused", port=40001, peer="10.0.0.9", reason="door refused a foreign IP"),
     "Connection to port 40001 from 10.0.0.9 refused: door refused a foreign IP."),
    (event("relay.connection.closed", port=40001, client="10.0.0.3", bytes_to_service=10, bytes_to_client=20),
     "Connection from 10.0.0.3 on port 40001 closed: 10 bytes in, 20 bytes out."),
    (event("capture.started", interface="eth0"), "Capture started on eth0."),
    (event("gate.connection.opened", port=64001, client="10.0.0.3", client_port=5555),
     "Connection from 10.0.0.3 through the kernel door on port 64001."),
    (event("gate.connection.closed", port=64001, client="10.0.0.3", bytes_in=278, bytes_out=5268),
     "Connection from 10.0.0.3 through the kernel door on port 64001 closed: 278 bytes in, 5268 bytes out "
     "(IP packets)."),
]


@pytest.mark.parametrize("item,line", PAPER_LINES, ids=lambda v: getattr(v, "topic", None))
def test_describe_known_topics(item: Event, line: str) -> None:
    assert ev.describe(item) == line


def test_every_template_is_exercised() -> None:
    assert {item.topic for item, _ in PAPER_LINES} == set(ev._TEMPLATES)


def test_extra_fields_do_not_change_the_sentence() -> None:
    item = event("auth.request.received", user="foobar", client="10.0.0.3", source="10.0.0.3", hint="ab", n=1)
    assert ev.describe(item) == "Port request received from foobar. (10.0.0.3, 10.0.0.3)"


# --- rejections --------------------------------------------------------------------------------------


def test_rejection_with_user_and_detail() -> None:
    item = event("auth.request.rejected", reason="address_mismatch", source="10.0.0.9", user="alice",
                 detail="declared 10.0.0.3")
    assert ev.describe(item) == "Rejected alice from 10.0.0.9: address_mismatch (declared 10.0.0.3)."


def test_rejection_with_user_no_detail() -> None:
    item = event("auth.request.rejected", reason="replay", source="10.0.0.9", user="alice")
    assert ev.describe(item) == "Rejected alice from 10.0.0.9: replay."


def test_rejection_without_user() -> None:
    item = event("auth.request.rejected", reason="bad_tag", source="10.0.0.9")
    assert ev.describe(item) == "Rejected from 10.0.0.9: bad_tag."


def test_rejection_empty_detail_is_left_out() -> None:
    item = event("auth.request.rejected", reason="bad_size", source="2001:db8::9", detail="")
    assert ev.describe(item) == "Rejected from 2001:db8::9: bad_size."


def test_rejection_missing_source() -> None:
    assert ev.describe(event("auth.request.rejected", reason="bad_tag")) == "Rejected from ?: bad_tag."


def test_rejection_with_no_fields_does_not_raise() -> None:
    line = ev.describe(event("auth.request.rejected"))
    assert line.startswith("Rejected from ?: ") and line.endswith(".")


# --- fallback ---------------------------------------------------------------------------------------


def test_unknown_topic_falls_back_to_sorted_fields() -> None:
    item = event("relay.message.dropped", reason="not msgpack", count=2)
    assert ev.describe(item) == "relay.message.dropped count=2 reason=not msgpack"


def test_unknown_topic_without_fields_is_the_topic() -> None:
    assert ev.describe(event("gate.alive")) == "gate.alive"


@pytest.mark.parametrize("item,expected", [
    (event("auth.request.received", user="foobar"), "auth.request.received user=foobar"),
    (event("auth.door.opened"), "auth.door.opened"),
    (event("relay.connection.closed", port=1, client="10.0.0.3"), "relay.connection.closed client=10.0.0.3 port=1"),
    (event("capture.started", iface="eth0"), "capture.started iface=eth0"),
])
def test_missing_fields_fall_back_instead_of_raising(item: Event, expected: str) -> None:
    assert ev.describe(item) == expected


def test_describe_with_odd_values() -> None:
    item = event("gate.rule.added", port=None, client=["a", 1], timeout_ms={"x": 1.5})
    assert ev.describe(item) == "Firewall opened port None for ['a', 1] ({'x': 1.5} ms)."
    braces = event("gate.rule.refused", port="{port}", client="{0}", reason="{}")
    assert ev.describe(braces) == "Firewall refused port {port} for {0}: {}"  # values are never templates


@pytest.mark.parametrize("topic", ["auth.started", "auth.request.received", "auth.request.rejected", "x.y"])
def test_describe_of_a_decoded_event_with_non_string_keys_never_raises(topic: str) -> None:
    """Events come off the bus; the tap must never die of one, whatever its fields look like."""
    body = {"v": bus.BUS_VERSION, "k": "event", "topic": topic, "stage": "auth", "time": T0,
            "fields": {b"user": "x", "user": "y", b"source": 1}}
    frame = msgpack.packb(body, use_bin_type=True)
    try:
        item = bus.decode_as(frame, Event)
    except bus.BadMessage:
        return  # refused at the door: fine
    assert isinstance(ev.describe(item), str)
    assert isinstance(ev.paper_line(item), str)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)
field_names = st.one_of(st.sampled_from(["user", "client", "source", "port", "reason", "detail", "left",
                                         "latency_ms", "timeout_ms", "why", "peer", "interface", "users",
                                         "warning", "bytes_to_service", "bytes_to_client"]), st.text(max_size=10))


@settings(max_examples=500)
@given(topic=st.one_of(st.sampled_from([*ev._TEMPLATES, "auth.request.rejected"]), st.text(max_size=30)),
       fields=st.dictionaries(field_names, json_values, max_size=8),
       t=st.floats(min_value=0, max_value=4_000_000_000))
def test_describe_and_paper_line_never_raise(topic: str, fields: dict[str, Any], t: float) -> None:
    item = Event(topic, "x", t, fields)
    line = ev.describe(item)
    assert isinstance(line, str)
    assert line or not (topic or fields)
    assert ev.paper_line(item).endswith(" " + line)


# --- paper_line and as_json --------------------------------------------------------------------------


def test_paper_line_format(utc: None) -> None:
    item = event("auth.request.received", user="foobar", client="10.0.0.3", source="10.0.0.3")
    assert ev.paper_line(item) == "2004-05-02 14:39.50 Port request received from foobar. (10.0.0.3, 10.0.0.3)"


def test_paper_line_uses_local_time(utc: None) -> None:
    item = Event("gate.alive", "gate", T0 + 0.999, {})
    assert ev.paper_line(item) == "2004-05-02 14:39.50 gate.alive"  # seconds truncated, not rounded
    os.environ["TZ"] = "Etc/GMT-2"  # POSIX sign: two hours east of UTC
    time.tzset()
    assert ev.paper_line(item) == "2004-05-02 16:39.50 gate.alive"


def test_paper_line_shape_now() -> None:
    line = ev.paper_line(Event("auth.started", "auth", time.time(), {}))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}\.\d{2} Server started\.", line)


@pytest.mark.parametrize("t", [math.inf, -math.inf, math.nan, 1e300, -1e300])
def test_paper_line_with_an_impossible_time_does_not_raise(t: float) -> None:
    line = ev.paper_line(Event("auth.started", "auth", t, {}))
    assert line.endswith(" Server started.")


def test_as_json() -> None:
    item = event("gate.rule.added", port=40001, client="10.0.0.3", timeout_ms=30000)
    assert ev.as_json(item) == {"time": T0, "topic": "gate.rule.added", "stage": "gate", "port": 40001,
                                "client": "10.0.0.3", "timeout_ms": 30000}
