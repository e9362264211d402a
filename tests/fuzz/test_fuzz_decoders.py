"""Fuzzing every decoder that reads bytes an attacker (or a confused stage) chooses.

Decoders and the only outcomes each may have:

    dynknock.protocol.parse_header     Header, or Reject(bad_size | bad_version | bad_type)
    dynknock.protocol.open_packet      P1/P2/P3, or Reject(bad_tag | bad_padding | bad_field)
    dynknock.protocol.decode_plaintext P1/P2/P3, or Reject(bad_size | bad_padding | bad_field)
    dynknock.bus.decode            a catalogue message, or raises BadMessage
    capture.core.parse_frame       Datagram, Syn, or a drop reason (str)

Any other exception is a crash of the stage that called the decoder, i.e. a
remote denial of service. Inputs come from a seed corpus committed under
tests/fuzz/corpus/ (the byte-exact protocol vectors and their obvious mutants,
written by make_corpus.py): every seed runs as an explicit example, and
hypothesis mutates seeds (bit flips, byte writes, inserts, deletes, truncation,
splicing two seeds) or draws fresh bytes, within a fixed budget per decoder.
hypothesis is not coverage-guided; fuzz_atheris.py runs the same harnesses
under atheris (libFuzzer, coverage-guided) for longer campaigns by hand.
"""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from Crypto.Cipher import ChaCha20_Poly1305
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynknock import bus
from dynknock import protocol as proto
from dynknock.capture import core as capture_core
from dynknock.keys import SessionKeys
from dynknock.protocol import PacketType, Reject, RejectReason

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
# The key of every protocol vector (tests/vectors: master key 00 01 ... 1f), so seeds authenticate.
KEYS = SessionKeys.from_master(bytes(range(32)))
# Version 3's (tests/vectors/v3_keys.json): the key-pair user's session keys at the vectors' server.
PAIR_KEYS = SessionKeys(*(bytes.fromhex(v) for v in json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "v3_keys.json").read_text())["session_keys"].values()))
ALL_TYPES = (PacketType.P1, PacketType.P2, PacketType.P3)
LINKTYPES = (capture_core.DLT_EN10MB, capture_core.DLT_RAW, capture_core.DLT_RAW_ALT, capture_core.DLT_LINUX_SLL,
             0, 105)
ADDRESSES = frozenset({"198.18.0.1", "2001:db8:d::1"})
V2_SERVER = ipaddress.ip_address("198.18.0.11")  # the gateway tests/vectors/v2_*.json are bound to
CONTROL_PORT = proto.CONTROL_PORT
HEADER_REASONS = frozenset({RejectReason.BAD_SIZE, RejectReason.BAD_VERSION, RejectReason.BAD_TYPE})
OPEN_REASONS = frozenset({RejectReason.BAD_TAG, RejectReason.BAD_PADDING, RejectReason.BAD_FIELD})
PLAINTEXT_REASONS = frozenset({RejectReason.BAD_SIZE, RejectReason.BAD_PADDING, RejectReason.BAD_FIELD})
FRAME_REASONS = frozenset({"malformed", "fragment", "not_ip", "not_for_us", "wrong_port", "wrong_size", "not_syn",
                           "other_protocol"})
BUS_CLASSES = typing.get_args(bus.Message)  # every message of the catalogue
# A fixed budget for CI (about 10 s for the whole file); raise it for a longer campaign by hand,
# e.g. DYNKNOCK_FUZZ_EXAMPLES=100000.
BUDGET = settings(max_examples=int(os.environ.get("DYNKNOCK_FUZZ_EXAMPLES", "1500")), deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])


def load(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS_DIR / kind).glob("*.bin"))]


CORPUS = {kind: load(kind) for kind in ("packets", "plaintexts", "bus", "frames")}


# --- harnesses: one input (bytes) in, an assertion failure or an unexpected exception out ---------


