"""The bus catalogue: one codec, every message round-trips, and garbage is only ever BadMessage.

A stage must never die of a frame, so `decode` is held to its contract: for any
bytes at all it returns a message of the catalogue or raises BadMessage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import bus
from dynknock.bus import (
    BUS_VERSION,
    BadMessage,
    Datagram,
    DoorClose,
    DoorOpen,
    DoorResult,
    Endpoints,
    Event,
    KnockFilter,
    Reply,
    RuntimeDirError,
    Syn,
)
from dynknock.topics import ALIVE

ALL_CLASSES = (Datagram, Syn, KnockFilter, DoorOpen, DoorClose, DoorResult, Reply, Event)
SAMPLES: dict[type[Any], Any] = {
    Datagram: Datagram("203.0.113.7", 40000, "198.18.0.1", b"\x01\x01" + bytes(128)),
    Syn: Syn("2001:db8::7", 15075, 0x54841860),
    KnockFilter: KnockFilter([["203.0.113.7", 15075], ["2001:db8::7", 4174]], 7),
    DoorOpen: DoorOpen("00ff", "alice", "203.0.113.7", 40001, "127.0.0.1", 22, 1_700_000_030_000, True),
    DoorClose: DoorClose("00ff", "203.0.113.7", 40001),
    DoorResult: DoorResult("00ff", "gate", False, "nft failed"),
    Reply: Reply("198.18.0.11", "203.0.113.7", 40000, b"\x01\x03" + bytes(96)),
    Event: Event("auth.request.received", "auth", 1_700_000_000.25, {"user": "alice", "client": "203.0.113.7"}),
}


def body_of(message: Any) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(bus.encode(message), raw=False)
    return body


def pack(body: Any) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_sample_round_trip(cls: type[Any]) -> None:
    message = SAMPLES[cls]
    frame = bus.encode(message)
    assert bus.decode(frame) == message
    assert type(bus.decode(frame)) is cls
    assert bus.decode_as(frame, cls) == message


def test_catalogue_is_complete() -> None:
    assert set(SAMPLES) == set(ALL_CLASSES)
    assert len({cls.KIND for cls in ALL_CLASSES}) == len(ALL_CLASSES)


def test_wire_body_is_a_versioned_map_of_named_fields() -> None:
    assert body_of(SAMPLES[Syn]) == {"v": BUS_VERSION, "k": "syn", "source": "2001:db8::7", "port": 15075,
                                     "isn": 0x54841860, "gateway": ""}
    # bytes travel as msgpack bin, not str
    raw = msgpack.unpackb(bus.encode(SAMPLES[Datagram]), raw=True)
    assert raw[b"payload"] == SAMPLES[Datagram].payload and raw[b"source"] == b"203.0.113.7"


def test_encoding_is_deterministic() -> None:
    for message in SAMPLES.values():
        assert bus.encode(message) == bus.encode(dataclasses.replace(message))


def test_optional_fields_may_be_missing() -> None:
    result = body_of(SAMPLES[DoorResult])
    del result["detail"]
    assert bus.decode(pack(result)) == DoorResult("00ff", "gate", False, "")
    event_body = body_of(SAMPLES[Event])
    del event_body["fields"]
    assert bus.decode(pack(event_body)) == Event("auth.request.received", "auth", 1_700_000_000.25, {})


def test_gateway_is_optional_so_a_frame_of_an_older_capture_reads_as_the_local_gateway() -> None:
    for message in (SAMPLES[Datagram], SAMPLES[Syn]):
        body = body_of(dataclasses.replace(message, gateway="gw-b"))
        assert body["gateway"] == "gw-b"
        assert bus.decode(pack(body)) == dataclasses.replace(message, gateway="gw-b")
        del body["gateway"]
        assert bus.decode(pack(body)) == message and message.gateway == ""


def test_unknown_extra_keys_are_ignored() -> None:
    body = body_of(SAMPLES[Syn])
    body["future"] = [1, 2, 3]
    assert bus.decode(pack(body)) == SAMPLES[Syn]


def test_float_field_accepts_an_integer_time() -> None:
    body = body_of(SAMPLES[Event])
    body["time"] = 1_700_000_000
    decoded = bus.decode_as(pack(body), Event)
    assert decoded.time == 1_700_000_000


# Strategies: values msgpack carries faithfully (lists, not tuples; no NaN, which is not equal to itself).
ints = st.integers(-(2**63), 2**64 - 1)
texts = st.text(max_size=50)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts, st.binary(max_size=50))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(texts, inner, max_size=4)), max_leaves=12)
STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Datagram: st.builds(Datagram, texts, ints, texts, st.binary(max_size=300)),
    Syn: st.builds(Syn, texts, ints, ints),
    KnockFilter: st.builds(KnockFilter, st.lists(st.lists(values, max_size=3), max_size=20), ints),
    DoorOpen: st.builds(DoorOpen, texts, texts, texts, ints, texts, ints, ints, st.booleans()),
    DoorClose: st.builds(DoorClose, texts, texts, ints),
    DoorResult: st.builds(DoorResult, texts, texts, st.booleans(), texts),
    Reply: st.builds(Reply, texts, texts, ints, st.binary(max_size=300)),
    Event: st.builds(Event, texts, texts, st.floats(allow_nan=False), st.dictionaries(texts, values, max_size=8)),
}


@settings(max_examples=300)
@given(message=st.one_of(*STRATEGIES.values()))
def test_every_message_round_trips(message: Any) -> None:
    frame = bus.encode(message)
    decoded = bus.decode(frame)
    assert decoded == message
    assert type(decoded) is type(message)
    assert bus.decode_as(frame, type(message)) == message


@given(t=st.floats(allow_nan=True, allow_infinity=True))
def test_event_time_any_float(t: float) -> None:
    decoded = bus.decode_as(bus.encode(Event("x", "y", t)), Event)
    assert decoded.time == t or (math.isnan(t) and math.isnan(decoded.time))


# --- decode refuses, and only with BadMessage ----------------------------------------------------------


@settings(max_examples=3000)
@given(frame=st.binary(max_size=200))
def test_random_bytes_give_only_bad_message(frame: bytes) -> None:
    try:
        message = bus.decode(frame)
    except BadMessage:
        return
    assert isinstance(message, ALL_CLASSES)


@settings(max_examples=1000)
@given(body=st.dictionaries(st.sampled_from(["v", "k", "source", "port", "isn", "payload", "fields", "time",
                                             "topic", "stage", "ok", "door_id", "pairs", "generation"]),
                            st.one_of(values, st.sampled_from(list(bus._CATALOGUE)), st.just(BUS_VERSION)),
                            max_size=10))
def test_random_maps_give_only_bad_message(body: dict[str, Any]) -> None:
    try:
        message = bus.decode(pack(body))
    except BadMessage:
        return
    assert isinstance(message, ALL_CLASSES)
    assert body["v"] == BUS_VERSION and body["k"] == message.KIND


@settings(max_examples=1000)
@given(message=st.one_of(*STRATEGIES.values()), data=st.data())
def test_mutated_frames_give_only_bad_message_or_a_message(message: Any, data: st.DataObject) -> None:
    frame = bytearray(bus.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(frame) - 1))
        frame[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    try:
        decoded = bus.decode(bytes(frame[:cut]))
    except BadMessage:
        return
    assert isinstance(decoded, ALL_CLASSES)


@pytest.mark.parametrize("body", [[1, "syn"], "syn", 1, None, True, b"\x01", 1.5, []], ids=repr)
def test_non_map_is_refused(body: Any) -> None:
    with pytest.raises(BadMessage, match="not a map"):
        bus.decode(pack(body))


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x81", b"\x92\x01", pack({"v": 1}) + b"\x00",
                                   b"\x81\x91\x01\x02"], ids=repr)
def test_not_msgpack_is_refused(frame: bytes) -> None:
    with pytest.raises(BadMessage, match="not msgpack"):
        bus.decode(frame)


def test_oversized_fields_are_refused() -> None:
    body = body_of(SAMPLES[Datagram])
    body["payload"] = bytes(65537)
    with pytest.raises(BadMessage, match="not msgpack"):
        bus.decode(pack(body))


@pytest.mark.parametrize("version", [0, 2, -1, "1", 1.0, 1.5, None, [1], True, b"\x01"], ids=repr)
def test_wrong_version_is_refused(version: Any) -> None:
    body = body_of(SAMPLES[Syn])
    body["v"] = version
    with pytest.raises(BadMessage, match="unsupported version"):
        bus.decode(pack(body))


def test_missing_version_is_refused() -> None:
    body = body_of(SAMPLES[Syn])
    del body["v"]
    with pytest.raises(BadMessage, match="unsupported version"):
        bus.decode(pack(body))


@pytest.mark.parametrize("kind", ["", "SYN", "pickle", "door-open", None, 1, b"syn", ["syn"]], ids=repr)
def test_unknown_kind_is_refused(kind: Any) -> None:
    body = body_of(SAMPLES[Syn])
    body["k"] = kind
    with pytest.raises(BadMessage, match="unknown kind"):
        bus.decode(pack(body))


def test_missing_kind_is_refused() -> None:
    body = body_of(SAMPLES[Syn])
    del body["k"]
    with pytest.raises(BadMessage, match="unknown kind"):
        bus.decode(pack(body))


def _required(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


REQUIRED = [(cls, name) for cls in ALL_CLASSES for name in _required(cls)]


@pytest.mark.parametrize("cls,name", REQUIRED, ids=lambda v: getattr(v, "__name__", v))
def test_missing_field_is_refused(cls: type[Any], name: str) -> None:
    body = body_of(SAMPLES[cls])
    del body[name]
    with pytest.raises(BadMessage, match=f"{cls.KIND}: missing {name}"):
        bus.decode(pack(body))


WRONG_VALUES: dict[str, list[Any]] = {
    "str": [1, b"bytes", None, ["x"], 1.0, True],
    "int": ["1", 1.0, None, b"\x01", [1], True, False],
    "bytes": ["text", 1, None, [1]],
    "bool": [1, 0, "true", None, 1.0],
    "float": ["1.0", None, True, b"1"],
    "list[list[Any]]": [{"a": 1}, "x", 1, None],
    "dict[str, Any]": [["x"], "x", 1, None],
}
WRONG_TYPES = [(cls, f.name, value) for cls in ALL_CLASSES for f in dataclasses.fields(cls)
               for value in WRONG_VALUES[str(f.type)]]


@pytest.mark.parametrize("cls,name,value", WRONG_TYPES, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_wrong_field_type_is_refused(cls: type[Any], name: str, value: Any) -> None:
    body = body_of(SAMPLES[cls])
    body[name] = value
    with pytest.raises(BadMessage, match=f"{cls.KIND}: {name} has type"):
        bus.decode(pack(body))


@pytest.mark.parametrize("cls,name", [(Datagram, "source_port"), (Syn, "port"), (Syn, "isn"),
                                      (KnockFilter, "generation"), (DoorOpen, "port"), (DoorOpen, "target_port"),
                                      (DoorOpen, "expires_at_ms"), (DoorClose, "port"),
                                      (Reply, "port")],
                         ids=lambda v: getattr(v, "__name__", v))
def test_bool_where_int_expected_is_refused(cls: type[Any], name: str) -> None:
    for value in (True, False):
        body = body_of(SAMPLES[cls])
        body[name] = value
        with pytest.raises(BadMessage, match="has type bool"):
            bus.decode(pack(body))


def test_map_with_non_string_keys_is_refused() -> None:
    frame = msgpack.packb({1: 2, "v": 1, "k": "syn"}, use_bin_type=True)
    with pytest.raises(BadMessage, match="not msgpack"):
        bus.decode(frame)


@pytest.mark.parametrize("fields", [{b"user": "x"}, {"user": "x", b"client": "y"}], ids=repr)
def test_event_fields_with_non_string_keys_are_refused(fields: dict[Any, Any]) -> None:
    body = body_of(SAMPLES[Event])
    body["fields"] = fields
    with pytest.raises(BadMessage, match="event: fields has a key that is not a string"):
        bus.decode(pack(body))


def test_event_fields_may_nest_anything_msgpack_carries() -> None:
    message = Event("x.y", "auth", 1.0, {"a": {"b": [1, b"\x00", None]}, "c": [[True]]})
    assert bus.decode(bus.encode(message)) == message


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_decode_as_wrong_kind(cls: type[Any]) -> None:
    other = next(c for c in ALL_CLASSES if c is not cls)
    frame = bus.encode(SAMPLES[other])
    with pytest.raises(BadMessage, match=f"expected {cls.__name__}, got {other.__name__}"):
        bus.decode_as(frame, cls)


def test_decode_as_passes_bad_frames_on_as_bad_message() -> None:
    with pytest.raises(BadMessage):
        bus.decode_as(b"\xc1", Syn)


# --- event() -------------------------------------------------------------------------------------


def test_event_frames() -> None:
    before = time.time()
    topic, body = bus.event("gate.rule.added", "gate", port=40001, client="203.0.113.7", timeout_ms=30000)
    after = time.time()
    assert topic == b"gate.rule.added"
    decoded = bus.decode_as(body, Event)
    assert decoded.topic == "gate.rule.added" and decoded.stage == "gate"
    assert decoded.fields == {"port": 40001, "client": "203.0.113.7", "timeout_ms": 30000}
    assert before <= decoded.time <= after


def test_event_topic_frame_is_a_prefix_for_subscriptions() -> None:
    topic, _ = bus.event("auth.request.rejected", "auth")
    assert topic.startswith(b"auth.") and topic.startswith(b"auth.request.")
    assert bus.decode_as(bus.event("auth.started", "auth")[1], Event).fields == {}


def test_an_event_may_carry_fields_named_like_the_event_itself() -> None:
    """A field called stage or topic is the event's own (auth's auth.door.used names the stage that saw the
    connection): it must not clash with the publisher's arguments (it crashed auth once)."""
    _, body = bus.event("auth.door.used", "auth", stage="gate", topic="x")
    decoded = bus.decode_as(body, Event)
    assert (decoded.stage, decoded.fields) == ("auth", {"stage": "gate", "topic": "x"})


