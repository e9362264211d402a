"""relay/pump.py over real sockets: each direction counted on its own, half-close, no pipe left.

Issue 13 asked whether the two byte counts are really separate (a demo ssh session showed
3,721 both ways: strace of the relay's splice calls showed that session really moves 3,721
bytes each way). Here the two directions differ by four orders of magnitude.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from dynknock.relay import pump
from dynknock.relay.pump import Totals, relay_connection

UP = b"0123456789"
DOWN = 100_000


@pytest.fixture
def service() -> Iterator[tuple[int, list[bytes]]]:
    """Reads UP (10 bytes), answers DOWN bytes, closes its side first, then drains the client's EOF."""
    server = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got = b""
            while len(got) < len(UP) and (data := conn.recv(100)):
                got += data
            heard.append(got)
            conn.sendall(b"s" * DOWN)
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], heard
    server.close()
    thread.join(timeout=5)


def run_through_relay(service_port: int) -> tuple[int, Totals]:
    door = socket.create_server(("127.0.0.1", 0))
    results: list[Totals] = []

    def relay() -> None:
        conn, _ = door.accept()
        relay_connection(conn, ("127.0.0.1", service_port), 5.0, results.append)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    received = 0
    with socket.create_connection(door.getsockname(), timeout=10) as client:
        client.sendall(UP)
        while chunk := client.recv(65536):
            received += len(chunk)
        client.shutdown(socket.SHUT_WR)
    thread.join(timeout=10)
    door.close()
    assert len(results) == 1
    return received, results[0]


def test_each_direction_is_counted_on_its_own(service: tuple[int, list[bytes]]) -> None:
    port, heard = service
    received, totals = run_through_relay(port)
    assert (heard, received) == ([UP], DOWN)
    assert (totals.to_service, totals.to_client, totals.error) == (len(UP), DOWN, "")
    assert pump._pipes_alive == 0


def test_without_a_descriptor_for_a_pipe_it_copies_and_counts_the_same(
        service: tuple[int, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptor() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "pipe", no_descriptor)  # the module pump uses: os is one object
    port, heard = service
    received, totals = run_through_relay(port)
    assert (heard, received) == ([UP], DOWN)
    assert (totals.to_service, totals.to_client, totals.error) == (len(UP), DOWN, "")
