"""capture/bpf.py KernelFilter when the kernel refuses a knock filter, and capture/filters.py after it.

The kernel charges a socket's old and new filter together against net.core.optmem_max while it
swaps them (128 KiB: a swap of programs above ~2,100 instructions fails with ENOMEM, 2,000 pending
clients). Capture must then fall back, in order, to a shorter form of the knock filter (exact pairs,
then the pending sources to any port, then every SYN to us), count it, and keep running; if not
even the shortest fits beside the old filter, the old one is taken off and the forms are tried
alone; if none fits even alone, the attach is tried again later. Here the kernel is a stand-in
that charges a program by its length, so that each case is exact (and detach is the real one on a
UDP socket); tests/stage/test_capture_filter_refused.py has the real kernel refuse them.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import pytest

from dynknock.bus import KnockFilter
from dynknock.capture import bpf, core
from dynknock.capture.filters import RETRY_S, Filters

SERVER = "198.18.0.1"
CONTROL = 62201


def pairs_of(count: int, ports: int = 3) -> list[tuple[str, int]]:
    return [(str(ipaddress.IPv4Address(0xC6130001 + i)), 1024 + i * ports + k) for i in range(count)
            for k in range(ports)]


class Handle:
    """A pcap handle as KernelFilter uses it: a descriptor, and libpcap's setfilter (non-Ethernet)."""

    def __init__(self, refuse_texts_over: int | None = None) -> None:
        self.texts: list[str] = []
        self.refuse_texts_over = refuse_texts_over

    def fileno(self) -> int:
        return 99

    def setfilter(self, text: str) -> None:
        if self.refuse_texts_over is not None and len(text) > self.refuse_texts_over:
            raise OSError("pcap_setfilter: Cannot allocate memory")
        self.texts.append(text)


class Kernel:
    """SO_ATTACH_FILTER and SO_DETACH_FILTER as optmem_max makes them: a swap needs the old and the new
    program to fit `optmem` together (lengths stand for their charge); a detached socket has none."""

    def __init__(self, optmem: int) -> None:
        self.optmem = optmem
        self.tried: list[int] = []  # the length of every program offered
        self.attached: list[bpf.Instruction] | None = None
        self.detached = 0

    def attach(self, fd: int, program: list[bpf.Instruction]) -> None:
        self.tried.append(len(program))
        if len(self.attached or ()) + len(program) >= self.optmem:
            raise OSError(errno.ENOMEM, "SO_ATTACH_FILTER: Cannot allocate memory")
        self.attached = program

    def detach(self, fd: int) -> None:
        self.detached += 1
        self.attached = None


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(optmem: int) -> Kernel:
        fake = Kernel(optmem)
        monkeypatch.setattr(bpf, "attach", fake.attach)
        monkeypatch.setattr(bpf, "detach", fake.detach)
        return fake
    return install


def lengths(pending: list[tuple[str, int]]) -> dict[str, int]:
    """The length of each form's program for these pairs."""
    datagrams = bpf.compile_text(core.build_filter([SERVER], CONTROL, ()).removesuffix(core.NOT_VLAN),
                                 core.DLT_EN10MB, 256)
    return {form: len(program) for program, form in
            bpf.knock_programs(datagrams, [SERVER], bpf.knock_sources(pending), 256)}


def ethernet() -> bpf.KernelFilter:
    return bpf.KernelFilter(Handle(), core.DLT_EN10MB, 256, [SERVER], CONTROL)


def test_a_refused_pairs_form_falls_back_to_sources(kernel: Any) -> None:
    fake = kernel(2000)
    kf = ethernet()
    pending = pairs_of(300)
    size = lengths(pending)
    assert size["pairs"] > 2000 > size["sources"]  # exact pairs ~2,700 instructions, sources ~1,000
    assert kf.knocks(pending) == "sources"
    assert fake.tried == [size["pairs"], size["sources"]] and not fake.detached and not kf.detached
    assert kf.refused == 1
    (refusal,) = kf.refusals
    assert refusal.form == "pairs" and refusal.instructions == size["pairs"]
    assert "Cannot allocate memory" in refusal.error
    assert fake.attached is not None and fake.attached[:3] == bpf.REFUSE_TAGGED


