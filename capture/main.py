"""knock-capture: the only stage that starts as root.

It opens the capture handle, drops to server.run_as before it reads a single
packet (changing the BPF filter of an open handle needs no privilege), then
moves packets that passed the filter to auth and follows auth's knock filter.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
import time
from typing import Any

import pcap
import zmq

from dynknock import bus
from dynknock.capture.bpf import KernelFilter
from dynknock.capture.core import WRAPPED, build_filter, parse_frame, peek_datagram, valid_hints, valid_pairs
from dynknock.capture.fairness import Admissions, Shedder, fair_order
from dynknock.protocol import PacketType
from dynknock.stage import (
    PerSecond,
    Publisher,
    RateLimitedLog,
    StopSignal,
    common_arguments,
    drop_privileges,
    gateway_label,
    load_config_or_exit,
    setup_logging,
    transport_for,
)

STATS_EVERY_S = 2.0
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
# A change that only narrows the kernel filter (knocks seen, admissions ended) waits this long for the
# next change that widens it (a new knock), and they are attached together: one attach per new knock
# instead of four (1,800 in the scale benchmark). The narrowing may wait; a new knock's SYNs may not.
NARROW_AFTER_S = 0.05


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
    current_filter = build_filter(addresses, config.control_port, (), linktype=linktype)
    kernel_filter = KernelFilter(handle, linktype, SNAPLEN, addresses, config.control_port)
    kernel_filter.first(current_filter)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    except OSError as exc:  # not root (a test): the same, at the usual priority
        log.info("Capture keeps its priority (%s).", exc)
    drop_privileges(config.run_as)
    if config.bus_transport == "ipc":
        # Capture only connects, but into a directory others can write anyone could plant
        # the sockets it connects to (and read every P1/P2, or feed it knock filters).
        try:
            bus.ensure_runtime_dir(config.runtime_dir, config.path)
        except bus.RuntimeDirError as exc:
            print(f"knock-capture: {exc}", file=sys.stderr)
            return 2
    handle.setnonblock(True)

    transport = transport_for(config, "capture")
    context: zmq.Context[Any] = zmq.Context()
    to_auth = context.socket(zmq.PUSH)
    to_auth.setsockopt(zmq.LINGER, 0)
    # Bounded queue: if auth falls behind, capture drops (and counts) instead of
    # growing without limit; IMMEDIATE keeps nothing queued for an absent auth.
    to_auth.setsockopt(zmq.SNDHWM, 50_000)
    to_auth.setsockopt(zmq.IMMEDIATE, 1)
    transport.connect(to_auth, "packets")
    from_auth = context.socket(zmq.SUB)
    from_auth.setsockopt(zmq.LINGER, 0)
    from_auth.setsockopt(zmq.SUBSCRIBE, b"")
    transport.connect(from_auth, "knock_filter")
    events = Publisher(context, transport, "capture", gateway_label(config))
    # A fleet's auth serves several gateways: each packet names the one it was seen at (one host: not needed).
    gateway = gateway_label(config)
    log_drop = RateLimitedLog(log)

    poller = zmq.Poller()
    poller.register(handle.fileno(), zmq.POLLIN)
    poller.register(from_auth, zmq.POLLIN)
    stop = StopSignal()
    log.info("Capture started on %s for %s, control port %d (running as uid %d).",
             config.interface, ", ".join(sorted(addresses)), config.control_port, os.getuid())
    events.publish("capture.started", interface=config.interface)
    forwarded = dropped_python = bus_full = wrapped = 0
    generation = -1
    hints: frozenset[bytes] | None = None  # None until auth has told us: pass everything
    reject_budget = PerSecond(REJECT_EVENTS_PER_SECOND)  # reports on the bus: a flood must not flood it
    shedder = Shedder()

    def report(source: bytes, reason: str, now: float) -> None:
        """Rejections made here, reported (one budget for all, whatever the flood); an unknown hint is
        auth's `unknown_user`, reported in the same words. The source is peek_datagram's: no parse."""
        if reject_budget.take(now):
            events.publish("capture.packet.rejected", reason=reason, source=str(ipaddress.ip_address(source)))
    hints_generation = -1
    auth_pairs: list[tuple[str, int]] = []
    admitted = Admissions()  # P1s' senders, before auth has named their pairs (capture/fairness.py)
    filter_changes = 0
    filter_form = "pairs"
    widen = False  # the filter must let in something new: attach now
    narrow_at: float | None = None  # the filter may shut something out: attach by then
    installed_pairs: frozenset[tuple[str, int]] = frozenset()
    installed_admitted: frozenset[str] = frozenset()
    unknown_hints = 0
    batch: list[bytes] = []
    take = batch.append
    while not stop.requested:
        # A full batch may have left frames in a ring block libpcap holds: come straight back.
        if len(batch) >= MAX_BATCH or widen:
            timeout_ms = 0
        else:
            timeout_ms = 500 if not admitted else 100
            if narrow_at is not None:
                timeout_ms = max(0, min(timeout_ms, int((narrow_at - time.monotonic()) * 1000) + 1))
        ready = dict(poller.poll(timeout_ms))
        if from_auth in ready:
            # Each message is the whole list: only the newest matters. Compiling every one
            # in turn made capture fall behind as soon as knocks came in quickly.
            newest = None
            while True:
                try:
                    frame = from_auth.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    message = bus.decode(frame)
                except bus.BadMessage as exc:
                    log_drop("Dropped a bad filter message: %s", exc)
                    continue
                if isinstance(message, bus.KnockFilter):
                    newest = message
                elif isinstance(message, bus.HintFilter):
                    if message.generation != hints_generation:
                        fresh = valid_hints(message.hints)
                        if fresh is None:
                            log_drop("Dropped a hint message with a bad hint")
                        else:
                            hints, hints_generation = fresh, message.generation
                else:
                    log_drop("Dropped an unexpected %s on the filter socket", type(message).__name__)
            if newest is not None and newest.generation != generation:
                generation = newest.generation
                pairs = valid_pairs(newest.pairs)
                if pairs is None:
                    log_drop("Dropped a filter message with a bad pair")
                else:
                    auth_pairs = pairs
                    admitted.narrowed(source for source, _ in pairs)  # auth has read those P1s
                    if all(pair in installed_pairs or pair[0] in installed_admitted for pair in pairs):
                        narrow_at = narrow_at or time.monotonic() + NARROW_AFTER_S
                    else:
                        widen = True
        batch.clear()
        handle.dispatch(MAX_BATCH, lambda _ts, frame: take(frame))
        now = time.monotonic()
        syns: list[bytes] = []  # and whatever else the cheap check leaves to parse_frame
        datagrams: list[tuple[bytes, bytes]] = []  # (hint, frame) admitted
        for frame in batch:
            peeked = peek_datagram(linktype, frame)
            if peeked is None:
                syns.append(frame)
                continue
            if isinstance(peeked, str):
                if peeked == WRAPPED:
                    wrapped += 1  # the kernel filter refuses these: counted to show it
                else:
                    dropped_python += 1
                continue
            hint, source, payload = peeked
            if hints is not None and hint not in hints:
                unknown_hints += 1  # no current user's packet: not worth a parse
                report(source, "unknown_user", now)
                continue
            shed = shedder.admit(hint, source, payload, now)
            if shed is not None:
                report(source, shed, now)  # a replay or over budget: no crypto spent, and told at a bounded rate
                continue
            datagrams.append((hint, frame))
            if hints is not None and payload[1] == P1_TYPE and kernel_filter.atomic:
                # Its knocks follow 5 ms behind: let them in now, auth narrows it later.
                if admitted.p1(str(ipaddress.ip_address(source)), hint, now):
                    widen = True
        if admitted and admitted.expire(now):
            narrow_at = narrow_at or now
        if widen or (narrow_at is not None and now >= narrow_at):
            # Before this batch goes to auth: the knocks of its P1s are on their way already.
            widen, narrow_at = False, None
            filter_form = kernel_filter.knocks(auth_pairs, admitted.sources())
            installed_pairs, installed_admitted = frozenset(auth_pairs), frozenset(admitted.sources())
            filter_changes += 1
        # SYNs cost auth a look-up, datagrams an AEAD check each: SYNs first, then one datagram
        # of each hint in turn, so no hint's burst queues ahead of another hint's first datagram.
        for frame in syns + fair_order(datagrams):
            parsed = parse_frame(linktype, bytes(frame), addresses, config.control_port)
            if isinstance(parsed, str):
                dropped_python += 1
                continue
            if gateway:
                parsed = dataclasses.replace(parsed, gateway=gateway)
            if admitted and isinstance(parsed, bus.Syn) and admitted.syn(parsed.source):
                narrow_at = narrow_at or now  # more SYNs than a knock sends: no client's, shut out
            try:
                to_auth.send(bus.encode(parsed), zmq.NOBLOCK)
                forwarded += 1
            except zmq.Again:
                bus_full += 1
                log_drop("auth is not keeping up (or down): packet dropped")
        if not events.heartbeat_due(STATS_EVERY_S):
            continue  # pcap stats are a system call: not once per batch of packets
        received, kernel_dropped, if_dropped = handle.stats()
        events.alive(received=received, kernel_dropped=kernel_dropped,
                     interface_dropped=if_dropped, forwarded=forwarded, dropped=dropped_python,
                     bus_full=bus_full, unknown_hints=unknown_hints, wrapped=wrapped, shed=dict(shedder.dropped),
                     filter_pairs=len(auth_pairs), filter_admitted=len(admitted), admitted=admitted.total,
                     admit_full=admitted.full, filter_changes=filter_changes, filter_form=filter_form,
                     filter_generation=generation)  # -1: no knock filter from auth yet (knocks cannot pass)
    log.info("Capture stopped.")
    events.close()
    context.destroy(0)
    time.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
