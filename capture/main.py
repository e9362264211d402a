"""knock-capture: the only stage that starts as root.

It opens the capture handle, drops to server.run_as before it reads a single
packet (changing the BPF filter of an open handle needs no privilege), then
moves packets that passed the filter to auth and follows auth's knock filter.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pcap
import zmq

from capture.core import MAX_FILTER_PAIRS, build_filter, datagram_hint, parse_frame, valid_hints, valid_pairs
from dynknock import bus
from dynknock.stage import (
    Publisher,
    RateLimitedLog,
    StopSignal,
    common_arguments,
    drop_privileges,
    load_config_or_exit,
    setup_logging,
    transport_for,
)

STATS_EVERY_S = 2.0
REJECT_EVENTS_PER_SECOND = 20


class RejectBudget:
    """At most `per_second` reports a second: a flood must not flood the bus."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._second = -1
        self._left = 0

    def take(self, now_s: float) -> bool:
        second = int(now_s)
        if second != self._second:
            self._second, self._left = second, self.per_second
        if self._left <= 0:
            return False
        self._left -= 1
        return True


def main(argv: list[str] | None = None) -> int:
    args = common_arguments("dynknock capture stage (libpcap, needs root to start)").parse_args(argv)
    config = load_config_or_exit(args.config, "capture")
    log = setup_logging("capture")
    try:
        handle = pcap.pcap(name=config.interface, snaplen=256, promisc=False, immediate=True,
                           timeout_ms=50, buffer_size=8 * 1024 * 1024)
    except OSError as exc:
        print(f"knock-capture: cannot open interface {config.interface!r} (key server.interface in "
              f"{config.path}): {exc}", file=sys.stderr)
        return 2
    addresses = frozenset(config.addresses)
    current_filter = build_filter(addresses, config.control_port, ())
    handle.setfilter(current_filter)
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
    linktype = handle.datalink()

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
    events = Publisher(context, transport, "capture")
    log_drop = RateLimitedLog(log)

    poller = zmq.Poller()
    poller.register(handle.fileno(), zmq.POLLIN)
    poller.register(from_auth, zmq.POLLIN)
    stop = StopSignal()
    log.info("Capture started on %s for %s, control port %d (running as uid %d).",
             config.interface, ", ".join(sorted(addresses)), config.control_port, os.getuid())
    events.publish("capture.started", interface=config.interface)
    forwarded = dropped_python = bus_full = 0
    generation = -1
    hints: frozenset[bytes] | None = None  # None until auth has told us: pass everything
    unknown_budget = RejectBudget(REJECT_EVENTS_PER_SECOND)

    def report_unknown(frame: bytes) -> None:
        """Rejections made here are auth's `unknown_user`, reported (rate limited) in the same words."""
        if unknown_budget.take(time.monotonic()):
            source = parse_frame(linktype, bytes(frame), addresses, config.control_port)
            where = source.source if isinstance(source, bus.Datagram) else "?"
            events.publish("capture.packet.rejected", reason="unknown_user", source=where)
    hints_generation = -1
    unknown_hints = 0
    while not stop.requested:
        ready = dict(poller.poll(500))
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
                if len(newest.pairs) > MAX_FILTER_PAIRS:
                    wanted = build_filter(addresses, config.control_port, (), all_syns=True)
                else:
                    pairs = valid_pairs(newest.pairs)
                    if pairs is None:
                        log_drop("Dropped a filter message with a bad pair")
                        wanted = current_filter
                    else:
                        wanted = build_filter(addresses, config.control_port, pairs)
                if wanted != current_filter:
                    handle.setfilter(wanted)
                    current_filter = wanted
        for _ts, frame in handle.readpkts():
            if hints is not None:
                hint = datagram_hint(linktype, frame)
                if hint is not None and hint not in hints:
                    unknown_hints += 1  # no current user's packet: not worth a parse
                    report_unknown(frame)
                    continue
            parsed = parse_frame(linktype, bytes(frame), addresses, config.control_port)
            if isinstance(parsed, str):
                dropped_python += 1
                continue
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
                     bus_full=bus_full, unknown_hints=unknown_hints, filter_pairs=current_filter.count("src host"))
    log.info("Capture stopped.")
    events.close()
    context.destroy(0)
    time.sleep(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
