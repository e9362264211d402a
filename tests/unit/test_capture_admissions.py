"""capture/fairness.py Admissions: a P1's sender passes the kernel filter to any port for a short while,
bounded in time, in SYNs and in number, and narrowed as soon as auth names its pairs."""

from __future__ import annotations

from dynknock.capture.fairness import Admissions

H = b"hint-one"


def test_a_p1_admits_its_sender_until_auth_names_it() -> None:
    table = Admissions(seconds=1.0, syns=5, limit=4)
    assert table.p1("198.19.0.1", H, 10.0)
    assert "198.19.0.1" in table and table.sources() == ["198.19.0.1"]
    assert not table.p1("198.19.0.1", H, 10.1)  # again: the filter already admits it
    assert not table.narrowed(["198.19.0.2"])
    assert table.narrowed(["198.19.0.1", "198.19.0.2"])
    assert len(table) == 0 and table.total == 1


def test_an_admission_ends_after_its_time() -> None:
    table = Admissions(seconds=1.0, syns=5, limit=4)
    table.p1("198.19.0.1", H, 10.0)
    table.p1("198.19.0.2", H, 10.5)
    assert not table.expire(10.99)
    assert table.expire(11.0)
    assert table.sources() == ["198.19.0.2"]
    table.p1("198.19.0.2", H, 11.2)  # a resent P1 extends it
    assert not table.expire(11.6)
    assert table.expire(12.2) and len(table) == 0


def test_more_syns_than_a_knock_sends_end_it() -> None:
    table = Admissions(seconds=1.0, syns=3, limit=4)
    table.p1("198.19.0.1", H, 10.0)
    assert not table.syn("198.19.0.1")
    assert not table.syn("198.19.0.1")
    assert table.syn("198.19.0.1")  # the third: closed
    assert "198.19.0.1" not in table
    assert not table.syn("198.19.0.1") and not table.syn("198.19.0.9")


def test_at_most_limit_sources_at_once() -> None:
    table = Admissions(seconds=1.0, syns=3, limit=2)
    assert table.p1("198.19.0.1", H, 10.0) and table.p1("198.19.0.2", H, 10.0)
    assert not table.p1("198.19.0.3", H, 10.0)
    assert "198.19.0.3" not in table and table.full == 1
    table.expire(11.0)
    assert table.p1("198.19.0.3", H, 11.0)


def test_one_hints_junk_cannot_take_the_other_hints_places() -> None:
    """Junk under one sniffed live hint from spoofed sources fills that hint's places only."""
    table = Admissions(seconds=1.0, syns=3, limit=8, per_hint=2)
    assert table.p1("198.19.0.1", H, 10.0) and table.p1("198.19.0.2", H, 10.0)
    assert not table.p1("198.19.0.3", H, 10.0)
    assert table.p1("198.19.0.4", b"hint-two", 10.0)
    table.narrowed(["198.19.0.1"])
    assert table.p1("198.19.0.3", H, 10.1)
