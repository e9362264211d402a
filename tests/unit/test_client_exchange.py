"""The whole client against a fake server over real UDP on 127.0.0.1.

The fake server runs the real auth.engine.Engine: datagrams from its UDP socket
go to engine.on_datagram and its SendReply payloads go back. It cannot sniff, so
the client's SYN sender is replaced by one that hands each knock straight to
engine.on_syn; doors are confirmed (or failed) at once. Loss is simulated by
dropping chosen packets, which is the only thing a real network adds here.
"""

from __future__ import annotations

import _socket
import io
import ipaddress
import os
import secrets
import socket
import sys
import threading
import time
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dynknock import protocol as proto
from dynknock.auth.engine import Action, Engine, EngineConfig, OpenDoor, SendReply, Service
from dynknock.auth.replay import ReplayCache
from dynknock.auth.users import User
from dynknock.client.app import Io
from dynknock.client.knock import Clock, Endpoint, connect_udp, run_session
from dynknock.client.main import (
    EXIT_NO_ANSWER,
    EXIT_OK,
    EXIT_SERVICE_NOT_ALLOWED,
    EXIT_UNAVAILABLE,
    run,
)
from dynknock.client.session import ClientSession, Timing, new_request
from dynknock.keys import SessionKeys, derive_master_key, encode_key, hint_epoch, user_hint
from dynknock.protocol import IPAddress, KnockKind, PacketType, Status
from tests.unit.test_client_syn import has_ipv6_loopback

LOCALHOST = ipaddress.IPv4Address("127.0.0.1")
MASTER = bytes(range(100, 132))
KEYS = SessionKeys.from_master(MASTER)
PASSWORD = "correct horse battery staple"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Seen:
    """What the fake server decrypted, for assertions about what the client sent."""

    p1: list[tuple[proto.Header, proto.P1]] = field(default_factory=list)
    p2: list[tuple[proto.Header, proto.P2]] = field(default_factory=list)
    replies: list[Status] = field(default_factory=list)
    syns: list[tuple[IPAddress, IPAddress, int, int]] = field(default_factory=list)
    doors: list[OpenDoor] = field(default_factory=list)
    datagrams: int = 0