def fuzz_packet(data: bytes) -> None:
    header = proto.parse_header(data, accept=ALL_TYPES, versions=proto.ALL_VERSIONS)
    if isinstance(header, Reject):
        assert header.reason in HEADER_REASONS, header
        return
    assert len(data) == proto.packet_len(header.version, header.type)
    # A bound packet (v2, or v3 with the flag) is checked against the gateway address of the vectors.
    keys = PAIR_KEYS if header.version == proto.PAIR_VERSION else KEYS
    message = proto.open_packet(keys, header, data, V2_SERVER if header.bound else None)
    if isinstance(message, Reject):
        assert message.reason in OPEN_REASONS, message
        return
    assert isinstance(message, proto.P1 | proto.P2 | proto.P3)


def _kind(selector: int) -> PacketType:
    return ALL_TYPES[selector % 3]


def fuzz_plaintext(data: bytes) -> None:
    if not data:
        return
    kind, plain = _kind(data[0]), data[1:]
    message = proto.decode_plaintext(kind, plain)
    if isinstance(message, Reject):
        assert message.reason in PLAINTEXT_REASONS, message
        return
    # Accepted means canonical: encoding it again gives the very bytes, so no two
    # plaintexts mean the same request (nothing for an attacker to vary unseen).
    assert proto.encode_plaintext(message) == (kind, plain)


def seal_raw(kind: PacketType, plain: bytes, nonce: bytes = bytes(24), hint: bytes = bytes(8)) -> bytes:
    """An authentic packet around any plaintext: what only a (hostile) key holder can send."""
    header = struct.pack("!BB8s24s", proto.VERSION, kind, hint, nonce)
    key = KEYS.server_to_client if kind is PacketType.P3 else KEYS.client_to_server
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(header)
    ciphertext, tag = cipher.encrypt_and_digest(plain)
    return header + ciphertext + tag


def fuzz_sealed_plaintext(data: bytes) -> None:
    """The plaintext decoder reached through the real AEAD, with the length the type demands."""
    if not data:
        return
    kind = _kind(data[0])
    plain = data[1:1 + proto.PLAINTEXT_LEN[kind]].ljust(proto.PLAINTEXT_LEN[kind], b"\0")
    packet = seal_raw(kind, plain)
    header = proto.parse_header(packet, accept=ALL_TYPES)
    assert isinstance(header, proto.Header)
    message = proto.open_packet(KEYS, header, packet)
    if isinstance(message, Reject):
        assert message.reason in PLAINTEXT_REASONS - {RejectReason.BAD_SIZE}, message
        return
    assert proto.encode_plaintext(message) == (kind, plain)


def fuzz_bus(data: bytes) -> None:
    try:
        message = bus.decode(data)
    except bus.BadMessage:
        return
    assert isinstance(message, BUS_CLASSES)
    assert bus.decode(bus.encode(message)) == message


def fuzz_frame(data: bytes) -> None:
    if not data:
        return
    linktype = LINKTYPES[data[0] % len(LINKTYPES)]
    result = capture_core.parse_frame(linktype, data[1:], ADDRESSES, CONTROL_PORT)
    if isinstance(result, str):
        assert result in FRAME_REASONS, result
        return
    assert isinstance(result, bus.Datagram | bus.Syn)
    if isinstance(result, bus.Datagram):
        assert result.destination in ADDRESSES
        assert len(result.payload) in capture_core.CLIENT_SIZES
    assert bus.decode(bus.encode(result)) == result  # what capture forwards, auth can read


# --- inputs ---------------------------------------------------------------------------------------


