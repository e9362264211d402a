"""knock-relay: one listener per door, relaying the one authorised peer to the service.

The main thread polls the command socket and every door listener; each
accepted connection is pumped by its own threads (relay/pump.py), which report
back through a queue so that only the main thread touches zmq sockets.

Descriptors (a door is one, a connection six) are budgeted (core.DescriptorBudget)
so that some are always left for libzmq, which aborts when it finds none. A door
beyond the budget is refused with an ``out_of_descriptors:`` detail; a
connection beyond it, or whose accept fails anyway (EMFILE, ENFILE), waits in
the kernel's queue while its listener is left out of the poll for
ACCEPT_BACKOFF_S, instead of the poll returning at once for ever (100% CPU).
"""

from __future__ import annotations

import errno
import os
import queue
import resource
import socket
import struct
import threading
import time
from typing import Any

import zmq

from dynknock import bus
from dynknock.relay import core
from dynknock.relay.pump import Totals, relay_connection
from dynknock.stage import (
    Publisher,
    RateLimitedLog,
    StopSignal,
    common_arguments,
    drop_privileges,
    gateway_label,
    load_config_or_exit,
    now_ms,
    prepare_bus,
    setup_logging,
)

CONNECT_TIMEOUT_S = 5.0
ACCEPT_BACKOFF_S = 0.5
# Raised to the hard limit at start, but not past this: the default soft limit (1,024)
# is used up by about a thousand doors, and memory, not descriptors, should bound us.
NOFILE_CEILING = 1 << 16


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds


