"""knock-relay as a process: doors opened over a real socket, real TCP through them."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import zmq

from dynknock import bus
from tests.stage.conftest import StageEnv, free_port, next_result, start_relay

pytestmark = pytest.mark.stage


def open_door(env: StageEnv, service_port: int, client: str, door_port: int) -> bus.DoorResult:
    sock = env.socket(zmq.DEALER, connect=env.endpoints.relay)
    sock.send(bus.encode(bus.DoorOpen("d00r", "alice", client, door_port, "127.0.0.1", service_port,
                                      int(time.time() * 1000) + 10_000, True)))
    return bus.decode_as(sock.recv(), bus.DoorResult)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def test_relay_forwards_the_authorised_peer_with_half_close(stage_env: StageEnv, echo_service: int) -> None:
    start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"})
    door_port = 40000 + free_port() % 10000
    assert open_door(stage_env, echo_service, "127.0.0.1", door_port).ok
    with connect(door_port) as conn:
        payload = bytes(range(256)) * 4096  # 1 MiB through the splice pump
        def send_all_then_eof() -> None:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send_all_then_eof)
        sender.start()
        received = bytearray()
        while chunk := conn.recv(65536):
            received += chunk
        sender.join()
    assert bytes(received) == payload  # all of it came back, then EOF: half-close carried both ways
    # Single use (the default): the listener is gone after the first connection.
    with pytest.raises(ConnectionRefusedError):
        connect(door_port)


def test_relay_reports_a_single_use_doors_connection_to_the_auth_that_opened_it(stage_env: StageEnv,
                                                                                 echo_service: int) -> None:
    start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"})
    door_port = 40000 + free_port() % 10000
    sock = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.relay)
    sock.send(bus.encode(bus.DoorOpen("u5ed", "alice", "127.0.0.1", door_port, "127.0.0.1", echo_service,
                                      int(time.time() * 1000) + 10_000, True)))
    assert next_result(sock).ok
    with connect(door_port):
        assert sock.poll(5000), "no DoorUsed"
        assert bus.decode_as(sock.recv(), bus.DoorUsed) == bus.DoorUsed("u5ed", "relay", "127.0.0.1", door_port)


def test_relay_refuses_a_foreign_peer_and_keeps_the_door(stage_env: StageEnv, echo_service: int) -> None:
    start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"})
    door_port = 40000 + free_port() % 10000
    assert open_door(stage_env, echo_service, "127.0.0.2", door_port).ok
    received = b""
    try:  # reset at connect, at send or at receive: all fine, as long as no byte comes back
        with connect(door_port, source="127.0.0.1") as intruder:
            intruder.sendall(b"let me in")
            received = intruder.recv(100)
    except ConnectionResetError:
        pass
    assert received == b""
    with connect(door_port, source="127.0.0.2") as friend:
        friend.sendall(b"ping")
        assert friend.recv(100) == b"ping"
    assert "not the authorised address" in stage_env.log("knock-relay")


def test_relay_refuses_a_target_that_is_not_a_service(stage_env: StageEnv, echo_service: int) -> None:
    start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"})
    result = open_door(stage_env, 22, "127.0.0.1", 41111)
    assert not result.ok and "not a configured service" in result.detail


def subscribe_relay_events(env: StageEnv) -> zmq.Socket[Any]:
    """A tap on relay.* that has surely joined: it has seen a relay heartbeat (no slow-joiner sleep)."""
    sock = env.socket(zmq.SUB, connect=env.endpoints.tap)
    sock.setsockopt(zmq.SUBSCRIBE, b"relay.")
    while bus.decode_as(sock.recv_multipart()[1], bus.Event).topic != "relay.alive":
        pass
    return sock


def next_event(sock: zmq.Socket[Any], topic: str) -> bus.Event:
    while True:
        event = bus.decode_as(sock.recv_multipart()[1], bus.Event)
        if event.topic == topic:
            return event


def test_relay_counts_each_direction_on_its_own(stage_env: StageEnv) -> None:
    """Issue 13: 10 bytes up, 100,000 down must be reported as just that, not one figure twice."""
    server = socket.create_server(("127.0.0.1", 0))
    service_port = server.getsockname()[1]
    heard = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while len(heard) < 10 and (data := conn.recv(100)):
                heard.extend(data)
            conn.sendall(b"s" * 100_000)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    threading.Thread(target=serve, daemon=True).start()
    stage_env.start("knock-bus")
    start_relay(stage_env, {"svc": f"127.0.0.1:{service_port}"})
    events = subscribe_relay_events(stage_env)
    door_port = 40000 + free_port() % 10000
    assert open_door(stage_env, service_port, "127.0.0.1", door_port).ok
    received = 0
    with connect(door_port) as conn:
        conn.sendall(b"0123456789")
        while chunk := conn.recv(65536):
            received += len(chunk)
    server.close()
    closed = next_event(events, "relay.connection.closed")
    assert (bytes(heard), received) == (b"0123456789", 100_000)
    assert (closed.fields["bytes_to_service"], closed.fields["bytes_to_client"]) == (10, 100_000)
    assert closed.fields["error"] == ""


def test_relay_says_address_in_use_when_another_socket_holds_the_port(stage_env: StageEnv,
                                                                      echo_service: int) -> None:
    """Issue 11 §5: exactly the prefix on which auth moves the door to another port."""
    start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"})
    for _ in range(20):  # a door-range port no one else holds, then hold it ourselves
        door_port = 40000 + free_port() % 10000
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.bind(("0.0.0.0", door_port))
            break
        except OSError:
            holder.close()
    with holder:
        holder.listen(1)
        result = open_door(stage_env, echo_service, "127.0.0.1", door_port)
        assert not result.ok
        assert result.detail.startswith("address_in_use: "), result.detail
    # The port is free again: the same door opens now.
    assert open_door(stage_env, echo_service, "127.0.0.1", door_port).ok
