"""The wire codec of P1, P2 and P3: pure, no I/O, byte-exact (docs/PROTOCOL.md).

Every packet is ``header || ciphertext || tag``:

    header (34 bytes, authenticated as associated data, not encrypted)
      version  u8   = 1 or 2
      type     u8   1 = P1, 2 = P2, 3 = P3
      hint     8 B  rotating user hint (dynknock/keys.py)
      nonce   24 B  random XChaCha20-Poly1305 nonce
    ciphertext     fixed length per type
    tag      16 B  Poly1305

Sizes are fixed per type (P1 130, P2 82, P3 98 bytes) so that capture can drop
everything else in the kernel and the size says nothing. Decoders never raise on
hostile input: every failure is a :class:`Reject` with a :class:`RejectReason`.

knock-client does not import this module: it seals and opens its own packets with a lean
copy of its two directions (client/wire.py, held to this one by tests/unit/test_client_wire.py),
so that its start-up does not pay for the dataclasses module.

Version 2 (issue 14, a fleet of gateways) is version 1 with one more input to the
tag: the associated data is ``header || server address`` (17 bytes, the address
layout below), the address the client sent the packet to (for P3: the address it
comes from). Nothing more travels: the receiver knows that address, so a v2 packet
sniffed on its way to one gateway fails the tag at any other address. Sizes,
plaintexts and keys are those of version 1.

Version 3 (issue 22, key-pair users) is what a user whose server holds only her public
key sends: the keys come from X25519 between her key and the server's (dynknock/keys.py
pair_session_keys), and a P1 carries, inside the encryption, her Ed25519 signature over
the server's key, the associated data and the whole plaintext, so that whoever holds the
server's files can read her packets but cannot make one that opens a door. The type
byte's top bit says whether the packet is bound to the server address (v2's binding, as a
flag); the associated data is ``header || server address`` (17 zero bytes when unbound).
A v3 P1 is 194 bytes (v1's 80-byte plaintext and the 64-byte signature); P2 and P3 keep
v1's sizes and plaintexts, and carry no signature: they open nothing (docs/PROTOCOL.md §11).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

# Re-exported: the types of a packet's fields (shared with the client's codec, dynknock/fields.py says
# why) and the rules its fields follow (dynknock/rules.py says why they live apart) are the protocol's.
from dynknock.fields import Knock as Knock
from dynknock.fields import KnockKind as KnockKind
from dynknock.fields import PacketType as PacketType
from dynknock.fields import Status as Status
from dynknock.keys import HINT_LEN, SessionKeys
from dynknock.rules import CONTROL_PORT as CONTROL_PORT
from dynknock.rules import SERVICE_NAME_CHARACTERS as SERVICE_NAME_CHARACTERS
from dynknock.rules import SERVICE_NAME_LEN as SERVICE_NAME_LEN
from dynknock.rules import is_port as is_port
from dynknock.rules import is_service_name as is_service_name

# The AEAD (XChaCha20-Poly1305) that seal and open_packet use: pycryptodome's by default, or any
# function of the same signature given as `encrypt` / `decrypt`.
Encrypt: TypeAlias = Callable[[bytes, bytes, bytes, bytes], tuple[bytes, bytes]]  # key, nonce, aad, plain
Decrypt: TypeAlias = Callable[[bytes, bytes, bytes, bytes, bytes], bytes]  # ..., ciphertext, tag; ValueError


VERSION: Final = 1  # unbound; what seal() writes without a server address
BOUND_VERSION: Final = 2  # bound to the server address (seal(..., server=...))
VERSIONS: Final = (VERSION, BOUND_VERSION)  # symmetric keys (a password or a key file)
PAIR_VERSION: Final = 3  # key-pair users (seal_pair): P1 signed, keys from X25519 with the server's key
ALL_VERSIONS: Final = (VERSION, BOUND_VERSION, PAIR_VERSION)
BOUND_FLAG: Final = 0x80  # version 3: the type byte's top bit, bound to the server address
SIGNATURE_LEN: Final = 64
SERVER_KEY_LEN: Final = 32
# What a v3 P1's signature covers, after this label: the server's key, the associated data, the plaintext.
P1_SIGNATURE_LABEL: Final = b"dynknock v3 P1\0\0"
NONCE_LEN: Final = 24
TAG_LEN: Final = 16
KNOCK_COUNT: Final = 3
REQUEST_ID_LEN: Final = 16

_HEADER = struct.Struct("!BB8s24s")
HEADER_LEN: Final = _HEADER.size  # 34

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class RejectReason(enum.Enum):
    """Why a packet was dropped. Codec reasons first, then the engine's."""

    BAD_SIZE = "bad_size"
    BAD_VERSION = "bad_version"
    BAD_TYPE = "bad_type"
    BAD_TAG = "bad_tag"  # wrong key, forged or altered
    BAD_PADDING = "bad_padding"
    BAD_FIELD = "bad_field"
    UNKNOWN_USER = "unknown_user"  # no user has this hint now
    STALE = "stale"  # timestamp older than the skew window
    FUTURE = "future"  # timestamp newer than the skew window
    REPLAY = "replay"  # this nonce was accepted before
    WRONG_SOURCE = "wrong_source"  # declared address != source address
    SOURCE_NOT_ALLOWED = "source_not_allowed"  # outside the user's CIDRs
    USER_EXPIRED = "user_expired"
    SERVICE_NOT_ALLOWED = "service_not_allowed"
    NO_REQUEST = "no_request"  # P2 for a request the server does not hold
    TOO_MANY_REQUESTS = "too_many_requests"
    NO_DOOR_PORT = "no_door_port"  # door range exhausted
    KNOCK_TIMEOUT = "knock_timeout"
    DOOR_FAILED = "door_failed"  # gate or relay did not confirm
    TOO_MANY_DOORS = "too_many_doors"  # the user (or all users) hold max_doors_per_user (max_doors_total)
    HINT_OVER_BUDGET = "hint_over_budget"  # too many tag checks under this hint this second (a flood)
    WRONG_GATEWAY = "wrong_gateway"  # a fleet: P2 or knock seen at another gateway than the request's P1
    KNOCK_KIND_REFUSED = "knock_kind_refused"  # connect() knocks, and server.connect_knocks = false
    BAD_SIGNATURE = "bad_signature"  # a key-pair user's P1 whose signature does not verify
    STORE_UNAVAILABLE = "store_unavailable"  # auth replicas: the shared store could not claim the nonce, or the
    # users are not proven current (etcd down, no quorum, a partition): no door, fail closed


