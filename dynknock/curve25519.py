"""Ed25519 signatures (RFC 8032) and X25519 (RFC 7748) in pure Python, for knock-client.

ssh starts knock-client for every connection, so the client cannot afford to import pycryptodome's
or ``cryptography``'s curve code, which takes longer than the whole knock; this module needs nothing
beyond the interpreter's built-in SHA-512 and binascii. Six functions:

* :func:`ed25519_public_key` (seed) and :func:`ed25519_sign` (seed, message): RFC 8032 Ed25519,
  deterministic, so byte-identical to every other implementation; ValueError for a seed that is
  not 32 bytes;
* :func:`ed25519_verify` (public, message, signature): the rules of the server's verifier,
  pycryptodome's ``Crypto.Signature.eddsa``: a 64-byte signature with S < L, canonical encodings
  of points on the curve for A and R (y < p; x = 0 with the sign bit set is refused), and the
  cofactored equation [8][S]B = [8]R + [8][k]A. Like RFC 8032 and pycryptodome it does not refuse
  a small-order A or R: whoever registers a public key checks that 8·A is not the neutral point.
  Any malformed input (wrong length or type, bad encoding) gives False; it never raises;
* :func:`ed25519_secret_scalar` (seed): the scalar a seed's X25519 uses;
* :func:`x25519` (scalar, u) and :func:`x25519_base` (scalar): RFC 7748 with clamping; a
  non-canonical u (>= p) is reduced and the top bit of u ignored, as RFC 7748 says; ValueError
  for an input that is not 32 bytes or an all-zero result (a u of low order).

Fixed-base multiples (public keys, signatures, x25519_base) are 64 additions of precomputed
points, one per signed radix-16 digit of the scalar, and 12 doublings, from the table stored at
the end (j·16^(4t)·B for j = 1..8, t = 0..15; 12 KB, decoded at the first use); x25519 runs the
RFC 7748 Montgomery ladder.

What a key-pair knock costs the client with it (an import, one X25519, one signature) is in
docs/BENCHMARKS.md, "knock-client start-up".

Not constant-time. Python integers take time that depends on their values, the table is
indexed by digits of the secret scalar and of the per-signature nonce, and the ladder branches
on the scalar's bits. For knock-client this means: how long its own signing and X25519 take
can tell something about its key only to someone who can measure the client's CPU (a process
on the same machine, through shared caches or timing; over many signatures, partial leaks of
the nonces can add up to the key); the network sees a packet leave with a jitter far above that
signal. The server does not use this code: it verifies with pycryptodome
(``Crypto.Signature.eddsa``), and tests/unit/test_curve25519.py checks that both give the same
signatures and the same verdicts.
"""

from __future__ import annotations

import binascii
import sys

# typing.TYPE_CHECKING without importing typing; mypy treats the name alike. The interpreter's
# own SHA-512 rather than hashlib's: hashlib loads OpenSSL's libcrypto, which slows start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha512 as _sha512
    from typing import TypeAlias

    Point: TypeAlias = tuple[int, int, int, int]  # extended coordinates (X : Y : Z : T), x = X/Z, y = Y/Z, xy = T/Z
    Cached: TypeAlias = tuple[int, int, int]  # an affine point as (y + x, y - x, 2dxy), for mixed additions
else:
    try:  # the module's name by version: a failed import costs a search of sys.path
        if sys.version_info >= (3, 12):
            from _sha2 import sha512 as _sha512
        else:
            from _sha512 import sha512 as _sha512
    except ImportError:  # a build without the built-in hashes (some FIPS builds)
        from hashlib import sha512 as _sha512

