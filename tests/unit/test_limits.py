"""dynknock/limits.py's two limiters, the only ones the stages use: PerSecond (log lines and
reports of remote garbage) and TokenBuckets (auth's per-user log, capture's shedding).
Time is passed in: no clock, no sleep."""

from __future__ import annotations

import logging

import pytest

from dynknock.limits import PerSecond, TokenBuckets
from dynknock.stage import RateLimitedLog


def test_per_second_takes_its_limit_in_each_whole_second_and_counts_the_rest() -> None:
    budget = PerSecond(3)
    assert [budget.take(10.0 + i / 10) for i in range(5)] == [True, True, True, False, False]
    assert budget.refused == 2 and budget.ended(10.9) == 0  # the second is not over
    assert budget.ended(11.0) == 2
    assert [budget.take(11.0) for _ in range(4)] == [True, True, True, False]  # a new second, a new limit
    assert budget.refused == 1 and budget.ended(11.5) == 0


def test_per_second_windows_are_whole_seconds() -> None:
    """A burst at a second's end and the next one's start gets twice the limit (by design: cheap)."""
    budget = PerSecond(2)
    assert [budget.take(t) for t in (4.98, 4.99, 4.995, 5.0, 5.01, 5.02)] == [True, True, False, True, True, False]


def test_rate_limited_log_writes_its_limit_then_one_summary(caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    log = logging.getLogger("test.stage.ratelimited")
    caplog.set_level(logging.INFO, logger=log.name)
    clock = [100.2]
    monkeypatch.setattr("dynknock.stage.time.monotonic", lambda: clock[0])
    limited = RateLimitedLog(log, per_second=10)
    for i in range(25):
        limited("line %d", i)
    clock[0] = 101.0
    limited("after")
    assert [r.getMessage() for r in caplog.records] == \
        [f"line {i}" for i in range(10)] + ["(15 similar lines suppressed)", "after"]


def test_a_bucket_starts_full_spends_a_token_a_take_and_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3.0)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b", 0.0)  # each key its own bucket
    assert not buckets.take("a", 0.4)  # 0.8 tokens
    assert buckets.take("a", 0.5) and not buckets.take("a", 0.5)  # 1.0 at 0.5 s: taken
    assert [buckets.take("a", 100.0) for _ in range(4)] == [True, True, True, False]  # never past the burst


def test_has_tests_without_taking() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0)
    bucket = buckets.has("a", 5.0)
    assert bucket is not None and buckets.has("a", 5.0) is not None
    bucket[0] -= 1.0  # the caller takes once every bucket it needs has a token
    assert buckets.has("a", 5.0) is None and buckets.has("a", 6.0) is not None


def test_a_bounded_table_drops_the_bucket_made_longest_ago() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1.0, limit=2)
    assert buckets.take("a", 0.0) and buckets.take("b", 0.0)
    assert buckets.take("c", 0.0) and len(buckets) == 2
    assert buckets.take("a", 0.0)  # "a" went first: it comes back full
    assert not buckets.take("c", 0.0)  # "c" stayed, and is empty


def test_forget_full_keeps_only_buckets_still_refilling() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2.0)
    buckets.take("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("b", 0.0)
    buckets.forget_full(1.5)  # a: full again at 1.0; b: 1.5 of 2
    assert len(buckets) == 1
    assert buckets.take("b", 1.5) and not buckets.take("b", 1.5)  # b kept its state
