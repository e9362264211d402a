"""The pure client session: packets it builds, when it resends, what ends it."""

from __future__ import annotations

import ipaddress
import itertools
import os

import pytest

from dynknock import protocol as proto
from dynknock.client.session import (
    KNOCK_PORT_HIGH,
    KNOCK_PORT_LOW,
    ClientSession,
    Command,
    Finished,
    Pause,
    Request,
    SendDatagram,
    SendKnocks,
    Timing,
    new_request,
)
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import Knock, Status

KEYS = SessionKeys.from_master(bytes(range(32)))
OTHER_KEYS = SessionKeys.from_master(bytes(32))
WALL_MS = 1_700_000_000_000
ME = ipaddress.IPv4Address("192.0.2.10")
REQUEST = Request(b"R" * 16, ME, "ssh", (Knock(15075, 0x54841860), Knock(4174, 0xE2AA5A03), Knock(44809, 0x902AC754)))


def make_session(timing: Timing | None = None) -> ClientSession:
    nonces = itertools.count(1)
    return ClientSession(KEYS, REQUEST, timing or Timing(), lambda n: next(nonces).to_bytes(n, "big"))


def open_client_packet(payload: bytes) -> tuple[proto.Header, proto.Message]:
    header = proto.parse_header(payload)
    assert isinstance(header, proto.Header)
    message = proto.open_packet(KEYS, header, payload)
    assert not isinstance(message, proto.Reject), message
    return header, message


def p3(status: Status, request_id: bytes = REQUEST.request_id, keys: SessionKeys = KEYS, port: int = 0,
       nonce: bytes = b"n" * 24) -> bytes:
    message = proto.P3(WALL_MS, request_id, status, port, 30 if port else 0, ME)
    return proto.seal(keys, message, user_hint(keys, hint_epoch(WALL_MS / 1000)), nonce)


def datagrams(commands: list[Command]) -> list[SendDatagram]:
    return [c for c in commands if isinstance(c, SendDatagram)]


def test_burst_is_p1_gap_knocks_p2() -> None:
    session = make_session()
    commands = session.start(100.0, WALL_MS)
    # By default no pause before P2: the server answers it as soon as the door is open.
    assert [type(c) for c in commands] == [SendDatagram, Pause, SendKnocks, SendDatagram]
    assert commands[2] == SendKnocks(REQUEST.knocks)
    assert commands[1] == Pause(Timing().knock_gap_s)
    p1_header, p1 = open_client_packet(datagrams(commands)[0].payload)
    p2_header, p2 = open_client_packet(datagrams(commands)[1].payload)
    assert p1 == proto.P1(WALL_MS, REQUEST.request_id, ME, "ssh", REQUEST.knocks)
    assert isinstance(p2, proto.P2) and p2.request_id == REQUEST.request_id
    # The hint is the one the server will look up for this minute.
    assert p1_header.hint == user_hint(KEYS, hint_epoch(WALL_MS / 1000))
    assert p1_header.nonce != p2_header.nonce


def test_p2_gap_when_asked() -> None:
    commands = make_session(Timing(p2_gap_s=0.01)).start(0.0, WALL_MS)
    assert [type(c) for c in commands] == [SendDatagram, Pause, SendKnocks, Pause, SendDatagram]
    assert commands[3] == Pause(0.01)


def test_no_gap_means_no_pause() -> None:
    commands = make_session(Timing(knock_gap_s=0)).start(0.0, WALL_MS)
    assert [type(c) for c in commands] == [SendDatagram, SendKnocks, SendDatagram]


def test_resend_keeps_request_and_knocks_but_seals_afresh() -> None:
    session = make_session()
    first = datagrams(session.start(0.0, WALL_MS))
    session.on_wake(session.wake_at, WALL_MS)  # the knock echo
    second = datagrams(session.on_wake(session.wake_at, WALL_MS + 500))
    h1, p1_first = open_client_packet(first[0].payload)
    h2, p1_second = open_client_packet(second[0].payload)
    assert isinstance(p1_first, proto.P1) and isinstance(p1_second, proto.P1)
    assert (p1_second.request_id, p1_second.knocks) == (p1_first.request_id, p1_first.knocks)
    assert p1_second.timestamp_ms == WALL_MS + 500  # fresh timestamp
    nonces = {open_client_packet(d.payload)[0].nonce for d in first + second}
    assert len(nonces) == 4  # every P1 and P2 has its own nonce: the server refuses replays
    assert session.bursts == 2


