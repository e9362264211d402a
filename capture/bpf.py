"""Swapping capture's kernel filter in one system call.

libpcap changes the filter of a live Linux handle in three steps: a filter that
rejects everything, a drain of the socket, then the new filter. Whatever arrives
between the first and the last step is lost, uncounted (not even kernel_dropped).
Capture changes its filter twice per knock (pairs in, pairs out); under a flood
its process is preempted between those steps, and the P2s and SYNs of other
users that land in the gap vanish (docs/SECURITY.md has the measurement).
SO_ATTACH_FILTER replaces a socket's filter atomically, so capture compiles the
program itself and attaches it.

The program is libpcap's own compilation of the same text (pcap_compile on a
dead handle of the same link type and snap length). One thing a dead handle
cannot compile is `vlan` as the live Linux handle does (from the tag the
kernel took off the frame, in its metadata): so the text is compiled without its
final `and not vlan`, and three instructions that refuse any frame whose tag
metadata is set are put in front.

Only Ethernet is done this way: for Linux cooked captures libpcap rewrites the
offsets of the program for the kernel, which this module does not; other link
types keep libpcap's setfilter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dynknock.capture.core import DLT_EN10MB, NOT_VLAN, build_filter, text_form

SOL_SOCKET = 1
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SKF_AD_OFF = -0x1000
SKF_AD_VLAN_TAG_PRESENT = 48  # linux/filter.h (44 is SKF_AD_VLAN_TAG, the TCI)
BPF_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06  # BPF_RET | BPF_K
BPF_MAXINSNS = 4096

Instruction = tuple[int, int, int, int]  # code, jt, jf, k

# "Has the kernel taken a VLAN tag off this frame? Then refuse it." Jumps are relative.
REFUSE_TAGGED: list[Instruction] = [
    (BPF_LD_B_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT) & 0xFFFFFFFF),
    (BPF_JEQ_K, 1, 0, 0),  # no tag: over the next instruction, into libpcap's program
    (BPF_RET_K, 0, 0, 0),
]


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):  # struct bpf_program (libpcap) and struct sock_fprog (Linux) alike
    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.POINTER(_Insn))]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("insns", ctypes.POINTER(_Insn))]


_LIBS: dict[str, Any] = {}


def _libpcap() -> Any:
    if "pcap" not in _LIBS:
        name = ctypes.util.find_library("pcap")
        if name is None:
            raise OSError("libpcap not found")
        lib = ctypes.CDLL(name)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _LIBS["pcap"] = lib
    return _LIBS["pcap"]


def _libc() -> Any:
    if "c" not in _LIBS:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        _LIBS["c"] = libc
    return _LIBS["c"]


def compile_text(expression: str, linktype: int, snaplen: int) -> list[Instruction]:
    """libpcap's optimised program for the expression (OSError with libpcap's message if it is wrong)."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise OSError("pcap_open_dead failed")
    program = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            raise OSError(f"cannot compile filter: {lib.pcap_geterr(handle).decode(errors='replace')}")
        out = [(i.code, i.jt, i.jf, i.k) for i in program.insns[:program.len]]
        lib.pcap_freecode(ctypes.byref(program))
        return out
    finally:
        lib.pcap_close(handle)


_PACKED = struct.Struct("=HBBI")  # struct sock_filter


def attach(fd: int, program: list[Instruction]) -> None:
    """Replace the socket's filter with program, in one system call."""
    # Packed in one go: a ctypes object per instruction is slow for programs of thousands.
    raw = ctypes.create_string_buffer(b"".join([_PACKED.pack(*i) for i in program]), len(program) * 8)
    fprog = _SockFprog(len(program), ctypes.cast(raw, ctypes.POINTER(_Insn)))
    if _libc().setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, ctypes.byref(fprog), ctypes.sizeof(fprog)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"SO_ATTACH_FILTER: {os.strerror(error)}")


