"""door_hog.py SERVER KEYFILE SECONDS THREADS USE SOURCE...: one key holder opening doors as fast as it can.

Run in the lab's client namespace by tests/e2e/test_everyday.py. Each thread knocks in a loop with the
client library (connect() knocks, as an unprivileged client sends them), each knock from the next of
SOURCE addresses (one request per address at a time, as the protocol allows), and with USE=1 connects
to every door it gets, so that a single-use door is used at once and the hog may open another. Bounded
by SECONDS. Prints one JSON line: doors opened, used, and each status or error counted.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from collections import Counter

from dynknock import protocol as proto
from dynknock.client.crypto import session_keys
from dynknock.client.knock import Endpoint, parse_ip, run_session
from dynknock.client.session import ClientSession, Timing, new_request
from dynknock.client.syn import ConnectKnocker, KnockError
from dynknock.keys import read_key_file
from dynknock.protocol import CONTROL_PORT, KnockKind


def main(argv: list[str]) -> int:
    server, key_file, seconds, threads, use, sources = argv[0], argv[1], float(argv[2]), int(argv[3]), \
        argv[4] == "1", argv[5:]
    keys = session_keys(read_key_file(key_file))
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    addresses = itertools.cycle(sources)

    def knock_once(source: str) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((source, 0))
            sock.connect((server, CONTROL_PORT))
            endpoint = Endpoint(sock, parse_ip(server), parse_ip(source), (server, CONTROL_PORT))
            session = ClientSession(keys, new_request("ssh", endpoint.local, KnockKind.CONNECT), Timing(timeout_s=3))
            answer = run_session(session, endpoint, ConnectKnocker(socket.AF_INET)).answer
        except (OSError, KnockError) as exc:
            return f"error {type(exc).__name__}"
        finally:
            sock.close()
        if answer is None:
            return "no answer"
        if answer.status is not proto.Status.OPEN:
            return answer.status.name.lower()
        if use:
            door = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                door.bind((source, 0))
                door.settimeout(3)
                door.connect((server, answer.door_port))
                return "opened and used"
            except OSError:
                return "opened, connect failed"
            finally:
                door.close()
        return "opened"

    def loop() -> None:
        while time.monotonic() < deadline:
            with lock:
                source = next(addresses)
            outcome = knock_once(source)
            with lock:
                counts[outcome] += 1

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 10)
    print(json.dumps(dict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
