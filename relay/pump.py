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
# The kernel gives each user 64 MiB of pipe buffers (fs.pipe-user-pages-soft); past that
# every new pipe gets only 8 KiB and its connection crawls. Two pipes per connection:
# large pipes for the first connections, the default 64 KiB ones after, so that about
# 300 connections fit before the budget runs out.
PIPE_TIERS = ((16, 1 << 20), (64, 1 << 18))  # (pipes alive below this count, size)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


@dataclass(slots=True)
class Totals:
    to_service: int = 0
    to_client: int = 0
    error: str = ""


_pipes_alive = 0
_pipes_lock = threading.Lock()


def _splice_pipe() -> tuple[int, int, int]:
    """A pipe and the most to move through it at once."""
    global _pipes_alive
    read_end, write_end = os.pipe()
    with _pipes_lock:
        _pipes_alive += 1
        alive = _pipes_alive
    size = next((size for below, size in PIPE_TIERS if alive <= below), 0)
    if size:
        try:
            fcntl.fcntl(write_end, F_SETPIPE_SZ, size)
        except OSError:
            pass  # the default pipe still works, just with more system calls
    return read_end, write_end, fcntl.fcntl(write_end, F_GETPIPE_SZ)


def _close_pipe(read_end: int, write_end: int) -> None:
    global _pipes_alive
    os.close(read_end)
    os.close(write_end)
    with _pipes_lock:
        _pipes_alive -= 1


def _pump(source: socket.socket, sink: socket.socket) -> int:
    total = 0
    try:
        read_end, write_end, chunk = _splice_pipe()
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        # No descriptor for a pipe: copying through Python needs none, and the connection
        # the relay already holds is served (slower) rather than dropped.
        try:
            return _copy(source, sink)
        finally:
            _shutdown_write(sink)
    try:
        while True:
            try:
                moved = os.splice(source.fileno(), write_end, chunk)
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
        _close_pipe(read_end, write_end)
        _shutdown_write(sink)
    return total


def _shutdown_write(sink: socket.socket) -> None:
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


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


def _connect(target: tuple[str, int], timeout_s: float) -> socket.socket:
    """Connect to the service from an ephemeral port that a door may reuse.

    Ephemeral ports (32768-60999) can overlap a configured door range, and without SO_REUSEADDR
    on this socket its port, while connected and for 60 s of TIME_WAIT after we
    close first, makes the listener of a door drawn on it fail with EADDRINUSE
    (the client gets UNAVAILABLE). With SO_REUSEADDR on both, the listener binds;
    the connected socket keeps only its own 4-tuple.
    """
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(timeout_s)
        sock.connect(target)
    except OSError:
        sock.close()
        raise
    return sock


def relay_connection(client: socket.socket, target: tuple[str, int], connect_timeout_s: float,
                     done: Callable[[Totals], None]) -> None:
    """Connect to the target and pump both ways; call `done` once at the very end."""
    totals = Totals()
    try:
        service = _connect(target, connect_timeout_s)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            totals.error = f"no file descriptor for the service connection: {exc.strerror}"
        else:
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