@dataclass(frozen=True)
class Refusal:
    """A knock filter the kernel (or libpcap) would not attach: its form, its length, what was said."""

    form: str
    instructions: int  # 0: libpcap's text (other link types)
    error: str


def detach(fd: int) -> None:
    """Take the socket's filter off (no filter: every frame passes); none attached is fine."""
    unused = ctypes.c_int(0)  # the kernel wants an int's length here, and reads nothing
    if _libc().setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, ctypes.byref(unused), ctypes.sizeof(unused)) != 0:
        error = ctypes.get_errno()
        if error != errno.ENOENT:
            raise OSError(error, f"SO_DETACH_FILTER: {os.strerror(error)}")


class KernelFilter:
    """The filter of an open pcap handle: set with libpcap once, then swapped atomically (Ethernet).

    The kernel may refuse a swap: it charges the old and the new program together against
    net.core.optmem_max (128 KiB by default, so a long program can fail with ENOMEM, even at a first
    attach; docs/BENCHMARKS.md has the figures). The knock filter then
    falls back, in order, to a shorter form (exact pairs, the pending sources to any port, every
    SYN to us): a knock passes a wider filter, capture and auth narrow again in user space. An old
    program can hold so much of the budget that not even the shortest fits beside it: then the old
    one is taken off first and the forms are tried again alone (between those two system calls the
    socket has no filter, and every frame reaches capture, which checks each one again: nothing is
    lost, unlike libpcap's own swap). Each refusal is counted (`refused`; `refusals` holds the last
    call's)."""

    def __init__(self, handle: Any, linktype: int, snaplen: int, addresses: Iterable[str] = (),
                 control_port: int = 0) -> None:
        self.handle = handle
        self.linktype = linktype
        self.snaplen = snaplen
        self.atomic = linktype == DLT_EN10MB
        self.addresses = sorted(addresses)
        self.control_port = control_port
        self._datagrams: list[Instruction] | None = None  # libpcap's datagram part, compiled once
        self.refused = 0  # knock filters the kernel refused since the start (each one fell back)
        self.refusals: list[Refusal] = []  # those of the last call of knocks()
        self.detached = False  # whether the last call of knocks() took the old filter off first

    def knocks(self, pairs: Iterable[tuple[str, int]], admitted: Iterable[str] = ()) -> str | None:
        """Pass the pending knocks' SYNs (and any SYN from an admitted source); returns how narrowly:
        "pairs", "sources" (the kernel's length limit, or a refused "pairs"), "all" (every SYN to us:
        past that too). None: the kernel refused every form, even alone, and the socket is left with
        no filter (every frame reaches capture; only an absurdly small optmem_max does that)."""
        pairs = list(pairs)
        self.refusals = []
        self.detached = False
        if not self.atomic:
            # libpcap's text (other link types are rare): exact pairs, past MAX_FILTER_PAIRS the pending
            # sources, past MAX_FILTER_SOURCES every SYN; every SYN if the text's filter is refused.
            admitted = list(admitted)
            form = text_form(pairs, admitted)[0]
            tries = [(form, False)] + ([("all", True)] if form in ("pairs", "sources") else [])
            for name, all_syns in tries:
                try:
                    self.handle.setfilter(build_filter(self.addresses, self.control_port, pairs, admitted=admitted,
                                                       all_syns=all_syns, linktype=self.linktype))
                except OSError as exc:
                    self._refused("pairs" if name == "none" else name, 0, exc)
                    continue
                return "pairs" if name == "none" else name
            return None
        if self._datagrams is None:
            text = build_filter(self.addresses, self.control_port, ())
            self._datagrams = compile_text(text.removesuffix(NOT_VLAN), DLT_EN10MB, self.snaplen)
        fd = self.handle.fileno()
        programs = list(knock_programs(self._datagrams, self.addresses, knock_sources(pairs, admitted),
                                       self.snaplen))
        for alone in (False, True):
            if alone:
                try:
                    detach(fd)  # not even the shortest fits beside the old program: it goes first
                except OSError as exc:
                    self._refused("detach", 0, exc)
                    return None
                self.detached = True
            for program, form in programs:
                try:
                    attach(fd, program)
                except OSError as exc:  # ENOMEM (optmem_max) above all; any refusal falls back the same way
                    self._refused(form, len(program), exc)
                    continue
                return form
        return None

    def _refused(self, form: str, instructions: int, exc: OSError) -> None:
        self.refused += 1
        self.refusals.append(Refusal(form, instructions, str(exc)))

    def first(self, expression: str) -> None:
        # libpcap's own way once: it also judges, in userland, what is already in the ring.
        self.handle.setfilter(expression)


