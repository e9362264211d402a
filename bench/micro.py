"""Per-stage microbenchmarks: one core, no network (real nft runs in bench/labworker.py).

Used by bench/run.py; each function returns rows (name, count, seconds) or a dict,
measuring the code the stages run (capture/core.py, gate/core.py, dynknock/bus.py)
on inputs made beforehand, so only the work itself is timed.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from multiprocessing import get_context
from typing import Any

import zmq

from dynknock import bus
from dynknock import protocol as proto
from dynknock.capture import core as capture_core
from dynknock.client.syn import internet_checksum
from dynknock.gate import core as gate_core

SERVER = "198.18.0.1"
CLIENT = "198.18.0.2"
CONTROL_PORT = 62201

Row = tuple[str, int, float]


def _repeat(items: list[Any], work: Callable[[Any], object], seconds: float) -> tuple[int, float]:
    """Apply `work` to `items` in passes until `seconds` of work have been spent."""
    done, spent = 0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        for item in items:
            work(item)
        spent += time.perf_counter() - start
        done += len(items)
    return done, spent


# --- capture -----------------------------------------------------------------------------


def _eth_ipv4(src: str, dst: str, proto_num: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto_num, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + header + payload


def capture_frames(count: int) -> dict[str, list[bytes]]:
    p1 = proto.PACKET_LEN[proto.PacketType.P1]
    frames: dict[str, list[bytes]] = {"P1-size datagram (passes)": [], "knock SYN (passes)": [],
                                      "datagram of a wrong size (dropped)": []}
    for i in range(count):
        payload = bytes([1, 1]) + os.urandom(p1 - 2)
        frames["P1-size datagram (passes)"].append(
            _eth_ipv4(CLIENT, SERVER, 17, struct.pack("!HHHH", 40000 + i % 1000, CONTROL_PORT, 8 + p1, 0) + payload))
        tcp = struct.pack("!HHIIBBHHH", 40000 + i % 1000, 1024 + i % 60000, i, 0, 6 << 4, 0x02, 64240, 0, 0)
        frames["knock SYN (passes)"].append(_eth_ipv4(CLIENT, SERVER, 6, tcp + b"\x02\x04\x05\xb4"))
        junk = os.urandom(77)
        frames["datagram of a wrong size (dropped)"].append(
            _eth_ipv4(CLIENT, SERVER, 17, struct.pack("!HHHH", 5000, CONTROL_PORT, 8 + len(junk), 0) + junk))
    return frames


def capture_parse(seconds: float) -> list[Row]:
    frames = capture_frames(2000)
    addresses = frozenset({SERVER, "2001:db8:d::1"})
    rows: list[Row] = []
    share = seconds / len(frames)
    for name, batch in frames.items():
        first = capture_core.parse_frame(capture_core.DLT_EN10MB, batch[0], addresses, CONTROL_PORT)
        if "passes" in name:
            assert not isinstance(first, str), (name, first)
        rows.append((f"parse_frame: {name}", *_repeat(
            batch, lambda f: capture_core.parse_frame(capture_core.DLT_EN10MB, f, addresses, CONTROL_PORT), share)))
    rows.append(("parse_frame + bus.encode (capture's whole per-packet work, P1 size)", *_repeat(
        frames["P1-size datagram (passes)"],
        lambda f: bus.encode(capture_core.parse_frame(capture_core.DLT_EN10MB, f, addresses, CONTROL_PORT)),  # type: ignore[arg-type]
        share)))
    return rows


def capture_filter_compile(pair_counts: tuple[int, ...] = (0, 3, 30, 200, 201)) -> list[tuple[int, int, float]]:
    """build_filter + BPF compile (what capture does on every knock filter change): (pairs, length, ms)."""
    import pcap

    out = []
    for pairs in pair_counts:
        wanted = [(f"198.19.{i // 250}.{i % 250 + 1}", 1024 + i) for i in range(pairs)]
        runs = []
        for _ in range(5 if pairs > 100 else 20):
            start = time.perf_counter()
            text = capture_core.build_filter((SERVER, "2001:db8:d::1"), CONTROL_PORT, wanted)
            pcap.bpf(text.encode(), capture_core.DLT_EN10MB)
            runs.append(time.perf_counter() - start)
        runs.sort()
        out.append((pairs, len(text), runs[len(runs) // 2] * 1000))
    return out


# --- gate ------------------------------------------------------------------------------------


def _gate_settings(table: str = "dynknock") -> gate_core.GateSettings:
    return gate_core.GateSettings(table=table, door_port_low=40000, door_port_high=49999, window_seconds=30,
                                  control_port=CONTROL_PORT, stealth=True)


def gate_core_ops(seconds: float) -> list[Row]:
    settings = _gate_settings()
    now = int(time.time() * 1000)
    commands = [bus.DoorOpen(secrets.token_hex(8), "u", f"198.19.{i // 250}.{i % 250 + 1}", 40000 + i % 10000,
                             "127.0.0.1", 22, now + 20_000, True) for i in range(2000)]

    def open_text(command: bus.DoorOpen) -> str:
        element, timeout = gate_core.validate_open(settings, command, now)
        return gate_core.add_element(settings, element, timeout)

    return [("gate core: validate_open + add_element text", *_repeat(commands, open_text, seconds))]


# --- bus ------------------------------------------------------------------------------------


def _sample_messages() -> list[bus.Message]:
    p1 = proto.PACKET_LEN[proto.PacketType.P1]
    return [bus.Datagram(CLIENT, 40000 + i, SERVER, os.urandom(p1)) if i % 2 == 0 else
            bus.Syn(CLIENT, 1024 + i, i * 7919) for i in range(2000)]


def bus_codec(seconds: float) -> list[Row]:
    messages = _sample_messages()
    frames = [bus.encode(m) for m in messages]
    half = seconds / 2
    return [("bus.encode (Datagram/Syn)", *_repeat(messages, bus.encode, half)),
            ("bus.decode (Datagram/Syn)", *_repeat(frames, bus.decode, half))]


def _puller(endpoint: str, count: int, ready: Any, result: Any) -> None:
    context: zmq.Context[Any] = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 50_000)
    pull.bind(endpoint)
    ready.set()
    got = 0
    start = 0.0
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    while got < count:
        if not poller.poll(5000):
            break
        bus.decode(pull.recv())
        if got == 0:
            start = time.perf_counter()
        got += 1
    result.put((got, time.perf_counter() - start))
    context.destroy(0)


def bus_ipc(count: int) -> tuple[int, float]:
    """Capture -> auth as in the stack: encode + PUSH in one process, PULL + decode in another,
    over an ipc socket. Returns (messages received, seconds from the first to the last)."""
    messages = _sample_messages()
    ctx = get_context("fork")
    with tempfile.TemporaryDirectory(prefix="dkbench-ipc-") as tmp:
        endpoint = f"ipc://{tmp}/packets.sock"
        ready, result = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_puller, args=(endpoint, count, ready, result), daemon=True)
        child.start()
        try:
            ready.wait(10)
            context: zmq.Context[Any] = zmq.Context()
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 50_000)
            push.setsockopt(zmq.LINGER, 2000)
            push.connect(endpoint)
            time.sleep(0.2)
            n = len(messages)
            for i in range(count):
                push.send(bus.encode(messages[i % n]))
            got, seconds = result.get(timeout=60)
            context.destroy(2000)
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
    return got, seconds

