"""foreign_connect.py ADDRESS PORT: connect, read, and print what happened in one word.

'timeout' (dropped silently), 'refused', 'reset', 'eof', 'connected, silent', or
'data:' and the first bytes received. Run from a lab namespace by
tests/e2e/attacks/test_spoofing.py against a door opened for another address.
"""

from __future__ import annotations

import socket
import sys


def probe(address: str, port: int) -> str:
    try:
        sock = socket.create_connection((address, port), timeout=1.5)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:  # the reset can beat connect()'s own return
        return "reset"
    with sock:
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "connected, silent"
    return "eof" if not data else "data:" + data[:40].decode(errors="replace")


if __name__ == "__main__":
    print(probe(sys.argv[1], int(sys.argv[2])))
