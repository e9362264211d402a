"""capture/bpf.py: the program capture attaches itself (atomic filter swap), checked without an interface.

What the program means is checked through its text elsewhere (test_capture_core.py and
test_capture_wrappings.py replay frames through libpcap, test_capture_knock_program.py runs
the program); here: that the VLAN refusal reads the right ancillary field and heads every
program, and that the Linux kernel accepts the programs on a real socket.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from dynknock.capture import bpf, core
from dynknock.capture.core import MAX_FILTER_PAIRS, build_filter

SERVERS = ["198.18.0.1", "198.18.0.7", "2001:db8:d::1", "2001:db8:d::7"]
CASES = {
    "no pairs": [],
    "some pairs": [("198.18.0.2", 1111), ("2001:db8:d::2", 2222)],
    "max ipv6 pairs": [(f"2001:db8::{i:x}", 1000 + i) for i in range(MAX_FILTER_PAIRS)],
    "generic": [(f"198.19.0.{i}", 1000 + i) for i in range(1, MAX_FILTER_PAIRS + 2)],
}


def test_the_refusal_reads_vlan_tag_present() -> None:
    load, jump, refuse = bpf.REFUSE_TAGGED
    assert load == (0x30, 0, 0, (-0x1000 + 48) & 0xFFFFFFFF)  # ldb [SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT]
    assert jump == (0x15, 1, 0, 0)  # 0 (untagged): skip the refusal
    assert refuse == (0x06, 0, 0, 0)


def test_ancillary_offsets_match_the_kernel_headers() -> None:
    header = Path("/usr/include/linux/filter.h")
    if not header.exists():
        pytest.fail("linux/filter.h (linux-libc-dev) is needed to check SKF_AD_* against the kernel's")
    text = header.read_text()
    found = re.findall(r"#define\s+(SKF_AD_\w+)\s+\(?(-?0x[0-9a-fA-F]+|-?\d+)", text)
    values = {name: int(value, 0) for name, value in found}
    assert values["SKF_AD_VLAN_TAG_PRESENT"] == bpf.SKF_AD_VLAN_TAG_PRESENT
    assert values["SKF_AD_OFF"] == bpf.SKF_AD_OFF


def test_compile_text_refuses_a_broken_expression() -> None:
    with pytest.raises(OSError):
        bpf.compile_text("udp and (", core.DLT_EN10MB, 256)


def test_the_kernel_accepts_capture_programs_and_refuses_a_broken_one() -> None:
    """SO_ATTACH_FILTER validates classic BPF (jumps, ancillary loads, final return) on any socket."""
    datagrams = bpf.compile_text(build_filter(SERVERS, 62201, []).removesuffix(core.NOT_VLAN), core.DLT_EN10MB, 256)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for pairs in CASES.values():
            program, _ = bpf.knock_program(datagrams, SERVERS, bpf.knock_sources(pairs), 256)
            assert program[:3] == bpf.REFUSE_TAGGED and len(program) <= bpf.BPF_MAXINSNS
            bpf.attach(sock.fileno(), program)
        with pytest.raises(OSError):
            bpf.attach(sock.fileno(), [(bpf.BPF_JEQ_K, 5, 5, 0)])  # jumps out of the program, no return
        with pytest.raises(OSError):
            bpf.attach(sock.fileno(), [(0x30, 0, 0, (bpf.SKF_AD_OFF + 4000) & 0xFFFFFFFF), (6, 0, 0, 0)])


def test_a_swapped_filter_really_filters() -> None:
    """On a loopback UDP socket (no privilege): a program refusing all drops a datagram, accept-all lets it in."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(0.5)
        bpf.attach(receiver.fileno(), [(bpf.BPF_RET_K, 0, 0, 0)])
        sender.sendto(b"refused", receiver.getsockname())
        with pytest.raises(TimeoutError):
            receiver.recv(64)
        bpf.attach(receiver.fileno(), [(bpf.BPF_RET_K, 0, 0, 0xFFFF)])
        sender.sendto(b"accepted", receiver.getsockname())
        assert receiver.recv(64) == b"accepted"
