"""client/wire.py, the client's lean codec, against dynknock/protocol.py, the codec of record.

1. tests/vectors/*.json byte for byte: every P1 and P2 sealed, every P3 opened, in all three versions;
2. hypothesis: random requests sealed as protocol.py seals them, random answers (and altered
   packets) opened as protocol.py opens them, with the same reason when not;
3. the two agree on what a packet is: constants, enumerations, record fields.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import curve25519
from dynknock import keys as K
from dynknock import protocol as proto
from dynknock.client import crypto as C
from dynknock.client import wire
from tests.vectors import make_vectors as MV

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors"
VECTORS = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTOR_DIR.glob("*.json"))}
PACKETS = {name: v for name, v in VECTORS.items() if "packet" in v}
SERVER_PUBLIC = bytes.fromhex(VECTORS["v3_keys.json"]["server_public"])


def to_wire(message: proto.P1 | proto.P2) -> wire.P1 | wire.P2:
    """The client's record of a request protocol.py decoded."""
    if isinstance(message, proto.P2):
        return wire.P2(message.timestamp_ms, message.request_id)
    return wire.P1(message.timestamp_ms, message.request_id, message.address, message.service, message.knocks,
                   message.knock_kind)


def same_answer(ours: wire.P3, theirs: proto.P3) -> bool:
    return tuple(ours) == tuple(getattr(theirs, field.name) for field in dataclasses.fields(proto.P3))


def _keys(v: dict[str, Any]) -> K.SessionKeys:
    return K.SessionKeys(**{name: bytes.fromhex(value) for name, value in v["derived"]["session_keys"].items()})


def _server(v: dict[str, Any]) -> proto.IPAddress | None:
    bound = v["inputs"].get("server_address")
    return None if bound is None else ipaddress.ip_address(bound["address"])


# --- 1. the vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_packet_vectors(name: str) -> None:
    v = PACKETS[name]
    inputs, keys, server, packet = v["inputs"], _keys(v), _server(v), bytes.fromhex(v["packet"])
    hint, nonce = bytes.fromhex(inputs["hint"]), bytes.fromhex(inputs["nonce"])
    message = MV.message_from_json(v["type"], inputs["message"])
    if v["type"] == "P3":
        assert isinstance(message, proto.P3)
        header = wire.parse_answer_header(packet, (v["version"],))
        assert isinstance(header, wire.Header) and (header.hint, header.nonce) == (hint, nonce)
        opened = wire.open_answer(keys, header, packet, server)
        assert isinstance(opened, wire.P3) and same_answer(opened, message)
        if server is not None:  # bound: the tag fails at any other address, and without one
            assert wire.open_answer(keys, header, packet, ipaddress.ip_address("198.18.0.1")) == "bad_tag"
            assert wire.open_answer(keys, header, packet) == "bad_version"
        swapped = K.SessionKeys(keys.hint, keys.server_to_client, keys.client_to_server)
        assert wire.open_answer(swapped, header, packet, server) == "bad_tag"
        return
    assert isinstance(message, proto.P1 | proto.P2)
    request = to_wire(message)
    if v["version"] == wire.PAIR_VERSION:
        assert inputs["server_secret"] == VECTORS["v3_keys.json"]["inputs"]["server_secret"]
        seed = bytes.fromhex(inputs["user_seed"])
        sealed = wire.seal_pair(keys, request, hint, nonce, SERVER_PUBLIC, server,
                                (lambda m: curve25519.ed25519_sign(seed, m)) if v["type"] == "P1" else None)
    else:
        assert keys == C.session_keys(bytes.fromhex(inputs["master_key"]))
        sealed = wire.seal(keys, request, hint, nonce, server)
    assert sealed == packet
    assert wire.parse_answer_header(packet, wire.VERSIONS + (wire.PAIR_VERSION,)) == "bad_type"


# --- 2. random requests and answers ----------------------------------------------------------------

_ids = st.binary(min_size=16, max_size=16)
_ts = st.integers(0, 2**64 - 1)
_addresses = st.none() | st.ip_addresses()
_requests = st.one_of(
    st.builds(proto.P2, _ts, _ids),
    st.builds(lambda ts, rid, address, service, ports, isns, connect: proto.P1(
        ts, rid, address, service,
        (proto.Knock(ports[0], 0 if connect else isns[0]), proto.Knock(ports[1], 0 if connect else isns[1]),
         proto.Knock(ports[2], 0 if connect else isns[2])),
        proto.KnockKind.CONNECT if connect else proto.KnockKind.SYN),
        _ts, _ids, _addresses, st.sampled_from(["ssh", "git", "a-b_9", "x" * 16]),
        st.lists(st.integers(1, 65535), min_size=3, max_size=3, unique=True),
        st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3), st.booleans()),
)
_answers = st.builds(proto.P3, _ts, _ids, st.sampled_from(proto.Status), st.integers(0, 65535),
                     st.integers(0, 65535), _addresses)


@settings(max_examples=100, deadline=None)
@given(master=st.binary(min_size=32, max_size=32), message=_requests, hint=st.binary(min_size=8, max_size=8),
       nonce=st.binary(min_size=24, max_size=24), server=_addresses)
