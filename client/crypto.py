"""The client's packet cryptography on the standard library (docs/CLIENT.md, "Install").

The server seals and opens packets with pycryptodome (dynknock/protocol.py, dynknock/keys.py).
The client does the same computations here without it, for two reasons:

* start-up: ``knock-client`` is started by ssh for every connection, and importing
  pycryptodome's ChaCha20-Poly1305 costs 30-40 ms (cffi parsing C declarations, or
  ctypes running ``file`` through ``platform.architecture()``), more than the whole
  knock. These functions import nothing beyond ``struct`` and the interpreter's SHA-256
  (:func:`dynknock.keys.hmac_sha256`; hmac and hashlib would load OpenSSL, another ~4 ms);
* installation: the client needs no third-party package for a key file, and only
  pycryptodome's wheel (for a faster scrypt, see :func:`derive_master_key`) for a password.

What is here: XChaCha20-Poly1305 (RFC 8439 with the HChaCha20 nonce extension of
draft-irtf-cfrg-xchacha), HKDF-SHA256 (RFC 5869) with that HMAC, scrypt, and
the AEAD that client/wire.py seals and opens packets with (and :func:`seal` / :func:`open_packet`,
dynknock/protocol.py's functions of the same names given this AEAD). Packets are at most 194
bytes: pure Python costs ~0.3 ms a packet.

These are second implementations of what dynknock/keys.py and pycryptodome compute, kept
on purpose for the two reasons above. That they agree is tested, not assumed, and
tests/unit/test_client_crypto.py is the one place that says so: the RFC vectors,
tests/vectors/*.json byte for byte, and random inputs against pycryptodome, ``cryptography``
and dynknock/keys.py.

Timing: Python integers are not constant-time. The client seals its own packets and
verifies answers with a key only it and the server hold; a forged answer is dropped
without any reply, so nothing on the network can time the verification. The tag is
still compared with :func:`hmac.compare_digest` (imported from where hmac gets it).
"""

from __future__ import annotations

import struct
import unicodedata

from dynknock import keys as K

# hmac.compare_digest is this very function (hmac.py imports it from _operator); importing it
# from there spares knock-client the hmac module's OpenSSL (dynknock.keys.hmac_sha256).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from collections.abc import Callable
    from hmac import compare_digest

    from dynknock import protocol as proto
else:
    try:
        from _operator import _compare_digest as compare_digest
    except ImportError:  # another interpreter
        from hmac import compare_digest

_MASK = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_KEY_WORDS = struct.Struct("<8I")
_NONCE16_WORDS = struct.Struct("<4I")
_NONCE12_WORDS = struct.Struct("<3I")
_BLOCK_WORDS = struct.Struct("<16I")
_LENGTHS = struct.Struct("<QQ")
_POLY_P = (1 << 130) - 5
_POLY_CLAMP = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
_POLY_MOD = 1 << 128
# scrypt with N=2^15, r=8 needs 128*r*N = 32 MiB, exactly OpenSSL's default limit,
# which it counts with some overhead; give it room.
_SCRYPT_MAXMEM = 64 * 1024 * 1024
# The labels of dynknock/keys.py's HKDF, in SessionKeys' field order.
_KEY_INFO = (b"dynknock v1 hint", b"dynknock v1 client-to-server", b"dynknock v1 server-to-client")


# --- ChaCha20 (RFC 8439 2.3) ------------------------------------------------------


