"""The wire codec as knock-client uses it: P1 and P2 sealed, P3 parsed and opened (docs/PROTOCOL.md).

dynknock/protocol.py is the codec of record (the server's, every direction), its records
dataclasses. ssh starts knock-client for every connection, and the dataclasses module costs
the client ~9 ms of start-up and each record class ~0.5 ms more, so the client keeps this
lean copy of its two directions: the same layouts and bytes, records as namedtuples
(client/lean.py), sealed and opened with client/crypto.py's XChaCha20-Poly1305. A packet
that is not an authentic answer is a reason (RejectReason's value, e.g. "bad_tag"), never
an exception. tests/unit/test_client_wire.py holds it to protocol.py and to tests/vectors
byte for byte.
"""

from __future__ import annotations

import ipaddress
import struct

from dynknock.client.crypto import xchacha20poly1305_decrypt, xchacha20poly1305_encrypt
from dynknock.fields import Knock as Knock  # the knock and the enumerations are protocol.py's own types
from dynknock.fields import KnockKind as KnockKind
from dynknock.fields import PacketType as PacketType
from dynknock.fields import Status as Status
from dynknock.keys import HINT_LEN
from dynknock.rules import SERVICE_NAME_LEN, is_service_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NamedTuple, TypeAlias

    from dynknock.keys import SessionKeys

    IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
else:  # typing.NamedTuple without typing's start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple

VERSION = 1  # unbound
BOUND_VERSION = 2  # bound to the server address
VERSIONS = (VERSION, BOUND_VERSION)  # symmetric keys (a password or a key file)
PAIR_VERSION = 3  # key-pair users: P1 signed, keys from X25519 with the server's key
BOUND_FLAG = 0x80  # version 3: the type byte's top bit, bound to the server address
SIGNATURE_LEN = 64
SERVER_KEY_LEN = 32
P1_SIGNATURE_LABEL = b"dynknock v3 P1\0\0"
NONCE_LEN = 24
TAG_LEN = 16
KNOCK_COUNT = 3
REQUEST_ID_LEN = 16

_HEADER = struct.Struct("!BB8s24s")
HEADER_LEN = _HEADER.size  # 34
_ADDRESS = struct.Struct("!B16s")
_KNOCK = struct.Struct("!HI")
_P1_BODY = struct.Struct("!Q16s17s16s18sB")  # 76 bytes, padded to 80
_P2_BODY = struct.Struct("!Q16s")  # 24 bytes, padded to 32
_P3_BODY = struct.Struct("!Q16sBHH17s")  # 46 bytes, padded to 48
P1_PLAINTEXT_LEN = 80
P2_PLAINTEXT_LEN = 32
P3_PLAINTEXT_LEN = 48
P3_PACKET_LEN = HEADER_LEN + P3_PLAINTEXT_LEN + TAG_LEN  # in every version
_AS_SEEN, _IPV4, _IPV6 = 0, 4, 6  # the address layout's family byte


class P1(NamedTuple):
    timestamp_ms: int
    request_id: bytes
    address: IPAddress | None  # None = as seen by the server
    service: str
    knocks: tuple[Knock, Knock, Knock]
    knock_kind: KnockKind = KnockKind.SYN


class P2(NamedTuple):
    timestamp_ms: int
    request_id: bytes


class P3(NamedTuple):
    timestamp_ms: int
    request_id: bytes
    status: Status
    door_port: int
    window_seconds: int
    seen_address: IPAddress | None


class Header(NamedTuple):
    """An answer's header, checked for size, version and type before any crypto."""

    version: int
    hint: bytes
    nonce: bytes
    bound: bool  # bound to the server address: version 2, or version 3 with BOUND_FLAG


# --- sealing: P1 and P2 ------------------------------------------------------------


def _pack_address(address: IPAddress | None) -> bytes:
    if address is None:
        return _ADDRESS.pack(_AS_SEEN, b"")
    return _ADDRESS.pack(_IPV4 if address.version == 4 else _IPV6, address.packed)


def associated_data(header: bytes, server: IPAddress | None) -> bytes:
    """The header, and the server address when bound; version 3 always has 17 more bytes (zeros
    when unbound)."""
    if header[0] == PAIR_VERSION:
        return header + (_pack_address(server) if server is not None else bytes(_ADDRESS.size))
    return header if server is None else header + _pack_address(server)