class AddressFamily(enum.IntEnum):
    AS_SEEN = 0  # "whatever source address the server sees" (NAT; user policy must allow)
    IPV4 = 4
    IPV6 = 6


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    type: PacketType
    hint: bytes
    nonce: bytes
    bound: bool = False  # bound to the server address: version 2, or version 3 with BOUND_FLAG


@dataclass(frozen=True, slots=True)
class P1:
    timestamp_ms: int
    request_id: bytes
    address: IPAddress | None  # None = AS_SEEN
    service: str
    knocks: tuple[Knock, Knock, Knock]
    knock_kind: KnockKind = KnockKind.SYN
    signature: bytes = b""  # version 3: the user's Ed25519 signature (p1_signed_message); else empty


@dataclass(frozen=True, slots=True)
class P2:
    timestamp_ms: int
    request_id: bytes


@dataclass(frozen=True, slots=True)
class P3:
    timestamp_ms: int
    request_id: bytes
    status: Status
    door_port: int
    window_seconds: int
    seen_address: IPAddress | None


Message: TypeAlias = P1 | P2 | P3


@dataclass(frozen=True, slots=True)
class Reject:
    reason: RejectReason
    detail: str = ""


# --- plaintext layouts -------------------------------------------------------

_ADDRESS = struct.Struct("!B16s")
_KNOCK = struct.Struct("!HI")
_P1_BODY = struct.Struct("!Q16s17s16s18sB")  # 76 bytes, padded to 80
_P2_BODY = struct.Struct("!Q16s")  # 24 bytes, padded to 32
_P3_BODY = struct.Struct("!Q16sBHH17s")  # 46 bytes, padded to 48