# --- the knock part, written here instead of compiled ----------------------------------------------
#
# The SYN part changes at every knock, and pcap_compile's cost grows with the pending pairs, so a
# compiled SYN part cannot stay narrow under load. It is simple enough to write directly: a header
# check, then one short block per pending source (its ports, or any port). libpcap still compiles
# the datagram part, once: its refusals jump to the SYN part instead of returning 0.

BPF_LD_W_ABS = 0x20
BPF_LD_H_ABS = 0x28
BPF_LD_H_IND = 0x48
BPF_LD_B_IND = 0x50
BPF_LDX_B_MSH = 0xB1  # X = 4 * (P[k] & 0xf): the IPv4 header length
BPF_AND_K = 0x54
BPF_JSET_K = 0x45
BPF_JA = 0x05

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
TCP = 6
# Ethernet offsets: IPv4 at 14 (protocol 23, flags/fragment 20, source 26, destination 30; TCP at
# 14 + X: destination port at X + 16, flags at X + 27); IPv6 at 14 (next header 20, source 22,
# destination 38, TCP straight after at 54: destination port 56, flags 67).
SYN_MASK = 0x12  # SYN | ACK
SYN_ONLY = 0x02

# A source whose SYNs pass to any port (capture's provisional admission of a P1's sender).
ANY_PORT: frozenset[int] = frozenset()