def test_backoff_doubles_up_to_the_cap_and_stops_at_the_deadline() -> None:
    timing = Timing(timeout_s=10.0, knock_gap_s=0.0, first_interval_s=0.25, max_interval_s=2.0, knock_echo_s=0.0)
    session = make_session(timing)
    session.start(0.0, WALL_MS)
    waits = []
    now = 0.0
    while True:
        waits.append(round(session.wake_at - now, 3))
        now = session.wake_at
        commands = session.on_wake(now, WALL_MS)
        if commands == [Finished(None)]:
            break
    assert waits[:5] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert now == pytest.approx(10.0)  # the last wait is cut to the deadline
    assert session.finished and session.on_wake(now + 1, WALL_MS) == []


def test_bursts_are_bounded_even_with_a_long_timeout() -> None:
    session = make_session(Timing(timeout_s=3600.0, max_bursts=4, knock_gap_s=0.0, knock_echo_s=0.0))
    session.start(0.0, WALL_MS)
    results = [session.on_wake(session.wake_at, WALL_MS) for _ in range(4)]
    assert results[-1] == [Finished(None)]
    assert session.bursts == 4


def test_pending_resends_soon_without_growing_the_interval() -> None:
    timing = Timing(knock_gap_s=0.0, first_interval_s=1.0, pending_wait_s=0.2, knock_echo_s=0.0)
    session = make_session(timing)
    session.start(0.0, WALL_MS)
    assert session.wake_at == pytest.approx(1.0)
    assert session.on_datagram(p3(Status.PENDING), 0.1) == []
    assert session.pending == 1
    assert session.wake_at == pytest.approx(0.3)
    # A second PENDING (answer to an older P2) does not push the resend further out.
    session.on_datagram(p3(Status.PENDING, nonce=b"m" * 24), 0.2)
    assert session.wake_at == pytest.approx(0.3)
    commands = session.on_wake(0.3, WALL_MS)
    assert [type(c) for c in commands] == [SendDatagram, SendKnocks, SendDatagram]  # P1 goes along too
    # The pending-driven resend did not double the interval: next wait is still 2 s (grown once at start).
    assert session.wake_at == pytest.approx(0.3 + 2.0)


@pytest.mark.parametrize("status", [Status.OPEN, Status.SERVICE_NOT_ALLOWED, Status.UNAVAILABLE,
                                    Status.ADDRESS_MISMATCH])
def test_final_answers_end_the_session(status: Status) -> None:
    session = make_session()
    session.start(0.0, WALL_MS)
    commands = session.on_datagram(p3(status, port=40001 if status is Status.OPEN else 0), 0.05)
    assert len(commands) == 1 and isinstance(commands[0], Finished)
    answer = commands[0].answer
    assert answer is not None and answer.status is status and answer.request_id == REQUEST.request_id
    assert session.finished
    assert session.on_datagram(p3(Status.OPEN, port=1), 0.06) == []  # nothing after the end


def test_anything_else_is_counted_and_ignored() -> None:
    session = make_session()
    session.start(0.0, WALL_MS)
    junk = [
        b"",  # empty
        bytes([1, 3]) + bytes(40),  # a P3 header, wrong size
        bytes([2, 3]) + bytes(96),  # wrong version
        p3(Status.OPEN, keys=OTHER_KEYS, port=1),  # forged: wrong key
        p3(Status.OPEN, request_id=b"X" * 16, port=1),  # authentic, but another request's
        datagrams(make_session().start(0.0, WALL_MS))[0].payload,  # a P1 reflected back at us
    ]
    tampered = bytearray(p3(Status.OPEN, port=1))
    tampered[-1] ^= 1
    junk.append(bytes(tampered))
    for packet in junk:
        assert session.on_datagram(packet, 0.01) == []
    assert not session.finished
    assert dict(session.ignored) == {"bad_size": 2, "bad_version": 1, "bad_tag": 2, "other_request": 1,
                                     "bad_type": 1}
    assert session.on_datagram(p3(Status.OPEN, port=40001), 0.02) != []


def test_start_twice_is_our_bug() -> None:
    session = make_session()
    session.start(0.0, WALL_MS)
    with pytest.raises(RuntimeError):
        session.start(0.0, WALL_MS)


def test_new_request_draws_distinct_ports_in_range_and_32_bit_isns() -> None:
    for _ in range(200):
        request = new_request("ssh", ME)
        ports = [k.port for k in request.knocks]
        assert len(set(ports)) == 3
        assert all(KNOCK_PORT_LOW <= p <= KNOCK_PORT_HIGH for p in ports)
        assert all(0 <= k.isn < 2**32 for k in request.knocks)
        assert len(request.request_id) == 16 and request.address == ME and request.service == "ssh"
    assert new_request("ssh", None).address is None


