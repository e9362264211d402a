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

import binascii
import os
import stat
import struct
import unicodedata

# typing.TYPE_CHECKING without importing typing; mypy treats the name alike. knock-client imports
# this module on every start, so it imports neither pathlib (the caller's Path is only used) nor
# dataclasses, typing or base64 (binascii is what base64 calls): ~15 ms of start-up together.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256 as _sha256
    from pathlib import Path
else:
    # The interpreter's own SHA-256 rather than hashlib's: hashlib (and hmac) load OpenSSL's
    # libcrypto, ~4 ms of knock-client's start-up for a few short HMACs (see hmac_sha256).
    try:
        from _sha2 import sha256 as _sha256  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as _sha256  # Python 3.11
        except ImportError:  # a build without the built-in hashes (some FIPS builds)
            from hashlib import sha256 as _sha256

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


_IPAD = bytes(x ^ 0x36 for x in range(256))  # RFC 2104's inner and outer pads, as translate() tables
_OPAD = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK = 64


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104): ``hmac.digest(key, message, "sha256")`` without importing hmac, whose
    OpenSSL costs knock-client more start-up than all its HMACs take (tests/unit/test_keys_hmac.py
    checks the two agree)."""
    if len(key) > _SHA256_BLOCK:
        key = _sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = _sha256(key.translate(_IPAD) + message).digest()
    return _sha256(key.translate(_OPAD) + inner).digest()


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
    return binascii.b2a_base64(key, newline=False).decode("ascii")  # = base64.b64encode


def decode_key(text: str) -> bytes:
    try:
        # = base64.b64decode(text, validate=True): ASCII only, strict alphabet and padding
        key = binascii.a2b_base64(text.strip().encode("ascii"), strict_mode=True)
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


class SessionKeys:
    """The three keys derived from one master key. Immutable, compared and hashed by value: a
    frozen slotted dataclass written out, since the dataclasses module costs knock-client ~10 ms."""

    __slots__ = ("hint", "client_to_server", "server_to_client")
    __match_args__ = ("hint", "client_to_server", "server_to_client")

    hint: bytes
    client_to_server: bytes
    server_to_client: bytes

    def __init__(self, hint: bytes, client_to_server: bytes, server_to_client: bytes) -> None:
        object.__setattr__(self, "hint", hint)
        object.__setattr__(self, "client_to_server", client_to_server)
        object.__setattr__(self, "server_to_client", server_to_client)

    def __setattr__(self, name: str, value: object) -> None:
        from dataclasses import FrozenInstanceError  # only on this error path

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, SessionKeys)
        return (self.hint, self.client_to_server, self.server_to_client) == (
            other.hint, other.client_to_server, other.server_to_client)

    def __hash__(self) -> int:
        return hash((self.hint, self.client_to_server, self.server_to_client))

    def __getstate__(self) -> list[bytes]:  # copy and pickle, as a frozen slotted dataclass allows
        return [self.hint, self.client_to_server, self.server_to_client]

    def __setstate__(self, state: list[bytes]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            object.__setattr__(self, name, value)

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
    return hmac_sha256(keys.hint, b"epoch" + struct.pack("!Q", epoch))[:HINT_LEN]


def secret_file_problem(st: os.stat_result, path: str | Path, *, group_may_read: bool = False) -> str:
    """Why a file that holds a secret must be refused ("": it may be used): it must be a regular
    file that no other user can read and no one but its owner can write; `group_may_read`: its
    group may read it too (a file of root's that the service's group reads). The users file, key
    files and the metrics token all pass here, so all refuse and say so alike."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & (0o137 if group_may_read else 0o077):
        return (f"mode {stat.S_IMODE(st.st_mode):04o} is too open for a file that holds a secret: "
                f"chmod {640 if group_may_read else 600} {path}")
    return ""


def read_key_file(path: str | Path) -> bytes:
    """A base64 master key from a file only its owner can read. knock-client names files by
    strings (client/paths.py), the server by pathlib.Path; both print the same."""
    try:
        problem = secret_file_problem(os.stat(path), path)
        if problem:
            raise KeyError_(f"{path}: key file {problem}")
        with open(path, encoding="ascii") as handle:  # = Path.read_text, for a str as well
            text = handle.read()
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