class _Asm:
    """Classic BPF with symbolic forward jumps (checked to fit the 8-bit jt/jf)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int | str]] = []
        self.labels: dict[str, int] = {}
        self._fresh = 0

    def label(self) -> str:
        self._fresh += 1
        return f"L{self._fresh}"

    def here(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def op(self, code: int, k: int | str = 0, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def raw(self, program: list[Instruction]) -> None:
        """Instructions assembled elsewhere whose jumps stay among themselves."""
        self.code.extend((code, jt, jf, k) for code, jt, jf, k in program)

    def require(self, value: int) -> None:
        """Refuse the frame unless A == value."""
        self.op(BPF_JEQ_K, value, 1, 0)
        self.op(BPF_RET_K, 0)

    def assemble(self) -> list[Instruction]:
        out: list[Instruction] = []
        for index, (code, jt, jf, k) in enumerate(self.code):
            def offset(target: int | str, index: int = index) -> int:
                if isinstance(target, int):
                    return target
                return self.labels[target] - index - 1
            if code == BPF_JA:
                out.append((code, 0, 0, offset(k)))
                continue
            t, f = offset(jt), offset(jf)
            if not (0 <= t <= 255 and 0 <= f <= 255):
                raise ValueError("a conditional jump out of range")  # a bug here, never the input's fault
            assert isinstance(k, int)
            out.append((code, t, f, k & 0xFFFFFFFF))
        return out


def _words(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    raw = address.packed
    return [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]


_BLOCKS: dict[tuple[str, frozenset[int]], list[Instruction]] = {}
_BLOCKS_MAX = 8192  # blocks kept for reuse (a source's block does not change while it is pending)


def _source_block(source: str, ports: frozenset[int], accept: int) -> list[Instruction]:
    """Accept a SYN from this source to one of its ports (any port if none given); refuse it if the source
    matches and the port does not; fall through to the next block if the source differs. Every jump
    stays inside the block, so a block is assembled once and reused wherever it lands."""
    block = _BLOCKS.get((source, ports))
    if block is not None:
        return block
    address = ipaddress.ip_address(source)
    offsets, port_load = ((26,), (BPF_LD_H_IND, 16)) if address.version == 4 else \
        ((22, 26, 30, 34), (BPF_LD_H_ABS, 56))
    asm = _Asm()
    skip = asm.label()
    for word, at in zip(_words(address), offsets, strict=True):
        asm.op(BPF_LD_W_ABS, at)
        asm.op(BPF_JEQ_K, word, 0, skip)
    if not ports:
        asm.op(BPF_RET_K, accept)
    else:
        yes = asm.label()
        asm.op(port_load[0], port_load[1])
        for port in sorted(ports):
            asm.op(BPF_JEQ_K, port, yes, 0)
        asm.op(BPF_RET_K, 0)  # sources are unique: no later block is this source's
        asm.here(yes)
        asm.op(BPF_RET_K, accept)
    asm.here(skip)
    block = asm.assemble()
    if len(_BLOCKS) >= _BLOCKS_MAX:
        _BLOCKS.clear()
    _BLOCKS[(source, ports)] = block
    return block


_HEADS: dict[tuple[str, ...], tuple[list[Instruction], list[Instruction]]] = {}


def _heads(addresses: list[str], accept: int) -> tuple[list[Instruction], list[Instruction]]:
    """The IPv4 and IPv6 checks before the source blocks: to one of addresses, TCP, SYN without ACK
    (IPv4: not a later fragment; X left holding the IPv4 header length). Empty for a family we lack."""
    key = (*addresses, str(accept))
    if key in _HEADS:
        return _HEADS[key]
    parsed = [ipaddress.ip_address(a) for a in addresses]
    mine4 = [a for a in parsed if a.version == 4]
    mine6 = [a for a in parsed if a.version == 6]
    head4: list[Instruction] = []
    if mine4:
        asm = _Asm()
        to_us = asm.label()
        asm.op(BPF_LD_W_ABS, 30)
        for address in mine4:
            asm.op(BPF_JEQ_K, _words(address)[0], to_us, 0)
        asm.op(BPF_RET_K, 0)
        asm.here(to_us)
        asm.op(BPF_LD_B_ABS, 23)
        asm.require(TCP)
        asm.op(BPF_LD_H_ABS, 20)
        asm.op(BPF_JSET_K, 0x1FFF, 0, 1)  # a later fragment: no TCP header at the start
        asm.op(BPF_RET_K, 0)
        asm.op(BPF_LDX_B_MSH, 14)
        asm.op(BPF_LD_B_IND, 27)
        asm.op(BPF_AND_K, SYN_MASK)
        asm.require(SYN_ONLY)
        head4 = asm.assemble()
    head6: list[Instruction] = []
    if mine6:
        asm = _Asm()
        to_us = asm.label()
        asm.op(BPF_LD_B_ABS, 20)
        asm.require(TCP)
        for address6 in mine6:
            other = asm.label()
            for word, at in zip(_words(address6), (38, 42, 46, 50), strict=True):
                asm.op(BPF_LD_W_ABS, at)
                asm.op(BPF_JEQ_K, word, 0, other)
            asm.op(BPF_JA, to_us)
            asm.here(other)
        asm.op(BPF_RET_K, 0)
        asm.here(to_us)
        asm.op(BPF_LD_B_ABS, 67)
        asm.op(BPF_AND_K, SYN_MASK)
        asm.require(SYN_ONLY)
        head6 = asm.assemble()
    _HEADS[key] = (head4, head6)
    return head4, head6


def syn_program(addresses: list[str], sources: dict[str, frozenset[int]], accept: int,
                all_sources: bool = False) -> list[Instruction]:
    """SYNs (SYN without ACK, IPv4 not a later fragment, IPv6 TCP straight after the header) to one of
    addresses from one of sources, to one of its ports (ANY_PORT: any); with all_sources, from anyone.
    Every other frame is refused."""
    head4, head6 = _heads(addresses, accept)
    from4: list[Instruction] = []
    from6: list[Instruction] = []
    for source, ports in sorted(sources.items()):
        (from6 if ":" in source else from4).extend(_source_block(source, ports, accept))
    refuse: Instruction = (BPF_RET_K, 0, 0, 0)
    everyone: list[Instruction] = [(BPF_RET_K, 0, 0, accept)] if all_sources else []
    part4 = head4 + everyone + from4 + [refuse] if head4 and (from4 or all_sources) else [refuse]
    part6 = head6 + everyone + from6 + [refuse] if head6 and (from6 or all_sources) else [refuse]
    dispatch: list[Instruction] = [
        (BPF_LD_H_ABS, 0, 0, 12),
        (BPF_JEQ_K, 0, 1, ETH_IPV4),
        (BPF_JA, 0, 0, 3),  # to part4, right after this dispatch
        (BPF_JEQ_K, 0, 1, ETH_IPV6),
        (BPF_JA, 0, 0, 1 + len(part4)),  # over the refusal and part4
        refuse,
    ]
    return dispatch + part4 + part6


def knock_sources(pairs: Iterable[tuple[str, int]], admitted: Iterable[str] = ()) -> dict[str, frozenset[int]]:
    """Pending pairs by source; a source admitted whole (ANY_PORT) covers its pairs."""
    by_source: dict[str, set[int]] = {}
    for source, port in pairs:
        by_source.setdefault(source, set()).add(port)
    out = {source: frozenset(ports) for source, ports in by_source.items()}
    for source in admitted:
        out[source] = ANY_PORT
    return out


def splice(datagrams: list[Instruction], syns: list[Instruction]) -> list[Instruction]:
    """libpcap's datagram program with each refusal (ret #0) turned into a jump to the SYN program.
    A jump is one instruction as the return was, so libpcap's own jumps keep their targets."""
    out: list[Instruction] = []
    end = len(datagrams)
    for index, (code, jt, jf, k) in enumerate(datagrams):
        if code == BPF_RET_K and k == 0:
            out.append((BPF_JA, 0, 0, end - index - 1))
        else:
            out.append((code, jt, jf, k))
    return out + syns


