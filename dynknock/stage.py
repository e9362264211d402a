"""What every stage's shell shares: the skeleton (Shell), logging, limiters, the event publisher,
privileges.

Every stage (capture, auth, gate, relay) is a pure core and a Shell: one ZeroMQ context and
transport, one event publisher with its heartbeat, one stop signal, and one loop: heartbeat
when due, poll, read what is ready, the stage's own turn. Requests are decoded and dispatched
in one way, and a bad one is dropped, logged within a rate and (gate, relay) reported: a
stage never dies of a message. A maintainer learns this once; what differs between stages
lives in their cores and in the few methods a Shell overrides.

Log lines go to stdout (supervisord keeps them), in the paper's daemon style:
``2004-05-02 14:39.50 Port request received from foobar. (10.0.0.3, 10.0.0.3)``.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import logging
import os
import pwd
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from dynknock import bus, topics
from dynknock.config import Config, ConfigError, config_path, load
from dynknock.limits import PerSecond
from dynknock.topics import Topic
from dynknock.transport import (
    GATEWAY_ROLES,
    REPLICA_ROLES,
    Transport,
    TransportError,
    gateway_key_name,
    refusals,
)


def setup_logging(stage: str) -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return logging.getLogger(stage)


class RateLimitedLog:
    """At most `per_second` lines a second; the rest are counted and summarised.

    Anything a remote peer can trigger is logged through this, so a flood can
    fill neither the disk nor the CPU with log lines.
    """

    def __init__(self, log: logging.Logger, per_second: int = 10) -> None:
        self._log = log
        self._budget = PerSecond(per_second)

    def __call__(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        suppressed = self._budget.ended(now)
        if suppressed:
            self._log.info("(%d similar lines suppressed)", suppressed)
        if self._budget.take(now):
            self._log.info(message, *args)


class Publisher:
    """Publishes events to knock-bus. Never blocks: a slow or absent tap loses events, nothing else."""

    def __init__(self, context: zmq.Context[Any], transport: Transport, stage: str, gateway: str = "",
                 replicas: Mapping[str, str] | None = None) -> None:
        self.stage = stage
        # A gateway stage of a fleet names its gateway in every event, so one tap tells hosts apart.
        self.gateway = gateway
        self._socket = context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, 10_000)
        if replicas:
            # A gateway stage serving auth replicas: every replica's knock-bus hears it, so the
            # status and metrics of each replica show every gateway (a PUB sends to every peer).
            for name, url in replicas.items():
                transport.connect_url(self._socket, url, gateway_key_name("bus", name))
        else:
            transport.connect(self._socket, "events")
        self._last_alive = 0.0

    def publish(self, topic: Topic, /, **fields: Any) -> None:
        if self.gateway:
            fields.setdefault("gateway", self.gateway)
        try:
            self._socket.send_multipart(bus.event(topic, self.stage, **fields), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def heartbeat_due(self, every_s: float = 2.0) -> bool:
        """True once per period: callers gather a heartbeat's figures only when it is sent."""
        now = time.monotonic()
        if now - self._last_alive < every_s:
            return False
        self._last_alive = now
        return True

    def alive(self, **fields: Any) -> None:
        refused = refusals()
        if refused:  # only over tcp+CURVE: handshakes our sockets refused, per endpoint
            fields["bus_refused"] = refused
        self.publish(topics.ALIVE[self.stage], pid=os.getpid(), **fields)

    def close(self) -> None:
        self._socket.close(0)


def gateway_label(config: Config) -> str:
    """The gateway name a gateway stage tags its packets and events with: over tcp (stages may be on
    several hosts) server.gateway; over ipc (one host, one gateway) nothing."""
    return config.gateway if config.bus_transport == "tcp" else ""


def common_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-c", "--config", help="config file (default: $DYNKNOCK_CONFIG or /etc/dynknock/dynknock.toml)")
    return parser