def test_requests_seal_as_the_protocol_seals_them(master: bytes, message: proto.P1 | proto.P2, hint: bytes,
                                                   nonce: bytes, server: proto.IPAddress | None) -> None:
    keys = K.SessionKeys.from_master(master)
    assert wire.seal(keys, to_wire(message), hint, nonce, server) == proto.seal(keys, message, hint, nonce, server)
    server_key = master[::-1]

    def sign(signed: bytes) -> bytes:
        return curve25519.ed25519_sign(master, signed)

    signer = sign if isinstance(message, proto.P1) else None
    assert (wire.seal_pair(keys, to_wire(message), hint, nonce, server_key, server, signer)
            == proto.seal_pair(keys, message, hint, nonce, server_key, server, signer))


@settings(max_examples=100, deadline=None)
@given(master=st.binary(min_size=32, max_size=32), answer=_answers, hint=st.binary(min_size=8, max_size=8),
       nonce=st.binary(min_size=24, max_size=24), bound=st.booleans(), flip=st.integers(0, 10_000))
def test_answers_open_as_the_protocol_opens_them(master: bytes, answer: proto.P3, hint: bytes, nonce: bytes,
                                                 bound: bool, flip: int) -> None:
    keys = K.SessionKeys.from_master(master)
    server = ipaddress.ip_address("198.18.0.11") if bound else None
    packet = proto.seal(keys, answer, hint, nonce, server)
    header = wire.parse_answer_header(packet)
    assert isinstance(header, wire.Header)
    opened = wire.open_answer(keys, header, packet, server)
    assert isinstance(opened, wire.P3) and same_answer(opened, answer)
    altered = bytearray(packet)
    altered[flip % len(packet)] ^= 0x01
    theirs = proto.parse_header(bytes(altered), accept=(proto.PacketType.P3,))
    ours = wire.parse_answer_header(bytes(altered))
    if isinstance(theirs, proto.Reject):
        assert ours == theirs.reason.value
        return
    assert isinstance(ours, wire.Header)
    rejected = proto.open_packet(keys, theirs, bytes(altered), server)
    assert isinstance(rejected, proto.Reject) and wire.open_answer(keys, ours, bytes(altered), server) == \
        rejected.reason.value


@pytest.mark.parametrize(("plain", "reason"), [
    (bytes(47), "bad_size"),
    (bytes(46) + b"\x01\x00", "bad_padding"),
    (bytes(24) + b"\x09" + bytes(23), "bad_field"),  # status 9
    (bytes(29) + b"\x05" + bytes(18), "bad_field"),  # address family 5
    (bytes(29) + b"\x04" + bytes(4) + b"\x01" + bytes(13), "bad_field"),  # IPv4 with bytes after its four
])
def test_a_hostile_key_holders_answer_is_a_reason(plain: bytes, reason: str) -> None:
    assert wire.decode_answer(plain) == reason
    theirs = proto.decode_plaintext(proto.PacketType.P3, plain)
    assert isinstance(theirs, proto.Reject) and theirs.reason.value == reason


def test_sealing_checks_our_own_values() -> None:
    keys = K.SessionKeys.from_master(bytes(32))
    p2 = wire.P2(1, bytes(16))
    for hint, nonce in ((bytes(7), bytes(24)), (bytes(8), bytes(23))):
        with pytest.raises(ValueError):
            wire.seal(keys, p2, hint, nonce)
    with pytest.raises(ValueError, match="request_id"):
        wire.seal(keys, wire.P2(1, bytes(15)), bytes(8), bytes(24))
    knock = wire.Knock(1000, 1)
    with pytest.raises(ValueError, match="distinct"):
        wire.seal(keys, wire.P1(1, bytes(16), None, "ssh", (knock, knock, wire.Knock(2, 2))), bytes(8), bytes(24))
    p1 = wire.P1(1, bytes(16), None, "ssh", (knock, wire.Knock(2, 2), wire.Knock(3, 3)))
    with pytest.raises(ValueError, match="signed"):
        wire.seal_pair(keys, p1, bytes(8), bytes(24), bytes(32))
    with pytest.raises(ValueError, match="ISN"):
        wire.seal(keys, p1._replace(knock_kind=wire.KnockKind.CONNECT), bytes(8), bytes(24))


# --- 3. one protocol -------------------------------------------------------------------------------


def test_the_client_and_the_protocol_agree_on_what_a_packet_is() -> None:
    for name in ("VERSION", "BOUND_VERSION", "VERSIONS", "PAIR_VERSION", "BOUND_FLAG", "SIGNATURE_LEN",
                 "SERVER_KEY_LEN", "P1_SIGNATURE_LABEL", "NONCE_LEN", "TAG_LEN", "KNOCK_COUNT", "REQUEST_ID_LEN",
                 "HEADER_LEN"):
        assert getattr(wire, name) == getattr(proto, name), name
    assert wire.P3_PACKET_LEN == proto.PACKET_LEN[proto.PacketType.P3] == proto.PAIR_PACKET_LEN[proto.PacketType.P3]
    # The knock and the enumerations are the same types (dynknock/fields.py): a client's request goes into
    # a server's P1 as it is, and `answer.status is Status.OPEN` holds whichever module Status came from.
    assert (wire.Knock, wire.PacketType, wire.Status, wire.KnockKind) == (proto.Knock, proto.PacketType,
                                                                          proto.Status, proto.KnockKind)
    for ours_record, theirs_record in ((wire.P2, proto.P2), (wire.P3, proto.P3)):
        assert ours_record._fields == tuple(f.name for f in dataclasses.fields(theirs_record))
    assert wire.P1._fields == tuple(f.name for f in dataclasses.fields(proto.P1))[:-1]  # no signature: sign seals it
