"""thief.py SERVER STOLEN_DIR USER...: knock as each USER with everything the server keeps on disk.

Run in the lab's attacker namespace by tests/e2e/test_stolen_server.py. STOLEN_DIR is a copy of the
server's files (users file, server key, bus keys, replay journal, config). For a symmetric user the
thief has her master key: it knocks with it, as her client would. For a key-pair user it computes her
session keys (the server's X25519 secret and her public key) and tries every packet those keys allow:
a version 3 P1 signed with its own key, with random bytes for a signature, and with no valid one at
all; version 1 and version 2 P1s sealed with her keys. Each try is a whole knock (P1, connect()
knocks, P2, resends until the timeout) with the client library. Prints one JSON line:
{user: {try: status or "no answer"}}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from dynknock import curve25519
from dynknock.auth.serverkey import load_server_key
from dynknock.auth.users import load_users
from dynknock.client.knock import Endpoint, parse_ip, run_session
from dynknock.client.session import ClientSession, Timing, new_request
from dynknock.client.syn import ConnectKnocker
from dynknock.keys import SessionKeys
from dynknock.protocol import CONTROL_PORT, KnockKind


class ForgedSeal:
    """What client/pair.py's PairSeal offers the session, with a signature that is not hers."""

    def __init__(self, server_key: bytes, sign: str) -> None:
        self.server_key = server_key
        self._thief_seed = os.urandom(32)
        self._how = sign

    def sign(self, message: bytes) -> bytes:
        if self._how == "own key":
            return curve25519.ed25519_sign(self._thief_seed, message)
        if self._how == "zeros":
            return bytes(64)
        return os.urandom(64)


def knock(server: str, keys: SessionKeys, pair: ForgedSeal | None, bind: bool) -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((server, CONTROL_PORT))
        local = parse_ip(sock.getsockname()[0])
        endpoint = Endpoint(sock, parse_ip(server), local, (server, CONTROL_PORT))
        session = ClientSession(keys, new_request("ssh", local, KnockKind.CONNECT), Timing(timeout_s=2.5),
                                server=parse_ip(server) if bind else None,
                                pair=pair)  # type: ignore[arg-type]  # duck-typed: server_key and sign
        answer = run_session(session, endpoint, ConnectKnocker(socket.AF_INET)).answer
    finally:
        sock.close()
    if answer is None:
        return "no answer"
    return f"{answer.status.name.lower()}" + (f" port {answer.door_port}" if answer.door_port else "")


def main(argv: list[str]) -> int:
    server, stolen, names = argv[0], Path(argv[1]), argv[2:]
    users = load_users(stolen / "users.json", check_mode=False)
    server_key = load_server_key(stolen / "server.key")
    results: dict[str, dict[str, str]] = {}
    for name in names:
        user = users[name]
        tries: dict[str, str] = {}
        if user.public_key is None:
            tries["her master key, v1"] = knock(server, SessionKeys.from_master(user.master_key), None, False)
        else:
            assert server_key is not None, "the stolen copy holds the server key"
            keys = server_key.session_keys(user.public_key)
            for how in ("own key", "random", "zeros"):
                tries[f"v3 signed: {how}"] = knock(server, keys, ForgedSeal(server_key.public, how), False)
            tries["v3 bound, signed: own key"] = knock(server, keys, ForgedSeal(server_key.public, "own key"), True)
            tries["her keys, v1"] = knock(server, keys, None, False)
            tries["her keys, v2"] = knock(server, keys, None, True)
        results[name] = tries
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
