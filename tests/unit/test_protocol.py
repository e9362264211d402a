"""The P1/P2/P3 codec: byte-exact vectors, an independent cross-check, and fuzzing.

Three layers:
1. the vectors in tests/vectors/*.json, checked in both directions;
2. the same bytes rebuilt without auth/ (hashlib.scrypt, an HKDF written with
   hmac, HChaCha20 written out + the `cryptography` package's IETF
   ChaCha20-Poly1305), so the vectors are not just the code agreeing with itself;
3. hypothesis: round trips, and every mutation of a valid packet is a Reject.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynknock import keys as K
from dynknock import protocol as proto
from dynknock.protocol import PacketType, Reject, RejectReason, Status
from tests.vectors import make_vectors as MV

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors"
ALL_TYPES = (PacketType.P1, PacketType.P2, PacketType.P3)
KEYS = K.SessionKeys.from_master(bytes(range(32)))
OTHER_KEYS = K.SessionKeys.from_master(bytes(range(1, 33)))
HINT = bytes.fromhex("0001020304050607")
NONCE = bytes(range(100, 124))
# The reasons the codec can give; every other RejectReason is the engine's.
CODEC_REASONS = frozenset({RejectReason.BAD_SIZE, RejectReason.BAD_VERSION, RejectReason.BAD_TYPE,
                           RejectReason.BAD_TAG, RejectReason.BAD_PADDING, RejectReason.BAD_FIELD})


def _load_vectors() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTOR_DIR.glob("*.json"))}


VECTORS = _load_vectors()
PACKET_VECTORS = {name: v for name, v in VECTORS.items() if "packet" in v and v["version"] != proto.PAIR_VERSION}
PAIR_VECTORS = {name: v for name, v in VECTORS.items() if "packet" in v and v["version"] == proto.PAIR_VERSION}


def _server(v: dict[str, Any]) -> proto.IPAddress | None:
    """The server address a version-2 vector is bound to (None: version 1)."""
    bound = v["inputs"].get("server_address")
    return None if bound is None else ipaddress.ip_address(bound["address"])


def decode(keys: K.SessionKeys, packet: bytes, accept: tuple[PacketType, ...] = ALL_TYPES,
           server: proto.IPAddress | None = None) -> proto.Message | Reject:
    """What a receiver does: cheap header checks, then the AEAD. Must never raise."""
    header = proto.parse_header(packet, accept)
    if isinstance(header, Reject):
        assert header.reason in CODEC_REASONS
        return header
    result = proto.open_packet(keys, header, packet, server)
    assert not isinstance(result, Reject) or result.reason in CODEC_REASONS
    return result


def seal_raw(keys: K.SessionKeys, kind: int, plaintext: bytes, hint: bytes = HINT, nonce: bytes = NONCE) -> bytes:
    """Authenticate arbitrary plaintext with the right key: a hostile key holder's packet."""
    header = struct.pack("!BB8s24s", proto.VERSION, kind, hint, nonce)
    key = keys.server_to_client if kind == PacketType.P3 else keys.client_to_server
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return header + ciphertext + tag


# --- an independent construction ------------------------------------------------