def _rounds(state: tuple[int, ...]) -> tuple[int, ...]:
    """The 20 ChaCha rounds over a 16-word state (no final addition), unrolled:
    a loop over quarter-round index tuples is three times slower in CPython."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = state
    m = _MASK
    for _ in range(10):
        x0 = (x0 + x4) & m; x12 ^= x0; x12 = ((x12 << 16) | (x12 >> 16)) & m  # noqa: E702
        x8 = (x8 + x12) & m; x4 ^= x8; x4 = ((x4 << 12) | (x4 >> 20)) & m  # noqa: E702
        x0 = (x0 + x4) & m; x12 ^= x0; x12 = ((x12 << 8) | (x12 >> 24)) & m  # noqa: E702
        x8 = (x8 + x12) & m; x4 ^= x8; x4 = ((x4 << 7) | (x4 >> 25)) & m  # noqa: E702
        x1 = (x1 + x5) & m; x13 ^= x1; x13 = ((x13 << 16) | (x13 >> 16)) & m  # noqa: E702
        x9 = (x9 + x13) & m; x5 ^= x9; x5 = ((x5 << 12) | (x5 >> 20)) & m  # noqa: E702
        x1 = (x1 + x5) & m; x13 ^= x1; x13 = ((x13 << 8) | (x13 >> 24)) & m  # noqa: E702
        x9 = (x9 + x13) & m; x5 ^= x9; x5 = ((x5 << 7) | (x5 >> 25)) & m  # noqa: E702
        x2 = (x2 + x6) & m; x14 ^= x2; x14 = ((x14 << 16) | (x14 >> 16)) & m  # noqa: E702
        x10 = (x10 + x14) & m; x6 ^= x10; x6 = ((x6 << 12) | (x6 >> 20)) & m  # noqa: E702
        x2 = (x2 + x6) & m; x14 ^= x2; x14 = ((x14 << 8) | (x14 >> 24)) & m  # noqa: E702
        x10 = (x10 + x14) & m; x6 ^= x10; x6 = ((x6 << 7) | (x6 >> 25)) & m  # noqa: E702
        x3 = (x3 + x7) & m; x15 ^= x3; x15 = ((x15 << 16) | (x15 >> 16)) & m  # noqa: E702
        x11 = (x11 + x15) & m; x7 ^= x11; x7 = ((x7 << 12) | (x7 >> 20)) & m  # noqa: E702
        x3 = (x3 + x7) & m; x15 ^= x3; x15 = ((x15 << 8) | (x15 >> 24)) & m  # noqa: E702
        x11 = (x11 + x15) & m; x7 ^= x11; x7 = ((x7 << 7) | (x7 >> 25)) & m  # noqa: E702
        x0 = (x0 + x5) & m; x15 ^= x0; x15 = ((x15 << 16) | (x15 >> 16)) & m  # noqa: E702
        x10 = (x10 + x15) & m; x5 ^= x10; x5 = ((x5 << 12) | (x5 >> 20)) & m  # noqa: E702
        x0 = (x0 + x5) & m; x15 ^= x0; x15 = ((x15 << 8) | (x15 >> 24)) & m  # noqa: E702
        x10 = (x10 + x15) & m; x5 ^= x10; x5 = ((x5 << 7) | (x5 >> 25)) & m  # noqa: E702
        x1 = (x1 + x6) & m; x12 ^= x1; x12 = ((x12 << 16) | (x12 >> 16)) & m  # noqa: E702
        x11 = (x11 + x12) & m; x6 ^= x11; x6 = ((x6 << 12) | (x6 >> 20)) & m  # noqa: E702
        x1 = (x1 + x6) & m; x12 ^= x1; x12 = ((x12 << 8) | (x12 >> 24)) & m  # noqa: E702
        x11 = (x11 + x12) & m; x6 ^= x11; x6 = ((x6 << 7) | (x6 >> 25)) & m  # noqa: E702
        x2 = (x2 + x7) & m; x13 ^= x2; x13 = ((x13 << 16) | (x13 >> 16)) & m  # noqa: E702
        x8 = (x8 + x13) & m; x7 ^= x8; x7 = ((x7 << 12) | (x7 >> 20)) & m  # noqa: E702
        x2 = (x2 + x7) & m; x13 ^= x2; x13 = ((x13 << 8) | (x13 >> 24)) & m  # noqa: E702
        x8 = (x8 + x13) & m; x7 ^= x8; x7 = ((x7 << 7) | (x7 >> 25)) & m  # noqa: E702
        x3 = (x3 + x4) & m; x14 ^= x3; x14 = ((x14 << 16) | (x14 >> 16)) & m  # noqa: E702
        x9 = (x9 + x14) & m; x4 ^= x9; x4 = ((x4 << 12) | (x4 >> 20)) & m  # noqa: E702
        x3 = (x3 + x4) & m; x14 ^= x3; x14 = ((x14 << 8) | (x14 >> 24)) & m  # noqa: E702
        x9 = (x9 + x14) & m; x4 ^= x9; x4 = ((x4 << 7) | (x4 >> 25)) & m  # noqa: E702
    return (x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """One 64-byte ChaCha20 keystream block (RFC 8439 2.3: 32-bit counter, 96-bit nonce)."""
    state = _SIGMA + _KEY_WORDS.unpack(key) + (counter & _MASK,) + _NONCE12_WORDS.unpack(nonce)
    mixed = _rounds(state)
    return _BLOCK_WORDS.pack(*[(a + b) & _MASK for a, b in zip(mixed, state, strict=True)])


def chacha20_xor(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """Encrypt or decrypt ``data`` with the keystream starting at block ``counter``."""
    out = bytearray()
    for offset in range(0, len(data), 64):
        chunk = data[offset:offset + 64]
        stream = chacha20_block(key, counter + offset // 64, nonce)[:len(chunk)]
        out += (int.from_bytes(chunk, "little") ^ int.from_bytes(stream, "little")).to_bytes(len(chunk), "little")
    return bytes(out)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """The XChaCha20 subkey (draft-irtf-cfrg-xchacha 2.2): words 0-3 and 12-15 after the rounds."""
    mixed = _rounds(_SIGMA + _KEY_WORDS.unpack(key) + _NONCE16_WORDS.unpack(nonce16))
    return _KEY_WORDS.pack(*mixed[0:4], *mixed[12:16])


# --- Poly1305 and the AEAD (RFC 8439 2.5, 2.8) ----------------------------------------


def poly1305(one_time_key: bytes, message: bytes) -> bytes:
    r = int.from_bytes(one_time_key[:16], "little") & _POLY_CLAMP
    s = int.from_bytes(one_time_key[16:32], "little")
    acc = 0
    for offset in range(0, len(message), 16):
        block = message[offset:offset + 16] + b"\x01"
        acc = (acc + int.from_bytes(block, "little")) * r % _POLY_P
    return ((acc + s) % _POLY_MOD).to_bytes(16, "little")


def _pad16(data: bytes) -> bytes:
    return bytes(-len(data) % 16)


def _tag(one_time_key: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    mac_data = aad + _pad16(aad) + ciphertext + _pad16(ciphertext) + _LENGTHS.pack(len(aad), len(ciphertext))
    return poly1305(one_time_key, mac_data)


def _xchacha_keys(key: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    if len(key) != 32 or len(nonce) != 24:
        raise ValueError("XChaCha20-Poly1305 needs a 32-byte key and a 24-byte nonce")
    subkey = hchacha20(key, nonce[:16])
    inner_nonce = bytes(4) + nonce[16:]
    return subkey, inner_nonce, chacha20_block(subkey, 0, inner_nonce)[:32]


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """Returns (ciphertext, 16-byte tag), as pycryptodome's ChaCha20_Poly1305 with a 24-byte nonce."""
    subkey, inner_nonce, one_time_key = _xchacha_keys(key, nonce)
    ciphertext = chacha20_xor(subkey, 1, inner_nonce, plaintext)
    return ciphertext, _tag(one_time_key, aad, ciphertext)


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    """The plaintext, or ValueError when the tag does not verify (nothing is decrypted then)."""
    subkey, inner_nonce, one_time_key = _xchacha_keys(key, nonce)
    if not compare_digest(_tag(one_time_key, aad, ciphertext), tag):
        raise ValueError("MAC check failed")
    return chacha20_xor(subkey, 1, inner_nonce, ciphertext)