def test_event_with_a_non_ascii_topic() -> None:
    topic, body = bus.event("relay.é", "relay")
    assert topic == "relay.é".encode()
    assert bus.decode_as(body, Event).topic == "relay.é"


# --- endpoints -------------------------------------------------------------------------------------


def test_endpoints_in_directory() -> None:
    endpoints = Endpoints.in_directory(Path("/run/dynknock"))
    assert endpoints == Endpoints(packets="ipc:///run/dynknock/packets.sock",
                                  knock_filter="ipc:///run/dynknock/filter.sock",
                                  gate="ipc:///run/dynknock/gate.sock",
                                  relay="ipc:///run/dynknock/relay.sock",
                                  events="ipc:///run/dynknock/events.sock",
                                  tap="ipc:///run/dynknock/tap.sock")


def test_endpoints_are_distinct(tmp_path: Path) -> None:
    endpoints = Endpoints.in_directory(tmp_path)
    addresses = [getattr(endpoints, f.name) for f in dataclasses.fields(Endpoints)]
    assert len(set(addresses)) == len(addresses)
    assert all(a.startswith(f"ipc://{tmp_path}/") and a.endswith(".sock") for a in addresses)


# --- ensure_runtime_dir ----------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """ensure_runtime_dir sets the process umask; put the test runner's back afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ensure_runtime_dir_creates_0750(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "a" / "run"
    bus.ensure_runtime_dir(path)
    assert path.is_dir()
    assert _mode(path) == 0o750
    # and sockets made afterwards are not for others
    current = os.umask(0o022)
    assert current == 0o007


