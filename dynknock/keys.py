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

A *key-pair user* (protocol version 3) has instead a 32-byte Ed25519 seed that never leaves
her client; the server holds her public key and a static X25519 key pair of its own. The
same three keys come from HKDF over X25519 between the two (:func:`pair_session_keys`):
her client computes it with her secret scalar and the server's public key, the server
with its secret and her public key. Her P1s are also signed, which only her seed can do.
Key files and key lines (:func:`key_line`): ``dynknock-ed25519 <base64> comment`` (a
user's public key, like an ssh public key), ``dynknock-ed25519-private <base64 seed>`` (her
key file), ``dynknock-x25519 <base64>`` (a server's public key) and
``dynknock-x25519-private <base64>`` (the server's key file).
"""

from __future__ import annotations

import binascii
import os
import stat
import struct
import unicodedata

# typing.TYPE_CHECKING without importing typing; mypy treats the name alike. knock-client imports
# this module on every start, so it imports neither pathlib (the caller's Path is only used) nor
# dataclasses, typing or base64 (binascii is what base64 calls), which would slow every start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256 as _sha256
    from pathlib import Path
else:
    # The interpreter's own SHA-256 rather than hashlib's: hashlib (and hmac) load OpenSSL's
    # libcrypto, which costs knock-client's start-up more than its few short HMACs (see hmac_sha256).
    try:
        from _sha2 import sha256 as _sha256  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as _sha256  # Python 3.11
        except ImportError:  # a build without the built-in hashes (some FIPS builds)
            from hashlib import sha256 as _sha256

MASTER_KEY_LEN = 32
HINT_LEN = 8

# scrypt cost: N=2^15, r=8 takes 32 MiB and tens of milliseconds. This is paid once
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
    # file and constants, and pycryptodome's import would weigh on every start.
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
    frozen slotted dataclass written out, since importing dataclasses slows knock-client's start."""

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


def read_key_text(path: str | Path) -> str:
    """The text of a key file only its owner can read (KeyError_ naming the file otherwise)."""
    try:
        problem = secret_file_problem(os.stat(path), path)
        if problem:
            raise KeyError_(f"{path}: key file {problem}")
        with open(path, encoding="ascii") as handle:  # = Path.read_text, for a str as well
            return handle.read()
    except FileNotFoundError:
        raise KeyError_(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyError_(f"{path}: cannot read key file: {exc}") from None


def parse_key_file(path: str | Path, text: str) -> tuple[str, bytes]:
    """A key file's kind and key: ("", master key) for a symmetric key file (base64 alone), or
    (PAIR_PRIVATE, seed) for a key-pair user's (``dynknock-ed25519-private BASE64``)."""
    try:
        if text.lstrip().startswith(PAIR_PRIVATE + " "):
            return PAIR_PRIVATE, parse_key_line(text, PAIR_PRIVATE)[0]
        if text.lstrip().startswith("dynknock-"):
            found = text.split(None, 1)[0]
            raise KeyError_(f"a {found} line is no key file of a user (expected {PAIR_PRIVATE} or base64 alone)")
        return "", decode_key(text)
    except KeyError_ as exc:
        raise KeyError_(f"{path}: {exc}") from None


def read_key_file(path: str | Path) -> bytes:
    """A base64 master key from a file only its owner can read. knock-client names files by
    strings (client/paths.py), the server by pathlib.Path; both print the same."""
    kind, key = parse_key_file(path, read_key_text(path))
    if kind:
        raise KeyError_(f"{path}: the private key of a key pair, which stays with its user: "
                        f"register her public key line instead ({path}.pub, knock-admin add NAME --public-key)")
    return key


def write_key_file(path: Path, key: bytes, kind: str = "") -> None:
    """Create ``path`` (mode 0600, never overwriting: it may be the only copy of a key) with ``key`` in base64,
    after `kind` (a key line's type, e.g. PAIR_PRIVATE) if one is given."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyError_(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyError_(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write((key_line(kind, key) if kind else encode_key(key)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)  # the umask cannot widen 0600, but be explicit against odd filesystems


# --- key-pair users (protocol version 3) ----------------------------------------------------------

PAIR_PUBLIC = "dynknock-ed25519"  # a user's public key line
PAIR_PRIVATE = "dynknock-ed25519-private"  # her key file: the seed
SERVER_PUBLIC = "dynknock-x25519"  # a server's public key line (the client pins it)
SERVER_PRIVATE = "dynknock-x25519-private"  # the server's key file
PAIR_KEY_LEN = 32
_PAIR_SALT = b"dynknock v3 pair"
_PAIR_INFO = (b"dynknock v3 hint", b"dynknock v3 client-to-server", b"dynknock v3 server-to-client")
_P = 2**255 - 19


def key_line(kind: str, key: bytes, comment: str = "") -> str:
    """``KIND BASE64 [COMMENT]``, one line, as an ssh public key reads."""
    return f"{kind} {encode_key(key)}" + (f" {comment}" if comment else "")


def parse_key_line(text: str, kind: str) -> tuple[bytes, str]:
    """The key and comment of a line of this kind (KeyError_ naming what is wrong)."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != kind:
        found = parts[0] if parts else "an empty line"
        raise KeyError_(f"expected a {kind} line ({kind} BASE64 [comment]), got {found!r}")
    return decode_key(parts[1]), parts[2] if len(parts) > 2 else ""


def fingerprint(key: bytes) -> str:
    """As ssh shows a key: SHA256, unpadded base64."""
    return "SHA256:" + binascii.b2a_base64(_sha256(key).digest(), newline=False).decode("ascii").rstrip("=")


def pair_session_keys(shared: bytes, user_public: bytes, server_public: bytes) -> SessionKeys:
    """The session keys of a key-pair user at a server: HKDF-SHA256 over their X25519 result, with both
    public keys in the extract step (the keys belong to this user and this server key, and no other).

        PRK  = HMAC-SHA256("dynknock v3 pair", shared || user_public || server_public)
        K(l) = HMAC-SHA256(PRK, "dynknock v3 " || l || 0x01)
    """
    if len(shared) != PAIR_KEY_LEN or len(user_public) != PAIR_KEY_LEN or len(server_public) != PAIR_KEY_LEN:
        raise KeyError_("X25519 result and public keys are 32 bytes each")
    prk = hmac_sha256(_PAIR_SALT, shared + user_public + server_public)
    return SessionKeys(*(hmac_sha256(prk, info + b"\x01") for info in _PAIR_INFO))


def montgomery_u(ed25519_public: bytes) -> bytes:
    """A user's Ed25519 public key as an X25519 public key (u = (1 + y) / (1 - y) mod p, RFC 7748 4.1's
    map): the server's X25519 with it equals hers with the server's key. KeyError_ for a y that is not
    canonical or maps to nothing (y = 1)."""
    if len(ed25519_public) != PAIR_KEY_LEN:
        raise KeyError_("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise KeyError_("not a usable Ed25519 public key")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")
