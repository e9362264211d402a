"""knock-capture: the only stage that starts as root.

It opens the capture handle, drops to server.run_as before it reads a single
packet (changing the BPF filter of an open handle needs no privilege), then
moves packets that passed the filter to auth and follows auth's knock filter.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import sys
import time
from typing import Any

import pcap
import zmq

from dynknock import bus
from dynknock.capture.bpf import KernelFilter
from dynknock.capture.core import WRAPPED, build_filter, parse_frame, peek_datagram
from dynknock.capture.fairness import Shedder, fair_order
from dynknock.capture.filters import RETRY_S, Filters
from dynknock.config import Config
from dynknock.limits import PerSecond
from dynknock.protocol import PacketType
from dynknock.stage import (
    Shell,
    common_arguments,
    drop_privileges,
    gateway_label,
    load_config_or_exit,
    setup_logging,
)
from dynknock.topics import Topic

SNAPLEN = 256
REJECT_EVENTS_PER_SECOND = 20
# Frames taken from the kernel per turn of the loop: a flood fills the ring faster than a
# turn drains it, and one unbounded read (readpkts) then keeps the loop from auth's
# filter messages (new knocks' SYNs wait for them) for as long as the flood lasts.
MAX_BATCH = 256
P1_TYPE = PacketType.P1.value
# Capture's scheduling priority, set while it is still root. A P1's knocks follow it by 5 ms and pass
# the kernel only once capture has read the P1 and admitted its sender (capture/fairness.py
# Admissions): with both CPUs busy (1,000 clients knocking, or a flood) capture waited its turn
# behind the busy processes for longer than that. Its work per packet is bounded by its budgets.
NICE = -5
# The kernel refusing a knock filter (capture/bpf.py KernelFilter) is logged at once, then at most this
# often with a count: with hundreds of clients pending it may refuse several attaches a second.
REFUSED_LOG_EVERY_S = 60.0


def main(argv: list[str] | None = None) -> int:
    args = common_arguments("dynknock capture stage (libpcap, needs root to start)").parse_args(argv)
    config = load_config_or_exit(args.config, "capture")
    log = setup_logging("capture")
    try:
        handle = pcap.pcap(name=config.interface, snaplen=SNAPLEN, promisc=False, immediate=True,
                           timeout_ms=50, buffer_size=8 * 1024 * 1024)
    except OSError as exc:
        print(f"knock-capture: cannot open interface {config.interface!r} (key server.interface in "
              f"{config.path}): {exc}", file=sys.stderr)
        return 2
    addresses = frozenset(config.addresses)
    linktype = handle.datalink()
    kernel_filter = KernelFilter(handle, linktype, SNAPLEN, addresses, config.control_port)
    kernel_filter.first(build_filter(addresses, config.control_port, (), linktype=linktype))
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError as exc:  # not root (a test): the same, at the usual priority
        log.info("Capture keeps its priority (%s).", exc)
    drop_privileges(config.run_as)
    return CaptureShell(config, log, handle, kernel_filter).run()


class CaptureShell(Shell):
    """Frames from libpcap to auth, cheapest check first (capture/core.py), floods shed
    (capture/fairness.py); auth's knock and hint filters followed (capture/filters.py)."""

    def __init__(self, config: Config, log: logging.Logger, handle: Any, kernel_filter: KernelFilter) -> None:
        super().__init__("capture", config, log, binds=False)  # capture only connects
        handle.setnonblock(True)
        self.handle = handle
        self.linktype = kernel_filter.linktype
        self.kernel_filter = kernel_filter
        self.addresses = frozenset(config.addresses)
        # Bounded queue: if auth falls behind, capture drops (and counts) instead of
        # growing without limit; IMMEDIATE keeps nothing queued for an absent auth.
        self.to_auth = self.socket(zmq.PUSH, connect="packets", options={zmq.SNDHWM: 50_000, zmq.IMMEDIATE: 1})
        self.from_auth = self.socket(zmq.SUB, connect="knock_filter", options={zmq.SUBSCRIBE: b""})
        self.watch(handle.fileno())  # wakes the loop; turn() reads the ring whatever the poll says
        self.watch(self.from_auth, self.read_filters)
        # A fleet's auth serves several gateways: each packet names the one it was seen at (one host: not needed).
        self.gateway = gateway_label(config)
        self.filters = Filters(kernel_filter.atomic)
        self.shedder = Shedder()
        self.reject_budget = PerSecond(REJECT_EVENTS_PER_SECOND)  # reports on the bus: a flood must not flood it
        self.forwarded = self.dropped = self.bus_full = self.wrapped = self.unknown_hints = 0
        self.batch: list[bytes] = []
        self.refused_logged_at: float | None = None
        self.refused_logged = 0  # kernel_filter.refused when last logged
        log.info("Capture started on %s for %s, control port %d (running as uid %d).",
                 config.interface, ", ".join(sorted(self.addresses)), config.control_port, os.getuid())
        self.events.publish(Topic.CAPTURE_STARTED, interface=config.interface)

    def timeout_ms(self) -> int:
        # A full batch may have left frames in a ring block libpcap holds: come straight back.
        return 0 if len(self.batch) >= MAX_BATCH else self.filters.wait_ms(time.monotonic())

    def read_filters(self) -> None:
        # Each knock filter is the whole list: only the newest matters. Compiling every one
        # in turn made capture fall behind as soon as knocks came in quickly.
        newest = None
        while True:
            try:
                frame = self.from_auth.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = self.decode(frame, "filter message")
            if isinstance(message, bus.KnockFilter):
                newest = message
            elif isinstance(message, bus.HintFilter):
                if not self.filters.on_hints(message):
                    self.log_bad("Dropped a hint message with a bad hint")
            elif message is not None:
                self.unexpected(message, " on the filter socket")
        if newest is not None and not self.filters.on_knocks(newest, time.monotonic()):
            self.log_bad("Dropped a filter message with a bad pair")

    def report(self, source: bytes, reason: str, now: float) -> None:
        """Rejections made here, reported (one budget for all, whatever the flood); an unknown hint is
        auth's `unknown_user`, reported in the same words. The source is peek_datagram's: no parse."""
        if self.reject_budget.take(now):
            self.events.publish(Topic.CAPTURE_PACKET_REJECTED, reason=reason,
                                source=str(ipaddress.ip_address(source)))

    def turn(self) -> None:
        batch, filters = self.batch, self.filters
        batch.clear()
        take = batch.append
        self.handle.dispatch(MAX_BATCH, lambda _ts, frame: take(frame))
        now = time.monotonic()
        syns: list[bytes] = []  # and whatever else the cheap check leaves to parse_frame
        datagrams: list[tuple[bytes, bytes]] = []  # (hint, frame) admitted
        for frame in batch:
            peeked = peek_datagram(self.linktype, frame)
            if peeked is None:
                syns.append(frame)
                continue
            if isinstance(peeked, str):
                if peeked == WRAPPED:
                    self.wrapped += 1  # the kernel filter refuses these: counted to show it
                else:
                    self.dropped += 1
                continue
            hint, source, payload = peeked
            if not filters.knows(hint):
                self.unknown_hints += 1  # no current user's packet: not worth a parse
                self.report(source, "unknown_user", now)
                continue
            shed = self.shedder.admit(hint, source, payload, now)
            if shed is not None:
                self.report(source, shed, now)  # a replay or over budget: no crypto spent, and told at a bounded rate
                continue
            datagrams.append((hint, frame))
            if payload[1] == P1_TYPE:
                filters.on_p1(source, hint, now)
        filters.expire(now)
        if filters.due(now):
            # Before this batch goes to auth: the knocks of its P1s are on their way already.
            form = self.kernel_filter.knocks(filters.pairs, filters.admitted.sources())
            if self.kernel_filter.refusals:
                self.filter_refused(form, now)
            if form is None:
                filters.refused(now)
            else:
                filters.installed(form)
        # SYNs cost auth a look-up, datagrams an AEAD check each: SYNs first, then one datagram
        # of each hint in turn, so no hint's burst queues ahead of another hint's first datagram.
        for frame in syns + fair_order(datagrams):
            parsed = parse_frame(self.linktype, bytes(frame), self.addresses, self.config.control_port)
            if isinstance(parsed, str):
                self.dropped += 1
                continue
            if self.gateway:
                parsed = dataclasses.replace(parsed, gateway=self.gateway)
            if isinstance(parsed, bus.Syn):
                filters.on_syn(parsed.source, now)
            try:
                self.to_auth.send(bus.encode(parsed), zmq.NOBLOCK)
                self.forwarded += 1
            except zmq.Again:
                self.bus_full += 1
                self.log_bad("auth is not keeping up (or down): packet dropped")

    def filter_refused(self, form: str | None, now: float) -> None:
        """The kernel refused a knock filter: said at once, then at most once a minute with a count (the
        heartbeat's filter_refused counts every refusal)."""
        if self.refused_logged_at is not None and now - self.refused_logged_at < REFUSED_LOG_EVERY_S:
            return
        first = self.kernel_filter.refusals[0]
        count = self.kernel_filter.refused - self.refused_logged
        since = "the start" if self.refused_logged_at is None else "the last such line"
        self.refused_logged_at, self.refused_logged = now, self.kernel_filter.refused
        size = f"{first.instructions:,} instructions, " if first.instructions else ""
        detached = " after taking the old one off (not even the shortest fitted beside it)" \
            if self.kernel_filter.detached else ""
        outcome = f"passing the {form!r} form instead{detached}" if form is not None else \
            f"no form fitted, not even alone: no kernel filter now, capture checks every frame (retried in " \
            f"{RETRY_S:g} s)"
        self.log.warning(
            "The kernel refused capture's knock filter (%s%r form, %d pending pairs): %s; %s. "
            "A swap charges the old and the new filter together against net.core.optmem_max: raise it to keep "
            "exact pairs. %d refused since %s (heartbeat: filter_refused; this line at most every %g s).",
            size, first.form, len(self.filters.pairs), first.error, outcome, count, since, REFUSED_LOG_EVERY_S)

    def figures(self) -> dict[str, Any]:
        # Gathered only when a heartbeat is due: pcap stats are a system call, not one per batch.
        received, kernel_dropped, if_dropped = self.handle.stats()
        filters, admitted = self.filters, self.filters.admitted
        return {"received": received, "kernel_dropped": kernel_dropped, "interface_dropped": if_dropped,
                "forwarded": self.forwarded, "dropped": self.dropped, "bus_full": self.bus_full,
                "unknown_hints": self.unknown_hints, "wrapped": self.wrapped, "shed": dict(self.shedder.dropped),
                "filter_pairs": len(filters.pairs), "filter_admitted": len(admitted), "admitted": admitted.total,
                "admit_full": admitted.full, "filter_changes": filters.changes, "filter_form": filters.form,
                "filter_refused": self.kernel_filter.refused,  # knock filters the kernel refused (fell back)
                "filter_generation": filters.generation}  # -1: no knock filter from auth yet (knocks cannot pass)

    def closing(self) -> None:
        self.log.info("Capture stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
