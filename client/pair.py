"""Key-pair users on the client: protocol version 3 (docs/PROTOCOL.md §11, docs/CLIENT.md "Key pairs").

A key-pair user's key file holds a 32-byte Ed25519 seed (``dynknock-ed25519-private BASE64``)
that never leaves her machine; the server holds her public key and a static X25519 key of
its own. Three things happen here:

* her session keys: X25519 between her secret scalar (the first half of SHA-512(seed), as
  Ed25519 itself uses it) and the server's public key, then dynknock/keys.py's
  ``pair_session_keys``; the server computes the same from her public key and its secret;
* her P1's signature, with dynknock/curve25519.py (pure Python: ~0.5 ms a signature, where
  importing pycryptodome's curves would cost knock-client 15-35 ms of start-up);
* the server's public key, which she must know before her first packet: a server that
  answers nothing unauthenticated cannot introduce itself, so the admin's line
  (``knock-admin server-key``) is given once, with ``--server-key LINE`` or the stanza's
  ``server_key``, and pinned in ``~/.config/dynknock/known_servers`` the way ssh's
  known_hosts pins host keys. A line that differs from the pinned one afterwards is an error
  naming both and the line to delete, never a silent replacement: a changed server key is
  either the admin's new key or someone else's server.

Only runs with a key-pair key file import this module.
"""

from __future__ import annotations

import os

from dynknock import curve25519
from dynknock import keys as K
from dynknock.client.config import ClientConfigError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from typing import NamedTuple
else:  # typing.NamedTuple without typing's start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple

DEFAULT_KNOWN_SERVERS = "~/.config/dynknock/known_servers"


class PairSeal(NamedTuple):
    """What sealing a version 3 packet needs beyond the session keys (client/session.py)."""

    seed: bytes
    server_key: bytes

    def sign(self, message: bytes) -> bytes:
        return curve25519.ed25519_sign(self.seed, message)


def session_keys(seed: bytes, server_key: bytes) -> K.SessionKeys:
    """Her session keys at the server whose X25519 public key is `server_key`."""
    try:
        shared = curve25519.x25519(curve25519.ed25519_secret_scalar(seed), server_key)
    except ValueError:
        raise ClientConfigError("the pinned server key is unusable (a point of small order)") from None
    return K.pair_session_keys(shared, curve25519.ed25519_public_key(seed), server_key)


def public_line(seed: bytes, comment: str) -> str:
    return K.key_line(K.PAIR_PUBLIC, curve25519.ed25519_public_key(seed), comment)


def parse_server_line(text: str, where: str) -> bytes:
    try:
        key, _ = K.parse_key_line(text, K.SERVER_PUBLIC)
    except K.KeyError_ as exc:
        raise ClientConfigError(f"{where}: {exc}") from None
    return key


def server_name(host: str, port: int, default_port: int) -> str:
    """How known_servers names a server: the host as the user gave it, ``[host]:port`` off the
    default port (as ssh's known_hosts does)."""
    return host if port == default_port else f"[{host}]:{port}"


def pinned_server_key(name: str, given: str | None, path: str) -> tuple[bytes, str]:
    """The server key to use for `name`, and a message for the user ("" if none).

    `given`: the line from --server-key or the stanza's server_key. Pinned and given differ: an
    error. Given and not pinned: pinned now. Neither: an error saying how to get the line."""
    pinned, line_number = _lookup(path, name)
    if given is not None:
        key = parse_server_line(given, "--server-key / server_key")
        if pinned is not None and pinned != key:
            raise ClientConfigError(
                f"the server key of {name} is not the one pinned (line {line_number} of {path}: "
                f"{K.fingerprint(pinned)}; given: {K.fingerprint(key)}). If its admin really made a new "
                f"key, delete that line; otherwise this is not your server")
        if pinned is None:
            _append(path, f"{name} {K.key_line(K.SERVER_PUBLIC, key)}\n")
            return key, f"Pinned the server key of {name} ({K.fingerprint(key)}) in {path}"
        return key, ""
    if pinned is None:
        raise ClientConfigError(
            f"no server key of {name} is known ({path}): a key-pair user needs it before the first knock. "
            f"Ask its admin for the line `knock-admin server-key` prints and run once with --server-key 'LINE' "
            f"(or set server_key in the stanza)")
    return pinned, ""


def _lookup(path: str, name: str) -> tuple[bytes | None, int]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None, 0
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < 3:
            raise ClientConfigError(f"{path}: line {number}: expected NAME {K.SERVER_PUBLIC} BASE64")
        if fields[0] == name:
            return parse_server_line(" ".join(fields[1:3]), f"{path}: line {number}"), number
    return None, 0


def _append(path: str, line: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line)
    except OSError as exc:
        raise ClientConfigError(f"{path}: cannot pin the server key: {exc.strerror or exc}") from None
