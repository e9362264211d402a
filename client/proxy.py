"""``--proxy``: the opened door as an ssh ProxyCommand.

ssh talks to the proxy over its stdin and stdout, so those carry nothing but
the connection's bytes (every message goes to stderr). Each direction gets its
own thread of control, so neither can block the other whatever the peers do,
and an EOF is passed on as a half-close, never as a full close: ssh may finish
sending long before the server has finished answering.
"""

from __future__ import annotations

import _socket  # not socket: see client/knock.py
import os
import threading

CHUNK = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _upstream(sock: _socket.socket, in_fd: int) -> None:
    try:
        while data := os.read(in_fd, CHUNK):
            sock.sendall(data)
    except OSError:
        pass  # the socket is gone; the downstream side will notice and end the run
    finally:
        try:
            sock.shutdown(_socket.SHUT_WR)  # EOF on stdin -> FIN to the server, reading goes on
        except OSError:
            pass


def pipe(sock: _socket.socket, in_fd: int = 0, out_fd: int = 1) -> int:
    """Copy in_fd -> sock and sock -> out_fd until the server ends the connection.

    Returns 0 when the server closed cleanly, 1 when the connection broke. The
    upstream thread is a daemon: once the server is done, a stdin that never
    reaches EOF must not keep the process alive.
    """
    upstream = threading.Thread(target=_upstream, args=(sock, in_fd), name="proxy-upstream", daemon=True)
    upstream.start()
    try:
        while data := sock.recv(CHUNK):
            _write_all(out_fd, data)
    except BrokenPipeError:
        return 0  # our reader (ssh) went away: nothing left to deliver to
    except OSError:
        return 1
    finally:
        # shutdown, not close: the upstream thread may still be inside sendall,
        # and closing a descriptor under another thread invites its reuse.
        try:
            sock.shutdown(_socket.SHUT_RDWR)
        except OSError:
            pass
    return 0
