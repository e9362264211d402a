"""Per-stage microbenchmarks: one core, no network (real nft runs in bench/labworker.py).

Used by bench/run.py; each function returns rows (name, count, seconds) or a dict,
measuring the code the stages run (capture/core.py, gate/core.py, dynknock/bus.py)
on inputs made beforehand, so only the work itself is timed.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from multiprocessing import get_context
from typing import Any

import dpkt
import zmq
from figures import timed
from labworker import eth_ipv4, udp

from dynknock import bus
from dynknock import protocol as proto
from dynknock.capture import core as capture_core
from dynknock.gate import core as gate_core
from dynknock.protocol import CONTROL_PORT

SERVER = "198.18.0.1"
CLIENT = "198.18.0.2"

Row = tuple[str, int, float]


# --- capture -----------------------------------------------------------------------------


def _frame(transport: Any) -> bytes:
    """The client's IPv4 packet to the server around a dpkt segment, in an Ethernet frame."""
    return eth_ipv4(b"\x02" * 6, b"\x04" * 6, socket.inet_aton(CLIENT), socket.inet_aton(SERVER), transport, ident=1)


def capture_frames(count: int) -> dict[str, list[bytes]]:
    p1 = proto.PACKET_LEN[proto.PacketType.P1]
    frames: dict[str, list[bytes]] = {"P1-size datagram (passes)": [], "knock SYN (passes)": [],
                                      "datagram of a wrong size (dropped)": []}
    for i in range(count):
        payload = bytes([1, 1]) + os.urandom(p1 - 2)
        frames["P1-size datagram (passes)"].append(
            _frame(udp(40000 + i % 1000, CONTROL_PORT, payload)))
        mss = b"\x02\x04\x05\xb4"  # the knock SYN's one option, as client/syn.py sends it
        frames["knock SYN (passes)"].append(_frame(dpkt.tcp.TCP(
            sport=40000 + i % 1000, dport=1024 + i % 60000, seq=i, off=5 + len(mss) // 4, flags=dpkt.tcp.TH_SYN,
            win=64240, opts=mss)))
        frames["datagram of a wrong size (dropped)"].append(
            _frame(udp(5000, CONTROL_PORT, os.urandom(77))))
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
        rows.append((f"parse_frame: {name}", *timed(
            batch.copy,  # this phase's frames on every pass (a lambda would see the loop's last)
            lambda f: capture_core.parse_frame(capture_core.DLT_EN10MB, f, addresses, CONTROL_PORT), share)))
    rows.append(("parse_frame + bus.encode (capture's whole per-packet work, P1 size)", *timed(
        lambda: frames["P1-size datagram (passes)"],
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


def gate_core_ops(seconds: float) -> list[Row]:
    settings = gate_core.GateSettings(table="dynknock", door_port_low=40000, door_port_high=49999, window_seconds=30,
                                      stealth=True)
    now = int(time.time() * 1000)
    commands = [bus.DoorOpen(secrets.token_hex(8), "u", f"198.19.{i // 250}.{i % 250 + 1}", 40000 + i % 10000,
                             "127.0.0.1", 22, now + 20_000, True) for i in range(2000)]

    def open_text(command: bus.DoorOpen) -> str:
        element, timeout = gate_core.validate_open(settings, command, now)
        return gate_core.add_element(settings, element, timeout)

    return [("gate core: validate_open + add_element text", *timed(lambda: commands, open_text, seconds))]


# --- bus ------------------------------------------------------------------------------------


def _sample_messages() -> list[bus.Message]:
    p1 = proto.PACKET_LEN[proto.PacketType.P1]
    return [bus.Datagram(CLIENT, 40000 + i, SERVER, os.urandom(p1)) if i % 2 == 0 else
            bus.Syn(CLIENT, 1024 + i, i * 7919) for i in range(2000)]


def bus_codec(seconds: float) -> list[Row]:
    messages = _sample_messages()
    frames = [bus.encode(m) for m in messages]
    half = seconds / 2
    return [("bus.encode (Datagram/Syn)", *timed(lambda: messages, bus.encode, half)),
            ("bus.decode (Datagram/Syn)", *timed(lambda: frames, bus.decode, half))]


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