def test_new_request_redraws_a_repeated_port() -> None:
    draws = iter([5, 5, 5, 7, 9])
    request = new_request("ssh", ME, token_bytes=os.urandom, randbelow=lambda n: next(draws))
    assert [k.port for k in request.knocks] == [KNOCK_PORT_LOW + 5, KNOCK_PORT_LOW + 7, KNOCK_PORT_LOW + 9]


# --- the knock echo: the first burst's SYNs once more, shortly after P2 ----------------


def test_first_burst_echoes_the_knocks_once_before_any_resend() -> None:
    timing = Timing(knock_gap_s=0.005, knock_echo_s=0.005, first_interval_s=0.25)
    session = make_session(timing)
    session.start(0.0, WALL_MS)
    assert session.wake_at == pytest.approx(0.010)  # P2 left at 0.005; the echo 5 ms later
    assert session.on_wake(0.010, WALL_MS) == [SendKnocks(REQUEST.knocks)]
    assert session.bursts == 1
    assert session.wake_at == pytest.approx(0.005 + 0.25)  # the resend is where it was
    second = session.on_wake(session.wake_at, WALL_MS)
    assert [type(c) for c in second] == [SendDatagram, Pause, SendKnocks, SendDatagram]
    # Only the first burst races the server's filter (P1 is new to it): no echo after a resend.
    assert session.wake_at == pytest.approx(0.255 + 0.005 + 0.5)


def test_an_answer_before_the_echo_means_no_echo() -> None:
    session = make_session(Timing(knock_echo_s=0.005))
    session.start(0.0, WALL_MS)
    assert session.on_datagram(p3(Status.OPEN, port=40001), 0.007) != []
    assert session.on_wake(0.010, WALL_MS) == []


def test_pending_before_the_echo_keeps_both_echo_and_the_quick_resend() -> None:
    timing = Timing(knock_gap_s=0.005, knock_echo_s=0.005, pending_wait_s=0.02)
    session = make_session(timing)
    session.start(0.0, WALL_MS)
    session.on_datagram(p3(Status.PENDING), 0.006)  # a SYN raced ahead of the server's filter
    assert session.wake_at == pytest.approx(0.010)
    assert session.on_wake(0.010, WALL_MS) == [SendKnocks(REQUEST.knocks)]
    assert session.wake_at == pytest.approx(0.026)  # still resent soon if the echo did not do it
    assert [type(c) for c in session.on_wake(0.026, WALL_MS)] == [SendDatagram, Pause, SendKnocks, SendDatagram]


def test_no_echo_when_disabled_or_past_the_deadline() -> None:
    session = make_session(Timing(knock_echo_s=0.0, first_interval_s=0.25))
    session.start(0.0, WALL_MS)
    assert session.wake_at == pytest.approx(0.005 + 0.25)
    late = make_session(Timing(timeout_s=0.008, knock_echo_s=0.005))
    late.start(0.0, WALL_MS)
    assert late.on_wake(late.wake_at, WALL_MS) == [Finished(None)]


def test_a_bound_session_seals_version_2_for_its_server_and_takes_only_p3_bound_to_it() -> None:
    server, elsewhere = ipaddress.ip_address("198.18.0.11"), ipaddress.ip_address("198.18.0.1")
    nonces = itertools.count(1)
    session = ClientSession(KEYS, REQUEST, Timing(), lambda n: next(nonces).to_bytes(n, "big"), server=server)
    sent = datagrams(session.start(0.0, WALL_MS))
    for datagram in sent:
        header = proto.parse_header(datagram.payload)
        assert isinstance(header, proto.Header) and header.version == proto.BOUND_VERSION
        assert not isinstance(proto.open_packet(KEYS, header, datagram.payload, server), proto.Reject)
        assert proto.open_packet(KEYS, header, datagram.payload, elsewhere) == proto.Reject(proto.RejectReason.BAD_TAG)
    answer = proto.P3(WALL_MS, REQUEST.request_id, Status.OPEN, 40001, 30, ME)
    hint = user_hint(KEYS, hint_epoch(WALL_MS / 1000))
    session.on_datagram(proto.seal(KEYS, answer, hint, b"m" * 24, elsewhere), 0.1)  # bound to another gateway
    assert session.ignored == {"bad_tag": 1} and not session.finished
    session.on_datagram(proto.seal(KEYS, answer, hint, b"o" * 24, server), 0.1)
    assert session.finished
