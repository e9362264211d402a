"""capture/bpf.py's hand-written SYN part: the same verdicts as libpcap's compilation of the exact-pairs
text, whatever the number of pending pairs, and no SYN scan let through past 32 pairs.

Both programs run here in a small classic-BPF interpreter (the kernel's semantics for the
instructions either program uses); test_capture_bpf.py has the kernel itself accept them.
"""

from __future__ import annotations

import ipaddress
import random
import socket

import dpkt
import pytest

from dynknock.capture import bpf, core
from dynknock.capture.core import MAX_FILTER_PAIRS, NOT_VLAN, build_filter
from tests.unit.test_capture_core import (
    CLIENT4,
    CLIENT6,
    CONTROL,
    FILLER,
    FRAMES,
    KNOCK4,
    KNOCK6,
    OTHER_SERVER4,
    PAIRS,
    SERVER4,
    SERVER6,
    STRANGER4,
    ether,
    tcp,
)

SNAP = 256
ACK, SYN = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN


def run(program: list[bpf.Instruction], packet: bytes) -> int:
    """Classic BPF as Linux runs it on a packet socket: an out-of-range load refuses the packet."""
    a = x = 0
    mem = [0] * 16
    pc = 0

    def load(at: int, size: int) -> int | None:
        if at >= 0xFFFFF000:  # an ancillary field: only "VLAN tag present" is used, and these frames have none
            return 0
        if at + size > len(packet):
            return None
        return int.from_bytes(packet[at:at + size], "big")

    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        cls = code & 0x07
        if cls in (0x00, 0x01):  # LD / LDX
            mode, size = code & 0xE0, {0x00: 4, 0x08: 2, 0x10: 1}[code & 0x18]
            if cls == 0x01 and mode == 0xA0:  # ldxb 4*([k]&0xf)
                value = load(k, 1)
                if value is None:
                    return 0
                x = (value & 0x0F) * 4
                continue
            if mode == 0x00:
                value = k
            elif mode == 0x60:
                value = mem[k]
            elif mode == 0x80:
                value = len(packet)
            else:
                loaded = load(k if mode == 0x20 else (x + k) & 0xFFFFFFFF, size)
                if loaded is None:
                    return 0
                value = loaded
            if cls == 0x00:
                a = value
            else:
                x = value
        elif cls == 0x02:
            mem[k] = a
        elif cls == 0x03:
            mem[k] = x
        elif cls == 0x04:  # ALU
            operand = x if code & 0x08 else k
            op = code & 0xF0
            a = {0x00: a + operand, 0x10: a - operand, 0x20: a * operand, 0x40: a | operand, 0x50: a & operand,
                 0x60: a << operand, 0x70: a >> operand, 0x80: -a}[op] & 0xFFFFFFFF
        elif cls == 0x05:  # JMP
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            operand = x if code & 0x08 else k
            taken = {0x10: a == operand, 0x20: a > operand, 0x30: a >= operand, 0x40: bool(a & operand)}[op]
            pc += jt if taken else jf
        elif cls == 0x06:
            return a if code & 0x10 else k
        elif cls == 0x07:
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x


def exact_text(addresses: list[str], pairs: list[tuple[str, int]]) -> str:
    """build_filter's narrow form for any number of pairs (build_filter itself goes generic past 32)."""
    text = build_filter(addresses, CONTROL, pairs[:1]).removesuffix(NOT_VLAN)
    one = f"(src host {pairs[0][0]} and tcp dst port {pairs[0][1]})"
    every = " or ".join(f"(src host {a} and tcp dst port {p})" for a, p in sorted(set(pairs)))
    return text.replace(one, every)


def ours(addresses: list[str], pairs: list[tuple[str, int]], admitted: tuple[str, ...] = ()) -> list[bpf.Instruction]:
    datagrams = bpf.compile_text(build_filter(addresses, CONTROL, ()).removesuffix(NOT_VLAN), core.DLT_EN10MB, SNAP)
    program, form = bpf.knock_program(datagrams, sorted(addresses), bpf.knock_sources(pairs, admitted), SNAP)
    assert form == "pairs"
    return program


def ipv4_options(src: str, dst: str, dport: int, flags: int) -> bytes:
    """A SYN in an IPv4 header with 8 bytes of options (the TCP header then starts at 28)."""
    packet = tcp(src, dst, dport, flags)
    packet.opts = b"\x01" * 8
    packet.hl = 7
    packet.len += 8
    return ether(packet)


def later_fragment(src: str, dst: str, dport: int) -> bytes:
    packet = tcp(src, dst, dport, SYN)
    packet.offset = 800  # bytes: fragment offset 100
    return ether(packet)


EXTRA = {
    "v4 SYN pending behind IP options": (ipv4_options(CLIENT4, SERVER4, KNOCK4, SYN), True),
    "v4 SYN other port behind IP options": (ipv4_options(CLIENT4, SERVER4, KNOCK4 + 1, SYN), False),
    "v4 SYN-ACK pending behind IP options": (ipv4_options(CLIENT4, SERVER4, KNOCK4, SYN | ACK), False),
    "v4 later fragment, pending port bytes": (later_fragment(CLIENT4, SERVER4, KNOCK4), False),
    "v4 SYN cut short": (ether(tcp(CLIENT4, SERVER4, KNOCK4, SYN))[:40], False),
}


