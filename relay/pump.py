"""Moving bytes between the door connection and the service: zero-copy where possible.

Each direction runs in its own thread with blocking sockets and os.splice
through a pipe, so the bytes never enter Python (socket -> pipe -> socket in
the kernel). Half-close is kept: EOF one way shuts down writing the other way,
and the connection ends when both directions have ended.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(slots=True)
class Totals:
    to_service: int = 0
    to_client: int = 0
    error: str = ""


def _splice_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # the default 64 KiB pipe still works, just with more system calls
    return read_end, write_end


def _pump(source: socket.socket, sink: socket.socket) -> int:
    total = 0
    read_end, write_end = _splice_pipe()
    try:
        while True:
            try:
                moved = os.splice(source.fileno(), write_end, CHUNK)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # a socket type splice cannot read: copy instead
                    return total + _copy(source, sink)
                raise
            if moved == 0:
                break
            total += moved
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
    finally:
        os.close(read_end)
        os.close(write_end)
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    return total


def _copy(source: socket.socket, sink: socket.socket) -> int:
    total = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        n = source.recv_into(buffer)
        if n == 0:
            return total
        sink.sendall(view[:n])
        total += n


def relay_connection(client: socket.socket, target: tuple[str, int], connect_timeout_s: float,
                     done: Callable[[Totals], None]) -> None:
    """Connect to the target and pump both ways; call `done` once at the very end."""
    totals = Totals()
    try:
        service = socket.create_connection(target, timeout=connect_timeout_s)
    except OSError as exc:
        totals.error = f"service {target[0]}:{target[1]} unreachable: {exc.strerror or exc}"
        client.close()
        done(totals)
        return
    service.settimeout(None)
    client.settimeout(None)
    for sock in (service, client):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def upstream() -> None:
        try:
            totals.to_service = _pump(client, service)
        except OSError as exc:
            totals.error = totals.error or f"client side: {exc.strerror or exc}"
            _abort(client, service)

    thread = threading.Thread(target=upstream, name="relay-up", daemon=True)
    thread.start()
    try:
        totals.to_client = _pump(service, client)
    except OSError as exc:
        totals.error = totals.error or f"service side: {exc.strerror or exc}"
        _abort(client, service)
    thread.join()
    client.close()
    service.close()
    done(totals)


def _abort(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