def _rotl(v: int, n: int) -> int:
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha-03 §2.2), written out from the draft."""
    s = list(struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", nonce16))

    def qr(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = _rotl(s[b] ^ s[c], 7)

    rounds = [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),  # columns
              (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]  # diagonals
    for _ in range(10):
        for a, b, c, d in rounds:
            qr(a, b, c, d)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def reference_xchacha_seal(key: bytes, nonce: bytes, header: bytes, plaintext: bytes) -> bytes:
    """XChaCha20-Poly1305 = HChaCha20 subkey + IETF ChaCha20-Poly1305 with nonce 0^4 || nonce[16:]."""
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    subkey = hchacha20(key, nonce[:16])
    sealed: bytes = aead.ChaCha20Poly1305(subkey).encrypt(b"\0" * 4 + nonce[16:], plaintext, header)
    return sealed


def reference_hkdf(master: bytes, label: bytes) -> bytes:
    """RFC 5869 with SHA-256, salt = 32 zero bytes (what an empty salt means), info = 'dynknock v1 ' + label."""
    prk = hmac.new(b"\0" * 32, master, hashlib.sha256).digest()
    return hmac.new(prk, b"dynknock v1 " + label + b"\x01", hashlib.sha256).digest()


def reference_hint(hint_key: bytes, epoch: int) -> bytes:
    return hmac.new(hint_key, b"epoch" + epoch.to_bytes(8, "big"), hashlib.sha256).digest()[:8]


def test_hchacha20_reference_matches_the_draft_vector() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, nonce).hex() == expected


# --- vectors --------------------------------------------------------------------


def test_the_vector_set_is_complete_and_current() -> None:
    expected = {"keys.json", "p1_ipv4.json", "p1_ipv6.json", "p1_as_seen.json", "p2.json"}
    expected |= {f"p3_{s.name.lower()}.json" for s in Status}
    expected |= {"v2_p1_ipv4.json", "v2_p1_ipv6.json", "v2_p2.json", "v2_p3_open.json"}  # bound to a gateway
    expected |= {"p1_connect_ipv4.json", "v2_p1_connect_ipv6.json"}  # knocks sent by connect()
    expected |= {"v3_keys.json", "v3_p1_ipv4.json", "v3_p1_connect_ipv6_bound.json", "v3_p2.json",
                 "v3_p3_open_bound.json"}  # key-pair users
    assert set(VECTORS) == expected
    # The files are exactly what the generator writes from the code today.
    assert MV.main(["--check"]) == 0


def test_key_vector() -> None:
    v = VECTORS["keys.json"]
    inputs = v["inputs"]
    master = K.derive_master_key(inputs["user"], inputs["password"])
    assert master.hex() == v["master_key"]
    assert K.encode_key(master) == v["master_key_base64"]
    assert K.decode_key(v["master_key_base64"]) == master
    salt = bytes.fromhex(v["scrypt"]["salt"])
    assert salt == b"dynknock/v1/scrypt/alice"
    independent = hashlib.scrypt(inputs["password"].encode(), salt=salt, n=v["scrypt"]["N"], r=v["scrypt"]["r"],
                                 p=v["scrypt"]["p"], dklen=v["scrypt"]["dklen"], maxmem=2**26)
    assert independent == master
    keys = K.SessionKeys.from_master(master)
    for label, field in (("hint", "hint"), ("client-to-server", "client_to_server"),
                         ("server-to-client", "server_to_client")):
        assert getattr(keys, field).hex() == v["session_keys"][field]
        assert reference_hkdf(master, label.encode()).hex() == v["session_keys"][field]
    assert K.hint_epoch(inputs["unix_seconds"]) == inputs["epoch"] == inputs["unix_seconds"] // 60
    assert K.user_hint(keys, inputs["epoch"]).hex() == v["hint"]
    assert K.user_hint(keys, inputs["epoch"] + 1).hex() == v["hint_next_epoch"]
    assert reference_hint(keys.hint, inputs["epoch"]).hex() == v["hint"]


def test_user_name_is_normalised_before_the_salt() -> None:
    v = VECTORS["keys.json"]
    assert K.derive_master_key("  alice ", v["inputs"]["password"]).hex() == v["master_key"]


@pytest.mark.parametrize("name", sorted(PACKET_VECTORS))
def test_vector_seal(name: str) -> None:
    v = PACKET_VECTORS[name]
    inputs = v["inputs"]
    keys = K.SessionKeys.from_master(bytes.fromhex(inputs["master_key"]))
    message = MV.message_from_json(v["type"], inputs["message"])
    kind, plaintext = proto.encode_plaintext(message)
    assert kind.name == v["type"]
    assert plaintext.hex() == v["derived"]["plaintext"]
    assert K.user_hint(keys, inputs["epoch"]).hex() == inputs["hint"]
    assert K.hint_epoch(message.timestamp_ms / 1000) == inputs["epoch"]
    packet = proto.seal(keys, message, bytes.fromhex(inputs["hint"]), bytes.fromhex(inputs["nonce"]), _server(v))
    assert packet.hex() == v["packet"]
    assert len(packet) == v["packet_len"] == proto.PACKET_LEN[kind]


@pytest.mark.parametrize("name", sorted(PACKET_VECTORS))
def test_vector_open(name: str) -> None:
    v = PACKET_VECTORS[name]
    inputs = v["inputs"]
    keys = K.SessionKeys.from_master(bytes.fromhex(inputs["master_key"]))
    packet = bytes.fromhex(v["packet"])
    header = proto.parse_header(packet, ALL_TYPES)
    assert header == proto.Header(v["version"], PacketType[v["type"]], bytes.fromhex(inputs["hint"]),
                                  bytes.fromhex(inputs["nonce"]), v["version"] == proto.BOUND_VERSION)
    assert proto.open_packet(keys, header, packet, _server(v)) == MV.message_from_json(v["type"], inputs["message"])
    # The receiver of the other direction only accepts its own types.
    server_side = proto.parse_header(packet)
    client_side = proto.parse_header(packet, (PacketType.P3,))
    if v["type"] == "P3":
        assert server_side == Reject(RejectReason.BAD_TYPE, "3")
        assert isinstance(client_side, proto.Header)
    else:
        assert isinstance(server_side, proto.Header)
        assert isinstance(client_side, Reject) and client_side.reason is RejectReason.BAD_TYPE


@pytest.mark.parametrize("name", sorted(PACKET_VECTORS))
def test_vector_against_independent_construction(name: str) -> None:
    v = PACKET_VECTORS[name]
    inputs, derived = v["inputs"], v["derived"]
    master = bytes.fromhex(inputs["master_key"])
    for field, label in (("hint", b"hint"), ("client_to_server", b"client-to-server"),
                         ("server_to_client", b"server-to-client")):
        assert reference_hkdf(master, label).hex() == derived["session_keys"][field]
    assert reference_hint(bytes.fromhex(derived["session_keys"]["hint"]), inputs["epoch"]).hex() == inputs["hint"]
    type_byte = PacketType[v["type"]].value
    header = bytes([v["version"], type_byte]) + bytes.fromhex(inputs["hint"]) + bytes.fromhex(inputs["nonce"])
    assert header.hex() == derived["header"]
    server = _server(v)
    # Version 2 (docs/PROTOCOL.md): the associated data is the header, then the server address as
    # family (4 or 6) and 16 bytes, the address left-aligned and zero-padded.
    associated = header if server is None else (
        header + bytes([server.version]) + server.packed.ljust(16, b"\0"))
    assert associated.hex() == derived["associated_data"]
    key = bytes.fromhex(derived["session_keys"][derived["direction_key"]])
    sealed = reference_xchacha_seal(key, bytes.fromhex(inputs["nonce"]), associated,
                                    bytes.fromhex(derived["plaintext"]))
    assert (header + sealed).hex() == v["packet"] == derived["header"] + derived["ciphertext"] + derived["tag"]


def test_plaintext_offsets_are_as_documented() -> None:
    """Pins the byte offsets that docs/PROTOCOL.md gives a client implementer."""
    p1 = bytes.fromhex(PACKET_VECTORS["p1_ipv4.json"]["derived"]["plaintext"])
    assert len(p1) == 80
    assert int.from_bytes(p1[0:8], "big") == MV.TIMESTAMP_MS
    assert p1[8:24] == MV.REQUEST_ID
    assert p1[24] == 4 and p1[25:29] == bytes([203, 0, 113, 7]) and p1[29:41] == bytes(12)
    assert p1[41:57] == b"ssh".ljust(16, b"\0")
    assert struct.unpack("!HIHIHI", p1[57:75]) == (15075, 0x54841860, 4174, 0xE2AA5A03, 44809, 0x902AC754)
    assert p1[75] == proto.KnockKind.SYN and p1[76:80] == bytes(4)
    connect = bytes.fromhex(PACKET_VECTORS["p1_connect_ipv4.json"]["derived"]["plaintext"])
    assert connect[75] == proto.KnockKind.CONNECT and connect[:57] == p1[:57]
    assert struct.unpack("!HIHIHI", connect[57:75]) == (15075, 0, 4174, 0, 44809, 0)
    p1v6 = bytes.fromhex(PACKET_VECTORS["p1_ipv6.json"]["derived"]["plaintext"])
    assert p1v6[24] == 6 and p1v6[25:41] == ipaddress.IPv6Address("2001:db8::7").packed
    p1seen = bytes.fromhex(PACKET_VECTORS["p1_as_seen.json"]["derived"]["plaintext"])
    assert p1seen[24:41] == bytes(17)
    p2 = bytes.fromhex(PACKET_VECTORS["p2.json"]["derived"]["plaintext"])
    assert len(p2) == 32 and p2[8:24] == MV.REQUEST_ID and p2[24:] == bytes(8)
    p3 = bytes.fromhex(PACKET_VECTORS["p3_open.json"]["derived"]["plaintext"])
    assert len(p3) == 48
    assert p3[8:24] == MV.REQUEST_ID
    assert p3[24] == Status.OPEN
    assert struct.unpack("!HH", p3[25:29]) == (58201, 30)
    assert p3[29] == 4 and p3[30:34] == bytes([203, 0, 113, 7]) and p3[34:46] == bytes(12)
    assert p3[46:48] == bytes(2)
    assert proto.HEADER_LEN == 34 and proto.TAG_LEN == 16
    assert proto.PACKET_LEN == {PacketType.P1: 130, PacketType.P2: 82, PacketType.P3: 98}


# --- hypothesis strategies -------------------------------------------------------

request_ids = st.binary(min_size=16, max_size=16)
timestamps = st.integers(min_value=0, max_value=2**64 - 1)
addresses = st.one_of(st.none(), st.ip_addresses(v=4), st.ip_addresses(v=6))
services = st.from_regex(r"\A[a-z0-9_-]{1,16}\Z")
knock_sets = st.lists(st.builds(proto.Knock, st.integers(1, 65535), st.integers(0, 2**32 - 1)),
                      min_size=3, max_size=3, unique=True).map(tuple)
p1s = st.builds(proto.P1, timestamps, request_ids, addresses, services, knock_sets)
p2s = st.builds(proto.P2, timestamps, request_ids)
p3s = st.builds(proto.P3, timestamps, request_ids, st.sampled_from(Status), st.integers(0, 65535),
                st.integers(0, 65535), addresses)
messages = st.one_of(p1s, p2s, p3s)
hints = st.binary(min_size=8, max_size=8)
nonces = st.binary(min_size=24, max_size=24)


@st.composite
def sealed_packets(draw: st.DrawFn) -> tuple[proto.Message, bytes]:
    message = draw(messages)
    return message, proto.seal(KEYS, message, draw(hints), draw(nonces))


@given(messages, hints, nonces)
def test_round_trip(message: proto.Message, hint: bytes, nonce: bytes) -> None:
    packet = proto.seal(KEYS, message, hint, nonce)
    kind, _ = proto.encode_plaintext(message)
    assert len(packet) == proto.PACKET_LEN[kind]
    header = proto.parse_header(packet, ALL_TYPES)
    assert header == proto.Header(1, kind, hint, nonce)
    assert proto.open_packet(KEYS, header, packet) == message


@given(messages)
def test_plaintext_round_trip(message: proto.Message) -> None:
    kind, plain = proto.encode_plaintext(message)
    assert len(plain) == proto.PLAINTEXT_LEN[kind]
    assert proto.decode_plaintext(kind, plain) == message


@given(sealed_packets())
def test_other_key_is_bad_tag(sealed: tuple[proto.Message, bytes]) -> None:
    assert decode(OTHER_KEYS, sealed[1]) == Reject(RejectReason.BAD_TAG)


@given(sealed_packets(), st.data())
def test_any_single_byte_change_is_rejected(sealed: tuple[proto.Message, bytes], data: st.DataObject) -> None:
    packet = sealed[1]
    index = data.draw(st.integers(0, len(packet) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda b: b != packet[index]))
    mutated = packet[:index] + bytes([value]) + packet[index + 1:]
    assert isinstance(decode(KEYS, mutated), Reject)


@pytest.mark.parametrize("name", sorted(PACKET_VECTORS))
def test_every_bit_flip_of_a_vector_is_rejected(name: str) -> None:
    v = PACKET_VECTORS[name]
    keys = K.SessionKeys.from_master(bytes.fromhex(v["inputs"]["master_key"]))
    packet = bytes.fromhex(v["packet"])
    assert not isinstance(decode(keys, packet, server=_server(v)), Reject)
    reasons = set()
    for index in range(len(packet)):
        for bit in range(8):
            mutated = bytearray(packet)
            mutated[index] ^= 1 << bit
            result = decode(keys, bytes(mutated), server=_server(v))
            assert isinstance(result, Reject), (index, bit)
            reasons.add(result.reason)
            if index >= 2:  # hint, nonce, ciphertext, tag: all covered by the tag
                assert result.reason is RejectReason.BAD_TAG, (index, bit)
    assert {RejectReason.BAD_VERSION, RejectReason.BAD_TAG} <= reasons


@given(sealed_packets(), st.data())
def test_any_truncation_is_rejected(sealed: tuple[proto.Message, bytes], data: st.DataObject) -> None:
    packet = sealed[1]
    cut = data.draw(st.integers(0, len(packet) - 1))
    assert isinstance(decode(KEYS, packet[:cut]), Reject)
    assert isinstance(decode(KEYS, packet[len(packet) - cut:]), Reject)


@given(sealed_packets(), st.binary(min_size=1, max_size=64))
def test_any_extension_is_rejected(sealed: tuple[proto.Message, bytes], extra: bytes) -> None:
    packet = sealed[1]
    assert decode(KEYS, packet + extra) == Reject(RejectReason.BAD_SIZE, str(len(packet) + len(extra)))
    assert isinstance(decode(KEYS, extra + packet), Reject)


@given(st.binary(max_size=300))
@example(b"")
@example(b"\x01")
@example(b"\x01\x01" + bytes(128))
def test_random_bytes_of_any_length_are_rejected(junk: bytes) -> None:
    assert isinstance(decode(KEYS, junk), Reject)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_TYPES), st.data())
def test_random_bytes_of_exactly_the_right_size_are_rejected(kind: PacketType, data: st.DataObject) -> None:
    size = proto.PACKET_LEN[kind]
    junk = data.draw(st.binary(min_size=size, max_size=size))
    assert isinstance(decode(KEYS, junk), Reject)
    # With a well-formed header the junk reaches the AEAD, which refuses it.
    body = data.draw(st.binary(min_size=size - 2, max_size=size - 2))
    assert decode(KEYS, bytes([1, kind]) + body) == Reject(RejectReason.BAD_TAG)


# --- every reject reason of the codec, explicitly ---------------------------------


def _p1() -> proto.P1:
    return proto.P1(1000, bytes(16), ipaddress.IPv4Address("192.0.2.1"), "ssh", MV.PAPER_KNOCKS)


def _p3() -> proto.P3:
    return proto.P3(1000, bytes(16), Status.OPEN, 40000, 30, ipaddress.IPv4Address("192.0.2.1"))


def test_bad_size() -> None:
    p1 = proto.seal(KEYS, _p1(), HINT, NONCE)
    assert decode(KEYS, b"") == Reject(RejectReason.BAD_SIZE, "0")
    assert decode(KEYS, p1[:33]) == Reject(RejectReason.BAD_SIZE, "33")
    assert decode(KEYS, p1[:-1]) == Reject(RejectReason.BAD_SIZE, "129")
    assert decode(KEYS, p1 + b"\0") == Reject(RejectReason.BAD_SIZE, "131")
    # A P2-sized packet claiming to be a P1 (or the reverse) is refused before any crypto.
    p2 = proto.seal(KEYS, proto.P2(1000, bytes(16)), HINT, NONCE)
    assert decode(KEYS, b"\x01\x01" + p2[2:]) == Reject(RejectReason.BAD_SIZE, "82")
    assert decode(KEYS, b"\x01\x02" + p1[2:]) == Reject(RejectReason.BAD_SIZE, "130")
    # decode_plaintext checks its own input too.
    assert proto.decode_plaintext(PacketType.P2, bytes(31)) == Reject(RejectReason.BAD_SIZE, "plaintext")


def test_bad_version() -> None:
    p1 = proto.seal(KEYS, _p1(), HINT, NONCE)
    for version in range(256):
        if version not in (1, 2):
            assert decode(KEYS, bytes([version]) + p1[1:]) == Reject(RejectReason.BAD_VERSION, str(version))
    # Version 2 without the address it is bound to cannot be checked: refused, never opened unbound.
    assert decode(KEYS, bytes([2]) + p1[1:]) == Reject(RejectReason.BAD_VERSION, "2 without a server address to check")


def test_bad_type() -> None:
    p1 = proto.seal(KEYS, _p1(), HINT, NONCE)
    for kind in range(256):
        result = proto.parse_header(bytes([1, kind]) + p1[2:])
        if kind in (1, 2):
            assert isinstance(result, proto.Header) or result.reason is RejectReason.BAD_SIZE
        else:
            assert result == Reject(RejectReason.BAD_TYPE, str(kind)), kind
    # A P3 reflected at the server, and a P1 sent to a client, are of the wrong type.
    p3 = proto.seal(KEYS, _p3(), HINT, NONCE)
    assert proto.parse_header(p3) == Reject(RejectReason.BAD_TYPE, "3")
    assert proto.parse_header(p1, (PacketType.P3,)) == Reject(RejectReason.BAD_TYPE, "1")


def test_bad_tag() -> None:
    p1 = proto.seal(KEYS, _p1(), HINT, NONCE)
    assert decode(OTHER_KEYS, p1) == Reject(RejectReason.BAD_TAG)
    assert decode(KEYS, p1[:-1] + bytes([p1[-1] ^ 1])) == Reject(RejectReason.BAD_TAG)
    # The header is associated data: changing the hint breaks the tag.
    assert decode(KEYS, p1[:2] + bytes(8) + p1[10:]) == Reject(RejectReason.BAD_TAG)
    # Directions have separate keys: a P3 with the P1/P2 key does not authenticate.
    _, plain = proto.encode_plaintext(_p3())
    cipher = ChaCha20_Poly1305.new(key=KEYS.client_to_server, nonce=NONCE)
    header = struct.pack("!BB8s24s", 1, 3, HINT, NONCE)
    cipher.update(header)
    ct, tag = cipher.encrypt_and_digest(plain)
    assert decode(KEYS, header + ct + tag) == Reject(RejectReason.BAD_TAG)


@pytest.mark.parametrize("message", [_p1(), proto.P2(1000, bytes(16)), _p3()], ids=["P1", "P2", "P3"])
def test_bad_padding(message: proto.Message) -> None:
    kind, plain = proto.encode_plaintext(message)
    assert decode(KEYS, seal_raw(KEYS, kind, plain)) == message  # the raw sealer is right
    for index in range({PacketType.P1: 76, PacketType.P2: 24, PacketType.P3: 46}[kind], len(plain)):
        bad = bytearray(plain)
        bad[index] = 0x80
        assert decode(KEYS, seal_raw(KEYS, kind, bytes(bad))) == Reject(RejectReason.BAD_PADDING), index


def _patched(plain: bytes, offset: int, value: bytes) -> bytes:
    return plain[:offset] + value + plain[offset + len(value):]


P1_PLAIN = proto.encode_plaintext(_p1())[1]
P3_PLAIN = proto.encode_plaintext(_p3())[1]


@pytest.mark.parametrize(("plain", "detail"), [
    (_patched(P1_PLAIN, 24, b"\x05"), "address"),  # unknown family
    (_patched(P1_PLAIN, 24, b"\x04" + bytes(4) + b"\x01" + bytes(11)), "address"),  # IPv4 with junk after it
    (_patched(P1_PLAIN, 24, b"\x00" + b"\x01" + bytes(15)), "address"),  # "as seen" with an address
    (_patched(P1_PLAIN, 41, bytes(16)), "service"),  # empty
    (_patched(P1_PLAIN, 41, b"SSH"), "service"),  # upper case
    (_patched(P1_PLAIN, 41, b"s\0h"), "service"),  # NUL inside
    (_patched(P1_PLAIN, 41, b"s\xffh"), "service"),  # not ASCII
    (_patched(P1_PLAIN, 41, b"ss h"), "service"),  # space
    (_patched(P1_PLAIN, 57, struct.pack("!HI", 0, 5)), "knocks"),  # port 0
    (_patched(P1_PLAIN, 63, P1_PLAIN[57:63]), "knocks"),  # a knock twice
    (_patched(P1_PLAIN, 75, b"\x02"), "knock_kind"),  # an unknown kind of knock
    (_patched(P1_PLAIN, 75, b"\x80"), "knock_kind"),
    (_patched(P1_PLAIN, 75, b"\x01"), "knocks"),  # connect() knocks with ISNs
    (_patched(P3_PLAIN, 24, b"\x06"), "status"),
    (_patched(P3_PLAIN, 24, b"\xff"), "status"),
    (_patched(P3_PLAIN, 29, b"\x07"), "address"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_bad_field(plain: bytes, detail: str) -> None:
    kind = PacketType.P1 if len(plain) == 80 else PacketType.P3
    assert decode(KEYS, seal_raw(KEYS, kind, plain)) == Reject(RejectReason.BAD_FIELD, detail)


def test_ipv6_family_accepts_any_sixteen_bytes() -> None:
    plain = _patched(P1_PLAIN, 24, b"\x06" + bytes(range(16)))
    message = decode(KEYS, seal_raw(KEYS, PacketType.P1, plain))
    assert isinstance(message, proto.P1)
    assert message.address == ipaddress.IPv6Address(bytes(range(16)))


def test_service_name_of_sixteen_characters() -> None:
    message = proto.P1(1, bytes(16), None, "a" * 16, MV.PAPER_KNOCKS)
    assert decode(KEYS, proto.seal(KEYS, message, HINT, NONCE)) == message


# --- the encoder refuses our own bad values (a LocalProtocolError, in h11's terms) --


@pytest.mark.parametrize("message", [
    proto.P2(0, bytes(15)),
    proto.P2(-1, bytes(16)),
    proto.P2(2**64, bytes(16)),
    proto.P1(0, bytes(16), None, "SSH", MV.PAPER_KNOCKS),
    proto.P1(0, bytes(16), None, "", MV.PAPER_KNOCKS),
    proto.P1(0, bytes(16), None, "a" * 17, MV.PAPER_KNOCKS),
    proto.P1(0, bytes(16), None, "ssh", (proto.Knock(0, 1), proto.Knock(2, 2), proto.Knock(3, 3))),
    proto.P1(0, bytes(16), None, "ssh", (proto.Knock(65536, 1), proto.Knock(2, 2), proto.Knock(3, 3))),
    proto.P1(0, bytes(16), None, "ssh", (proto.Knock(1, 2**32), proto.Knock(2, 2), proto.Knock(3, 3))),
    proto.P1(0, bytes(16), None, "ssh", (proto.Knock(1, 1), proto.Knock(1, 1), proto.Knock(3, 3))),
    proto.P3(0, bytes(16), Status.OPEN, 65536, 30, None),
    proto.P3(0, bytes(16), Status.OPEN, 1, -1, None),
])
def test_encoder_refuses_bad_values(message: proto.Message) -> None:
    with pytest.raises(ValueError):
        proto.seal(KEYS, message, HINT, NONCE)


def test_seal_refuses_bad_hint_or_nonce() -> None:
    with pytest.raises(ValueError):
        proto.seal(KEYS, _p1(), HINT[:7], NONCE)
    with pytest.raises(ValueError):
        proto.seal(KEYS, _p1(), HINT, NONCE[:12])


def test_session_keys_never_print_their_bytes() -> None:
    assert KEYS.client_to_server.hex() not in repr(KEYS)
    assert repr(KEYS) == "SessionKeys(<redacted>)"


# --- version 2: bound to the server address (issue 14) ------------------------------


@given(messages, hints, nonces, st.ip_addresses(), st.ip_addresses())
def test_v2_opens_only_at_the_address_it_was_bound_to(message: proto.Message, hint: bytes, nonce: bytes,
                                                       server: proto.IPAddress, other: proto.IPAddress) -> None:
    packet = proto.seal(KEYS, message, hint, nonce, server)
    header = proto.parse_header(packet, ALL_TYPES)
    assert isinstance(header, proto.Header) and header.version == proto.BOUND_VERSION
    assert proto.open_packet(KEYS, header, packet, server) == message
    if other != server:
        assert proto.open_packet(KEYS, header, packet, other) == Reject(RejectReason.BAD_TAG)
    # A receiver that takes only version 1 refuses it before any crypto, and the other way round.
    assert proto.parse_header(packet, ALL_TYPES, versions=(1,)) == Reject(RejectReason.BAD_VERSION, "2")
    v1 = proto.seal(KEYS, message, hint, nonce)
    assert proto.parse_header(v1, ALL_TYPES, versions=(2,)) == Reject(RejectReason.BAD_VERSION, "1")
    # Version 1 ignores the address: it binds nothing.
    header1 = proto.parse_header(v1, ALL_TYPES)
    assert isinstance(header1, proto.Header)
    assert proto.open_packet(KEYS, header1, v1, other) == message


def test_v2_header_rewritten_to_v1_fails_the_tag() -> None:
    message = proto.P2(MV.TIMESTAMP_MS, MV.REQUEST_ID)
    server = ipaddress.ip_address("198.18.0.11")
    packet = bytearray(proto.seal(KEYS, message, HINT, NONCE, server))
    packet[0] = 1  # a sniffer strips the binding: the header is authenticated, so the tag fails
    header = proto.parse_header(bytes(packet))
    assert isinstance(header, proto.Header)
    assert proto.open_packet(KEYS, header, bytes(packet), server) == Reject(RejectReason.BAD_TAG)


# --- the records: frozen, slotted dataclasses --------------------------------------------------------

RECORD_SAMPLES: list[tuple[type, tuple[Any, ...]]] = [
    (proto.Header, (1, PacketType.P3, HINT, NONCE)),
    (proto.P1, (5, bytes(16), ipaddress.IPv4Address("198.18.0.1"), "ssh", (proto.Knock(2000, 1),) * 3)),
    (proto.P2, (5, bytes(16))),
    (proto.P3, (5, bytes(16), Status.OPEN, 40000, 30, None)),
    (proto.Reject, (RejectReason.BAD_TAG,)),
    (proto.Reject, (RejectReason.BAD_FIELD, "knocks")),
]


@pytest.mark.parametrize(("cls", "args"), RECORD_SAMPLES, ids=lambda v: getattr(v, "__name__", ""))
def test_records_are_frozen_slotted_dataclasses(cls: type, args: tuple[Any, ...]) -> None:
    import dataclasses

    record = cls(*args)
    assert dataclasses.is_dataclass(record) and not hasattr(record, "__dict__")
    assert record == cls(*args) and hash(record) == hash(cls(*args))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, dataclasses.fields(record)[0].name, 1)


# --- version 3: key-pair users (tests/vectors/v3_*.json) -------------------------------------------


def test_pair_key_vector_client_and_server_sides() -> None:
    """Her side (pure Python: dynknock/curve25519.py) and the server's (pycryptodome: auth/serverkey.py)
    reach the vector's secret and keys from their own halves."""
    from dynknock import curve25519
    from dynknock.auth.serverkey import ServerKey

    v = VECTORS["v3_keys.json"]
    seed, secret = bytes.fromhex(v["inputs"]["user_seed"]), bytes.fromhex(v["inputs"]["server_secret"])
    user_public, server = curve25519.ed25519_public_key(seed), ServerKey(secret)
    assert (user_public.hex(), server.public.hex()) == (v["user_public"], v["server_public"])
    assert K.montgomery_u(user_public).hex() == v["user_montgomery_u"]
    assert curve25519.x25519_base(curve25519.ed25519_secret_scalar(seed)).hex() == v["user_montgomery_u"]
    keys = server.session_keys(user_public)
    assert {k: getattr(keys, k).hex() for k in v["session_keys"]} == v["session_keys"]
    assert K.user_hint(keys, v["inputs"]["epoch"]).hex() == v["hint"]
    assert server.line() == v["server_public_line"]