PLAINTEXT_LEN: Final = {PacketType.P1: 80, PacketType.P2: 32, PacketType.P3: 48}
PACKET_LEN: Final = {t: HEADER_LEN + n + TAG_LEN for t, n in PLAINTEXT_LEN.items()}
# Version 3: a P1 carries the signature after v1's plaintext.
PAIR_PLAINTEXT_LEN: Final = {**PLAINTEXT_LEN, PacketType.P1: PLAINTEXT_LEN[PacketType.P1] + SIGNATURE_LEN}
PAIR_PACKET_LEN: Final = {t: HEADER_LEN + n + TAG_LEN for t, n in PAIR_PLAINTEXT_LEN.items()}
# (version, type byte, size) of every packet a client sends: what capture's kernel filter passes.
_CLIENT_TYPES: Final = (PacketType.P1, PacketType.P2)
CLIENT_PACKETS: Final = tuple(
    [(v, int(t), PACKET_LEN[t]) for v in VERSIONS for t in _CLIENT_TYPES]
    + [(PAIR_VERSION, t | flag, PAIR_PACKET_LEN[t]) for t in _CLIENT_TYPES for flag in (0, BOUND_FLAG)])


def packet_len(version: int, kind: PacketType) -> int:
    return (PAIR_PACKET_LEN if version == PAIR_VERSION else PACKET_LEN)[kind]


def _pack_address(address: IPAddress | None) -> bytes:
    if address is None:
        return _ADDRESS.pack(AddressFamily.AS_SEEN, b"")
    if isinstance(address, ipaddress.IPv4Address):
        return _ADDRESS.pack(AddressFamily.IPV4, address.packed)
    return _ADDRESS.pack(AddressFamily.IPV6, address.packed)


def _unpack_address(raw: bytes) -> IPAddress | None | Reject:
    family, body = _ADDRESS.unpack(raw)
    if family == AddressFamily.AS_SEEN and body == bytes(16):
        return None
    if family == AddressFamily.IPV4 and body[4:] == bytes(12):
        return ipaddress.IPv4Address(body[:4])
    if family == AddressFamily.IPV6:
        return ipaddress.IPv6Address(body)
    return Reject(RejectReason.BAD_FIELD, "address")


def _pack_service(name: str) -> bytes:
    if not is_service_name(name):
        raise ValueError(f"service name must be 1-{SERVICE_NAME_LEN} of [a-z0-9_-]: {name!r}")
    return name.encode("ascii").ljust(SERVICE_NAME_LEN, b"\0")


def _unpack_service(raw: bytes) -> str | Reject:
    name = raw.rstrip(b"\0")
    if not name or b"\0" in name or not is_service_name(name.decode("latin-1")):
        return Reject(RejectReason.BAD_FIELD, "service")
    return name.decode("ascii")


def encode_plaintext(message: Message) -> tuple[PacketType, bytes]:
    """The padded plaintext of a message. Raises ValueError on our own bad values."""
    if len(message.request_id) != REQUEST_ID_LEN:
        raise ValueError("request_id must be 16 bytes")
    if not 0 <= message.timestamp_ms < 2**64:
        raise ValueError("timestamp out of range")
    if isinstance(message, P1):
        if len(message.knocks) != KNOCK_COUNT or len(set(message.knocks)) != KNOCK_COUNT:
            raise ValueError("exactly three distinct knocks")  # decode_plaintext refuses duplicates
        for knock in message.knocks:
            if not (1 <= knock.port <= 65535 and 0 <= knock.isn < 2**32):
                raise ValueError(f"bad knock {knock}")
            if message.knock_kind is KnockKind.CONNECT and knock.isn:
                raise ValueError("connect() knocks carry no ISN (0)")
        knocks = b"".join(_KNOCK.pack(k.port, k.isn) for k in message.knocks)
        body = _P1_BODY.pack(message.timestamp_ms, message.request_id,
                             _pack_address(message.address), _pack_service(message.service), knocks,
                             message.knock_kind)
        kind = PacketType.P1
    elif isinstance(message, P2):
        body = _P2_BODY.pack(message.timestamp_ms, message.request_id)
        kind = PacketType.P2
    else:
        if not (0 <= message.door_port <= 65535 and 0 <= message.window_seconds <= 65535):
            raise ValueError("door port or window out of range")
        body = _P3_BODY.pack(message.timestamp_ms, message.request_id, message.status,
                             message.door_port, message.window_seconds,
                             _pack_address(message.seen_address))
        kind = PacketType.P3
    return kind, body.ljust(PLAINTEXT_LEN[kind], b"\0")


