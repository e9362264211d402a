"""knock-tap's default lines: correct English and ISO-8601 time stamps; --paper keeps the SIG^2 wording."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import events as ev
from dynknock import tap
from dynknock.bus import Event
from tests.unit.test_events import T0, event

OPERATOR_LINES = [
    (event("auth.request.received", user="alice", client="203.0.113.7", source="192.168.1.20"),
     "Port request from alice for 203.0.113.7 (sent from 192.168.1.20)."),
    (event("auth.knock.complete", user="foobar", client="10.0.0.3"), "Knock sequence of foobar (10.0.0.3) complete."),
    (event("auth.door.opened", user="foobar", client="10.0.0.3", port=45123, latency_ms=12),
     "Opened door port 45123 for foobar (10.0.0.3) in 12 ms."),
    (event("auth.door.expired", user="foobar", client="10.0.0.3", port=45123),
     "Door port 45123 for 10.0.0.3 timed out and closed."),
    (event("auth.request.retry", user="bob", client="10.0.0.4"), "Port request repeated by bob (10.0.0.4)."),
    (event("auth.request.replaced", user="bob", client="10.0.0.4"),
     "Older request of bob (10.0.0.4) replaced by a newer one."),
    (event("gate.rule.added", port=41000, client="198.18.0.2", timeout_ms=10000),
     "Firewall opened port 41000 for 198.18.0.2 (10000 ms)."),
]


@pytest.mark.parametrize("item,text", OPERATOR_LINES)
def test_operator_line_is_correct_english_with_an_iso_time_stamp(utc: None, item: Event, text: str) -> None:
    assert tap.operator_line(item) == f"2004-05-02T14:39:50+00:00 {text}"


def test_no_paper_typo_in_any_default_line() -> None:
    fields: dict[str, Any] = {"user": "u", "client": "c", "source": "s", "port": 1, "latency_ms": 1, "left": 1}
    for topic in ev._TEMPLATES:
        line = tap.operator_line(Event(topic, "x", T0, fields))
        assert not re.search(r"Binded|timeout and closed|Knock\?|Can I come in|\.\s\(", line), line


def test_iso_time_stamp_in_local_time_with_its_offset(utc: None) -> None:
    os.environ["TZ"] = "Etc/GMT-2"  # POSIX sign: two hours east of UTC
    time.tzset()
    line = tap.operator_line(event("auth.started", T0 + 0.999))
    assert line == "2004-05-02T16:39:50+02:00 Server started."
    stamp = line.split(" ", 1)[0]
    assert dt.datetime.fromisoformat(stamp).timestamp() == int(T0)


def test_paper_option_keeps_the_paper_wording(utc: None) -> None:
    item = event("auth.door.opened", user="foobar", client="10.0.0.3", port=45123, latency_ms=12)
    assert tap.format_event(item, as_json_lines=False, colour=False, paper=True) == \
        "2004-05-02 14:39.50 Binded port 45123 for foobar. (10.0.0.3) in 12 ms"
    assert tap.format_event(item, as_json_lines=False, colour=False) == tap.operator_line(item)


@pytest.mark.parametrize("t", [math.inf, -math.inf, math.nan, 1e300, -1e300])
def test_impossible_time_does_not_raise(t: float) -> None:
    assert tap.operator_line(event("auth.started", t)).endswith(" Server started.")


@settings(max_examples=300)
@given(topic=st.one_of(st.sampled_from(sorted(ev._TEMPLATES)), st.text(max_size=20)),
       fields=st.dictionaries(st.sampled_from(["user", "client", "source", "port", "latency_ms", "left", "x"]),
                              st.one_of(st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers())),
                              max_size=6))
def test_operator_line_never_raises(topic: str, fields: dict[str, Any]) -> None:
    assert isinstance(tap.operator_line(Event(topic, "x", T0, fields)), str)