def raise_descriptor_limit() -> int:
    """Take the soft RLIMIT_NOFILE up to the hard one (capped); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_CEILING if hard == resource.RLIM_INFINITY else min(hard, NOFILE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def open_listener(port: int) -> socket.socket:
    """A dual-stack listener on every address (the firewall narrows who reaches it)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        address: tuple[Any, ...] = ("::", port)
    except OSError as exc:
        if exc.errno != errno.EAFNOSUPPORT:  # e.g. EMFILE: an IPv4 socket would fail the same way
            raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no IPv6 in this kernel
        address = ("0.0.0.0", port)
    if sock.family == socket.AF_INET6:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            sock.close()
            raise
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """Close with RST at once: the wrong peer gets no byte from the service."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def main(argv: list[str] | None = None) -> int:
    args = common_arguments("dynknock relay stage (per-door TCP forwarding)").parse_args(argv)
    config = load_config_or_exit(args.config, "relay")
    drop_privileges(config.run_as)  # started as root by hand: never keep it
    log = setup_logging("relay")
    limit = raise_descriptor_limit()
    settings = core.RelaySettings(config.door_port_low, config.door_port_high, config.window_seconds,
                                  frozenset((s.host, s.port) for s in config.services.values()))
    table = core.DoorTable(settings)
    context: zmq.Context[Any] = zmq.Context()
    transport = prepare_bus(config, "relay", context)
    commands = context.socket(zmq.ROUTER)
    commands.setsockopt(zmq.LINGER, 0)
    transport.bind(commands, "relay")
    events = Publisher(context, transport, "relay", gateway_label(config))
    log_bad = RateLimitedLog(log)
    poller = zmq.Poller()
    poller.register(commands, zmq.POLLIN)
    listeners: dict[int, socket.socket] = {}  # door port -> listener
    by_fd: dict[int, int] = {}  # listener fd -> door port
    paused: dict[int, float] = {}  # door port -> monotonic time its listener is polled again
    deferred_accepts = 0  # accepts put off for want of a descriptor (heartbeat figure)
    finished: queue.SimpleQueue[tuple[core.Door, str, Totals]] = queue.SimpleQueue()
    active = 0
    stop = StopSignal()
    budget = core.DescriptorBudget(limit, open_descriptors())

    def close_listener(door: core.Door, why: str) -> None:
        sock = listeners.pop(door.port, None)
        if sock is not None:
            by_fd.pop(sock.fileno(), None)
            if paused.pop(door.port, None) is None:
                poller.unregister(sock)
            sock.close()
        table.remove(door)
        events.publish("relay.door.closed", user=door.user, client=str(door.client), port=door.port, why=why)
        if why == "window":
            log.info("Port %d for %s timeout and closed.", door.port, door.client)

    def handle_command(identity: bytes, frame: bytes) -> None:
        try:
            command = bus.decode(frame)
        except bus.BadMessage as exc:
            log_bad("Dropped a bad message: %s", exc)
            events.publish("relay.message.dropped", reason=str(exc))
            return
        if isinstance(command, bus.DoorOpen):
            result = open_door(command)
        elif isinstance(command, bus.DoorClose):
            door = table.get(command.door_id)
            if door is not None:
                close_listener(door, "closed by auth")
            result = bus.DoorResult(command.door_id, "relay", True)
        else:
            log_bad("Dropped an unexpected %s", type(command).__name__)
            return
        commands.send_multipart([identity, bus.encode(result)])

    def open_door(command: bus.DoorOpen) -> bus.DoorResult:
        try:
            door = table.validate(command, now_ms())
            if door.port not in listeners:
                if not budget.can_open_door(len(listeners), active):
                    raise OSError(errno.EMFILE, f"{len(listeners)} doors and {active} connections hold "
                                                f"its budget, limit {budget.limit}")
                sock = open_listener(door.port)
                listeners[door.port] = sock
                by_fd[sock.fileno()] = door.port
                poller.register(sock, zmq.POLLIN)
        except (core.Invalid, OSError) as exc:
            detail = core.listener_refusal(exc) if isinstance(exc, OSError) else str(exc)
            if detail.startswith(core.OUT_OF_DESCRIPTORS):
                log_bad("Refused port %d for %s: %s", command.port, command.client, detail)
            events.publish("relay.door.refused", client=command.client, port=command.port, reason=detail)
            return bus.DoorResult(command.door_id, "relay", False, detail)
        table.add(door)
        log.info("Listening on door port %d for %s (%s).", door.port, door.user, door.client)
        events.publish("relay.door.listening", user=door.user, client=str(door.client), port=door.port)
        return bus.DoorResult(command.door_id, "relay", True)

    def pause(port: int, sock: socket.socket) -> None:
        """Stop polling a listener whose queued connection cannot be accepted now (no busy loop)."""
        nonlocal deferred_accepts
        deferred_accepts += 1
        poller.unregister(sock)
        paused[port] = time.monotonic() + ACCEPT_BACKOFF_S

    def resume_listeners() -> None:
        now = time.monotonic()
        for port, when in list(paused.items()):
            if when <= now:
                del paused[port]
                poller.register(listeners[port], zmq.POLLIN)

    def accept(port: int) -> None:
        nonlocal active
        sock = listeners[port]
        while True:
            if not budget.can_accept(len(listeners), active):
                pause(port, sock)
                log_bad("Connection to port %d waits: %d doors and %d connections use the descriptors "
                        "(limit %d).", port, len(listeners), active, budget.limit)
                return
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):  # that connection is gone, not stuck
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued and the listener
                # readable; polling it again at once would spin. Try again after a pause.
                pause(port, sock)
                log_bad("Connection to port %d waits: accept failed (%s); %d doors, %d connections, "
                        "descriptor limit %d.", port, exc.strerror or exc, len(listeners), active, budget.limit)
                return
            verdict, door = table.on_connection(port, peer[0])
            if verdict is not core.Verdict.ACCEPT or door is None:
                reset(conn)
                log_bad("Refused a connection to port %d from %s: not the authorised address.", port, peer[0])
                events.publish("relay.connection.refused", port=port, peer=str(core.normalise_peer(peer[0])),
                               reason="door refused a foreign IP")
                continue
            active += 1
            events.publish("relay.connection.accepted", user=door.user, client=str(door.client), port=port)
            conn.setblocking(True)

            def done(totals: Totals, door: core.Door = door) -> None:
                finished.put((door, "", totals))

            try:
                threading.Thread(target=relay_connection, args=(conn, door.target, CONNECT_TIMEOUT_S, done),
                                 name=f"relay-{port}", daemon=True).start()
            except RuntimeError as exc:  # no thread left: the connection cannot be served
                reset(conn)
                log_bad("Dropped a connection to port %d: %s", port, exc)
                done(Totals(error=f"relay could not start a thread: {exc}"))
            if table.should_close(door, now_ms()):
                close_listener(door, "single use")
                return

    log.info("Relay started: doors %d-%d, descriptor limit %d.", config.door_port_low, config.door_port_high,
             budget.limit)
    while not stop.requested:
        if events.heartbeat_due():
            events.alive(doors=len(table), connections=active, deferred_accepts=deferred_accepts)
        for fd_or_socket, _ in poller.poll(200):
            if fd_or_socket is commands:
                while True:
                    try:
                        frames = commands.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) == 2:
                        handle_command(frames[0], frames[1])
                    else:
                        log_bad("Dropped a message of %d frames", len(frames))
            else:
                fd = fd_or_socket if isinstance(fd_or_socket, int) else fd_or_socket.fileno()
                port = by_fd.get(fd)
                if port is not None:
                    accept(port)
        resume_listeners()
        for door in table.expired(now_ms()):
            close_listener(door, "window" if door.accepted == 0 else "single use")
        while not finished.empty():
            door, _, totals = finished.get()
            active -= 1
            events.publish("relay.connection.closed", user=door.user, client=str(door.client), port=door.port,
                           bytes_to_service=totals.to_service, bytes_to_client=totals.to_client,
                           error=totals.error)
    for sock in listeners.values():
        sock.close()
    events.close()
    context.destroy(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