def test_then_to_every_syn_and_the_count_goes_on(kernel: Any) -> None:
    fake = kernel(800)
    kf = ethernet()
    assert kf.knocks(pairs_of(300)) == "all"
    assert [r.form for r in kf.refusals] == ["pairs", "sources"] and kf.refused == 2
    assert fake.attached is not None and len(fake.attached) == fake.tried[-1] < 800
    # A small filter afterwards goes back to exact pairs, and says nothing was refused this time.
    assert kf.knocks(pairs_of(2)) == "pairs"
    assert kf.refusals == [] and kf.refused == 2


def test_an_old_filter_too_large_for_anything_beside_it_is_taken_off_first(kernel: Any) -> None:
    """The real kernel did this (tests/stage/test_capture_filter_refused.py): after a swap to a long
    "sources" program not even the 52 instructions of "all" fitted beside it, and an old filter that
    stayed would have kept every new client's SYNs out for as long as it stayed."""
    first, second = pairs_of(300), pairs_of(301)
    one, two = lengths(first), lengths(second)
    fake = kernel(one["sources"] + two["all"] - 1)
    kf = ethernet()
    assert kf.knocks(first) == "sources" and not kf.detached
    assert kf.knocks(second) == "sources" and kf.detached and fake.detached == 1
    assert [r.form for r in kf.refusals] == ["pairs", "sources", "all", "pairs"]
    assert fake.tried[-1] == two["sources"] and fake.attached is not None


def test_past_the_kernel_length_limit_the_forms_that_cannot_fit_are_not_offered(kernel: Any) -> None:
    fake = kernel(100_000)
    kf = ethernet()
    assert kf.knocks(pairs_of(2000, ports=1)) == "all"  # 2,000 sources: only "all" fits 4,096 instructions
    assert len(fake.tried) == 1 and kf.refused == 0


def test_if_the_kernel_refuses_every_form_even_alone_nothing_is_attached(kernel: Any) -> None:
    fake = kernel(10)
    kf = ethernet()
    assert kf.knocks(pairs_of(5)) is None
    assert [r.form for r in kf.refusals] == ["pairs", "sources", "all"] * 2 and kf.refused == 6
    assert fake.attached is None and fake.detached == 1


def test_no_pending_knocks_is_one_program_offered(kernel: Any) -> None:
    fake = kernel(10)
    kf = ethernet()
    assert kf.knocks([]) is None
    assert len(fake.tried) == 2 and kf.refused == 2  # pairs, sources and all are the same program then


def test_other_link_types_fall_back_to_every_syn_in_libpcaps_text() -> None:
    handle = Handle(refuse_texts_over=750)
    kf = bpf.KernelFilter(handle, core.DLT_LINUX_SLL, 256, [SERVER], CONTROL)
    assert kf.knocks(pairs_of(2)) == "all"  # the pairs' text is refused, every SYN's is not
    assert kf.refused == 1 and kf.refusals[0].form == "pairs" and kf.refusals[0].instructions == 0
    assert handle.texts and "src host" not in handle.texts[-1]


def test_filters_retry_a_refused_filter_later_and_at_once_for_a_new_knock() -> None:
    filters = Filters(atomic=True)
    filters.on_knocks(KnockFilter([[SERVER, 1000]], 1), 5.0)
    assert filters.due(5.0)
    filters.refused(5.0)  # the kernel refused every form: nothing attached
    assert not filters.due(5.0) and filters.changes == 0 and filters.form == "refused"
    assert 0 < filters.wait_ms(5.0) <= RETRY_S * 1000 + 1
    assert filters.due(5.0 + RETRY_S)
    filters.refused(5.0 + RETRY_S)
    filters.on_knocks(KnockFilter([[SERVER, 1000], ["198.18.0.9", 2000]], 2), 5.1 + RETRY_S)  # a new knock
    assert filters.due(5.1 + RETRY_S)
    filters.installed("sources")
    assert filters.form == "sources" and filters.changes == 1 and not filters.due(10.0)


def test_detach_takes_a_real_filter_off_and_none_is_fine() -> None:
    """On a loopback UDP socket (no privilege): refused by a filter, then passed once it is off."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(0.5)
        bpf.attach(receiver.fileno(), [(bpf.BPF_RET_K, 0, 0, 0)])
        sender.sendto(b"refused", receiver.getsockname())
        with pytest.raises(TimeoutError):
            receiver.recv(64)
        bpf.detach(receiver.fileno())
        bpf.detach(receiver.fileno())  # no filter left: not an error
        sender.sendto(b"passed", receiver.getsockname())
        assert receiver.recv(64) == b"passed"