@pytest.mark.parametrize("name", sorted(PAIR_VECTORS))
def test_pair_vector_seal_and_open(name: str) -> None:
    from dynknock import curve25519
    from dynknock.auth.serverkey import ServerKey

    v = PAIR_VECTORS[name]
    inputs = v["inputs"]
    seed, server = bytes.fromhex(inputs["user_seed"]), ServerKey(bytes.fromhex(inputs["server_secret"]))
    user_public = curve25519.ed25519_public_key(seed)
    keys = server.session_keys(user_public)
    packet = bytes.fromhex(v["packet"])
    kind = PacketType[v["type"]]
    address = _server(v)
    message = MV.message_from_json(v["type"], inputs["message"])
    sign = (lambda m: curve25519.ed25519_sign(seed, m)) if kind is PacketType.P1 else None
    assert proto.seal_pair(keys, message, bytes.fromhex(inputs["hint"]), bytes.fromhex(inputs["nonce"]),
                           server.public, address, sign) == packet
    assert len(packet) == v["packet_len"] == proto.PAIR_PACKET_LEN[kind]
    assert packet[1] == kind | (proto.BOUND_FLAG if v["bound"] else 0)
    header = proto.parse_header(packet, ALL_TYPES, versions=proto.ALL_VERSIONS)
    assert header == proto.Header(3, kind, bytes.fromhex(inputs["hint"]), bytes.fromhex(inputs["nonce"]), v["bound"])
    opened = proto.open_packet(keys, header, packet, address)
    if kind is PacketType.P1:
        assert isinstance(opened, proto.P1) and proto.replace_signature(opened, b"") == message
        signed = proto.signed_part(header, address, server.public, opened)
        assert signed.hex() == v["derived"]["signed_message"] and opened.signature.hex() == v["derived"]["signature"]
        assert server.verify(user_public, signed, opened.signature)  # pycryptodome, the server's verifier
        assert not server.verify(user_public, signed[:-1] + bytes([signed[-1] ^ 1]), opened.signature)
    else:
        assert opened == message
    # The versions before it do not read it, and a bound packet is checked against its address.
    assert isinstance(proto.parse_header(packet, ALL_TYPES), proto.Reject)
    if v["bound"]:
        elsewhere = ipaddress.ip_address("198.18.0.1")
        assert proto.open_packet(keys, header, packet, elsewhere) == proto.Reject(RejectReason.BAD_TAG)


