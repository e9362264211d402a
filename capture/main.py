"""knock-capture: the only stage that starts as root.

It opens the capture handle, drops to server.run_as before it reads a single
packet (changing the BPF filter of an open handle needs no privilege), then
moves packets that passed the filter to auth and follows auth's knock filter.
A gateway served by several auth replicas ([replicas.NAME]) sends each
client's packets to one live replica (capture/routing.py) and follows the union
of the live replicas' filters (capture/filters.py).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import sys
import time
from typing import Any

import pcap
import zmq
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus
from dynknock.capture.bpf import KernelFilter
from dynknock.capture.core import WRAPPED, build_filter, parse_frame, peek_datagram
from dynknock.capture.fairness import Shedder, fair_order
from dynknock.capture.filters import ONE_AUTH, RETRY_S, Filters
from dynknock.capture.routing import FILTERS, PACKETS, SILENT, Change, Router
from dynknock.config import Config, ReplicaConfig
from dynknock.limits import PerSecond
from dynknock.protocol import PacketType
from dynknock.stage import (
    RateLimitedLog,
    Shell,
    common_arguments,
    drop_privileges,
    gateway_label,
    load_config_or_exit,
    setup_logging,
)
from dynknock.topics import Topic
from dynknock.transport import gateway_key_name

SNAPLEN = 256
REJECT_EVENTS_PER_SECOND = 20
# Frames taken from the kernel per turn of the loop: a flood fills the ring faster than a
# turn drains it, and one unbounded read (readpkts) then keeps the loop from auth's
# filter messages (new knocks' SYNs wait for them) for as long as the flood lasts.
MAX_BATCH = 256
P1_TYPE = PacketType.P1.value
# Capture's scheduling priority, set while it is still root. A P1's knocks follow it by 5 ms and pass
# the kernel only once capture has read the P1 and admitted its sender (capture/fairness.py
# Admissions): on a busy machine (many clients knocking, or a flood) capture at the usual priority
# waits its turn longer than that. Its work per packet is bounded by its budgets.
NICE = -5
# The kernel refusing a knock filter (capture/bpf.py KernelFilter) is logged at once, then at most this
# often with a count: with hundreds of clients pending it may refuse several attaches a second.
REFUSED_LOG_EVERY_S = 60.0
# Auth replicas: each link pings its replica this often (ZMTP heartbeats) and gives it up
# after failover_after_s without an answer: a replica whose host vanished (no FIN, no RST) then counts
# as disconnected within that time and one interval, and its silence says so by then too.
HEARTBEAT_IVL_MS = 300
# Packets dropped because no replica is live: one log line a second at most (with a count of the rest).
NO_REPLICA_LOGS_PER_SECOND = 1
LINK_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
SEND_HWM = 50_000


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
        self.watch(handle.fileno())  # wakes the loop; turn() reads the ring whatever the poll says
        # A fleet's auth serves several gateways: each packet names the one it was seen at (one host: not needed).
        self.gateway = gateway_label(config)
        self.filters = Filters(kernel_filter.atomic)
        # Where packets go: the one auth (replica ""), or one PUSH per replica, each packet to
        # its client's replica (self.router). Bounded queues: if auth falls behind, capture drops (and
        # counts) instead of growing without limit; IMMEDIATE keeps nothing queued for an absent auth.
        self.to_replica: dict[str, zmq.Socket[Any]] = {}
        self.router: Router | None = None
        if config.replicas:
            self.router = Router(config.replicas, config.failover_after_s, time.monotonic())
            self.filters.set_live((), time.monotonic())  # nobody's filters pass until a replica is up
            for replica in config.replicas.values():
                self.connect_replica(replica)
            log.info("Capture serves the auth replicas %s; a replica disconnected, or silent for %g s, "
                     "gets no packets.", ", ".join(sorted(config.replicas)), config.failover_after_s)
        else:
            self.to_replica[ONE_AUTH] = self.socket(zmq.PUSH, connect="packets",
                                                    options={zmq.SNDHWM: SEND_HWM, zmq.IMMEDIATE: 1})
            from_auth = self.socket(zmq.SUB, connect="knock_filter", options={zmq.SUBSCRIBE: b""})
            self.watch(from_auth, functools.partial(self.read_filters, from_auth, ONE_AUTH))
        self.log_no_replica = RateLimitedLog(log, NO_REPLICA_LOGS_PER_SECOND)
        self.shedder = Shedder()
        self.reject_budget = PerSecond(REJECT_EVENTS_PER_SECOND)  # reports on the bus: a flood must not flood it
        self.forwarded = self.dropped = self.bus_full = self.wrapped = self.unknown_hints = 0
        self.batch: list[bytes] = []
        self.refused_logged_at: float | None = None
        self.refused_logged = 0  # kernel_filter.refused when last logged
        log.info("Capture started on %s for %s, control port %d (running as uid %d).",
                 config.interface, ", ".join(sorted(self.addresses)), config.control_port, os.getuid())
        self.events.publish(Topic.CAPTURE_STARTED, interface=config.interface)

    def connect_replica(self, replica: ReplicaConfig) -> None:
        """A PUSH to the replica's packets and a SUB to its filters, each expecting the replica's own
        key (auth@NAME), each watched by a socket monitor (its handshakes and disconnections are what
        the router knows of its links) and pinged by ZMTP heartbeats (a vanished host is noticed)."""
        failover_ms = int(self.config.failover_after_s * 1000)
        # TTL: the replica, too, gives up a vanished gateway's connection after that long.
        heartbeats: dict[int, int | bytes] = {zmq.HEARTBEAT_IVL: HEARTBEAT_IVL_MS,
                                              zmq.HEARTBEAT_TIMEOUT: failover_ms, zmq.HEARTBEAT_TTL: failover_ms}
        links: tuple[tuple[str, int, str, dict[int, int | bytes]], ...] = (
            (PACKETS, zmq.PUSH, replica.packets, {zmq.SNDHWM: SEND_HWM, zmq.IMMEDIATE: 1}),
            (FILTERS, zmq.SUB, replica.knock_filter, {zmq.SUBSCRIBE: b""}))
        owner = gateway_key_name("auth", replica.name)
        for link, kind, url, options in links:
            sock = self.socket(kind, options={**heartbeats, **options})
            # Monitored before it connects, so that no handshake goes unseen.
            monitor = sock.get_monitor_socket(LINK_EVENTS)
            self.watch(monitor, functools.partial(self.read_monitor, monitor, replica.name, link))
            self.transport.connect_url(sock, url, owner)
            if link == PACKETS:
                self.to_replica[replica.name] = sock
            else:
                self.watch(sock, functools.partial(self.read_filters, sock, replica.name))

    def timeout_ms(self) -> int:
        # A full batch may have left frames in a ring block libpcap holds: come straight back.
        if len(self.batch) >= MAX_BATCH:
            return 0
        now = time.monotonic()
        wait = self.filters.wait_ms(now)
        if self.router is not None:
            silent_in = self.router.wait_ms(now)  # a live replica may fall silent before then
            if silent_in >= 0:
                wait = min(wait, silent_in)
        return wait

    def read_filters(self, sock: zmq.Socket[Any], replica: str) -> None:
        # Each knock filter is the whole list: only the newest of a batch is kept, so that capture does
        # not fall behind attaching filters that are already out of date when knocks come quickly.
        newest = None
        heard = False
        for _ in range(self.BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = self.decode(frame, "filter message")
            if isinstance(message, bus.KnockFilter | bus.HintFilter) and replica != ONE_AUTH \
                    and message.replica != replica:
                # The socket says who sent it (its CURVE key is auth@NAME): a replica naming another is
                # misconfigured (server.replica), and its filters must not pass as the other's.
                self.log_bad("Dropped a filter message naming replica %r from replica %s", message.replica, replica)
                continue
            if isinstance(message, bus.KnockFilter):
                newest = message
                heard = True
            elif isinstance(message, bus.HintFilter):
                heard = True
                if not self.filters.on_hints(message, replica):
                    self.log_bad("Dropped a hint message with a bad hint")
            elif message is not None:
                self.unexpected(message, " on the filter socket")
        now = time.monotonic()
        if newest is not None and not self.filters.on_knocks(newest, now, replica):
            self.log_bad("Dropped a filter message with a bad pair")
        if heard and self.router is not None:
            # After its filters are kept: a replica that comes up brings them with it.
            self.apply(self.router.heard(replica, now), now)

    def read_monitor(self, monitor: zmq.Socket[Any], replica: str, link: str) -> None:
        """A replica's link: handshake done (connected), connection gone, or our key refused."""
        assert self.router is not None
        for _ in range(self.BATCH):
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.apply(self.router.connected(replica, link, now), now)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.apply(self.router.disconnected(replica, link, now), now)
            else:  # a failed handshake: the link never came up (ZeroMQ tries again by itself)
                self.log_bad("Replica %s's %s endpoint refused our handshake (event %d): check that it holds "
                             "the key %s and admits %s", replica, link, kind, gateway_key_name("auth", replica),
                             self.transport.own_key)

    def apply(self, change: Change | None, now: float) -> None:
        """A replica went up or down: said once, and only the live replicas' filters pass."""
        if change is None or self.router is None:
            return
        live = self.router.live
        if change.up:
            self.log.info("Replica %s is up (%s): its clients' packets go to it.", change.replica, change.why)
        else:
            why = f"silent for {self.config.failover_after_s:g} s" if change.why == SILENT else \
                f"disconnected: its {change.link} link closed"
            self.log.warning("Replica %s is down (%s): its clients' packets go to %s.", change.replica, why,
                             ", ".join(live) if live else "nobody (no replica is up: packets are dropped)")
        self.filters.set_live(live, now)

    def send(self, message: bus.Datagram | bus.Syn) -> None:
        """To the one auth, or to the client's replica (none up: dropped, counted, logged within a rate)."""
        replica = ONE_AUTH if self.router is None else self.router.route(message.source)
        if replica is None:
            assert self.router is not None
            self.log_no_replica("No auth replica is up: a packet from %s dropped (%d so far)",
                                message.source, self.router.dropped)
            return
        try:
            self.to_replica[replica].send(bus.encode(message), zmq.NOBLOCK)
            self.forwarded += 1
        except zmq.Again:
            self.bus_full += 1
            self.log_bad("auth is not keeping up (or down): packet dropped")

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
        if self.router is not None:
            for change in self.router.expire(now):
                self.apply(change, now)
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
            self.send(parsed)

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
        replicated: dict[str, Any] = {}
        if self.router is not None:
            replicas = self.router.figures(time.monotonic(), time.time())
            for name, figures in replicas.items():  # what each replica's filters hold (down: nothing)
                figures["filter_generation"] = filters.generations.get(name, -1)
                figures["filter_pairs"] = len(filters.replica_pairs.get(name, ()))
            # no_replica: packets dropped because no replica was up to take them (fail closed).
            replicated = {"replicas": replicas, "no_replica": self.router.dropped}
        return {**replicated,"received": received, "kernel_dropped": kernel_dropped, "interface_dropped": if_dropped,
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