@pytest.mark.parametrize("addresses", [[SERVER4, SERVER6], [SERVER4], [SERVER6], [SERVER4, OTHER_SERVER4, SERVER6]])
def test_same_verdicts_as_libpcap_for_the_exact_pairs(addresses: list[str]) -> None:
    theirs = bpf.compile_text(exact_text(addresses, PAIRS), core.DLT_EN10MB, SNAP)
    mine = ours(addresses, PAIRS)
    frames = {f.name: ether(f.network) for f in FRAMES} | {name: frame for name, (frame, _) in EXTRA.items()}
    for name, frame in frames.items():
        assert bool(run(mine, frame)) == bool(run(theirs, frame)), name
    expected = {f.name for f in FRAMES if f.with_pairs and (SERVER6 in addresses or f.name.startswith("v4"))
                and (SERVER4 in addresses or f.name.startswith("v6"))}
    if OTHER_SERVER4 not in addresses:  # else "to another host" is to us
            assert {f.name for f in FRAMES if run(mine, ether(f.network))} == expected
    if SERVER4 in addresses:
        assert {name for name, (frame, _) in EXTRA.items() if run(mine, frame)} == \
            {name for name, (_, passes) in EXTRA.items() if passes}


def test_past_32_pairs_no_stranger_gets_in() -> None:
    """The old text passed every SYN to us past MAX_FILTER_PAIRS (a SYN scan in user space under load)."""
    pairs = FILLER + PAIRS + [(f"198.19.{i // 250}.{i % 250 + 1}", 2000 + i) for i in range(300)]
    assert len(set(pairs)) > MAX_FILTER_PAIRS
    mine = ours([SERVER4, SERVER6], pairs)
    generic = build_filter([SERVER4, SERVER6], CONTROL, pairs)
    theirs_generic = bpf.compile_text(generic.removesuffix(NOT_VLAN), core.DLT_EN10MB, SNAP)
    scan = ether(tcp(STRANGER4, SERVER4, 22, SYN))
    assert run(theirs_generic, scan)  # what capture did before
    assert not run(mine, scan)
    assert run(mine, ether(tcp(CLIENT4, SERVER4, KNOCK4, SYN)))
    assert run(mine, ether(tcp(CLIENT6, SERVER6, KNOCK6, SYN)))
    assert not run(mine, ether(tcp(CLIENT4, SERVER4, KNOCK6, SYN)))


def test_random_pairs_agree_with_libpcap() -> None:
    rng = random.Random(15)
    sources = [f"198.19.{rng.randrange(4)}.{rng.randrange(1, 20)}" for _ in range(60)] + \
        [f"2001:db8::{rng.randrange(1, 20):x}" for _ in range(20)]
    pairs = [(s, rng.choice([1024, 1025, 4000, 65535])) for s in sources]
    addresses = [SERVER4, SERVER6]
    theirs = bpf.compile_text(exact_text(addresses, pairs), core.DLT_EN10MB, SNAP)
    mine = ours(addresses, pairs)
    for _ in range(2000):
        family = rng.choice([4, 6])
        src = rng.choice([s for s in sources if (":" in s) == (family == 6)] + (["198.19.9.9"] if family == 4 else
                                                                               ["2001:db8::ff"]))
        dst = SERVER4 if family == 4 else SERVER6
        frame = ether(tcp(src, dst, rng.choice([1024, 1025, 4000, 65535, 22]), rng.choice([SYN, SYN | ACK, ACK])))
        assert bool(run(mine, frame)) == bool(run(theirs, frame))


def test_an_admitted_source_passes_to_any_port_and_only_it() -> None:
    mine = ours([SERVER4, SERVER6], PAIRS, admitted=(STRANGER4,))
    assert run(mine, ether(tcp(STRANGER4, SERVER4, 4242, SYN)))
    assert not run(mine, ether(tcp(STRANGER4, SERVER4, 4242, SYN | ACK)))
    assert not run(mine, ether(tcp("10.0.0.10", SERVER4, 4242, SYN)))
    assert run(mine, ether(tcp(CLIENT4, SERVER4, KNOCK4, SYN)))
    assert not run(mine, ether(tcp(CLIENT4, SERVER4, 4242, SYN)))


def test_too_many_for_the_kernel_narrows_to_sources_then_all() -> None:
    datagrams = bpf.compile_text(build_filter([SERVER4], CONTROL, ()).removesuffix(NOT_VLAN), core.DLT_EN10MB, SNAP)
    many = {str(ipaddress.IPv4Address(0xC6130000 + i)): frozenset({1000, 2000, 3000}) for i in range(1, 800)}
    program, form = bpf.knock_program(datagrams, [SERVER4], many, SNAP)
    assert form == "sources" and len(program) <= bpf.BPF_MAXINSNS
    assert run(program, ether(tcp("198.19.0.5", SERVER4, 1, SYN)))
    assert not run(program, ether(tcp(STRANGER4, SERVER4, 1000, SYN)))
    huge = {str(ipaddress.IPv4Address(0xC6130000 + i)): frozenset({1000}) for i in range(1, 3000)}
    program, form = bpf.knock_program(datagrams, [SERVER4], huge, SNAP)
    assert form == "all" and len(program) <= bpf.BPF_MAXINSNS


def test_the_kernel_accepts_the_written_programs() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for pairs in ([], PAIRS, FILLER + PAIRS):
            bpf.attach(sock.fileno(), ours([SERVER4, SERVER6], pairs, admitted=(STRANGER4, "2001:db8::5")))