def encode_plaintext(message: P1 | P2) -> tuple[PacketType, bytes]:
    """The padded plaintext of a request. Raises ValueError on our own bad values."""
    if len(message.request_id) != REQUEST_ID_LEN:
        raise ValueError("request_id must be 16 bytes")
    if not 0 <= message.timestamp_ms < 2**64:
        raise ValueError("timestamp out of range")
    if isinstance(message, P2):
        return PacketType.P2, _P2_BODY.pack(message.timestamp_ms, message.request_id).ljust(P2_PLAINTEXT_LEN, b"\0")
    if len(message.knocks) != KNOCK_COUNT or len(set(message.knocks)) != KNOCK_COUNT:
        raise ValueError("exactly three distinct knocks")
    for knock in message.knocks:
        if not (1 <= knock.port <= 65535 and 0 <= knock.isn < 2**32):
            raise ValueError(f"bad knock {knock}")
        if message.knock_kind is KnockKind.CONNECT and knock.isn:
            raise ValueError("connect() knocks carry no ISN (0)")
    if not is_service_name(message.service):
        raise ValueError(f"service name must be 1-{SERVICE_NAME_LEN} of [a-z0-9_-]: {message.service!r}")
    body = _P1_BODY.pack(message.timestamp_ms, message.request_id, _pack_address(message.address),
                         message.service.encode("ascii").ljust(SERVICE_NAME_LEN, b"\0"),
                         b"".join(_KNOCK.pack(knock.port, knock.isn) for knock in message.knocks), message.knock_kind)
    return PacketType.P1, body.ljust(P1_PLAINTEXT_LEN, b"\0")


def seal(keys: SessionKeys, message: P1 | P2, hint: bytes, nonce: bytes, server: IPAddress | None = None) -> bytes:
    """A version 1 packet, or version 2 bound to `server`: dynknock.protocol.seal's bytes."""
    if len(hint) != HINT_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("hint must be 8 bytes and nonce 24 bytes")
    kind, plain = encode_plaintext(message)
    header = _HEADER.pack(VERSION if server is None else BOUND_VERSION, kind, hint, nonce)
    ciphertext, tag = xchacha20poly1305_encrypt(keys.client_to_server, nonce, associated_data(header, server), plain)
    return header + ciphertext + tag


def seal_pair(keys: SessionKeys, message: P1 | P2, hint: bytes, nonce: bytes, server_key: bytes,
              server: IPAddress | None = None, sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """A version 3 packet (a key-pair user's), a P1 signed by `sign`: dynknock.protocol.seal_pair's bytes."""
    if len(hint) != HINT_LEN or len(nonce) != NONCE_LEN or len(server_key) != SERVER_KEY_LEN:
        raise ValueError("hint must be 8 bytes, nonce 24 and the server key 32")
    kind, plain = encode_plaintext(message)
    header = _HEADER.pack(PAIR_VERSION, kind | (BOUND_FLAG if server is not None else 0), hint, nonce)
    aad = associated_data(header, server)
    if kind is PacketType.P1:
        if sign is None:
            raise ValueError("a version 3 P1 must be signed")
        signature = sign(P1_SIGNATURE_LABEL + server_key + aad + plain)
        if len(signature) != SIGNATURE_LEN:
            raise ValueError("an Ed25519 signature is 64 bytes")
        plain += signature
    ciphertext, tag = xchacha20poly1305_encrypt(keys.client_to_server, nonce, aad, plain)
    return header + ciphertext + tag


# --- opening: P3 -------------------------------------------------------------------


def parse_answer_header(packet: bytes, versions: tuple[int, ...] = VERSIONS) -> Header | str:
    """A P3's header, or why the packet is none (dynknock.protocol.parse_header's reason, accepting P3
    only). Cheap: no crypto."""
    if len(packet) < HEADER_LEN:
        return "bad_size"
    version, raw_type, hint, nonce = _HEADER.unpack_from(packet)
    if version not in versions:
        return "bad_version"
    bound = version == BOUND_VERSION or (version == PAIR_VERSION and raw_type & BOUND_FLAG != 0)
    if (raw_type & ~BOUND_FLAG if version == PAIR_VERSION else raw_type) != PacketType.P3:
        return "bad_type"
    if len(packet) != P3_PACKET_LEN:
        return "bad_size"
    return Header(version, hint, nonce, bound)


def open_answer(keys: SessionKeys, header: Header, packet: bytes, server: IPAddress | None = None) -> P3 | str:
    """The P3 whose tag verifies over the header (and, when bound, `server`: the address it came from),
    or why not. Never raises."""
    if header.bound and server is None:
        return "bad_version"
    aad = associated_data(packet[:HEADER_LEN], server if header.bound else None)
    try:
        plain = xchacha20poly1305_decrypt(keys.server_to_client, header.nonce, aad, packet[HEADER_LEN:-TAG_LEN],
                                          packet[-TAG_LEN:])
    except ValueError:
        return "bad_tag"
    return decode_answer(plain)


def decode_answer(plain: bytes) -> P3 | str:
    """An authenticated P3 plaintext; its fields are still checked (a key holder may be hostile)."""
    if len(plain) != P3_PLAINTEXT_LEN:
        return "bad_size"
    timestamp_ms, request_id, status, door_port, window_seconds, raw_address = _P3_BODY.unpack_from(plain)
    if any(plain[_P3_BODY.size:]):
        return "bad_padding"
    family, body = _ADDRESS.unpack(raw_address)
    address: IPAddress | None
    if family == _AS_SEEN and body == bytes(16):
        address = None
    elif family == _IPV4 and body[4:] == bytes(12):
        address = ipaddress.IPv4Address(body[:4])
    elif family == _IPV6:
        address = ipaddress.IPv6Address(body)
    else:
        return "bad_field"
    if status not in Status.__members__.values():
        return "bad_field"
    return P3(timestamp_ms, request_id, Status(status), door_port, window_seconds, address)
