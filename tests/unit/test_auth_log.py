"""auth's log stays bounded whatever a key holder does."""

from __future__ import annotations

import logging

import pytest

from dynknock.auth.userlog import UserLog


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_user_cycling_doors_gets_a_burst_then_one_line_a_second(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.auth.userlog")
    caplog.set_level(logging.INFO, logger=log.name)
    limiter = UserLog(log, rate=1.0, burst=20.0)
    t = 1000.0
    for i in range(36_000):  # 36 s at 1,000 lines a second, as in the issue
        limiter("alice", f"door {i}", t + i / 1000)
    lines = _lines(caplog)
    door_lines = [line for line in lines if line.startswith("door")]
    assert 20 + 34 <= len(door_lines) <= 20 + 37  # the burst, then one a second
    summaries = [line for line in lines if "suppressed" in line]
    assert summaries and all("user alice" in line for line in summaries)
    limiter.summarise(t + 100)
    total = sum(int(line.split()[0].strip("(")) for line in _lines(caplog) if "suppressed" in line)
    assert total == sum(int(line.rsplit(" ", 1)[1].rstrip(")")) for line in _lines(caplog) if "suppressed" in line)
    assert total + len(door_lines) == 36_000  # every line is either written or counted


def test_a_users_flood_leaves_other_users_their_lines(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.auth.userlog2")
    caplog.set_level(logging.INFO, logger=log.name)
    limiter = UserLog(log, rate=1.0, burst=20.0, total_rate=50.0, total_burst=500.0)
    for i in range(10_000):
        limiter("mallory", "m", 5.0 + i / 10_000)
    for i in range(4):
        limiter("bob", f"bob {i}", 6.0)
    assert [line for line in _lines(caplog) if line.startswith("bob")] == [f"bob {i}" for i in range(4)]


def test_all_users_together_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.auth.userlog3")
    caplog.set_level(logging.INFO, logger=log.name)
    limiter = UserLog(log, rate=1.0, burst=20.0, total_rate=50.0, total_burst=500.0)
    for i in range(100_000):  # 10,000 users, 10 s
        limiter(f"u{i % 10_000}", "x", 1.0 + i / 10_000)
    limiter.summarise(20.0)
    written = [line for line in _lines(caplog) if line == "x"]
    assert len(written) <= 500 + 50 * 10 + 1
    summaries = [line for line in _lines(caplog) if "suppressed" in line]
    assert 1 <= len(summaries) <= 2 and "more users" in summaries[0]  # one line per period, not per user
