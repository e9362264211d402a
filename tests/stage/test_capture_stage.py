"""knock-capture as a process: real frames through libpcap in, real ZeroMQ messages out.

The test plays auth (it binds the packet PULL and the knock-filter publisher) and the
knock-bus (it binds the events SUB). Capture runs as in production: started as root, it
opens libpcap on the loopback interface and drops to the `dynknock` user. The frames are
the kernel's own: UDP datagrams to the control port and the SYNs of TCP connects to
127.0.0.1, so they pass capture's real kernel filter.

No sleep stands for "capture is ready": the filter publisher is an XPUB, whose
subscription message says capture's SUB is connected; capture's heartbeat says its loop
runs and which knock filter it holds. Order on the wire replaces waiting for "nothing
came": a frame capture must drop is sent before one it must forward, and the first
message auth gets must be the second.
"""

from __future__ import annotations

import secrets
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from dynknock import bus
from dynknock import protocol as proto
from dynknock.topics import ALIVE, Topic
from tests.stage.conftest import StageEnv, free_port

pytestmark = pytest.mark.stage

LOCAL = "127.0.0.1"
MAX_EVENTS = 200  # a bound on how many events a wait reads (each waits at most RCVTIMEO): a hang fails


class Auth:
    """auth's side of capture's sockets, and the knock-bus's events."""

    def __init__(self, env: StageEnv) -> None:
        self.env = env
        self.packets = env.socket(zmq.PULL, bind=env.endpoints.packets)
        self.filter = env.socket(zmq.XPUB, bind=env.endpoints.knock_filter)
        self.events = env.socket(zmq.SUB, bind=env.endpoints.events)
        self.events.setsockopt(zmq.SUBSCRIBE, b"capture.")
        self.seen: list[bus.Event] = []
        self.generation = 0
        self.changes = 0  # filter_changes of the last heartbeat read: the kernel filters attached

    def start_capture(self) -> None:
        self.env.start("knock-capture")
        # XPUB hands us the subscriber's subscription: capture's SUB is connected, so nothing we
        # publish from now on is lost to the slow-joiner gap.
        assert self.filter.recv() == b"\x01"
        self.heartbeat(lambda fields: True)  # its loop runs: libpcap is open and filtering

    def event(self) -> bus.Event:
        _topic, body = self.events.recv_multipart()
        message = bus.decode_as(body, bus.Event)
        self.seen.append(message)
        return message

    def heartbeat(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The fields of the first heartbeat that satisfies check."""
        for _ in range(MAX_EVENTS):
            message = self.event()
            if message.topic != ALIVE["capture"]:
                continue
            self.changes = message.fields["filter_changes"]
            if check(message.fields):
                return message.fields
        raise AssertionError(f"no matching capture heartbeat in {MAX_EVENTS} events: {self.seen[-5:]}")

    def publish(self, message: bus.Message) -> None:
        self.filter.send(bus.encode(message))

    def knock_filter(self, pairs: list[tuple[str, int]]) -> dict[str, Any]:
        """Publish the pairs and return capture's first heartbeat that has them in its kernel filter
        (a narrowing is attached a little after it is read: filter_changes counts attachments).
        Messages on one socket arrive in order, so whatever was published before is applied too."""
        self.generation += 1
        before = self.changes
        self.publish(bus.KnockFilter([[a, p] for a, p in pairs], self.generation))
        return self.heartbeat(lambda fields: fields["filter_generation"] == self.generation
                              and fields["filter_changes"] > before)

    def packet(self) -> bus.Message:
        return bus.decode(self.packets.recv())


def client_payload(kind: proto.PacketType, hint: bytes) -> bytes:
    """A payload of the exact size and header bytes of P1/P2 (capture holds no keys: it checks no more)."""
    body = secrets.token_bytes(proto.PACKET_LEN[kind] - 2 - len(hint))
    return bytes([proto.VERSION, kind.value]) + hint + body


def send_udp(port: int, payload: bytes) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL, 0))
        sock.sendto(payload, (LOCAL, port))
        source_port: int = sock.getsockname()[1]
        return source_port


def send_syn(port: int) -> None:
    """The kernel's SYN to a closed port (answered by a RST: no listener, no retransmission)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(ConnectionRefusedError):
        sock.connect((LOCAL, port))


def test_capture_forwards_client_datagrams_and_drops_unknown_hints(stage_env: StageEnv) -> None:
    auth = Auth(stage_env)
    auth.start_capture()
    port = stage_env.control_port
    p1 = client_payload(proto.PacketType.P1, b"hint-one")
    # A wrong size never passes the kernel filter: the P1 sent after it is the first thing auth gets.
    send_udp(port, p1[:-1])
    source_port = send_udp(port, p1)
    assert auth.packet() == bus.Datagram(LOCAL, source_port, LOCAL, p1)
    p2 = client_payload(proto.PacketType.P2, b"hint-one")
    source_port = send_udp(port, p2)
    assert auth.packet() == bus.Datagram(LOCAL, source_port, LOCAL, p2)

    # auth names the live hints: a datagram under another hint is dropped before any parse, and
    # reported (as auth would: unknown_user); a live hint's goes on. Garbage on the filter socket
    # is dropped and capture lives on.
    auth.publish(bus.HintFilter([b"hint-two"], 1))
    auth.filter.send(b"\xc1 not msgpack")
    auth.publish(bus.Syn(LOCAL, 1, 2))  # a message of the catalogue, not for this socket
    held = auth.knock_filter([])
    send_udp(port, client_payload(proto.PacketType.P1, b"hint-one"))
    live = client_payload(proto.PacketType.P1, b"hint-two")
    source_port = send_udp(port, live)
    assert auth.packet() == bus.Datagram(LOCAL, source_port, LOCAL, live)
    after = auth.heartbeat(lambda fields: fields["unknown_hints"] > held["unknown_hints"])
    assert after["unknown_hints"] == 1 and after["forwarded"] == 3
    rejected = [e.fields for e in auth.seen if e.topic == Topic.CAPTURE_PACKET_REJECTED]
    assert rejected == [{"reason": "unknown_user", "source": LOCAL}]
    # The live P1 admitted its sender's SYNs to any port until auth names its knocks (capture/fairness.py).
    assert after["admitted"] == 1 and after["filter_form"] in ("pairs", "sources")


def test_capture_passes_only_the_knock_filters_syns_and_stops_cleanly(stage_env: StageEnv) -> None:
    auth = Auth(stage_env)
    process = stage_env.start("knock-capture")
    assert auth.filter.recv() == b"\x01"
    first = auth.heartbeat(lambda fields: True)
    assert first["filter_generation"] == -1  # no knock filter from auth yet: no SYN passes
    knock, other = free_port(), free_port()
    while other == knock:
        other = free_port()
    held = auth.knock_filter([(LOCAL, knock)])
    assert held["filter_pairs"] == 1 and held["filter_changes"] >= 1
    # The SYN to a port auth did not name stays in the kernel: the knock's SYN is the first message.
    send_syn(other)
    send_syn(knock)
    syn = auth.packet()
    assert isinstance(syn, bus.Syn) and (syn.source, syn.port, syn.gateway) == (LOCAL, knock, "")

    # auth's next filter has no pairs: the knock's port is shut again.
    auth.knock_filter([])
    send_syn(knock)
    source_port = send_udp(stage_env.control_port, client_payload(proto.PacketType.P2, b"hint-one"))
    datagram = auth.packet()
    assert isinstance(datagram, bus.Datagram) and datagram.source_port == source_port

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert "Capture stopped." in stage_env.log("knock-capture")