# --- keys (dynknock/keys.py's derivations) -----------------------------------------------


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 with an empty salt (HashLen zero bytes), as pycryptodome's HKDF(secret, length, b"", SHA256)."""
    prk = K.hmac_sha256(bytes(32), secret)
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = K.hmac_sha256(prk, block + info + bytes((counter,)))
        out += block
        counter += 1
    return out[:length]


def session_keys(master: bytes) -> K.SessionKeys:
    """dynknock.keys.SessionKeys.from_master, with :func:`hkdf_sha256` instead of pycryptodome's HKDF."""
    if len(master) != K.MASTER_KEY_LEN:
        raise K.KeyError_(f"master key must be {K.MASTER_KEY_LEN} bytes")
    return K.SessionKeys(*(hkdf_sha256(master, info) for info in _KEY_INFO))


def preload_scrypt() -> None:
    """Import pycryptodome's scrypt in a thread, now: called before the password is read, so that
    its import (15-35 ms) runs while the user types, and what is left after Enter is scrypt itself.
    derive_master_key's own import then finds the module loaded, or waits for the thread (the
    import lock), never loads it twice."""
    import threading  # only password runs come here

    def load() -> None:
        try:
            import Crypto.Protocol.KDF  # noqa: F401
        except ImportError:
            pass  # derive_master_key falls back to OpenSSL's scrypt

    threading.Thread(target=load, name="preload-scrypt", daemon=True).start()