def test_ensure_runtime_dir_accepts_an_existing_private_dir(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(0o770)
    bus.ensure_runtime_dir(path, "/etc/dynknock/dynknock.toml")
    assert _mode(path) == 0o770  # left as it is


@pytest.mark.parametrize("mode", [0o777, 0o751, 0o754, 0o702, 0o755])
def test_ensure_runtime_dir_refuses_a_dir_others_can_reach(tmp_path: Path, umask_022: None, mode: int) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(RuntimeDirError) as raised:
        bus.ensure_runtime_dir(path, "/etc/dynknock/dynknock.toml")
    message = str(raised.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert "bus.runtime_dir" in message and "/etc/dynknock/dynknock.toml" in message
    assert "\n" not in message
    assert os.umask(0o022) == 0o022  # refused before touching the umask


def test_ensure_runtime_dir_without_config_file_names_only_the_path(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run"
    path.mkdir()
    path.chmod(0o777)
    with pytest.raises(RuntimeDirError) as raised:
        bus.ensure_runtime_dir(path)
    assert str(path) in str(raised.value)
    assert "bus.runtime_dir" not in str(raised.value)


def test_ensure_runtime_dir_refuses_a_file_in_the_way(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run"
    path.write_text("not a directory")
    with pytest.raises(RuntimeDirError) as raised:
        bus.ensure_runtime_dir(path, "/etc/dynknock/dynknock.toml")
    assert str(path) in str(raised.value) and "bus.runtime_dir" in str(raised.value)


def test_ensure_runtime_dir_refuses_a_dir_owned_by_someone_else(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "run"
    path.mkdir(mode=0o750)
    if os.geteuid() == 0:
        os.chown(path, 12345, -1)
        with pytest.raises(RuntimeDirError, match="owned by uid 12345") as raised:
            bus.ensure_runtime_dir(path, "cfg.toml")
        assert str(path) in str(raised.value) and "bus.runtime_dir in cfg.toml" in str(raised.value)
    else:
        # Not root: the directory is ours, so the same call is accepted; the check compares uids.
        bus.ensure_runtime_dir(path, "cfg.toml")
        assert path.stat().st_uid == os.geteuid()


def test_the_heartbeat_stages_are_those_of_the_alive_topics() -> None:
    assert set(bus.STAGES) == set(ALIVE)