def load_config_or_exit(cli_value: str | None, stage: str) -> Config:
    try:
        return load(config_path(cli_value))
    except ConfigError as exc:
        print(f"knock-{stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def drop_privileges(user: str) -> None:
    """Become `user` (and its groups) for good, and never gain privileges again.

    Started as root (capture, or any stage run by hand): switch user. Either way
    set no_new_privs, so that a compromised stage cannot regain privileges
    through a setuid program.
    """
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise SystemExit(f"server.run_as user {user!r} does not exist (useradd --system {user})") from None
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        os.setgroups(sorted({entry.pw_gid, *groups}))
        os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
        os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
        if os.geteuid() == 0 or os.getuid() == 0:
            raise SystemExit("failed to drop root privileges")
    set_no_new_privs()


PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def set_no_new_privs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")


def drop_capabilities() -> None:
    """Give up every capability of this thread for good (ambient, effective, permitted, inheritable).

    For a stage that needed one only at start (the relay binds its privileged port, then has no use
    for CAP_NET_BIND_SERVICE). Lowering one's own capabilities needs no privilege. Call it before any
    other thread exists (the zmq context makes some): capset(2) changes the calling thread alone.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}: all zero
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 or libc.capset(header, data) != 0:
        raise SystemExit(f"cannot drop capabilities: {os.strerror(ctypes.get_errno())}")


def transport_for(config: Config, stage: str) -> Transport:
    """ipc endpoints in bus.runtime_dir, or the configured tcp endpoints with CURVE."""
    if config.bus_transport == "tcp":
        # A gateway serving auth replicas names only gate and relay: the rest are each replica's ("": none here).
        named = {name: config.tcp_endpoints.get(name, "") for name in bus.ENDPOINT_NAMES}
        return Transport(bus.Endpoints(**named), stage, config.curve_dir, own_key_name(config, stage), config.replica)
    return Transport(bus.Endpoints.in_directory(config.runtime_dir), stage)


def own_key_name(config: Config, stage: str) -> str:
    """A gateway stage of a fleet uses its gateway's own key (`capture@gw-a`) when the host has
    it, so that auth can tell the gateways apart; else the role's shared key, as on one host
    (a fleet's auth refuses that key: the stage's handshake fails and auth logs why)."""
    if stage in GATEWAY_ROLES:
        name = gateway_key_name(stage, config.gateway)
        if (config.curve_dir / f"{name}.key_secret").exists():
            return name
    if stage in REPLICA_ROLES and config.replica:
        return gateway_key_name(stage, config.replica)  # an auth replica's own keys: auth@NAME, bus@NAME
    return ""


def open_bus(config: Config, stage: str, context: zmq.Context[Any], *, binds: bool = True) -> Transport:
    """Check the ipc directory (a stage that only connects, such as capture, needs it too: in a
    directory others can write, anyone could plant the sockets it connects to and read every P1/P2,
    or feed it knock filters), or, for a stage that binds over tcp, start CURVE authentication.
    Exits with one line on error."""
    transport = transport_for(config, stage)
    try:
        if config.bus_transport == "ipc":
            bus.ensure_runtime_dir(config.runtime_dir, config.path)
        elif binds:
            # A gateway's gate and relay serving auth replicas admit each replica's own auth key.
            replicas = tuple(config.replicas) if stage in GATEWAY_ROLES else ()
            transport.start_authenticator(context, fleet=config.fleet or bool(config.replica), replicas=replicas)
    except (bus.RuntimeDirError, TransportError) as exc:
        print(f"knock-{stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return transport


class StopSignal:
    """Set by SIGTERM or SIGINT. Stage loops check it between messages, so they end cleanly."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)
        signal.signal(signal.SIGINT, self._request)

    def _request(self, _signum: int, _frame: object) -> None:
        self.requested = True


def now_ms() -> int:
    return time.time_ns() // 1_000_000


Reader = Callable[[], None]
Pollable = zmq.Socket[Any] | socket.socket | int  # what Shell.watch polls


class Shell:
    """The skeleton of a stage's shell; a stage subclasses it and overrides what differs.

    The loop (run): heartbeat when due, with figures(); poll what watch() registered, for at
    most timeout_ms(); call the reader of each ready socket; then turn(), the stage's own work
    (timers, what no socket announces). At the stop signal: closing(), then the bus.
    """

    HEARTBEAT_S = 2.0
    # Frames read from one socket per turn: a flood on one socket cannot starve the others.
    BATCH = 1000
    # The event a bad request is reported on besides the log (a stage that answers commands).
    DROPPED: Topic | None = None

    def __init__(self, name: str, config: Config, log: logging.Logger, *, binds: bool = True) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.log_bad = RateLimitedLog(log)  # for anything a remote peer or a bad message can trigger
        self.stop = StopSignal()
        self.context: zmq.Context[Any] = zmq.Context()
        self.transport = open_bus(config, name, self.context, binds=binds)
        # A gateway stage of a fleet names its gateway in its events (auth serves every gateway).
        self.events = Publisher(self.context, self.transport, name,
                                gateway_label(config) if name in GATEWAY_ROLES else "",
                                {r.name: r.events for r in config.replicas.values()} if name in GATEWAY_ROLES
                                else None)
        self.poller = zmq.Poller()
        self._readers: dict[zmq.Socket[Any] | int, Reader] = {}
        # The ROUTER identity of the request serve() is answering: a stage that reports later on
        # what a request began (DoorUsed) keeps it to send to the same peer.
        self.peer = b""

    def socket(self, kind: int, *, bind: str = "", connect: str = "",
               options: Mapping[int, int | bytes] | None = None) -> zmq.Socket[Any]:
        """A socket that never lingers at exit, options set before it binds or connects to the named
        endpoint (transport.py: ipc or tcp+CURVE)."""
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        if bind:
            self.transport.bind(sock, bind)
        if connect:
            self.transport.connect(sock, connect)
        return sock

    def watch(self, source: Pollable, reader: Reader | None = None) -> None:
        """Poll a zmq socket, a socket or a descriptor; reader is called when it is readable (None:
        it only wakes the loop, turn() reads it)."""
        key = self._key(source)
        self.poller.register(key, zmq.POLLIN)
        self._readers[key] = reader or (lambda: None)

    def unwatch(self, source: Pollable) -> None:
        key = self._key(source)
        self.poller.unregister(key)
        del self._readers[key]

    @staticmethod
    def _key(source: Pollable) -> zmq.Socket[Any] | int:
        # The poller hands back a zmq socket as itself but any other socket as its descriptor.
        return source.fileno() if isinstance(source, socket.socket) else source

    def decode(self, frame: bytes, what: str = "message") -> bus.Message | None:
        """The message in frame, or None: a bad one is dropped, logged and (DROPPED) reported."""
        try:
            return bus.decode(frame)
        except bus.BadMessage as exc:
            self.log_bad("Dropped a bad %s: %s", what, exc)
            if self.DROPPED is not None:
                self.events.publish(self.DROPPED, reason=str(exc))
            return None

    def unexpected(self, message: bus.Message, where: str = "") -> None:
        """A valid message of the catalogue that has no business here: dropped and logged."""
        self.log_bad("Dropped an unexpected %s%s", type(message).__name__, where)

    def serve(self, sock: zmq.Socket[Any], answer: Callable[[bus.Message], bus.DoorResult | None]) -> None:
        """The requests queued on a ROUTER, [identity, frame] each: decoded, answered (None: no answer
        is due), a bad one dropped."""
        for _ in range(self.BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.log_bad("Dropped a message of %d frames", len(frames))
                continue
            identity, frame = frames
            self.peer = identity
            request = self.decode(frame)
            result = answer(request) if request is not None else None
            if result is not None:
                sock.send_multipart([identity, bus.encode(result)])

    # --- what a stage overrides ----------------------------------------------------------------

    def timeout_ms(self) -> int:
        """How long the loop may sleep when nothing is ready."""
        return 500

    def figures(self) -> dict[str, Any]:
        """The heartbeat's fields (gathered only when one is sent)."""
        return {}

    def turn(self) -> None:
        """The stage's work after each poll, whatever was ready."""

    def closing(self) -> None:
        """Before the bus closes, at the stop signal."""

    def run(self) -> int:
        while not self.stop.requested:
            if self.events.heartbeat_due(self.HEARTBEAT_S):
                self.events.alive(**self.figures())
            for source, _ in self.poller.poll(self.timeout_ms()):
                reader = self._readers.get(source)
                if reader is not None:  # None: an earlier reader of this turn stopped watching it
                    reader()
            self.turn()
        self.closing()
        self.events.close()
        self.context.destroy(0)
        return 0