class FakeServer:
    def __init__(self, users: dict[str, User], *, drop_p1: int = 0, drop_knock_rounds: int = 0,
                 silent: bool = False, door_ok: bool = True, door_port: int | None = None,
                 junk_before_first_reply: bool = False, address: str = "127.0.0.1") -> None:
        low, high = (door_port, door_port) if door_port else (40000, 40999)
        config = EngineConfig(services={"ssh": Service("ssh", "127.0.0.1", 22)},
                              door_port_low=low, door_port_high=high)
        self.engine = Engine(config, users, ReplayCache(), os.urandom, secrets.randbelow)
        self.keys = {name: SessionKeys.from_master(u.master_key) for name, u in users.items()}
        self.address = ipaddress.ip_address(address)
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.drop_p1 = drop_p1
        self.drop_knock_rounds = drop_knock_rounds
        self.silent = silent
        self.door_ok = door_ok
        self.junk_pending = junk_before_first_reply
        self.seen = Seen()
        self.lock = threading.Lock()  # the engine is single-threaded; SYNs arrive on the client's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._knocks_in_round = 0

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        assert not self._thread.is_alive(), "the fake server did not stop"
        self.sock.close()

    # --- UDP side ----------------------------------------------------------------

    def _loop(self) -> None:
        """Serve until stopped, then whatever is still queued: Linux's loopback delivers a datagram
        within the sender's sendto call, so once the client has returned, ``seen`` is all it sent."""
        while True:
            stopping = self._stop.is_set()
            if stopping:
                self.sock.setblocking(False)
            try:
                payload, source = self.sock.recvfrom(2048)
                host, port = source[0], source[1]
            except TimeoutError:
                continue
            except BlockingIOError:
                return
            except OSError:
                return
            with self.lock:
                self.seen.datagrams += 1
                self._record(payload)
                kind = payload[1] if len(payload) > 1 else 0
                if self.silent:
                    continue
                if kind == PacketType.P1 and self.drop_p1 > 0:
                    self.drop_p1 -= 1  # "lost on the way"
                    continue
                if kind == PacketType.P2 and self.junk_pending:
                    self.junk_pending = False
                    self._send_junk(host, port)
                actions = self.engine.on_datagram(ipaddress.ip_address(host), port, self.address, payload, now_ms())
                self._execute(actions)

    def _record(self, payload: bytes) -> None:
        header = proto.parse_header(payload)
        if isinstance(header, proto.Reject):
            return
        for keys in self.keys.values():
            message = proto.open_packet(keys, header, payload)
            if isinstance(message, proto.P1):
                self.seen.p1.append((header, message))
            elif isinstance(message, proto.P2):
                self.seen.p2.append((header, message))

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendReply):
                self.seen.replies.append(self._status_of(action.payload))
                self.sock.sendto(action.payload, (str(action.destination), action.port))
            elif isinstance(action, OpenDoor):
                self.seen.doors.append(action)
                for stage in ("gate", "relay"):
                    more = self.engine.on_door_result(action.door_id, stage, self.door_ok,
                                                      "" if self.door_ok else "nft failed", now_ms())
                    self._execute(more)

    def _status_of(self, payload: bytes) -> Status:
        header = proto.parse_header(payload, accept=(PacketType.P3,))
        assert isinstance(header, proto.Header)
        for keys in self.keys.values():
            message = proto.open_packet(keys, header, payload)
            if isinstance(message, proto.P3):
                return message.status
        raise AssertionError("the engine sealed a P3 no user can open")

    def _send_junk(self, host: str, port: int) -> None:
        ts = now_ms()
        wrong = SessionKeys.from_master(bytes(32))
        forged = proto.P3(ts, b"?" * 16, Status.OPEN, 1, 30, LOCALHOST)
        other = proto.P3(ts, b"!" * 16, Status.OPEN, 2, 30, LOCALHOST)
        for packet in (bytes([1, 3]) + bytes(20),
                       proto.seal(wrong, forged, user_hint(wrong, hint_epoch(ts / 1000)), os.urandom(24)),
                       proto.seal(KEYS, other, user_hint(KEYS, hint_epoch(ts / 1000)), os.urandom(24))):
            self.sock.sendto(packet, (host, port))

    # --- SYN side (what capture would report) --------------------------------------

    def on_syn(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None:
        with self.lock:
            self.seen.syns.append((source, destination, port, isn))
            self._knocks_in_round += 1
            if self.drop_knock_rounds > 0:
                if self._knocks_in_round % 3 == 0:
                    self.drop_knock_rounds -= 1
                return
            self._execute(self.engine.on_syn(source, port, isn, now_ms()))


class FakeSynSender:
    """Stands in for the raw socket: no root needed, and the server 'sees' every SYN
    (without a server, the SYNs go nowhere)."""

    kind = KnockKind.SYN

    def __init__(self, server: FakeServer | None) -> None:
        self.server = server
        self.closed = False

    def send(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None:
        assert not self.closed, "a SYN after the raw socket was closed"
        if self.server is not None:
            self.server.on_syn(source, destination, port, isn)

    def close(self) -> None:
        self.closed = True


def alice(master: bytes = MASTER, nat: bool = False) -> dict[str, User]:
    return {"alice": User("alice", master, ("ssh",), nat=nat)}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "alice.key"
    path.write_text(encode_key(MASTER) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def config_args(tmp_path: Path) -> list[str]:
    (tmp_path / "client.toml").write_text("")
    return ["-c", str(tmp_path / "client.toml")]


@dataclass
class Result:
    code: int
    out: str
    err: str


def knock(server: FakeServer, argv: list[str], stdin: str = "", **io_extra: object) -> Result:
    out, err = io.StringIO(), io.StringIO()
    options: dict[str, object] = {"open_syn_sender": lambda family: FakeSynSender(server)} | io_extra
    io_ = Io(stdin=io.StringIO(stdin), stdout=out, stderr=err, environ={"USER": "alice"},
             **options)  # type: ignore[arg-type]
    code = run([str(server.address), "-p", str(server.port), *argv], io_)
    return Result(code, out.getvalue(), err.getvalue())


# --- the happy path ------------------------------------------------------------------


def test_door_opens(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    assert result.code == EXIT_OK, result.err
    assert len(server.seen.doors) == 1
    door = server.seen.doors[0]
    assert door.client == LOCALHOST and door.service == "ssh"
    lines = result.out.splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == ["Knock?"] * 3
    p1 = server.seen.p1[0][1]
    for number, (line, k) in enumerate(zip(lines[:3], p1.knocks, strict=True), 1):
        assert line == f"Knock? ({number} - Port = {k.port}, ISN = {k.isn:08X})"
    assert lines[3] == "Can I come in? Waiting for response."
    assert lines[4] == f"Door is open at 127.0.0.1 port {door.port} for 30 seconds."
    assert len(lines) == 5 and "\r" not in result.out  # not a TTY: no countdown
    # The knocks left from our real address to the server, with the declared ports and ISNs.
    assert {(s, d, p, i) for s, d, p, i in server.seen.syns} == {(LOCALHOST, LOCALHOST, k.port, k.isn)
                                                                 for k in p1.knocks}
    assert p1.address == LOCALHOST and p1.service == "ssh"
    assert server.seen.replies[-1] is Status.OPEN
    assert result.err == ""


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
def test_door_opens_over_ipv6(key_file: Path, config_args: list[str]) -> None:
    families: list[socket.AddressFamily] = []
    with FakeServer(alice(), address="::1") as server:

        def open_sender(family: socket.AddressFamily) -> FakeSynSender:
            families.append(family)
            return FakeSynSender(server)

        result = knock(server, ["-k", str(key_file), "-6", *config_args], open_syn_sender=open_sender)
    assert result.code == EXIT_OK, result.err
    v6 = ipaddress.IPv6Address("::1")
    assert families == [socket.AF_INET6]  # the raw socket is opened for the family of the server
    assert server.seen.p1[0][1].address == v6 and server.seen.doors[0].client == v6
    assert {(s, d) for s, d, _, _ in server.seen.syns} == {(v6, v6)}
    assert f"Door is open at ::1 port {server.seen.doors[0].port} for 30 seconds." in result.out


def test_port_unreachable_is_reported(key_file: Path, config_args: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    err = io.StringIO()
    io_ = Io(stdout=io.StringIO(), stderr=err, environ={}, open_syn_sender=lambda family: FakeSynSender(None))
    code = run(["127.0.0.1", "-p", str(closed), "-k", str(key_file), "--timeout", "0.6", *config_args], io_)
    assert code == EXIT_NO_ANSWER
    assert "answered 'port unreachable'" in err.getvalue() and "a dynknock server never does" in err.getvalue()


def test_password_from_stdin(config_args: list[str]) -> None:
    with FakeServer(alice(derive_master_key("alice", PASSWORD))) as server:
        result = knock(server, ["--password-stdin", *config_args], stdin=PASSWORD + "\n")
    assert result.code == EXIT_OK, result.err
    assert "Door is open at 127.0.0.1 port" in result.out


def test_password_from_getpass_prompt_names_user_and_host(config_args: list[str]) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return PASSWORD

    with FakeServer(alice(derive_master_key("bob", PASSWORD))) as server:
        result = knock(server, ["-u", "bob", *config_args], getpass=fake_getpass)
    assert result.code == EXIT_OK, result.err
    assert prompts == ["Password for bob@127.0.0.1: "]


def test_countdown_on_a_tty(key_file: Path, config_args: list[str]) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    sleeps: list[float] = []
    out = Tty()
    with FakeServer(alice()) as server:
        io_ = Io(stdout=out, stderr=io.StringIO(), environ={"USER": "alice"},
                 open_syn_sender=lambda family: FakeSynSender(server), clock=Clock(sleep=sleeps.append))
        code = run(["127.0.0.1", "-p", str(server.port), "-k", str(key_file), *config_args], io_)
    assert code == EXIT_OK
    text = out.getvalue()
    tail = text.split("for 30 seconds.\n", 1)[1]
    # One line rewritten in place: every tick starts with \r, and only the end has a newline.
    assert tail.startswith("\r 30 s left to connect ") and "\r  1 s left to connect " in tail
    assert tail.count("\n") == 1 and tail.endswith("connections made stay up.\n")
    assert sleeps.count(1) == 30


# --- loss and retries ------------------------------------------------------------------


def test_lost_p1_is_retransmitted_with_same_request_and_knocks(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(), drop_p1=1) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    # Resent before the timeout (at it the session gives up: test_the_shell_waits_as_the_session_says).
    assert result.code == EXIT_OK, result.err
    assert len(server.seen.p1) >= 2
    (h1, first), (h2, second) = server.seen.p1[:2]
    assert (second.request_id, second.knocks, second.address) == (first.request_id, first.knocks, first.address)
    assert h1.nonce != h2.nonce and second.timestamp_ms >= first.timestamp_ms
    # Every P2 was sealed afresh: the server never saw a replayed nonce.
    p2_nonces = [h.nonce for h, _ in server.seen.p2]
    assert len(p2_nonces) >= 2 and len(set(p2_nonces)) == len(p2_nonces)
    assert server.engine.rejections["replay"] == 0
    assert len(server.seen.doors) == 1


def test_lost_knocks_get_pending_then_resent(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(), drop_knock_rounds=1) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    assert result.code == EXIT_OK, result.err
    assert server.seen.replies[0] is Status.PENDING and server.seen.replies[-1] is Status.OPEN
    assert len(server.seen.syns) >= 6  # the knocks went out again
    # The same three knocks both times.
    first, second = server.seen.syns[:3], server.seen.syns[3:6]
    assert first == second
    assert len({p1.request_id for _, p1 in server.seen.p1}) == 1


def test_raced_knocks_are_echoed_without_a_second_p1(key_file: Path, config_args: list[str]) -> None:
    # The first round of SYNs is lost (as when they race ahead of the server's knock filter):
    # the echo shortly after P2 completes the knocks, the door opens on the P2 the server holds,
    # and no second burst (P1, P2) is needed.
    with FakeServer(alice(), drop_knock_rounds=1) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    assert result.code == EXIT_OK, result.err
    assert len(server.seen.p1) == 1 and len(server.seen.p2) == 1
    assert server.seen.syns[:3] == server.seen.syns[3:6]


def test_junk_is_ignored_and_counted(key_file: Path) -> None:
    with FakeServer(alice(), junk_before_first_reply=True) as server:
        endpoint = connect_udp("127.0.0.1", server.port)
        try:
            session = ClientSession(KEYS, new_request("ssh", endpoint.local), Timing(timeout_s=3))
            outcome = run_session(session, endpoint, FakeSynSender(server))
        finally:
            endpoint.sock.close()
    assert outcome.answer is not None and outcome.answer.status is Status.OPEN
    assert outcome.ignored == {"bad_size": 1, "bad_tag": 1, "other_request": 1}


def test_idle_work_runs_once_in_the_knock_gap_and_shortens_it(key_file: Path) -> None:
    # --proxy loads its threads while the server works (client/app.py _prepare_door): the work
    # runs once, in the first pause (the gap between P1 and the SYNs), which it shortens.
    sleeps: list[float] = []
    calls: list[int] = []

    work_s = 0.002
    worked = [0.0]  # the idle work's time, added to the clock instead of spent

    def idle() -> None:
        calls.append(len(sleeps))
        worked[0] += work_s

    clock = Clock(monotonic=lambda: time.monotonic() + worked[0], sleep=sleeps.append)
    with FakeServer(alice()) as server:
        endpoint = connect_udp("127.0.0.1", server.port)
        try:
            session = ClientSession(KEYS, new_request("ssh", endpoint.local), Timing(timeout_s=3))
            outcome = run_session(session, endpoint, FakeSynSender(server), clock, idle=idle)
        finally:
            endpoint.sock.close()
    assert outcome.answer is not None and outcome.answer.status is Status.OPEN
    gap = Timing().knock_gap_s
    assert gap > work_s
    assert calls == [0]  # once, before any sleep
    assert sleeps and sleeps[0] <= gap - work_s  # the gap less the idle work's time


class SilentSocket:
    """A UDP socket that nothing ever answers, on a virtual clock: a recv waits out its whole
    timeout (the clock moves on by it) and raises TimeoutError."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timeout = 0.0
        self.sent: list[tuple[float, int]] = []  # (when, packet type)

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds

    def send(self, payload: bytes) -> int:
        self.sent.append((self.now, payload[1]))
        return len(payload)

    def recv(self, size: int) -> bytes:
        self.now += self.timeout
        raise TimeoutError

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_shell_waits_as_the_session_says_and_gives_up_at_its_deadline() -> None:
    sock = SilentSocket()
    clock = Clock(monotonic=lambda: sock.now, wall_ms=lambda: 1_700_000_000_000 + int(sock.now * 1000),
                  sleep=sock.sleep)
    endpoint = Endpoint(typing.cast(_socket.socket, sock), LOCALHOST, LOCALHOST, ("127.0.0.1", 1))
    timing = Timing(timeout_s=1.0)
    syns: list[float] = []

    class Syns(FakeSynSender):
        def send(self, source: IPAddress, destination: IPAddress, port: int, isn: int) -> None:
            syns.append(sock.now)

    outcome = run_session(ClientSession(KEYS, new_request("ssh", LOCALHOST), timing), endpoint, Syns(None), clock)
    assert outcome.answer is None and outcome.bursts == 3
    assert sock.now == pytest.approx(timing.timeout_s)  # not a moment before the deadline, nor after
    # Bursts 0.25 s and then 0.5 s after the last (the knock gap before the SYNs, the backoff
    # counted from after it); the first burst's SYNs echoed knock_echo_s after its P2.
    gap, echo = timing.knock_gap_s, timing.knock_echo_s
    p1_at = [0.0, gap + 0.25, 2 * gap + 0.75]
    assert [when for when, kind in sock.sent if kind == PacketType.P1] == pytest.approx(p1_at)
    assert [when for when, kind in sock.sent if kind == PacketType.P2] == pytest.approx([t + gap for t in p1_at])
    syn_at = [p1_at[0] + gap, p1_at[0] + gap + echo, p1_at[1] + gap, p1_at[2] + gap]
    assert syns == pytest.approx([t for t in syn_at for _ in range(3)])


def test_silence_exits_3_and_explains(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(), silent=True) as server:
        result = knock(server, ["-k", str(key_file), "--timeout", "1", *config_args])
    assert result.code == EXIT_NO_ANSWER
    err = result.err
    assert err.startswith(f"knock-client: no answer from 127.0.0.1 (127.0.0.1) UDP port {server.port} within 1 s")
    for needle in ["by design", "wrong password", "clock skew", "±60 s", " UTC", "firewall", "server is down",
                   "--nat or --source-ip"]:
        assert needle in err, needle
    # Resent with backoff until the deadline (when: test_the_shell_waits_as_the_session_says...), one request.
    assert len(server.seen.p1) >= 1
    assert len({p1.request_id for _, p1 in server.seen.p1}) == 1


def test_wrong_password_is_silence(config_args: list[str]) -> None:
    with FakeServer(alice()) as server:
        result = knock(server, ["--password-stdin", "--timeout", "0.6", *config_args], stdin="wrong\n")
    assert result.code == EXIT_NO_ANSWER
    assert server.seen.replies == [] and server.engine.rejections["unknown_user"] >= 1


# --- the server's other answers ----------------------------------------------------------


def test_address_mismatch_retries_once_with_the_seen_address(key_file: Path, config_args: list[str]) -> None:
    # 10.9.8.7 is not global, so the engine takes the mismatch for NAT and tells the P2 what it saw.
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), "--source-ip", "10.9.8.7", *config_args])
    assert result.code == EXIT_OK, result.err
    assert "The server sees you as 127.0.0.1 (NAT?); asking again for 127.0.0.1\n" in result.out
    assert server.seen.replies[0] is Status.ADDRESS_MISMATCH and server.seen.replies[-1] is Status.OPEN
    declared = [p1.address for _, p1 in server.seen.p1]
    assert declared[0] == ipaddress.IPv4Address("10.9.8.7") and declared[-1] == LOCALHOST
    # The second try is a new request: new id and new knocks.
    first, last = server.seen.p1[0][1], server.seen.p1[-1][1]
    assert first.request_id != last.request_id and first.knocks != last.knocks
    assert result.out.count("Can I come in?") == 2


def test_global_declared_address_elsewhere_is_silence(key_file: Path, config_args: list[str]) -> None:
    # A global address that is not ours could be a spoof: the server says nothing. (192.0.2.x
    # would not do: documentation ranges are not "global", so the engine would answer MISMATCH.)
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), "--source-ip", "8.8.4.4", "--timeout", "0.6", *config_args])
    assert result.code == EXIT_NO_ANSWER
    assert "you declared 8.8.4.4" in result.err


def test_nat_declared_as_seen(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(nat=True)) as server:
        result = knock(server, ["-k", str(key_file), "--nat", *config_args])
    assert result.code == EXIT_OK, result.err
    assert server.seen.p1[0][1].address is None and server.seen.doors[0].client == LOCALHOST


def test_nat_refused_for_a_user_without_it(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(nat=False)) as server:
        result = knock(server, ["-k", str(key_file), "--nat", "--timeout", "0.6", *config_args])
    assert result.code == EXIT_NO_ANSWER
    assert "the server must allow requests 'as seen'" in result.err


def test_service_not_allowed_exits_4(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), "-s", "web", *config_args])
    assert result.code == EXIT_SERVICE_NOT_ALLOWED
    assert "does not allow service 'web'" in result.err
    assert server.seen.doors == []


def test_door_failure_exits_6(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice(), door_ok=False) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    assert result.code == EXIT_UNAVAILABLE
    assert "try again later" in result.err
    assert server.seen.replies[-1] is Status.UNAVAILABLE


def test_key_file_too_open_is_refused_before_sending(key_file: Path, config_args: list[str]) -> None:
    key_file.chmod(0o644)
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), *config_args])
    assert result.code == 2
    assert f"chmod 600 {key_file}" in result.err
    assert server.seen.datagrams == 0


# --- after the door opened: --exec and --proxy ---------------------------------------------


def test_exec_substitutes_host_port_addr_and_passes_status(key_file: Path, config_args: list[str],
                                                           tmp_path: Path) -> None:
    record = tmp_path / "argv.txt"
    script = "import sys; open(sys.argv[1], 'w').write(repr(sys.argv[2:])); sys.exit(42)"
    command = f"{sys.executable} -c \"{script}\" {record} {{host}} port={{port}} '{{addr}} two words'"
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), "--exec", command, *config_args])
    assert result.code == 42  # the command's own status
    port = server.seen.doors[0].port
    assert record.read_text() == repr(["127.0.0.1", f"port={port}", "127.0.0.1 two words"])
    # With --exec, our messages go to stderr: stdout belongs to the command.
    assert result.out == ""
    assert f"Door is open at 127.0.0.1 port {port} for 30 seconds." in result.err


def test_exec_command_not_found(key_file: Path, config_args: list[str]) -> None:
    with FakeServer(alice()) as server:
        result = knock(server, ["-k", str(key_file), "-q", "--exec", "/nonexistent/cmd {port}", *config_args])
    assert result.code == 127 and "command not found: /nonexistent/cmd" in result.err


@pytest.fixture
def door_listener() -> Iterator[socket.socket]:
    """The 'service behind the door': reads until the client half-closes, then answers and closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    yield listener
    listener.close()


def test_proxy_pipes_both_ways_with_half_close(key_file: Path, config_args: list[str],
                                               door_listener: socket.socket) -> None:
    port = door_listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = door_listener.accept()
        with conn:
            data = b""
            while chunk := conn.recv(4096):  # ends only on the client's half-close (FIN)
                data += chunk
            received.append(data)
            conn.sendall(b"echo:" + data)  # our direction is still open after their FIN

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"SSH-2.0-test\r\n" * 100)
    os.close(in_w)  # EOF on "stdin"
    try:
        with FakeServer(alice(), door_port=port) as server:
            result = knock(server, ["-k", str(key_file), "--proxy", *config_args],
                           proxy_in_fd=in_r, proxy_out_fd=out_w)
        os.close(out_w)
        piped = b""
        while chunk := os.read(out_r, 65536):
            piped += chunk
    finally:
        os.close(in_r)
        os.close(out_r)
    thread.join(5)
    assert result.code == EXIT_OK, result.err
    assert received == [b"SSH-2.0-test\r\n" * 100]
    assert piped == b"echo:" + b"SSH-2.0-test\r\n" * 100
    assert result.out == ""  # stdout is the connection: nothing else may be written there
    assert "Door is open at 127.0.0.1 port" in result.err


def test_proxy_door_not_reachable_exits_1(key_file: Path, config_args: list[str]) -> None:
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with FakeServer(alice(), door_port=port) as server:
            result = knock(server, ["-k", str(key_file), "--proxy", "-q", *config_args])
    assert result.code == 1
    assert f"the door opened but connecting to 127.0.0.1 port {port} failed" in result.err
    assert result.out == ""
