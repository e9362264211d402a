"""knock-relay: relaying each door's one authorised peer to the service.

With nftables (gate.backend = "nftables") the relay has one listener per address
family on ``server.relay_port``, a privileged port that no ordinary local user can
take (the relay holds CAP_NET_BIND_SERVICE for it): the gate redirects a relayed
door's connection there, and the relay reads from the connection the door port the
client asked for (SO_ORIGINAL_DST), so a door never depends on a port any local
process could bind. Without nftables ("none") it listens on each door's port,
which a local process holding that port denies (docs/SECURITY.md L5).

The main thread polls the command socket and the listeners; each
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
import functools
import logging
import os
import queue
import resource
import socket
import struct
import sys
import threading
import time
from typing import Any

import zmq

from dynknock import bus
from dynknock.config import Config
from dynknock.relay import core
from dynknock.relay.pump import Totals, relay_connection
from dynknock.stage import (
    Shell,
    common_arguments,
    drop_capabilities,
    drop_privileges,
    load_config_or_exit,
    now_ms,
    setup_logging,
)
from dynknock.topics import Topic

CONNECT_TIMEOUT_S = 5.0
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>; IP6T_SO_ORIGINAL_DST is the same number at SOL_IPV6
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


def open_redirect_listeners(config: Config) -> list[socket.socket]:
    """The relay's listeners on server.relay_port, one per family (SO_ORIGINAL_DST is per family).

    Opened before privileges are dropped: a port below 1024 needs root or CAP_NET_BIND_SERVICE, which is
    the point (no ordinary user can take it first). A host without IPv6 gets the IPv4 one alone.
    """
    listeners: list[socket.socket] = []
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
                continue
            raise
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, config.relay_port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            for other in listeners:
                other.close()
            raise
        listeners.append(sock)
    return listeners


def original_door_port(conn: socket.socket) -> int | None:
    """The port the client asked for before nftables redirected its connection here, or None."""
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
        else:
            raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # SOL_IPV6; struct sockaddr_in6
    except OSError:
        return None
    port: int = struct.unpack_from("!H", raw, 2)[0]
    return port


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
    redirected: list[socket.socket] = []
    if config.gate_backend == "nftables":
        try:
            redirected = open_redirect_listeners(config)
        except OSError as exc:
            why = {errno.EACCES: "a port below 1024 needs CAP_NET_BIND_SERVICE, which supervisord.conf gives the "
                                 "relay (setpriv ... +net_bind_service)",
                   errno.EADDRINUSE: f"another process holds it (ss -ltnp 'sport = :{config.relay_port}')"}
            print(f"knock-relay: cannot listen on TCP port {config.relay_port} (server.relay_port in {config.path}): "
                  f"{exc.strerror}; {why.get(exc.errno or 0, 'check the port')}", file=sys.stderr)
            return 2
    drop_privileges(config.run_as)  # started as root by hand: never keep it
    drop_capabilities()  # CAP_NET_BIND_SERVICE served its purpose: the port is bound
    log = setup_logging("relay")
    limit = raise_descriptor_limit()
    return RelayShell(config, log, limit, redirected).run()


class RelayShell(Shell):
    """Opens and closes door listeners on auth's commands; accepts the authorised peer and hands each
    connection to its pump threads (relay/pump.py), which report back through a queue so that only
    this thread touches zmq sockets.

    A gateway serving auth replicas ([replicas.NAME]) takes commands from each replica's auth key alone
    (transport.py); each door is its opener's (core.Door.opener, the key's name read from every frame's
    User-Id): a replica's DoorSet and DoorClose concern its own doors, and its DoorUsed reports go to it.
    """

    DROPPED = Topic.RELAY_MESSAGE_DROPPED

    def __init__(self, config: Config, log: logging.Logger, limit: int,
                 redirected: list[socket.socket] | None = None) -> None:
        super().__init__("relay", config, log)
        settings = core.RelaySettings(config.door_port_low, config.door_port_high, config.window_seconds,
                                      frozenset((s.host, s.port) for s in config.services.values()))
        self.table = core.DoorTable(settings)
        self.commands = self.socket(zmq.ROUTER, bind="relay")
        self.watch(self.commands, self.serve_commands)
        self.listeners: dict[int, socket.socket] = {}  # door port -> listener
        self.door_peers: dict[str, bytes] = {}  # door id -> the connection of the auth that opened it (DoorUsed)
        # With replicas, who sent each command: the name of its CURVE key (auth@NAME); and each replica's
        # connection now (its ROUTER identity changes when it reconnects or restarts), so that a DoorUsed
        # reaches the replica that opened the door on whichever connection it has.
        self.replicated = bool(config.replicas)
        self.key_names = self.transport.peer_names() if self.replicated else {}  # z85 public key -> name
        self.routes: dict[str, bytes] = {}
        self.foreign_refused = 0  # closes refused because the door is another replica's (since the start)
        self.paused: dict[int, float] = {}  # door port -> monotonic time its listener is polled again
        self.deferred_accepts = 0  # accepts put off for want of a descriptor (heartbeat figure)
        self.finished: queue.SimpleQueue[tuple[core.Door, str, Totals]] = queue.SimpleQueue()
        self.active = 0
        # nftables redirects every relayed door to these (empty: a listener per door, gate.backend "none").
        self.redirected = redirected or []
        for sock in self.redirected:
            self.watch(sock, functools.partial(self.accept_redirected, sock))
        # Counted with the bus's sockets open: what is left is for doors and connections.
        self.budget = core.DescriptorBudget(limit, open_descriptors())
        log.info("Relay started: doors %d-%d%s, descriptor limit %d.", config.door_port_low, config.door_port_high,
                 f" redirected to port {config.relay_port}" if self.redirected else ", a listener each",
                 self.budget.limit)

    def timeout_ms(self) -> int:
        return 200

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "doors": len(self.table), "door_ports": sorted(d.port for d in self.table.doors()),
            "connections": self.active, "deferred_accepts": self.deferred_accepts,
            "doors_by_opener": self.table.by_opener()}
        if self.replicated:
            figures["foreign_refused"] = self.foreign_refused
        return figures

    def serve_commands(self) -> None:
        """As Shell.serve, knowing each command's sender: with replicas, the key behind its frame."""
        for _ in range(self.BATCH):
            try:
                frames = self.commands.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.log_bad("Dropped a message of %d frames", len(frames))
                continue
            identity = frames[0].bytes
            self.peer = identity
            opener = self.opener_of(identity, frames[1])
            request = self.decode(frames[1].bytes)
            result = self.answer(request, opener) if request is not None else None
            if result is not None:
                self.commands.send_multipart([identity, bus.encode(result)])

    def opener_of(self, identity: bytes, frame: zmq.Frame) -> str:
        """With replicas, the name of the key behind a frame's connection (ZeroMQ's User-Id of the CURVE peer,
        which only a holder of that secret key can be), whose current connection it also notes; else ""."""
        if not self.replicated:
            return ""
        try:
            key = str(frame.get("User-Id"))
        except zmq.ZMQError:  # no CURVE peer behind it: cannot be with replicas (tcp+CURVE), but never guess
            key = "?"
        name = self.key_names.get(key, key)
        self.routes[name] = identity
        return name

    def answer(self, command: bus.Message, opener: str = "") -> bus.DoorResult | None:
        if isinstance(command, bus.DoorOpen):
            return self.open_door(command, opener)
        if isinstance(command, bus.DoorClose):
            door = self.table.get(command.door_id)
            if door is not None:
                refusal = self.table.close_refusal(door, opener)
                if refusal:
                    # A replica closes its own doors only (a revoked user's doors are closed by the replicas
                    # that opened them; one that is down leaves them to the end of their windows).
                    self.foreign_refused += 1
                    self.log_bad("Refused to close port %d for %s from %s: %s", door.port, door.client, opener,
                                 refusal)
                    self.events.publish(Topic.RELAY_DOOR_REFUSED, client=command.client, port=command.port,
                                        reason=refusal)
                    return bus.DoorResult(command.door_id, "relay", False, refusal)
                self.close_listener(door, "closed by auth")
            return bus.DoorResult(command.door_id, "relay", True)
        if isinstance(command, bus.DoorSet):
            # Every door this auth believes open here: a listener for any other of its doors has outlived its
            # knowledge. Another replica's doors are that replica's to judge.
            believed = {str(entry[0]) for entry in command.doors if isinstance(entry, list) and entry}
            for door in self.table.unknown_to(opener, believed):
                self.close_listener(door, f"{opener or 'auth'} does not know it")
            return None
        self.unexpected(command)
        return None

    def open_door(self, command: bus.DoorOpen, opener: str = "") -> bus.DoorResult:
        try:
            door = self.table.validate(command, now_ms(), opener)
            if not self.redirected and door.port not in self.listeners:
                if not self.budget.can_open_door(len(self.listeners), self.active):
                    raise OSError(errno.EMFILE, f"{len(self.listeners)} doors and {self.active} connections hold "
                                                f"its budget, limit {self.budget.limit}")
                sock = open_listener(door.port)
                self.listeners[door.port] = sock
                self.watch(sock, functools.partial(self.accept, door.port))
        except (core.Invalid, OSError) as exc:
            detail = core.listener_refusal(exc) if isinstance(exc, OSError) else str(exc)
            if detail.startswith(core.OUT_OF_DESCRIPTORS):
                self.log_bad("Refused port %d for %s: %s", command.port, command.client, detail)
            self.events.publish(Topic.RELAY_DOOR_REFUSED, client=command.client, port=command.port, reason=detail)
            return bus.DoorResult(command.door_id, "relay", False, detail)
        self.table.add(door)
        self.door_peers[door.door_id] = self.peer
        self.log.info("Listening on door port %d for %s (%s).", door.port, door.user, door.client)
        self.events.publish(Topic.RELAY_DOOR_LISTENING, user=door.user, client=str(door.client), port=door.port)
        return bus.DoorResult(command.door_id, "relay", True)

    def close_listener(self, door: core.Door, why: str) -> None:
        sock = self.listeners.pop(door.port, None)
        if sock is not None:
            if self.paused.pop(door.port, None) is None:
                self.unwatch(sock)
            sock.close()
        self.table.remove(door)
        self.door_peers.pop(door.door_id, None)
        self.events.publish(Topic.RELAY_DOOR_CLOSED, user=door.user, client=str(door.client), port=door.port,
                            why=why)
        if why == "window":
            self.log.info("Port %d for %s timeout and closed.", door.port, door.client)

    def pause(self, port: int, sock: socket.socket) -> None:
        """Stop polling a listener whose queued connection cannot be accepted now (no busy loop); `port` is
        the door's, or the negated descriptor of a redirect listener."""
        self.deferred_accepts += 1
        self.unwatch(sock)
        self.paused[port] = time.monotonic() + ACCEPT_BACKOFF_S

    def resume_listeners(self) -> None:
        now = time.monotonic()
        for port, when in list(self.paused.items()):
            if when <= now:
                del self.paused[port]
                if port < 0:
                    sock = next(s for s in self.redirected if s.fileno() == -port)
                    self.watch(sock, functools.partial(self.accept_redirected, sock))
                else:
                    self.watch(self.listeners[port], functools.partial(self.accept, port))

    def accept_redirected(self, sock: socket.socket) -> None:
        """Connections nftables redirected here: each one's door by the port its client asked for."""
        for _ in range(self.BATCH):
            if not self.budget.can_accept(0, self.active):
                self.pause(-sock.fileno(), sock)
                self.log_bad("Connections wait: %d connections use the descriptors (limit %d).", self.active,
                             self.budget.limit)
                return
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self.pause(-sock.fileno(), sock)
                self.log_bad("Connections wait: accept failed (%s); %d connections, descriptor limit %d.",
                             exc.strerror or exc, self.active, self.budget.limit)
                return
            port = original_door_port(conn) or 0
            verdict, door = self.table.on_connection(port, peer[0])
            if verdict is not core.Verdict.ACCEPT or door is None:
                reset(conn)
                self.log_bad("Refused a connection to port %s from %s: no door of its.", port, peer[0])
                self.events.publish(Topic.RELAY_CONNECTION_REFUSED, port=port,
                                    peer=str(core.normalise_peer(peer[0])), reason="no door for this address")
                continue
            self.serve_connection(conn, door, port)

    def serve_connection(self, conn: socket.socket, door: core.Door, port: int) -> None:
        """An accepted connection of a door: to its pump threads; tell auth if a single-use door is used."""
        self.active += 1
        self.events.publish(Topic.RELAY_CONNECTION_ACCEPTED, user=door.user, client=str(door.client), port=port)
        conn.setblocking(True)

        def done(totals: Totals, door: core.Door = door) -> None:
            self.finished.put((door, "", totals))

        try:
            threading.Thread(target=relay_connection, args=(conn, door.target, CONNECT_TIMEOUT_S, done),
                             name=f"relay-{port}", daemon=True).start()
        except RuntimeError as exc:  # no thread left: the connection cannot be served
            reset(conn)
            self.log_bad("Dropped a connection to port %d: %s", port, exc)
            done(Totals(error=f"relay could not start a thread: {exc}"))
        opened_on = self.door_peers.get(door.door_id)
        peer = self.routes.get(door.opener, opened_on) if door.opener else opened_on
        if door.single_use and peer is not None:
            # Tell the auth that opened it: a used single-use door stops counting against its user's cap.
            self.commands.send_multipart([peer, bus.encode(bus.DoorUsed(door.door_id, "relay", str(door.client),
                                                                        port))])
        if self.table.should_close(door, now_ms()):
            self.close_listener(door, "single use")

    def accept(self, port: int) -> None:
        sock = self.listeners[port]
        listeners, budget = self.listeners, self.budget
        while True:
            if not budget.can_accept(len(listeners), self.active):
                self.pause(port, sock)
                self.log_bad("Connection to port %d waits: %d doors and %d connections use the descriptors "
                             "(limit %d).", port, len(listeners), self.active, budget.limit)
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
                self.pause(port, sock)
                self.log_bad("Connection to port %d waits: accept failed (%s); %d doors, %d connections, "
                             "descriptor limit %d.", port, exc.strerror or exc, len(listeners), self.active,
                             budget.limit)
                return
            verdict, door = self.table.on_connection(port, peer[0])
            if verdict is not core.Verdict.ACCEPT or door is None:
                reset(conn)
                self.log_bad("Refused a connection to port %d from %s: not the authorised address.", port, peer[0])
                self.events.publish(Topic.RELAY_CONNECTION_REFUSED, port=port,
                                    peer=str(core.normalise_peer(peer[0])), reason="door refused a foreign IP")
                continue
            self.serve_connection(conn, door, port)
            if self.listeners.get(port) is not sock:
                return  # the listener closed with the door (single use)

    def turn(self) -> None:
        self.resume_listeners()
        for door in self.table.expired(now_ms()):
            self.close_listener(door, "window" if door.accepted == 0 else "single use")
        while not self.finished.empty():
            door, _, totals = self.finished.get()
            self.active -= 1
            self.events.publish(Topic.RELAY_CONNECTION_CLOSED, user=door.user, client=str(door.client),
                                port=door.port, bytes_to_service=totals.to_service, bytes_to_client=totals.to_client,
                                error=totals.error)

    def closing(self) -> None:
        for sock in [*self.listeners.values(), *self.redirected]:
            sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