@pytest.mark.parametrize("name", sorted(PAIR_VECTORS))
def test_every_bit_flip_of_a_pair_vector_is_rejected(name: str) -> None:
    from dynknock import curve25519
    from dynknock.auth.serverkey import ServerKey

    v = PAIR_VECTORS[name]
    server = ServerKey(bytes.fromhex(v["inputs"]["server_secret"]))
    keys = server.session_keys(curve25519.ed25519_public_key(bytes.fromhex(v["inputs"]["user_seed"])))
    packet = bytes.fromhex(v["packet"])
    for index in range(len(packet)):
        for bit in range(8):
            mutated = bytearray(packet)
            mutated[index] ^= 1 << bit
            header = proto.parse_header(bytes(mutated), ALL_TYPES, versions=proto.ALL_VERSIONS)
            if isinstance(header, proto.Header):
                header_or_message: object = proto.open_packet(keys, header, bytes(mutated), _server(v))
            else:
                header_or_message = header
            assert isinstance(header_or_message, Reject), (index, bit)


def test_a_v3_p1_must_be_signed_and_a_v1_p1_must_not() -> None:
    from dynknock import curve25519

    p1 = proto.P1(1, bytes(16), None, "ssh", (proto.Knock(1, 1), proto.Knock(2, 2), proto.Knock(3, 3)))
    with pytest.raises(ValueError, match="signed"):
        proto.seal_pair(KEYS, p1, bytes(8), NONCE, bytes(32))
    signed = proto.replace_signature(p1, curve25519.ed25519_sign(bytes(32), b"x"))
    with pytest.raises(ValueError, match="seal_pair"):
        proto.seal(KEYS, signed, bytes(8), NONCE)