def decode_plaintext(kind: PacketType, plain: bytes) -> Message | Reject:
    """Parse an authenticated plaintext. Fields are still checked: a key holder may be hostile."""
    if len(plain) != PLAINTEXT_LEN[kind]:
        return Reject(RejectReason.BAD_SIZE, "plaintext")
    if kind is PacketType.P1:
        ts, rid, raw_addr, raw_service, raw_knocks, raw_kind = _P1_BODY.unpack_from(plain)
        used = _P1_BODY.size
    elif kind is PacketType.P2:
        ts, rid = _P2_BODY.unpack_from(plain)
        used = _P2_BODY.size
    else:
        ts, rid, status, port, window, raw_addr = _P3_BODY.unpack_from(plain)
        used = _P3_BODY.size
    if any(plain[used:]):
        return Reject(RejectReason.BAD_PADDING)
    if kind is PacketType.P2:
        return P2(ts, rid)
    address = _unpack_address(raw_addr)
    if isinstance(address, Reject):
        return address
    if kind is PacketType.P3:
        try:
            parsed_status = Status(status)
        except ValueError:
            return Reject(RejectReason.BAD_FIELD, "status")
        return P3(ts, rid, parsed_status, port, window, address)
    service = _unpack_service(raw_service)
    if isinstance(service, Reject):
        return service
    if raw_kind not in KnockKind.__members__.values():
        return Reject(RejectReason.BAD_FIELD, "knock_kind")
    knock_kind = KnockKind(raw_kind)
    knocks = tuple(Knock(*_KNOCK.unpack_from(raw_knocks, i * _KNOCK.size)) for i in range(KNOCK_COUNT))
    if any(k.port == 0 for k in knocks) or len(set(knocks)) != KNOCK_COUNT \
            or (knock_kind is KnockKind.CONNECT and any(k.isn for k in knocks)):
        return Reject(RejectReason.BAD_FIELD, "knocks")
    return P1(ts, rid, address, service, (knocks[0], knocks[1], knocks[2]), knock_kind)


# --- sealing and opening ----------------------------------------------------


def _direction_key(keys: SessionKeys, kind: PacketType) -> bytes:
    return keys.server_to_client if kind is PacketType.P3 else keys.client_to_server


