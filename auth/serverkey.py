"""The server's own key, for key-pair users (protocol version 3, docs/PROTOCOL.md §11).

A static X25519 key pair: the private half in ``server.key_file`` (default
/etc/dynknock/server.key, one line ``dynknock-x25519-private BASE64``, root:dynknock 0640 like
the users file, refused if more open), the public half given to every key-pair user, who pins
it (``knock-client --pin-server LINE``). A user's session keys come from X25519 between her
key and this one (:func:`dynknock.keys.pair_session_keys`); her P1's signature is checked
against her public key. Whoever steals this file (with the users file) can compute her keys,
read her packets and answer her, but not sign: no P1 of hers opens a door (SECURITY.md).

pycryptodome does the X25519 and the signature check (0.3 ms and ~0.3-1 ms); the keys of each
user are computed once and kept, so that a users file reloaded every few seconds costs nothing.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dynknock.keys import (
    PAIR_KEY_LEN,
    SERVER_PRIVATE,
    SERVER_PUBLIC,
    KeyError_,
    SessionKeys,
    key_line,
    montgomery_u,
    pair_session_keys,
    parse_key_line,
    secret_file_problem,
)


class ServerKeyError(ValueError):
    """The server's key file cannot be used; the message names the file and why."""


class ServerKey:
    """The server's X25519 key pair and what key-pair users need of it (auth/engine.py PairServer)."""

    def __init__(self, private: bytes) -> None:
        from Crypto.Protocol.DH import import_x25519_private_key

        if len(private) != PAIR_KEY_LEN:
            raise ServerKeyError("an X25519 private key is 32 bytes")
        self._private = import_x25519_private_key(private)
        self.public: bytes = self._private.public_key().export_key(format="raw")
        self._keys: dict[bytes, SessionKeys] = {}

    def line(self, comment: str = "") -> str:
        """The public line a user pins: ``dynknock-x25519 BASE64 [comment]``."""
        return key_line(SERVER_PUBLIC, self.public, comment)

    def session_keys(self, user_public: bytes) -> SessionKeys:
        """A key-pair user's session keys at this server (cached by her public key)."""
        keys = self._keys.get(user_public)
        if keys is None:
            from Crypto.Protocol.DH import import_x25519_public_key, key_agreement

            try:
                peer = import_x25519_public_key(montgomery_u(user_public))
                shared = key_agreement(static_priv=self._private, static_pub=peer, kdf=lambda z: z)
            except (ValueError, KeyError_) as exc:
                raise ServerKeyError(f"unusable user public key: {exc}") from None
            keys = self._keys[user_public] = pair_session_keys(shared, user_public, self.public)
        return keys

    @staticmethod
    def verify(user_public: bytes, message: bytes, signature: bytes) -> bool:
        """Her Ed25519 signature of message (RFC 8032, strict: pycryptodome refuses S >= L and
        non-canonical points). Never raises."""
        from Crypto.Signature import eddsa

        try:
            eddsa.new(eddsa.import_public_key(user_public), "rfc8032").verify(message, signature)
        except (ValueError, TypeError):
            return False
        return True


def check_user_public_key(public: bytes) -> None:
    """Refuse a user public key that is no point, not canonical, or of small order (a small-order key
    verifies forged signatures of every message); KeyError_ says which."""
    from Crypto.Signature import eddsa

    if len(public) != PAIR_KEY_LEN:
        raise KeyError_("an Ed25519 public key is 32 bytes")
    try:
        point = eddsa.import_public_key(public).pointQ
    except ValueError:
        raise KeyError_("not an Ed25519 public key (no point of the curve)") from None
    if (point * 8).is_point_at_infinity():
        raise KeyError_("an Ed25519 public key of small order: it would accept forged signatures")
    montgomery_u(public)


def load_server_key(path: Path) -> ServerKey | None:
    """The server's key, or None if the file does not exist (then no user may have a key pair)."""
    try:
        problem = secret_file_problem(path.stat(), path, group_may_read=True)
        if problem:
            raise ServerKeyError(f"{path}: {problem}")
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerKeyError(f"{path}: cannot read the server key: {exc}") from None
    try:
        private, _ = parse_key_line(text, SERVER_PRIVATE)
    except KeyError_ as exc:
        raise ServerKeyError(f"{path}: {exc}") from None
    return ServerKey(private)


def make_server_key(path: Path) -> ServerKey:
    """A new key in a new file (never overwriting: every key-pair user has pinned the one there)."""
    private = secrets.token_bytes(PAIR_KEY_LEN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ServerKeyError(f"{path}: already exists; every key-pair user pinned its key") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_line(SERVER_PRIVATE, private) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return ServerKey(private)
