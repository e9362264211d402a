"""knock-relay short of file descriptors: no spin, clear refusals, no crash, recovery.

The relay runs under `prlimit --nofile=N:N`, so a few dozen doors and
connections use up its descriptors as 1,011 doors used up the default 1,024
in the field.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import zmq

from dynknock import bus
from tests.stage.conftest import StageEnv, free_port, next_result, start_relay

pytestmark = pytest.mark.stage

FD_LIMIT = 128
MAX_DOORS = 300  # bound of the loops: far more than FD_LIMIT descriptors
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of the whole process (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def door_open(service_port: int, port: int, door_id: str) -> bytes:
    return bus.encode(bus.DoorOpen(door_id, "alice", "127.0.0.1", port, "127.0.0.1", service_port,
                                   int(time.time() * 1000) + 25_000, True))


def echoes(sock: socket.socket, payload: bytes, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    sock.sendall(payload)
    try:
        return sock.recv(100) == payload
    except TimeoutError:
        return False


def test_relay_short_of_descriptors_refuses_clearly_does_not_spin_and_recovers(stage_env: StageEnv,
                                                                               echo_service: int) -> None:
    relay = start_relay(stage_env, {"echo": f"127.0.0.1:{echo_service}"},
                        prefix=("/usr/bin/prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}"))
    commands = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.relay)
    base = 40000 + free_port() % 9000

    # Doors until the relay says it has no descriptor to spare: a clear refusal, not a crash.
    opened: list[int] = []
    refusal = None
    for i in range(MAX_DOORS):
        commands.send(door_open(echo_service, base + i, f"door{i}"))
        result = next_result(commands)
        if not result.ok and result.detail.startswith("address_in_use:"):
            continue  # some other socket of this busy host holds that port: as auth does, take another
        if not result.ok:
            refusal = result
            break
        opened.append(base + i)
    assert refusal is not None and 0 < len(opened) < FD_LIMIT, "the descriptor limit never bit"
    assert refusal.detail.startswith("out_of_descriptors:"), refusal.detail

    # Authorised connections through the doors until one has to wait for a descriptor.
    served: list[socket.socket] = []
    waiting = None
    for port in opened:
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        if not echoes(conn, b"queued", 1.0):
            waiting = conn
            break
        served.append(conn)
    assert waiting is not None and served, f"all {len(served)} connections were served"

    # While it waits: little CPU, few log lines, and a new bus peer neither crashes the relay
    # (libzmq aborts when it cannot accept one) nor goes unanswered.
    log_before = len(stage_env.log("knock-relay").splitlines())
    cpu_before = cpu_seconds(relay.pid)
    late = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.relay)
    late.send(door_open(echo_service, base + MAX_DOORS + 1, "late"))
    assert bus.decode_as(late.recv(), bus.DoorResult).detail.startswith("out_of_descriptors:")
    time.sleep(3.0)  # not a handshake: the 3 s over which the relay's CPU and log lines are measured
    cpu_used = cpu_seconds(relay.pid) - cpu_before
    log_lines = len(stage_env.log("knock-relay").splitlines()) - log_before
    assert cpu_used < 0.6, f"relay used {cpu_used:.2f} s of CPU in 3 s while short of descriptors"
    assert log_lines <= 15, f"{log_lines} log lines in 3 s"
    assert relay.poll() is None

    # Descriptors come back when connections end: the waiting connection is served after all.
    for conn in served:
        conn.close()
    with waiting:
        waiting.settimeout(10)
        assert waiting.recv(100) == b"queued"
    # And doors open again and carry bytes once auth closes some.
    for port in opened[-10:]:
        commands.send(bus.encode(bus.DoorClose(f"door{port - base}", "127.0.0.1", port)))
        assert next_result(commands).ok
    for fresh_port in range(base + MAX_DOORS + 2, base + MAX_DOORS + 12):
        commands.send(door_open(echo_service, fresh_port, f"fresh{fresh_port}"))
        result = next_result(commands)
        if not result.detail.startswith("address_in_use:"):
            break
    assert result.ok, result.detail
    with socket.create_connection(("127.0.0.1", fresh_port), timeout=5) as fresh:
        assert echoes(fresh, b"fresh", 5.0)
    assert relay.poll() is None