__all__ = ["ed25519_public_key", "ed25519_secret_scalar", "ed25519_sign", "ed25519_verify", "x25519", "x25519_base"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493  # the order of B
_D = 37095705934669439343138083508754565189542113879843219016388785533085940283555  # -121665/121666
_D2 = 2 * _D % _P
_SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752  # 2^((p-1)/4)
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960  # 4/5
_B: Point = (_BX, _BY, 1, _BX * _BY % _P)
_IDENTITY: Point = (0, 1, 1, 0)
_NEUTRAL: Cached = (1, 1, 0)  # the identity in the table's form
_LOW_255 = (1 << 255) - 1
_CLAMP = (1 << 254) - 8  # clears the three low bits and bits 254, 255


# --- points of edwards25519 (RFC 8032 5.1.4; complete formulas, a = -1) ----------------------------


def _add(p1: Point, p2: Point) -> Point:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _double(p1: Point) -> Point:
    x1, y1, z1, _ = p1
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    s = x1 + y1
    e = h - s * s % _P
    g = a - b
    f = c + g
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _add_cached(p1: Point, q: Cached) -> Point:
    """p1 + q for an affine q in (y + x, y - x, 2dxy) form: _add with Z2 = 1 and 2d·T2 precomputed."""
    x1, y1, z1, t1 = p1
    ypx, ymx, xy2d = q
    a = (y1 - x1) * ymx % _P
    b = (y1 + x1) * ypx % _P
    c = t1 * xy2d % _P
    d = 2 * z1
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _negate(p1: Point) -> Point:
    x1, y1, z1, t1 = p1
    return (_P - x1) % _P, y1, z1, (_P - t1) % _P


def _is_identity(p1: Point) -> bool:
    x1, y1, z1, _ = p1
    return x1 % _P == 0 and (y1 - z1) % _P == 0


def _encode(p1: Point) -> bytes:
    x1, y1, z1, _ = p1
    zi = pow(z1, -1, _P)
    x = x1 * zi % _P
    y = y1 * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(encoded: bytes) -> Point | None:
    """RFC 8032 5.1.3: the point of a 32-byte encoding, or None if y >= p, if no x exists, or if
    x = 0 and the sign bit is set."""
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y &= _LOW_255
    if y >= _P:
        return None
    yy = y * y % _P
    # d·y² + 1 is never 0: -1/d is not a square mod p
    x2 = (yy - 1) * pow(_D * yy + 1, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
        if (x * x - x2) % _P:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y, 1, x * y % _P


def _radix16(s: int) -> list[int]:
    """64 signed digits d_i in [-8, 8) with s = sum(d_i · 16^i), for 0 <= s < 2^253 (the top digit,
    at most 2, leaves no carry)."""
    digits = []
    carry = 0
    for i in range(0, 256, 4):
        d = ((s >> i) & 15) + carry
        carry = (d + 8) >> 4
        digits.append(d - (carry << 4))
    return digits


# --- fixed base: s·B with the table ------------------------------------------------------------------

_ROWS = 16  # rows t = 0..15 of j·16^(4t)·B; digit i = 4t + g is added in pass g (Horner over g)


def _multiply_base(s: int) -> Point:
    """s·B: 64 mixed additions (one per digit, the neutral point for a zero digit) and 12 doublings."""
    table = _TABLE or _load_table()
    digits = _radix16(s % _L)
    q = _IDENTITY
    for g in (3, 2, 1, 0):
        if g != 3:
            q = _double(_double(_double(_double(q))))
        for t in range(_ROWS):
            d = digits[4 * t + g]
            if d > 0:
                q = _add_cached(q, table[t][d - 1])
            elif d < 0:
                ypx, ymx, xy2d = table[t][-d - 1]
                q = _add_cached(q, (ymx, ypx, _P - xy2d))
            else:
                q = _add_cached(q, _NEUTRAL)
    return q


def _multiply(s: int, point: Point) -> Point:
    """s·point for a variable point (verification only: public inputs), 0 <= s < 2^253."""
    multiples = [point]
    for _ in range(7):
        multiples.append(_add(multiples[-1], point))
    q = _IDENTITY
    for d in reversed(_radix16(s)):
        q = _double(_double(_double(_double(q))))
        if d > 0:
            q = _add(q, multiples[d - 1])
        elif d < 0:
            q = _add(q, _negate(multiples[-d - 1]))
    return q


def _build_table() -> list[list[Cached]]:
    """The table from B (tests/unit/test_curve25519.py checks that _TABLE_TEXT is this)."""
    rows = []
    base = _B
    for _ in range(_ROWS):
        row = []
        acc = base
        for _ in range(8):
            x1, y1, z1, _t = acc
            zi = pow(z1, -1, _P)
            x = x1 * zi % _P
            y = y1 * zi % _P
            row.append(((y + x) % _P, (y - x) % _P, _D2 * x * y % _P))
            acc = _add(acc, base)
        rows.append(row)
        for _ in range(16):
            base = _double(base)
    return rows


def _table_text() -> str:
    """_TABLE_TEXT as _build_table makes it: base64 of the rows' integers, 32 bytes little-endian."""
    raw = b"".join(v.to_bytes(32, "little") for row in _build_table() for point in row for v in point)
    text = binascii.b2a_base64(raw, newline=False).decode("ascii")
    return "\n".join(text[i:i + 116] for i in range(0, len(text), 116))


def _load_table() -> list[list[Cached]]:
    global _TABLE
    raw = binascii.a2b_base64(_TABLE_TEXT)  # skips the newlines
    values = [int.from_bytes(raw[i:i + 32], "little") for i in range(0, len(raw), 32)]
    points = [(values[i], values[i + 1], values[i + 2]) for i in range(0, len(values), 3)]
    _TABLE = [points[i:i + 8] for i in range(0, len(points), 8)]
    return _TABLE


_TABLE: list[list[Cached]] | None = None


# --- Ed25519 (RFC 8032 5.1) -----------------------------------------------------------------------


def _expand(seed: bytes) -> tuple[int, bytes]:
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
    h = _sha512(seed).digest()
    return int.from_bytes(h[:32], "little") & _CLAMP | 1 << 254, h[32:]


def _hash_int(data: bytes) -> int:
    return int.from_bytes(_sha512(data).digest(), "little")


def ed25519_secret_scalar(seed: bytes) -> bytes:
    """The first half of SHA-512(seed): the Ed25519 secret scalar before clamping, which x25519 clamps
    the same way. X25519 with it and a peer's key equals the peer's X25519 with the Montgomery form of
    this seed's public key (dynknock/keys.py montgomery_u): one seed serves both."""
    if len(seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
    return _sha512(seed).digest()[:32]


def ed25519_public_key(seed: bytes) -> bytes:
    """The 32-byte public key A of a 32-byte private key (RFC 8032 5.1.5); ValueError for another length."""
    return _encode(_multiply_base(_expand(seed)[0]))


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """The 64-byte signature R || S of ``message`` under a 32-byte private key (RFC 8032 5.1.6);
    ValueError for a key of another length."""
    a, prefix = _expand(seed)
    public = _encode(_multiply_base(a))
    r = _hash_int(prefix + message) % _L
    encoded_r = _encode(_multiply_base(r))
    k = _hash_int(encoded_r + public + message) % _L
    return encoded_r + ((r + k * a) % _L).to_bytes(32, "little")


def _as_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        try:
            return bytes(value)
        except ValueError:  # a released memoryview
            return None
    return None


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid signature of ``message`` under ``public`` (RFC 8032 5.1.7,
    cofactored, strict encodings: see the module's docstring). Never raises."""
    public_, message_, signature_ = _as_bytes(public), _as_bytes(message), _as_bytes(signature)
    if public_ is None or message_ is None or signature_ is None or len(public_) != 32 or len(signature_) != 64:
        return False
    s = int.from_bytes(signature_[32:], "little")
    if s >= _L:
        return False
    point_a = _decode(public_)
    point_r = _decode(signature_[:32])
    if point_a is None or point_r is None:
        return False
    k = _hash_int(signature_[:32] + public_ + message_) % _L
    # [8]([S]B - [k]A - R) is the neutral point
    q = _add(_multiply_base(s), _negate(_add(_multiply(k, point_a), point_r)))
    return _is_identity(_double(_double(_double(q))))


# --- X25519 (RFC 7748 5) ---------------------------------------------------------------------------


def _scalar(scalar: bytes) -> int:
    if len(scalar) != 32:
        raise ValueError(f"an X25519 scalar is 32 bytes, not {len(scalar)}")
    return int.from_bytes(scalar, "little") & _CLAMP | 1 << 254


def _encode_u(x: int, z: int) -> bytes:
    z %= _P
    u = x * pow(z, -1, _P) % _P if z else 0
    if u == 0:
        raise ValueError("X25519 gave all zeros: the peer's point has a low order")
    return u.to_bytes(32, "little")


def x25519(scalar: bytes, u: bytes) -> bytes:
    """X25519(scalar, u): 32 bytes each (RFC 7748 5, the Montgomery ladder); ValueError for another
    length or an all-zero result."""
    k = _scalar(scalar)
    if len(u) != 32:
        raise ValueError(f"an X25519 u-coordinate is 32 bytes, not {len(u)}")
    x1 = int.from_bytes(u, "little") & _LOW_255
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a = x2 + z2
        aa = a * a % _P
        b = x2 - z2
        bb = b * b % _P
        e = aa - bb
        da = (x3 - z3) * a % _P
        cb = (x3 + z3) * b % _P
        s = da + cb
        x3 = s * s % _P
        s = da - cb
        z3 = x1 * (s * s % _P) % _P
        x2 = aa * bb % _P
        z2 = e * (aa + 121665 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return _encode_u(x2, z2)


def x25519_base(scalar: bytes) -> bytes:
    """X25519(scalar, 9), the public key of a 32-byte X25519 private key: through the Edwards table
    and the birational map u = (1 + y)/(1 - y) (RFC 7748 4.1), four times faster than the ladder."""
    _x, y, z, _t = _multiply_base(_scalar(scalar))
    return _encode_u(z + y, z - y)


# j·16^(4t)·B for t = 0..15 (rows), j = 1..8, each as (y + x, y - x, 2dxy) mod p; made by _table_text().
_TABLE_TEXT = """
hTuM9caTvC8ZDoz7xi2Tz8JCPWSYSAsnZbrUMzqdzwc+kUDXBTkQnbO+QNEFnzn9CYqPaDSEwaVnEviYki/9RGiqeocFEsmrnsSqzCPo2SaMWUPdy30b
WqhlDJ9oexFv13E8k/znJJK19Q96lp1GnwIH1uFlmqZaLi59qD8GDFmo1bRCYKWZivasYE4MgSuPqjdusWsjnuBVJclpppW1a196m6WzqPpDeM+aXd1r
wTYxaj0LhKAPUHMLpT6x9RpwMJfuTKiwJa+KS4boMIRaAjJnAZ8CUBvB9PiAmhtOFnpl0vyk6B9hVn26weX9U9M7vdZLIRrzMYFi2ltVhxW5KonY0A0/
k64UYto1HCIjlFhM2/KMReVw0ca0uRKvJihanwn8jrlRcyg4Jf199MZlZ2WSCvs9jTTKJ4flIQORDmi/GGgFCgX+lan6YFZxiX4yc1CgBs3j6MOapEV0
TD+TJwn/dsTp+xNacsFce0U5nm6URCsQ+dzbXSs+VWO/DJ1/M7ulCES8EqIC7V7Hw0hQjUTsv1oM6xvd6wbiRvHMRSm61kekw4KRf7cpJ0vRFADVh6Bk
uBzxPOPzVRvrc35KFYWCKoHx27u8/NG90AcIDictp70bC2cbtJq2O2tpvqpDMXEVd+vuDDqIr8gAiRUnmzanWdpotmWAvTjMorZ75VGkjH17tgaYSTkn
0ieE4ltXuVNFIOdcCLuEeEGuQUy2OHFL6gJnMqyFAbuhQQPgcL5EwTsIS6LkU+NhDZ8a6bgQv6NOlNBcGmvSwJ2zOjVwdEkuVCiCUrJxfpI8KGnqG0ax
ITKqmixvuqcjujtTIaBsOiwZkk926p3gF1MuXd1uHaKzuAHIbYPxmqQ+BUdfA7PzrXdYukGcUqeQD2ocu596jz7dBGZZt1kscIjidwOzbCPD2V5mnDOx
L+W8YWDnFQnZNJLz7V2n4vlYteGAdj2W+yM8bqxBJyzDAQ4yoSSQOhqRosnZ9cHn16fMi3hxo7gyKrYOGRJkY5VOzC5cfJAmrpFmfFlMI37ItIUKPZ2I
ZOf6SjUMyeLaHZ5qDAcehwq+RkN0RH3oQCUrtRXU2kgdPmA7oRiKOnz3vc0vwSi3TomJvEuZtQEzYELdWzqua3M8ntUZ4q1hDWTUhSYPMOc+GHUehEd5
+kPXRpxjWfrG5XQrBeMdXgahMJC4z6LGR3231n2e5FXS9aweC2FcERaAyofhkl2XmTzCJZGXYleBE+DW8I4U0No/PG9UkZp0Pp1XgbsmEGLscYDsyTSN
9YwUbXXkmn0vV+J/SPOIu0XDVo2oYGltC9GfuaGuTq3rjycn8DR59pKkRqkKhPa+hJlGVBhhiSq8oVzUu129HvryP2Y5k4wfaKqxmAwpIJyUIYxSPJ0h
kVIROXtnnP4C3QRBuGoJ2wZOIYE1T+QMybaoIfUqnkAqwSRlgaT8jqS1ZQEqQiQRXr+ycrU6o5gzDPqhZrZS+gFhy5TVU6+vADuGLHZqhKB0pJDxwHwv
zYT57xKPK6pYBileabjI/r/ZZxtZXbUYn3GzuZkeZIyh+uVl5O0Fn8I2EQhhixIwcIZPm0j6m7SAHA0vMYrs86teUXlZiBzwnsAzcHLLe4/Kxy7gPe+S
6zotEDLSYagWYbRTYuEkqgsZ56t+Pb++bEm6+/VJLlecHoxiXRVBR4jFrIZNiutjV1H2UqORW1FniMKmoQbUz1uKEJqUMOtzZLxw3UDcHA18MMGUwpJ0
bvrLbagEVrZkF3zU0YhyUYtB4EARVHLR9qwYYBoDn8ZCJ/6JnpggLuzqhYsndBbfK8t6B9whVlr0y2EWTApk05UF91CZC3N/zC06/XeXSZLYT6UsfIUy
oOMH0mTYeaIpfqYMHe0DBFLFToc1LUvJjW8kmM/I5sXONcAW+kbL98w9MAhDRddbKnnnFSGTxIXJ3c29oolMxmLXo62oPR6dLPhnMBLbt1vCTLIoldGa
f4HBNWNlVGt/NnLAT262uGaDrYBzAHg6E75iysZn9GEJ7lIZIdYh7ARwR9Wbd2AjGNLg8Fhtyg106MWFe5+2ZYeyumjRi2fwb5sPMx1853A6fI6vsFFt
XzpfrA2mVoc2YVfcq+tqL+AXfQ/OTC0/GX/w3OyJd0ojIFKyeHG2DdJ2YNEe1fk0HAdwEeSzIEoq9mbj/zw1gtZ88/SsaGDNZabT49c8GC3ZQtklYDOd
OFlX/9gsKzsl8D62+ofYW6ThC247QLoyaoQqAGBu6RIQktlDCdw7hsg4KDBQRkrPsGvRq3fFFUFrSfqdQav0iq7PghIoqAamuNwhujF3vvoAjZqJGJ5i
fmADgn/Z80M3Asyyi2dvbL8NhF3In52MRgRgXMujKtRuCUAlnC/uEkxNWxKrHaOUgdDDC4vhnzANOG5wx2XhuaYtsG6rIK59mbq7V92WwSojdkI6y35E
23LB+Du9LSjGH8TPX/4VqnXA/6yA+anhJOjJcAf6hHCKLENCS0Xlud/jGYqJXeRYnCEAn77R622hznfxH/21tUWa2WHPJHk6G+mECYaJPj4wGQkw5x4L
UEH9ZPI54XsJ/qtKm9EpGeDf4fxtpP/xpiyUCMnDTvE1LCchxmWc4ufbFzStp5wTnCtqN5S9qXtZk44b6aBAmIhoNNcSF92TMc74iSvnu8AloVYzEE2D
/hwuPakZBHLinLEKgPkirP1umt2fAkJBSaU0vs4SuXvzvYe5ZA9ktMqYhdOkcUHL+J4+ijZaYBVHUKUiwOnjjyQkX7BIPVXlJnZkzRb0E4xMyZmqWCf6
B7gAsG9vACOSU9qt3ZHS+6vRS1f6FIJQ1gPQU7sVGkZlyfO8iCgQslo6aGx1dsUnR7RsyKRYdzpL/tY+FWkCwsR3HVE5Z1qmlK8ULEYm3stLp6tv7GD5
InZQrpP2EYFUplT9Hd8hrh1lXhHzkIwkEpT0541f0Z9dHlLX7ipNJD8Vli5DKJA6jtQWnC53umTh2JjrR/qHwTt/cmNt0wgUAzO1x9fvmjdqS+KuzMWP
4anTvo9PkTUvMwzChuoVAUdtJdFGbMu3ipmIAWY6tTJ41wO6b5DOgQ1F+w5GT0Mr5p/WBzam1APT3iTaoLcOIVLwk1tUAL59fiMxFDzFS/cWzt7tciDO
JZcr5z6ytW/DubgIyVwLRQ4ufjC0AWftdTUBEP0Ln+aUECMif+SDFQ8ydeNVEbGZpq9x1lA7Rxw8QuoQ7zg7H3roUZW+ybJfv4SbHJr4eLwfcwAdtlM5
m2/OZeZBoa/qOVjG/ln3qf1fQw+OwrHC6UIRAoAY+EgYxzDkGcHOXiIMlr/jFbprg+DatghY4Uczb01McBmPmPzdDC8b9bmwJ2KRa752kXfEtsduqJ+P
qACVvzjJH33Bz+z3GBQ8QFGm9XVs3wzu9ytx3tsieuSnqt0/GW+H6Dc8ydIfLEbRGFoe9qJ2EiQ5gvWAUGlJDb+euW9qxiPktrUise6O/4byEHCdk4xd
zx2DKqmQEOvFQp/abxPrVQhWu8FGap3wk/g4uxYkwaxxjzcRHdfqlhijFGn3ddG9BaOx30z5CCz4n51LNg+KWLvDpdiHKrrc6AtRgyECf3owQwFxWp1f
pH3Ent5jsNN6kr5S/rsibEJA/UHEhxMULa1eOGb3SjBYfMqA2I6gPR4hEOamEw0DbIB74RwHaviKl4fRw9O1E0QOfz1aK3KgfEe7SEh7DZLcHq9qsnEx
0UeKsti3DabxpHAX1hS/pli93VOT+KHU6UNCNGNKUWyoTFaXkDEvqRnhdSJMuHv/UFGHpDf+VU9ag/A8h9QfIkFjFTpPICIjLQMKuungc/sOAw9BTN3g
/KpKkvuWpdpIk5dMyF0d9hQGgkHv4/lBmax3YjSPuPXNqXmKDvo3yFjHnKVcZo7KbqCsOC5LJUeozhce0gjHrzH3StjK/NZtZ1iQ/JaFaPkMG6BWe/O7
3B1q1jVJfefC3Ap/pcbyc08chDR8/G5wbrNhz8HDtMnfc+XHHHjJeR3rXGevfduaRXC7oF8wvU96Dq1jxlTgTJ2CSDjjL4PDIfRCTPYbDchaebMrtJFJ
25EbytwCSyOWJlfceIwf5Z7fn9Mf4oyEYuFfFfXRd+dlKs3xYKqPh5GJVOUGvNq8O7ex+8l8qct4SGX+sPaNx44TURv1deWJ2pdTufF6cR16IAlQ1iAr
uv0CIaHmXAUF5J6WKa1REminvDYVpH2qF/UaOrqy7CnbJdcKhW8Fmwy8x/7X//XnaFJ9U/quEkNixq932Z85AlNfZ09XJE6DsWdC3MUbznC1RHW2117R
9wt68BpQNqBx+8/vSh4XFQQ2Ni3DO0iYiRHvK80QUZTQrW4Kh2FlqKJyu8wLlhL+UExebRh+n+j+gns54LAxcFDF9sc7wjePEGn9eGbIqbHqL5ZeGM19
FGU15ueG8m1buzHgkrA+t9ZZq/AkQMJjaGMx+oYV8jMtV0iM9gf8rp54n8xzTwFHrY4Q4kItk3VTDw17cSFMBh4TC2lOkZ/gKnWuh7YbbjxCm6fzC0Kb
0t+UFRP1l2pMPzFdmFVhEFBFCAc/oesi09K4CCZrZ0crWxxlujiBgBsbMey2cYawNTG8sQz/e+DxDJz6L110ak7TIVffNmDQs3uZJ4jbsfpqdcjDCcLT
OcgdTOVb4Qa9yMkrHlpSv4GdRyYIJlvq21UB3w7HEdXQ9QyW6zziGkqZMhmHXXJbsNqxzrUcNTIFyrfaSRXEfffBjidh2N5YqMnCtqhb+y2MWSz1ju/u
SHMVLfEHkYAz2FsdU2tpughcxWbykzcX2ElORczFdsnIqMMmvPiC41z59oVU6J3zL3rF78PuPu13EUj/1BdV4ATLcabxP3o96lT+fJS0MwYSChASSUcx
vYIGvm9+bXsj3sZ56hEZdh7h3js5y+M7QwdCAGGReJiUC+j66+w8sedOwKTwlJVzvnCFkdW0mQrTNfSX6VzARHn/o1FcsOQ9XVd8hHZa/YEzWJ/a9nre
PoctgfldTuECYqr14RVQF1kNomwd4rrTdaIYUwJgAYphQwUJNDdDZDF6FdmBqvTut7j6Bkim9eb+k7C2p39wVDZ3LsEjTJf0veoNk0bOnSUKb6osupqi
uCwgBA2WBy02QxRLAVa3tPmqmCdyrY1cE3KsXiOgt2Fhqs7STn2P6YSyvxvzMys4igX1ibTASK0LuuJabrM9pQO1k4/mMqKVne2jWmFl2cfpd2dlNoDH
clQSK8vublDZmTIFZcxXiV5O4QdKm6R3xM1YCyQX8Edk3to4/a1qyKcyjZIZgaCvhO16r1CZ+Q2YyxLkTnHHbjxv1xWj/Xdckt7tpbsCNDEdOawLP+Vb
9hUB3k9usglhISEmmCnZ1q0LgQUCeAbQ67oWoyEZi8Hz2ZqtWtecwbFg7w5qVtkOXCWsC5o+9cdioOydBHv8cLjffi9Cib2zdk/rayks903CNtTxOAew
rnPiQd9YZINERDV648vck77tDzN5iHWH3cUSwwRgeGQOlcLL3JNgSwOEYL7u3mtUuA94tsKZMZUGLbardjOXkH1ki8mAMW5tcOCFhZrzHzM557PYpdA2
O0WPceHyuUN8qSdICOrRV3GwKKHntnruqouok21ZwaQwYSGygt609xi9l92dmT42xq5L4txIGC9gr7y6VXKbdjHp7zxuPMuQVbP5xpuXHyPEH+41wUOo
ls/I5AhVs26XMNOMtQFoL7QrBTppeJvuSMbzKsxL3jFcH40g/jCwS7BmtE/BCXCNtxMkeQib+psHRULVooDtyfNSOfZ3eIugCnVUCNFjrG3Xa2NwlBX7
9B70DTDaUTqQ47BaqT0jZDmEgGQ1Cy3xPO2UcYGE9neMA+x7FlvmXk6Fws3QlkIKWVmZIRCYNN+yclb/C0oq6V5XAdikCkW8Rl3YuTOlJxKvw8IGiSsm
O544G1gvOH4eCiDPLxiKkIDA1L2dSJnCcOEw3jP3Ule9ugUA/dMsEefUQ8U6+epnuY1RwFJmBZuYvHH1l3FW2YUr/jhOHmVSyg4F6mjmYHY5rJeXtDoV
/rsZm5+n7DS1ebFMV64xoZ/AUWGcDD9F3hpDw5s7cP9eBPXpPXuE7cl62fzG9FgcwuYOS5Zd8P0NXPU6eu60KuAuJt0JFxcSh7uyEQsDD4D6JO8fpLDd
EpxjmNVrhiTAMJ/RpWDk/FgDL3zRil4JLhWVoQfexC6cxalvKcvzhE+/YYu8CPmoF9kGdxxdJdN6/JW3Y8hfnjgCjzaoO+SNzwI7Q5BDJkHFXf2hrzcB
LwM96I8+PNHv6I1McAgxN+AzjhrF3+PNYBKlXZ2lhowlppkI1iKUonAFuRWLL0lFCGdwQvKUhP27YeFaHN4HQKx/eTu6dZbRzXDA2zlimop9bIuK/mBg
EkDrvEeIs16ed4d70AQJuUD5SGYtMvQ5DC29DC+VBjH5gaCtl3YWbCr3us6qQGKckbrd1B/OtKqNTMc+2zHPUcyGrWPMYywH3h28PxTiQ6CVolucdDT4
WtI3ylt8lNZqMcnnpzvxZqwMtI0jr71WsjudwWzTEBO5hiNit2sqBlxPodeRhZt8VFceflAxqgPrMzX147kqNkA9uW7VaIUzclVaHVIUDp4YE3SDbagk
HR/O1P9Iduz0HIysVPDqReB8NQkdgiXSiFlI65rcYbJDZBOVbIs9URl79AsAJnH+lGeVT9XdEI0CZAmUQuLVtAK7ebuIGR5b5Z01esF90J6gM+o9YOIu
LLDCaydbz1VgMvKN0SjLVaG0COVsGEZGzOqJQ4Jsk/ScxBA0Xa4JyKYnVGk9xAonLM2yymZqVz5K3WwD12kkWfp5mSWMPWADFSKIsQ0fzeumi+hbWmc6
19M3Wlj1FaPfLvJ+oWD/dHG2LNDhCzn5ze5Z8eOMckQgQqn08JR6ZhyJgjb0kDi39B17jPX4BxgiLl/UCZTUn1xV4zCmth+NqKqyPeBS00WCaWgkorKz
4PKS5GARVSsGnmx8Dnt/DeKP6xWSWfxYJu/8YXoYGCqFXbHb16zdhtOq5POCxPYPgeK6RM8Brz1HTM9GQIFJ8aduPCFUSCs5+H4efLrOKVaMw4gku8WM
DeWqZRD55cSe7SVlQgMzkBYB2l4O3Mrly/KnsXJAX+sUzXs4KVcNIN8lRSwcSmfKv9YtO1wwQIPhsecHChbnHE/mmKFpnMDdX+/Rz9bOXVf3/T4r6MI0
FiBda9UlmyvtBLvGQTCT1WhnJSt82hPKIkRXwMGYHc4KytULqPGQpojArdHNKUjhVtn58vIPLms1n3WX561cAmxfu5hGGnuaBBRovUsQY/F/1l+aXamB
VsdMneYr6VfyIN5MAvi39S0H+yAqTyBn7fFoMf3wUcI7b9jNHYEs3vLSBENc3ERJcSoJV8zoW3mw6zA9OxTIMC5lvVoViXUxXG2PMTw8ZR8WecIX+3Al
WiS4C1WpLhnRUJCPqPvmyDXJpIgt6oZ5aIYB3pFfHCR1FbYsfzb6PmwC1hx2b/n1YiW1ZSoUx+jNCgNT6mXLPaps3kApF9goOnPZIvAsv4/RAVsj3fzX
FuXwzV/dDkIIzhD0BE7DWAOFBm4nWlsTtiEVuevHcJZdnIjbIfNU1gRK+mKDqyD/zW4+GuLUGOFXK+Y5/BeWF+P9aRe871OaDdW1vd0WwX1eLd2ljbbe
VCmSojQzFwi2HNcamRgmT3pKSyo3r5GywyTyR4FxcILak/KeiYZkhYTdM+7gI0IxlkqVX7FfAhin9I8bXGs0X/Y9EhHgAIXw/M1IGNPdTAy1Edb/pAhE
J+im2XYVnH4XjnPyswI9tkgzd1HMa85NzktPbwudxG5h4jAXI+zKj3FW5KZPa/KbQOtIN19ZYeXOQjCEJSTiWs4fp56K9ZJWcuom9DzqHNcJGtLmARy3
FN38c0Gsm0R5cH5CCjHivG3jWoV8GoRfIXauTNbhnJoMdJ44KKwOV/Z4vcnhnJEnMgtb5e2Rm6GrPvxlkDYm1uUlxCXOudw0rrP8ZK3QSOMjA1CXGzjG
Yn3ws0WIZ1pGeVNUYW7e1/GmBj4/CCMGjid2+T53bIpOJvYUjFlHSBWJoDllGUq7FNTbxN2OT0KYPLyyGWlxyjbXn6hIkL0Z8A4yZQ9z99LDdB/S6UVo
xCVBVFDBM565+ehcTmJsGM3FquTFEcbg/cqx0YbUgVE7FuPmP0+ak/L6Da+oWSoHM+y9x6tMoo6trL8EO1iE6IsU6EO3KdvFEAg7WB4rqruzjuVJVCtH
vj3rYnU6X7igvY5UOOr3mXJ0RTHlwwBR1ScW5+kEE/6c3GrSFJh4C91Iiz+rGzwKxnn5/+EP2pPWLXwt3mhEzgdj+MbYmksoDF1DMTURISx3emXFZqjU
UnMkY35Cpl2eRhmUXjW7UVTH3SNM3OYzYpl/RNa2pZNjvUT7b3zObMoirN6IxpQa+B+uu/duBrkPWFmNOIytiKgsn+e/mvJY9s0Ocb9kWks8KSxGOOVM
sbk6C9VW0EM2cEhbGCQ3+WpoPueNq88O6aV2fjefbwNUglkBvgtbSfA2HvSnxCl2V4ioxglFAiAyc4lVSxM24NKfKDM8Izbig4/Brgy7JR9wE8G+fNn2
GJ3k27905gZKhNZgTqwitfUgUV6VUMBbCnLtbGHk+LCow32oJZ4OZgD3nKW89B8G42HpC8S9v5IMLjVagJtDCT8M/KtCYjeLTuhGkyJc8xcUaezwThS7
nJsO7r6xXdWb7o25P3IKN6vDyZHXaBy/8ahE3jz9HBlEbTatIFf7j9S6+w4N+dtrkYHuv0NVY1IxgdTYezM/6wQRIhSMvPJDFzyeO2yFtfwm2i6X+6do
Di+4zEQyWbzmpGdB7o/O+GUmvsIs1oDoFP9n6e5ONi9+bi7x9tJ+y3AzszQAJ/Z2KJ07ZOtodg5AnR1dhAb8IQNDSxtqJFUifrs4eczWgYbukcXNU6eF
7ZwQAs6DiIBYwYV07eRl/i1u/HYRuA53SYnikNujQPSsKsz7mJuH197+TzUhtgZp8lQ+ah+bYZxb0GyvtICEpbL0yd8txE3p6wKlTz00X31nTDr8COo0
B9OZwaRg1lwWMbaFwECVgln3Iz4z4tEAuRYBrS9POLY7tx3ZLJYInBL8qncF5okWtvM5m2Fvge5EKV+ZUTRUTq6UQbK+RGzvVxhRHFRfmASNNi1rHqar
9y6XpIRURHx96p/Q/FKR9lyTsJRsgUpAXChHqpqOJbeTKASmnLgQE40ENvr8GJzdnYlzs50VKarQkp8LNZ/c1BmKh+5+9SbeDSp4yQyaVYWDceqyzR1V
jCPvMVuGYn89YXN5dqdKULHvh1bVLKsMe/F6JGLRgFFnJFpPNFrBhWkwup09lEFA3apsokN3IUvOt4pkJLSmR+PJ+wN6Tx3LGdAAmEIx2RKWzOtDuu7A
w6+c6iacnHSNxsx3HO6V+tkPNIR22aEgFE9ZN9OZd8YAe6Q6skBRPF6V81/jVCgYRBKgWUMxkk8bsWaYpDAwzzNZSF8h0nMfJfb03lFAqoKr9iOab9WR
8V9RCRWJnRBcPmpp6S2R+s45IDBflz/k6iCuLRN/KlebI2iQLawz1J6BI4XJX3mrgyg965NVgHJF78s2j3VqUgwCicxC8FnvMem2SxKOnZxYLJdZx66K
4citDMUCVgr+LEW829ie+DSYd2ykfNz5qvLIdLDho9xMUql3ODEVRsyqAt93eGSg96CGn3xgDidkxLvJEfvxJeoXq3uHSzB7fftMEu+Jl8KZhuINGVff
cc1uK9BwyexXyEPDxTpNQ7xMHVv+dZu4bD20coDcapzZlMZUn0zjPjeqw7hkUwc5K2K0FCafCswVJvu25cyNuCsOTzoFp2kzi0kBE9EtWVgS95gvAadU
T0SuEi7e18up8D7+/OBdg3UNib/OVEVh5+ligB1Wng+1TKeUDCATjo6p9B9bZw8wgiHMKpr5qgbYSeJqOlp8kKmF2nplYg+5kbWoDhrptDTf+x0OjfNf
8q7ojIsp3mUhCupyeoP2ec8LtAerP3CuOHfHNhZS3NenAxgnpmuyDPfvU3mSKnZwFXkqyYlLas+nMHpFGJSF5FxNQKi4NDUzaYO17G7C/f61Y98TqNVz
JbKkmqqTomocXkbdK9Zx9V73sdq1Lc31ZbAWz5V/14XwST/qH1cUPSsrJiE2MxyA33jTKMwzZbSkDwp5Q9v2WtoB9/lfZOOkKxfzF/PVdIHK2WdU5W+o
N4wpK3V8izk7Yqzjkght2ozZ6UdFzOtKUS9bMPu/7pa4lpWIrTj50yXd1UbHLfXwlQA6u5CCllfcrliMTpc3RqRB8Kv7Iu+5inGA6VbZheGmqEOx+ngb
LwHhIApDuBr3R+zwJI1lk/PR7uJuqAl1z+GjKtw1PsR9GJc+J1wqeFqU/U5emcZ2NT59Ix8F2C4PmQrVgh24TwTD2X2IZWaWhVVTsEsxmw/JsXkg7/iN
4MYvwYx1FiD3ftnjB6nFGN/BWWNMzh03s1dJuwGyNEVwyi7dMJw/gnl/uof1aPAfnGreyFAAToknCOdb7X1Vmb888NYGHEOwqWToE7WjOdI0g9ioH7nU
cDbBM72Q9TZBtRK02YTXcwNOChkpfVuh1rMuNYI61aD2tLBHXaSJQ85WcWw0GM4KfRoHMUThIFI1DMxBUbEJB5VlDTZfnSAbYvWa01V3Yfe8aXwLuofI
qi0H0+5ipb8FKSYBi3bvwAIwVM+cfupGccw7LF8p6ATr1/AHffNQLyUY2xDXmBcXo6lR6R2lrCJzmlpvvkTZo+vUKeeer3iAQAmejQOchkd6ViVFJDuN
7oCWqwLFxkEvDAChi5v7/gzBeZ/EnxzFPHBH+k7Kr0fhoiFOSZoN5d2FiqTvSaK5D04imiHZ9h7ZHR8J+jS7RurLdl1rIiV4HhdB+eDTNmkDdK7m8UbH
/NCiPotAPjHdA5yG+xaU2QzsbFVXiLod0Fxv3HJkd7RCjxRpAa9UcyeF9jPjCmIJtjOXGY4oM+Gr2LRy/CQ+0JEJ7fcRSHXQcI+L44E/JMgXXzV/2wqk
mULXwyO5dPfq+MuLPnzVPdzeTNPi0wr+r9l+zA+Rf0uHZSShuFxUBEcMS9J+OaiTCfUEwQ9RUJ0kbjPFDwxv2c8xwxneXnQc/u4JAP3W8r4e+vCLFXwS
dLlRrsSPot6W/k1003OZHahIOIcLaEBild9n0Xkk2E6ieZguQnwZ9kc2ylLU3Uqky6xOS8E/QZtoT+8HffhONXXZxWAiteP+uLBB6/wuNVA8ZfapMKwI
iG0jOQXSki0wmhxRteDatKIG//8rKWDIejRCUPVdNx+YLaFO2iXXaz/GRVd/q7kY65DGh1fuijoCqa/3LdoSJ7c9AVzqJX1ZNqxYYBB7jU1zX5DGb55X
QNktkwKS+fhmZNDWYNoZzH57m/p8p1FKrm1QhqPnVDYmgtuCLY/N/7sJusr1G2bcvgMNaVxpPDfCeG6QQgZmLiXd0ivhSkREHZVWOXQBdq01QvV1iQcN
y1himPKJkVRCKUnkbuPiI7TKoKFm8M2w4nwO+XBL2d/+pv4tuvzBUcAw8YmrL39+1IJIte7sihNWUmGjhYzEOmSUxK05YTz0HTb9SE3pOt0X2wlKZ7SP
XQpuZg3LcEhO9rsqa4tFqvC8Zc1dmOh1uk6+muTeFNUQyAt/oBNyc62drIOYLvcuuvj2n1dp7EPdLh4xdavF3n2QOh1vE/QmpGsAuTUw4FeeNmeNKDxG
T9nfyMv12+74vI0fDdyB0D4xkxa6gDQbha2fMinLIQMDPAEoAeP9G6NEGwEAXKcKamkfVhZqvVJYXHK/wa1meZp/3agRJhCF0qKI2WMMbMY/bKDfP9IN
1k2O40BdcU2OJjiL43rhV4NukY3EOi4jva9TBxIAg/bY/bjOK+mRK+eEs2kW+GagaCMr1foz6M8ixNDILI3LOqEFe08rB2+l9uzmtv6j4nEKucxVwzwW
HuTFxkkGVDV3PzMwZPgKRucF89L8rLKn3FaiKfTAFjGRPpBDlLbpzjdWesuUpLhEkrq6pNF8yGh1rmtCrx5j6A1wo7l12UdSBfji+8WAcuFd5DInj2VT
tYBfZn8sH0Of/mbaEATps6blFmxSS92Fg7/5HmGXPby1Gakei2SZVRl7j4VEYwLWSlHqoS81qxTXqZAgGkQAiSY7JZFfcQR7xrrmxIDCdrMLmx1t3dMO
l0T5C0VYlZqwI+LNV/qs0EhDrvasKL3tg7R6XH2LfDWGRCzrt2lHQMA/WPbC9XuzWXHmq33kJg+2NzovYpeh0fGUA5bpfs4IQts7bTORQSMWwBoMyJ3M
baY2pDgb9Fygl8bX25W+8+unq31+jfa4oH2mdVY4FCB47+ip/aown2Siy6jfXFDr0UyzwE0duloRRnbatcNTGQ/Um54RIXNvrB1gWbL+IWDMA0tLZ4N+
iF9auUOmoNMolp5kIMPmAMvDtTLsLXyJAlObDMfR1eJ640MRPaFwzwFjj8TQDTUVuM7PfqS8pNSXAvc0FE3kVrZpNjPhpu0GP344wDqhmVEdMGcROCY2
+Nhavb7p1U/N5iFq47KZZhIpQe8BE41wRwjTcb2wghHQMlQyNoseAAcbN0Vf5kYwChfG8SQ10gAqKnFYVbeCjDy922lX/5Wh8flrWAt5+F6NCNum5TcJ
YdzweFK4bqFh0kkDrHkh5ZA3sK8OHa51D16AQFEwzGIm4/sC7G05kuoe3+sss1tDxUQzrkQvBEg3wVUFlhGqC4LmQZohDG1Iczj3gRxhxgJaZ8yaMO5D
pbu5ifKcQnHJWp0OdvOqYJNPxuWCHY9nlH8bItViPHr3OibUhXVNFOn+EXuu3z0Z91mAcAalNyCSg1Oa8hRtk9AYnClMUgwaDIpstWvIMYZK2y4FdaNi
RXW85P0OXPXXsiXcfnHfQDC1mdtw+SFiTO3DtzSS2j4J7ntcNnJePrMILwY5k32+Mp/f5VmWW/29nh+tPf+st0lzy1UFsnB/IXFFB/xbV1vZlAZdZ3k3
Mx4Z9Ls3Cpq86rRHTBDxd0wsEVXFE1G+zR+ImjpCiGZHO1BehXdmREpABkqPOTQOKBlLPgkLkxhA9vNzDuHjfW9dOXPaFzL0Ppw3ytbeim/ovc4+2SJ9
tgcvgidB6LMJjW1bsB+mP3RyIzaKNgVUXpqyt/09EkDjkbIaouGXe0ielOb9An2W+Zfe08gu5w14cif0APPqH2eqQYwqKutyj5IyN5fXf6Eppoe1Mq3G
7x2855oIRYXiCgZNfxzP3o04uBFIClEVrDjkjJJx9ouyDqeVUe8avluv7RV7kXcSjBQu2uV6+/eRKWco3fgbIH1GFLuWJ6JXqvMh2gebt7o6iBw5oDEY
4kvl+QUy2Dj7515LxV7O+Q/cmg0TL4xrKpwDFZX48McHgAJrswSsFIOWeI5qREHL/Y1T+TdJQ6n9rKV4jDwmjZCvRgkNyps8Y9Bh33P8+Lwoo638N/Cm
XWmE7gmpwjjbtH9j3HsG+C2sI1tmJdv/NUl0Y7toC3iJa73FA+w+VYAyG2/1165H2F+WbntSgO5TudKajW3e+qoZj+jPgg4VBBdxDtzeld25u7l5dHOf
jq59mdEWCLvP+KIyoApfRG0SumzNNLjMCkYRqBvCJjFqQFWz65PDyGiog2PSgnq55SlkDGxHIf3JWPFlUFSZQgz7aYFwZ89u16wARuG6ReZwirmqLvL6
pFie84E53m/mbaXfRcg6SEAsAKVS4TL2tMdj4dLpZRu83C5F9DCTCiNZdYr7GF305mBpjxYdtTypFEWphTr90KwFNwjcOECXdcWCJ22FzL6c+WlFE/px
TurAc/xEiGkkP1kami1jp4QM7RH9Cb86aZ8NgXHwY3mHz1ctjJAhokv2ivJ9Wjqmywe4FWu79tfwVLzfxyMYC2cpbgOXHbtXSu1HiPQkC8fqG1G+1Nrc
8swm7XWAU6Rlml8An/+c4WMfSHVE9/w0mKrPeKsdu6XycgsZZ6LtXI5gkgoRyQmTsHSzLwSjGQHKZ5d4TOCXwX1G2TjLTXG4qF/5g4KI3lX3Y/pNFtw7
PX0Xwuic2KJnwdCVaPalnWawooKy5Zhl9XMK4u3xiMBWAo/zJKxfG1i9DOO6/ukLqfCSz4oCaSGajwNZg6R+iwMXbqgQET1tM/qydQsyiPPXiCkHJXYz
FfmHixCZa0xnCfhvMZkh+E6fT42n6oLSSS90Me9aq6VxCWXraVkCMV5uImIGYw77BDM/uqyHiQY1+6NhEIx3JBm9IIaD0UOtWDD7k+WH9WJssXE+Xcre
7ZlJbT7MFODBkbSo26iJRxH1CNBjduX9DzwyEKYuojjfwwWaT5msvYrHvZnc4++kn1Qmf4c7GckALrtrUNzgkKjj7J9k3jbAt/PsGp7emAgERl/bzi+D
RYidc2P4a67J1jj69/5Pt8oNvDJe5LwUiH6Tc430eykWcQO5NGjw1CI70anGvZZGVxWX4TXo1ZHopPgsomvQF35ItSxrGVA5HDjSJDCKl4WBnGXX9qTW
kSh/b3pnDxEHh/2TbUm1OHzTCUzdhmpzwkxqsXwJKiVYbr1JIEnvmmqN/Ql9C7k9W75g7vDUv55RLLUhTB2URcXfqhFgkPjLAsjQ3mOqav8NypjQ+5nt
trn9Ck1iHgs0ebcYzmk8+JXPbZJnX3GQKHFhhX58W3qPmfPnodbg+WILG8zFb8t5mLIoVe/RkpB+1DyuGt1SI58YQgR+EvEBceU6a1kVyiRRfhYx/wnf
RcfZixXkC+VW9X4ifSspONG2r0HipDqieZE/0jknRs/d1pcxEoP/ihTyU7XeBxPaTV97aDciDfUFMyq/OMEswybpoo8/WEjr0klVorE6CGyjh0Zuqvwy
38yHJ3OkBzL44xPyCBnjF06WDfbX7LLV6QtgwjZjb3T1mn3FjW7Fe/K98J3t0gs+o+TvIt4UwKpcar3+zuknRhyXbKtF80o/H3NDmXLriOJtGEQDimpZ
M5Ni1n4AF0l73aJT3SgbNFQ//ELfW5AXqvT40k3ZkvUPfdOM4A9iAx1ksISrXPuFLRS884nSEHhJDM4Ve0Tcakd7/UT4dqMrElTltKLNMgLCfxhdEUL9
0J7ZedR9vrSrLkzsaCv1C8cC4XKNRb8y5ay1PLd84GjnW+e9i+6Ufc9WAzq0/uOXBmu7LwtdS+yHosqCSAeQV1xBXIHQwR6mRODg9Z5ACk8zJsCjYt9K
8Mi2XaRtB+8A8D6p0vBJWLmcnK4vG0RDf8Mcua7OyfFWZtdqZeUY+BVbHDQjTIQyKOcmOGgZL3dvNDpPMsdcWlaPUCKpBuXAxGHQGaxFXNurGPtKMYAD
wQlobMhq2uISUdXS7VHosTEDvelicsaO3UYHltDF926fG5EFgwNzYpPyt+Esisrr/3lSSxQT1L+Kd/zaD2FynBQQ6311dDiPR0jwUTzLvpz0vF2yVSCf
2UQSq5rWpRAcbJ5wLHruZodqr2LLDs1TVQTsy2a15AsPOAGAWOriLPafjuYI+fK4CtUJLS/fI1nFjSG5rLlsdnMmNI9K9Rn3ONc7sUytMMFLClCtNJzU
Cz1J2ziNvokKUJg9XKIJO7ruhz8fL0q2FeV1jIT3OJBK27oBlaVQG3U/PzENwugursBT46EZvb2W1c1yIbRA/O6YQ0Xgk7UJQbRHU7GfNK5mApnTa3PD
Bfq6YHUcfWFe5cagoOGzc2TWwBiXUuOGNAzCEWtUQbSzNJNQLVOFc2WBYEsR/UZ1g1xCMF9fzFyrf7iilSJBxuqT4mFSZS7brDMhA5JahGuZAHnLdQlG
gN1aGY27YAfp1n71iJvJGSXI+G0my5NTc9IKsxMy7lw0Li2161PhFIqB5s0XGj5BhKBp7altFVexzMpGjya/LPLFOsObvjRr0/JxZWVp/BF6cw5TRejJ
xjVQ/tSi5zrjC9NtLrbHuQGywHg6ZC/f83wCLvIelz5Mo7XBSV4cfewt3SIJj8ESICmdyFrlVQuIY6egRR8kgxQfbOfC3+82PeitS054W68ISyzMidIU
c+KNF4eiEb3kS85kM/rWKNUYboLZr9XBI2QzJR+I3Jk0KLYjk3faJQWd9EE0Z/vdeomNFjoWcZ23Mmqz/O3Z+IXM+eVGN4/CvCLN0+X5OOOd5MwtPsH7
XgpIHyLOQuRMYbYoOQVMzJ0ZbgO+HNyktD9mBo4caUcdsyRxIGIBC+dRC8WvHYvPBbUGzata72Gwaywxv7cMYCeqR8P4FcDtHlQqfD9pfH7+pBHWeKJO
E2av8JSg3RRdWFtU4SGz49DkBGKVHv8oemOqO569mVv9zwwLcdDIZD7cIk0POtSgXie/Z77umwg0juatLud51EwTiUJUVLoyw/liDzlfO9aJZbT8Yc/L
Vz9qrlwF+jqV0sK6/jYUNzYaoA8c
"""