def derive_master_key(user: str, password: str) -> bytes:
    """dynknock.keys.derive_master_key: the same key, from pycryptodome's scrypt when it is installed
    (a dependency of the package), else from OpenSSL's (hashlib).

    pycryptodome is preferred although importing it costs 15-35 ms: its scrypt is so much
    faster than OpenSSL's that, in a fresh process on the lab machine, import and scrypt take
    ~70 ms against OpenSSL's ~95 ms. Only password runs come here; key files never import it.
    """
    if not password:
        raise K.KeyError_("empty password")
    name = K.normalise_user_name(user)
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    salt = K.SCRYPT_SALT_PREFIX + name.encode("utf-8")
    try:
        from Crypto.Protocol.KDF import scrypt
    except ImportError:
        return scrypt_openssl(secret, salt)
    key = scrypt(secret, salt, K.MASTER_KEY_LEN, N=K.SCRYPT_N, r=K.SCRYPT_R, p=K.SCRYPT_P)
    assert isinstance(key, bytes)
    return key


def scrypt_openssl(secret: bytes, salt: bytes) -> bytes:
    """The master key's scrypt with hashlib, for a client installed without pycryptodome."""
    import hashlib  # only a password run without pycryptodome comes here

    return hashlib.scrypt(secret, salt=salt, n=K.SCRYPT_N, r=K.SCRYPT_R, p=K.SCRYPT_P, maxmem=_SCRYPT_MAXMEM,
                          dklen=K.MASTER_KEY_LEN)


# --- dynknock/protocol.py's packets with this AEAD --------------------------------------------------
#
# knock-client's own packets go through client/wire.py. These serve code that holds protocol.py's
# records (the engine's tests of a key-pair user): protocol.py is imported only when they are called,
# so that the client's start-up never loads it nor its dataclasses.


def seal(keys: K.SessionKeys, message: proto.Message, hint: bytes, nonce: bytes,
         server: proto.IPAddress | None = None) -> bytes:
    """dynknock.protocol.seal with this module's AEAD (v2 with `server`)."""
    from dynknock import protocol

    return protocol.seal(keys, message, hint, nonce, server, encrypt=xchacha20poly1305_encrypt)


def seal_pair(keys: K.SessionKeys, message: proto.Message, hint: bytes, nonce: bytes, server_key: bytes,
              server: proto.IPAddress | None = None, sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """dynknock.protocol.seal_pair (version 3, a key-pair user) with this module's AEAD."""
    from dynknock import protocol

    return protocol.seal_pair(keys, message, hint, nonce, server_key, server, sign,
                              encrypt=xchacha20poly1305_encrypt)


def open_packet(keys: K.SessionKeys, header: proto.Header, packet: bytes,
                server: proto.IPAddress | None = None) -> proto.Message | proto.Reject:
    """dynknock.protocol.open_packet with this module's AEAD. Never raises."""
    from dynknock import protocol

    return protocol.open_packet(keys, header, packet, server, decrypt=xchacha20poly1305_decrypt)