def knock_programs(datagrams: list[Instruction], addresses: list[str], sources: dict[str, frozenset[int]],
                   accept: int) -> Iterator[tuple[list[Instruction], str]]:
    """The whole Ethernet program (VLAN refusal, datagrams, SYNs) in each form, narrowest first, that
    fits the kernel's length limit: pairs; each pending source to any port; every SYN to us. With the
    form's name ("pairs", "sources", "all"). A form that would be the same program as the one before
    (nothing pending; every source already admitted to any port) is not given twice."""
    previous: dict[str, frozenset[int]] | None = None
    for form in ("pairs", "sources", "all"):
        if form == "pairs":
            wanted = sources
        elif form == "sources":
            wanted = dict.fromkeys(sources, ANY_PORT)
        else:
            wanted = {}
        if previous is not None and (wanted == previous or not sources):
            continue
        previous = wanted
        syns = syn_program(addresses, wanted, accept, all_sources=form == "all" and bool(sources))
        program = REFUSE_TAGGED + splice(datagrams, syns)
        if len(program) <= BPF_MAXINSNS:
            yield program, form


def knock_program(datagrams: list[Instruction], addresses: list[str], sources: dict[str, frozenset[int]],
                  accept: int) -> tuple[list[Instruction], str]:
    """The narrowest program of knock_programs: what the kernel's length limit allows."""
    for program, form in knock_programs(datagrams, addresses, sources, accept):
        return program, form
    raise OSError("the datagram part alone is longer than the kernel takes")
