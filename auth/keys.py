"""Key material: the user's master key and the keys derived from it.

A user's *master key* is 32 bytes. It is either derived from a user name and a
password with scrypt (so that the client needs nothing but those two, as in the
SIG^2 paper) or drawn at random and kept in a key file (`knock-client --key-gen`,
like fwknop's). The server stores master keys, never passwords.

From the master key, HKDF-SHA256 derives three independent keys:

* ``hint``: keys the rotating 8-byte *user hint* that lets the server find the
  right user with one dictionary look-up, without the name in clear text and
  without trial-decrypting against every user;
* ``client_to_server``: the XChaCha20-Poly1305 key of P1 and P2;
* ``server_to_client``: the XChaCha20-Poly1305 key of P3. Separate directions
  mean a P3 reflected back at the server can never authenticate as a P1 or P2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
import struct
import unicodedata
from dataclasses import dataclass
from pathlib import Path

MASTER_KEY_LEN = 32
HINT_LEN = 8

# scrypt cost: N=2^15, r=8 takes about 32 MiB and ~0.1 s here. This is paid once
# per knock on the client and once per `knock-admin add` on the server; never on
# the server's packet path (the server stores the derived key).
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
# The salt must be computable from what the user types; binding it to the user
# name stops one precomputed table from serving every user.
SCRYPT_SALT_PREFIX = b"dynknock/v1/scrypt/"

# Hints rotate once a minute so that a passive observer cannot link packets of
# the same user across minutes (within one epoch they are linkable, as are the
# packets of one exchange by their addresses anyway).
HINT_EPOCH_SECONDS = 60


class KeyError_(ValueError):
    """A key, password or key file is unusable."""


def normalise_user_name(user: str) -> str:
    name = unicodedata.normalize("NFC", user).strip()
    if not name or len(name.encode()) > 64 or any(ch.isspace() or ord(ch) < 32 for ch in name):
        raise KeyError_(f"invalid user name {user!r}: 1-64 bytes, no spaces or control characters")
    return name


def derive_master_key(user: str, password: str) -> bytes:
    """scrypt(password, salt = prefix || user name) -> 32-byte master key."""
    if not password:
        raise KeyError_("empty password")
    name = normalise_user_name(user)
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    # Imported here, not at the top: knock-client imports this module for its key
    # file and constants, and pycryptodome's import alone costs it 30-40 ms.
    from Crypto.Protocol.KDF import scrypt

    key = scrypt(secret, SCRYPT_SALT_PREFIX + name.encode("utf-8"), MASTER_KEY_LEN,
                 N=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    assert isinstance(key, bytes)
    return key


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError as exc:
        raise KeyError_("key is not valid base64") from exc
    if len(key) != MASTER_KEY_LEN:
        raise KeyError_(f"key must be {MASTER_KEY_LEN} bytes, got {len(key)}")
    return key


def _hkdf(master: bytes, label: bytes) -> bytes:
    from Crypto.Hash import SHA256  # imported here for knock-client's start-up, as in derive_master_key
    from Crypto.Protocol.KDF import HKDF

    out = HKDF(master, 32, b"", SHA256, context=b"dynknock v1 " + label)
    assert isinstance(out, bytes)
    return out


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The three keys derived from one master key."""

    hint: bytes
    client_to_server: bytes
    server_to_client: bytes

    @classmethod
    def from_master(cls, master: bytes) -> SessionKeys:
        if len(master) != MASTER_KEY_LEN:
            raise KeyError_(f"master key must be {MASTER_KEY_LEN} bytes")
        return cls(
            hint=_hkdf(master, b"hint"),
            client_to_server=_hkdf(master, b"client-to-server"),
            server_to_client=_hkdf(master, b"server-to-client"),
        )

    def __repr__(self) -> str:  # never print key bytes, even by accident
        return "SessionKeys(<redacted>)"


def hint_epoch(unix_seconds: float) -> int:
    return int(unix_seconds // HINT_EPOCH_SECONDS)


def user_hint(keys: SessionKeys, epoch: int) -> bytes:
    mac = hmac.new(keys.hint, b"epoch" + struct.pack("!Q", epoch), hashlib.sha256)
    return mac.digest()[:HINT_LEN]


def read_key_file(path: Path) -> bytes:
    """A base64 master key from a file only its owner can read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"{path}: key file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyError_(f"{path}: key file mode {stat.S_IMODE(st.st_mode):04o} lets group or others read it, "
                            f"and it is as good as a password: chmod 600 {path}")
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyError_(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyError_(f"{path}: cannot read key file: {exc}") from None
    try:
        return decode_key(text)
    except KeyError_ as exc:
        raise KeyError_(f"{path}: {exc}") from None


def write_key_file(path: Path, key: bytes) -> None:
    """Create ``path`` (mode 0600, never overwriting: it may be the only copy of a key) with ``key`` in base64."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyError_(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encode_key(key) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)  # the umask cannot widen 0600, but be explicit against odd filesystems
