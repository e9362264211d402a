"""bus_intruder.py RUNTIME_DIR CLIENT PORT: what a local unprivileged user can do to the bus.

Run as nobody on the server by tests/e2e/attacks/test_privilege.py: it lists the runtime
directory, connects to each stage's socket, and sends the gate and the relay a DoorOpen
over ZeroMQ; prints what each attempt got as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from dynknock import bus


def attempt(probe: Callable[[], object]) -> str:
    try:
        probe()
    except PermissionError:
        return "denied"
    except OSError as exc:
        return f"error {exc.errno}"
    return "allowed"


def connect_unix(path: str) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except PermissionError:
        return "denied"
    except OSError as exc:
        return f"error {exc.errno}"
    finally:
        sock.close()
    return "connected"


def main(argv: list[str]) -> int:
    run_dir, client, port = argv[0], argv[1], int(argv[2])
    result: dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid()}
    result["listdir"] = attempt(lambda: os.listdir(run_dir))
    result["stat_socket"] = attempt(lambda: os.stat(f"{run_dir}/gate.sock"))
    for endpoint in ("gate", "relay", "packets"):
        result[f"connect_{endpoint}"] = connect_unix(f"{run_dir}/{endpoint}.sock")
    context: zmq.Context[Any] = zmq.Context()
    expires = time.time_ns() // 1_000_000 + 4000
    for endpoint in ("gate", "relay"):
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"ipc://{run_dir}/{endpoint}.sock")
        command = bus.DoorOpen("0badc0de", "mallory", client, port, "127.0.0.1", 22, expires, True)
        try:
            dealer.send(bus.encode(command), zmq.NOBLOCK)
            result[f"zmq_{endpoint}"] = "queued"
        except zmq.Again:
            result[f"zmq_{endpoint}"] = "not connected"
        result[f"zmq_{endpoint}_reply"] = bool(dealer.poll(1500))
    context.destroy(0)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