def _encrypt(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    # Imported here, not at the top: pycryptodome's import alone costs 30-40 ms, which the tools
    # that only encode or decode need not pay. Once loaded, the import statement costs ~0.2 us
    # against ~28 us of sealing.
    from Crypto.Cipher import ChaCha20_Poly1305

    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(aad)
    return cipher.encrypt_and_digest(plaintext)


def _decrypt(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    from Crypto.Cipher import ChaCha20_Poly1305  # see _encrypt

    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(aad)
    return cipher.decrypt_and_verify(ciphertext, tag)


def associated_data(header: bytes, server: IPAddress | None) -> bytes:
    """What the tag covers besides the ciphertext: the header, and in version 2 the server address; in
    version 3 always 17 more bytes, the server address if bound, else zeros."""
    if header[:1] == bytes((PAIR_VERSION,)):
        return header + (_pack_address(server) if server is not None else bytes(_ADDRESS.size))
    return header if server is None else header + _pack_address(server)


def p1_signed_message(server_key: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """What a version 3 P1's signature covers: the label, the server's public key (so a P1 signed for one
    server is worthless at another), the associated data (header, with the nonce, and the server address
    when bound) and v1's 80-byte plaintext (every field)."""
    return P1_SIGNATURE_LABEL + server_key + aad + plaintext[:PLAINTEXT_LEN[PacketType.P1]]


def signed_part(header: Header, server: IPAddress | None, server_key: bytes, p1: P1) -> bytes:
    """The receiver's p1_signed_message of a decoded v3 P1 (its encoding is canonical: the same bytes)."""
    raw_type = header.type | (BOUND_FLAG if header.bound else 0)
    aad = associated_data(_HEADER.pack(header.version, raw_type, header.hint, header.nonce),
                          server if header.bound else None)
    return p1_signed_message(server_key, aad, encode_plaintext(replace_signature(p1, b""))[1])


def replace_signature(p1: P1, signature: bytes) -> P1:
    return P1(p1.timestamp_ms, p1.request_id, p1.address, p1.service, p1.knocks, p1.knock_kind, signature)


def seal_pair(keys: SessionKeys, message: Message, hint: bytes, nonce: bytes, server_key: bytes,
              server: IPAddress | None = None, sign: Callable[[bytes], bytes] | None = None,
              encrypt: Encrypt = _encrypt) -> bytes:
    """A version 3 packet (bound to `server` if given): a P1 signed by `sign` (the user's Ed25519 key,
    over p1_signed_message), a P2 or P3 unsigned. `keys` are the pair's (keys.pair_session_keys)."""
    if len(hint) != HINT_LEN or len(nonce) != NONCE_LEN or len(server_key) != SERVER_KEY_LEN:
        raise ValueError("hint must be 8 bytes, nonce 24 and the server key 32")
    kind, plain = encode_plaintext(message)
    header = _HEADER.pack(PAIR_VERSION, kind | (BOUND_FLAG if server is not None else 0), hint, nonce)
    aad = associated_data(header, server)
    if kind is PacketType.P1:
        if sign is None:
            raise ValueError("a version 3 P1 must be signed")
        signature = sign(p1_signed_message(server_key, aad, plain))
        if len(signature) != SIGNATURE_LEN:
            raise ValueError("an Ed25519 signature is 64 bytes")
        plain += signature
    ciphertext, tag = encrypt(_direction_key(keys, kind), nonce, aad, plain)
    return header + ciphertext + tag


def seal(keys: SessionKeys, message: Message, hint: bytes, nonce: bytes, server: IPAddress | None = None,
         encrypt: Encrypt = _encrypt) -> bytes:
    """Encrypt and authenticate a message into a wire packet: version 1, or 2 bound to `server`."""
    if len(hint) != HINT_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("hint must be 8 bytes and nonce 24 bytes")
    kind, plain = encode_plaintext(message)
    if isinstance(message, P1) and message.signature:
        raise ValueError("a signed P1 is version 3: seal_pair")
    header = _HEADER.pack(VERSION if server is None else BOUND_VERSION, kind, hint, nonce)
    ciphertext, tag = encrypt(_direction_key(keys, kind), nonce, associated_data(header, server), plain)
    return header + ciphertext + tag


def parse_header(packet: bytes, accept: tuple[PacketType, ...] = (PacketType.P1, PacketType.P2),
                 versions: tuple[int, ...] = VERSIONS) -> Header | Reject:
    """Cheap checks before any crypto: size, version, type. Never raises."""
    if len(packet) < HEADER_LEN:
        return Reject(RejectReason.BAD_SIZE, str(len(packet)))
    version, raw_type, hint, nonce = _HEADER.unpack_from(packet)
    if version not in versions:
        return Reject(RejectReason.BAD_VERSION, str(version))
    bound = version == BOUND_VERSION or (version == PAIR_VERSION and raw_type & BOUND_FLAG != 0)
    type_value = raw_type & ~BOUND_FLAG if version == PAIR_VERSION else raw_type
    if type_value not in PacketType.__members__.values() or PacketType(type_value) not in accept:
        return Reject(RejectReason.BAD_TYPE, str(raw_type))
    kind = PacketType(type_value)
    if len(packet) != packet_len(version, kind):
        return Reject(RejectReason.BAD_SIZE, str(len(packet)))
    return Header(version, kind, hint, nonce, bound)


def open_packet(keys: SessionKeys, header: Header, packet: bytes, server: IPAddress | None = None,
                decrypt: Decrypt = _decrypt) -> Message | Reject:
    """Verify the tag over header (and, version 2, the server address) and ciphertext, then decode.

    `server`: the address the packet was sent to (P1, P2) or came from (P3). Never raises.
    """
    if header.bound and server is None:
        return Reject(RejectReason.BAD_VERSION, f"{header.version} without a server address to check")
    aad = associated_data(packet[:HEADER_LEN], server if header.bound else None)
    try:
        plain = decrypt(_direction_key(keys, header.type), header.nonce, aad, packet[HEADER_LEN:-TAG_LEN],
                        packet[-TAG_LEN:])
    except ValueError:
        return Reject(RejectReason.BAD_TAG)
    if header.version == PAIR_VERSION and header.type is PacketType.P1:
        message = decode_plaintext(header.type, plain[:-SIGNATURE_LEN])
        return replace_signature(message, plain[-SIGNATURE_LEN:]) if isinstance(message, P1) else message
    return decode_plaintext(header.type, plain)