@st.composite
def mutants(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed, mutated a few times the way byte-level fuzzers do."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 5))):
        operation = draw(st.sampled_from(("flip", "write", "insert", "delete", "truncate", "splice", "repeat")))
        position = draw(st.integers(0, len(data))) if data else 0
        if operation == "flip" and data:
            index = min(position, len(data) - 1)
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif operation == "write" and data:
            data[min(position, len(data) - 1)] = draw(st.sampled_from((0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF,
                                                                        draw(st.integers(0, 255)))))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete" and data:
            del data[position:position + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del data[position:]
        elif operation == "splice":
            other = draw(st.sampled_from(seeds))
            data[position:] = other[draw(st.integers(0, len(other))):]
        elif operation == "repeat" and data:
            data += data[position:position + draw(st.integers(1, 16))]
    return bytes(data)


def inputs(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(mutants(CORPUS[kind]), st.binary(max_size=300))


def with_corpus(kind: str) -> Callable[[Any], Any]:
    """Every seed of the corpus runs first, as an explicit example."""
    def decorate(test: Any) -> Any:
        for seed in CORPUS[kind]:
            test = example(data=seed)(test)
        return test
    return decorate


# --- the fuzz tests ------------------------------------------------------------------------------


def test_the_corpus_reaches_the_deep_paths() -> None:
    """Seeds that authenticate and decode exist, so mutants start past the cheap checks."""
    assert all(CORPUS.values()), {k: len(v) for k, v in CORPUS.items()}
    decoded = []
    for data in CORPUS["packets"]:
        header = proto.parse_header(data, accept=ALL_TYPES, versions=proto.ALL_VERSIONS)
        if isinstance(header, proto.Header):
            keys = PAIR_KEYS if header.version == proto.PAIR_VERSION else KEYS
            message = proto.open_packet(keys, header, data, V2_SERVER if header.bound else None)
            decoded.append(f"v{header.version} {type(message).__name__}")
    assert {f"v{v} {t}" for v in (1, 2) for t in ("P1", "P2", "P3", "Reject")} <= set(decoded), decoded
    assert {"v3 P1", "v3 P2", "v3 Reject"} <= set(decoded), decoded  # the v3 P1 vector is bound elsewhere
    frames = []
    for data in CORPUS["frames"]:
        try:
            frames.append(capture_core.parse_frame(LINKTYPES[data[0] % len(LINKTYPES)], data[1:], ADDRESSES,
                                                   CONTROL_PORT))
        except Exception as exc:  # a crash is test_fuzz_frames' business; here only what the seeds reach
            frames.append(type(exc).__name__)
    assert any(isinstance(f, bus.Datagram) for f in frames) and any(isinstance(f, bus.Syn) for f in frames)
    messages = []
    for data in CORPUS["bus"]:
        try:
            messages.append(type(bus.decode(data)).__name__)
        except bus.BadMessage:
            messages.append("BadMessage")
    assert set(messages) >= {c.__name__ for c in BUS_CLASSES} | {"BadMessage"}


@BUDGET
@with_corpus("packets")
@given(data=inputs("packets"))
def test_fuzz_packets(data: bytes) -> None:
    fuzz_packet(data)


@BUDGET
@with_corpus("plaintexts")
@given(data=inputs("plaintexts"))
def test_fuzz_plaintexts(data: bytes) -> None:
    fuzz_plaintext(data)


@BUDGET
@with_corpus("plaintexts")
@given(data=inputs("plaintexts"))
def test_fuzz_sealed_plaintexts(data: bytes) -> None:
    fuzz_sealed_plaintext(data)


@BUDGET
@with_corpus("bus")
@given(data=inputs("bus"))
def test_fuzz_bus_frames(data: bytes) -> None:
    fuzz_bus(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
FIELD_NAMES = sorted({name for fields in bus._FIELDS.values() for name, _, _ in fields})


@BUDGET
@given(kind=st.sampled_from(sorted(bus._CATALOGUE)), version=st.sampled_from((1, 1, 1, True, 1.0, 2, "1", None)),
       body=st.dictionaries(st.sampled_from(FIELD_NAMES), msgpack_values, max_size=10))
def test_fuzz_bus_structured(kind: str, version: Any, body: dict[str, Any]) -> None:
    """Well-formed msgpack maps with a known kind and fields of any type: the field checks themselves."""
    fuzz_bus(msgpack.packb({"v": version, "k": kind, **body}, use_bin_type=True))


@BUDGET
@with_corpus("frames")
@given(data=inputs("frames"))
def test_fuzz_frames(data: bytes) -> None:
    fuzz_frame(data)
