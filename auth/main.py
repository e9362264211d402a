"""knock-auth: the shell around the session engine. Unprivileged.

Moves packets from capture into the engine and carries out what it returns:
P3 replies (sent from the control port, so they pass the client's NAT), door
commands to gate and relay, the knock filter for capture, and events.

Fail closed: a door command that cannot be delivered at once (stage down)
counts as refused, and a door not confirmed by both stages within
open_timeout is closed again by the engine; a P3 OPEN is sent only after both
confirmed.
"""

from __future__ import annotations

import functools
import logging
import secrets
import socket
import sys
import time
from collections import Counter
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus, replies
from dynknock.auth import engine as eng
from dynknock.auth.doorstages import DoorStage, DoorStages
from dynknock.auth.etcd import EtcdStore, StoreError
from dynknock.auth.replay import ReplayCache, ReplayJournal
from dynknock.auth.replicated import StoreLink, open_store
from dynknock.auth.serverkey import ServerKey, ServerKeyError, load_server_key
from dynknock.auth.userlog import LOGGED_TOPICS, UserLog
from dynknock.auth.users import User, UsersFileError, load_users, parse_users
from dynknock.config import Config, ephemeral_overlap
from dynknock.events import describe
from dynknock.stage import (
    Shell,
    common_arguments,
    drop_privileges,
    load_config_or_exit,
    now_ms,
    setup_logging,
)
from dynknock.topics import Topic
from dynknock.transport import TransportError, key_gateway

TICK_S = 0.2
# How long a P2 that came before its knocks waits for them (the client's SYN echo follows it by 5 ms)
# before it is answered PENDING: EngineConfig.p2_hold_ms.
P2_HOLD_MS = 25
# The knock filter, the hints and the door sets (gate and relay empty any door auth does not know) go out
# this often, and whenever they change.
FILTER_REFRESH_S = 2.0
USERS_CHECK_S = 2.0
# Packets are read for at most this long before the batch's effects (journal sync, replies, door commands)
# go out: an unbounded turn under load held every door command behind it.
PACKETS_TURN_S = 0.010
# An auth replica tells the gateways its filters at least this often: a capture that hears nothing from it
# for bus.failover_after_s (1.5 s) sends its clients to another replica.
REPLICA_FILTER_REFRESH_S = 0.5


def engine_config(config: Config, capture_keys: dict[str, str] | None = None) -> eng.EngineConfig:
    return eng.engine_config(config, p2_hold_ms=P2_HOLD_MS, shared_nonces=config.store_kind == "etcd",
                             capture_keys=capture_keys or {})


def reply_sockets(config: Config) -> dict[str, socket.socket]:
    """The control port of each server address, to send P3 from (dynknock/replies.py)."""
    return replies.reply_sockets(config.addresses, config.control_port)


class AuthShell(Shell):
    """Packets from capture into the engine, door results from gate and relay, the engine's actions out."""

    def __init__(self, config: Config, users: dict[str, User], log: logging.Logger,
                 server_key: ServerKey | None = None, etcd: EtcdStore | None = None) -> None:
        super().__init__("auth", config, log)
        transport = self.transport
        self.log_user = UserLog(log)
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.journal = journal = ReplayJournal(config.state_dir / "replay.journal")
        # A fleet: which gateway each capture key speaks for (z85 key, ZeroMQ's User-Id -> gateway).
        capture_keys = {key: key_gateway(name) for key, name in transport.peer_names().items()} \
            if config.fleet else {}
        self.engine = eng.Engine(engine_config(config, capture_keys), users, ReplayCache(journal, now_ms()),
                                 secrets.token_bytes, secrets.randbelow, server_key)
        self.packets = self.socket(zmq.PULL, bind="packets", options={zmq.RCVHWM: 50_000})
        self.watch(self.packets, self.read_packets)
        self.filter = self.socket(zmq.PUB, bind="knock_filter")
        self.doors = DoorStages(self, config)
        for key, sock in self.doors:
            self.watch(sock, functools.partial(self.read_results, sock, key))
            # A dropped connection means the stage died or restarted (a restarted relay has lost
            # its listeners): the engine must stop counting on the doors that stage confirmed.
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self.watch(monitor, functools.partial(self.on_monitor, monitor, key))
        # A fleet's P3s leave from the gateways (bus.Reply): the auth host binds no control port.
        self.replies = {} if config.fleet else reply_sockets(config)
        self.filter_generation = 0
        self.filter_pairs: list[list[Any]] = []
        self._pending_filter: frozenset[tuple[str, int]] | None = None
        self._hints: frozenset[bytes] = frozenset()
        self._hints_generation = 0
        self._deferred: list[eng.Action] = []
        self.users_mtime = self._users_mtime()
        self.next_tick = self.next_filter = self.next_users = 0.0
        # Auth replicas (store.kind = "etcd"): claims, the users and the store's health come from the
        # store's threads (auth/replicated.py) through one socket.
        self.store = StoreLink(etcd, self.context, log) if etcd is not None else None
        store = self.store
        self.store_health: dict[str, Any] = {}
        self.users_revision = 0
        self.claims_refused: Counter[str] = Counter()
        if store is not None:
            self.watch(store.inbox, self.read_store)
        self.filter_refresh_s = REPLICA_FILTER_REFRESH_S if config.replica else FILTER_REFRESH_S
        self.log.info("Server started: control port %d on %s.", config.control_port, ", ".join(config.addresses))
        overlap = ephemeral_overlap(config.door_port_low, config.door_port_high)
        if overlap is not None:
            self.log.warning("server.door_ports %d-%d overlaps this host's ephemeral ports %d-%d "
                             "(net.ipv4.ip_local_port_range): outbound connections may take door ports, and "
                             "each such door must be moved to another port. Choose a range outside it "
                             "(default 63000-65535) in %s.", config.door_port_low, config.door_port_high,
                             overlap[0], overlap[1], config.path)
        self.events.publish(Topic.AUTH_STARTED, control_port=config.control_port)

    def _users_mtime(self) -> float:
        try:
            return self.config.users_file.stat().st_mtime
        except OSError:
            return 0.0

    # --- carrying out the engine's actions -----------------------------------

    def execute(self, actions: list[eng.Action]) -> None:
        for action in actions:
            if isinstance(action, eng.SendReply):
                self._send_reply(action)
            elif isinstance(action, eng.OpenDoor):
                command = bus.DoorOpen(action.door_id, action.user, str(action.client), action.port,
                                       action.target_host, action.target_port, action.expires_at_ms,
                                       self.config.single_use, kernel="relay" not in action.stages,
                                       sent_ms=now_ms())
                for stage in self.doors.open(command, action.gateway, action.stages):
                    self.execute(self.engine.on_door_result(action.door_id, stage, False, "stage not running",
                                                            now_ms()))
            elif isinstance(action, eng.CloseDoor):
                host, port = action.target or ("", 0)
                self.doors.close(bus.DoorClose(action.door_id, str(action.client), action.port, host, port, now_ms()),
                                 action.gateway)
            elif isinstance(action, eng.SetKnockFilter):
                # Published once per batch (run()): each message is the whole list.
                self._pending_filter = action.pairs
            elif isinstance(action, eng.ClaimNonce):
                if self.store is None:
                    raise RuntimeError("a claim without a shared store")  # our own bug: crash, restart clean
                self.store.claim(action.request_id, action.nonce, action.expiry_ms, now_ms())
            elif isinstance(action, eng.GatewayRefused):
                self.log_bad("%s", action.detail)  # counted by the engine (heartbeat: gateway_refusals)
            elif isinstance(action, eng.Notify):
                self.events.publish(action.topic, **action.fields)
                if action.topic not in LOGGED_TOPICS:
                    continue
                line = describe(bus.Event(action.topic, "auth", time.time(), action.fields))
                user = action.fields.get("user")
                if isinstance(user, str):
                    self.log_user(user, line, time.monotonic())
                elif action.topic == Topic.AUTH_REQUEST_REJECTED:
                    self.log_bad(line)
                else:
                    self.log.info(line)
            else:
                raise RuntimeError(f"unexpected action {action!r}")  # our own bug: crash, restart clean

    def _send_reply(self, reply: eng.SendReply) -> None:
        if self.config.fleet:
            # From the gateway the client knocked at (its NAT passes only that), by its gate.
            gate = self.doors.gate(reply.gateway)
            message = bus.Reply(str(reply.source), str(reply.destination), reply.port, reply.payload)
            try:
                if gate is None:
                    raise zmq.Again
                gate.send(bus.encode(message), zmq.NOBLOCK)
            except zmq.Again:  # that gate is down: the client asks again (P2), or gives up
                self.log_bad("No reply to %s: gateway %s's gate is not connected", reply.destination,
                                   reply.gateway)
            return
        failed = replies.send_reply(self.replies, str(reply.source), str(reply.destination), reply.port,
                                    reply.payload)
        if failed:
            self.log_bad("%s", failed)

    def publish_hints(self, force: bool) -> None:
        hints = self.engine.hints(now_ms())
        if hints == self._hints and not force:
            return
        if hints != self._hints:
            self._hints, self._hints_generation = hints, self._hints_generation + 1
        try:
            self.filter.send(bus.encode(bus.HintFilter(sorted(hints), self._hints_generation, self.config.replica)),
                             zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _publish_filter(self) -> None:
        message = bus.KnockFilter(self.filter_pairs, self.filter_generation, self.config.replica)
        try:
            self.filter.send(bus.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass

    # --- inputs ----------------------------------------------------------------

    def on_packet(self, frame: bytes, sender_key: str = "") -> None:
        """`sender_key`: in a fleet, the z85 key of the capture that pushed the frame. Which gateway a
        packet may count for is the engine's to say (auth/fleet.py); its refusals come back as actions."""
        message = self.decode(frame, "bus message")
        if message is None:
            return
        now = now_ms()
        try:
            if isinstance(message, bus.Datagram):
                actions = self.engine.on_captured_datagram(message.source, message.source_port, message.destination,
                                                           message.payload, now, message.gateway, sender_key)
            elif isinstance(message, bus.Syn):
                actions = self.engine.on_captured_syn(message.source, message.port, message.isn, now,
                                                      message.gateway, sender_key)
            else:
                actions = self.engine.on_captured_other(sender_key)
                if not actions:
                    self.unexpected(message, " on the packet socket")
                    return
        except ValueError as exc:  # an address capture should never have sent
            self.log_bad("Dropped a packet message with a bad field: %s", exc)
            return
        self._deferred += actions

    def flush(self) -> None:
        """The batch's effects, once its nonces are durable; then the newest knock filter."""
        self.journal.sync()
        actions, self._deferred = self._deferred, []
        self.execute(actions)
        if self._pending_filter is not None:
            self.filter_generation += 1
            self.filter_pairs = [[a, p] for a, p in sorted(self._pending_filter)]
            self._pending_filter = None
            self._publish_filter()

    def read_packets(self) -> None:
        # In bounded batches (Shell.BATCH, and PACKETS_TURN_S of work), so a flood of packets cannot starve door
        # results, and the door commands of a batch leave within milliseconds even when the CPUs are busy.
        until = time.monotonic() + PACKETS_TURN_S
        for count in range(self.BATCH):
            if count % 64 == 63 and time.monotonic() > until:
                return
            try:
                if self.config.fleet:
                    # The key behind the frame (its User-Id): which gateway's capture sent it.
                    zframe = self.packets.recv(zmq.NOBLOCK, copy=False)
                    self.on_packet(zframe.bytes, str(zframe.get("User-Id")))
                else:
                    self.on_packet(self.packets.recv(zmq.NOBLOCK))
            except zmq.Again:
                return

    def read_results(self, sock: zmq.Socket[Any], door_stage: DoorStage) -> None:
        for _ in range(self.BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.flush()  # keep the order of effects
            self.on_result(frame, door_stage)

    def on_monitor(self, monitor: zmq.Socket[Any], door_stage: DoorStage) -> None:
        gateway, stage = door_stage
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.log.info("Lost the connection to %s%s: its doors are given up.", stage,
                              f" of gateway {gateway}" if gateway else "")
                self.flush()  # keep the order of effects
                self.execute(self.engine.on_door_stage_lost(stage, now_ms(), gateway))

    def on_result(self, frame: bytes, door_stage: DoorStage) -> None:
        """A DoorResult, or a DoorUsed, from the (gateway, stage) whose socket it came on."""
        result = self.decode(frame, "door result")
        if result is None:
            return
        gateway, stage = door_stage
        if isinstance(result, bus.DoorUsed) and result.stage == stage:
            self.execute(self.engine.on_door_used(result.door_id, stage, now_ms(), gateway))
            return
        if not isinstance(result, bus.DoorResult):
            self.unexpected(result, " on a door socket")
            return
        self.execute(self.engine.on_door_result(result.door_id, result.stage, result.ok, result.detail, now_ms()))

    def read_store(self) -> None:
        """The store threads' answers: claims decided, a new users document, the store's health."""
        assert self.store is not None
        for answer in self.store.read():
            kind = answer[0]
            if kind == "claim":
                _, request_id, claimed, detail = answer
                if claimed is None:
                    self.claims_refused[detail.split(":")[1].strip() if ":" in detail else "error"] += 1
                    self.log_bad("Refused a request: the shared store could not claim its nonce (%s)", detail)
                self.flush()  # keep the order of effects
                self.execute(self.engine.on_claim(request_id, claimed, detail, now_ms()))
            elif kind == "users":
                self.on_users_document(answer[1], answer[2])
            elif kind == "health":
                self.store_health = answer[1]

    def on_users_document(self, text: str, revision: int) -> None:
        """A users document from the store (at start of its watch and after each change)."""
        if revision == self.users_revision:
            return
        try:
            users = parse_users(text, f"etcd {self.config.store_prefix}/users (revision {revision})") if text \
                else {}
            actions = self.engine.replace_users(users)
        except UsersFileError as exc:
            self.log.error("Users document not taken, keeping the previous one: %s", exc)
            return
        self.users_revision = revision
        self.flush()
        self.execute(actions)

    def check_store(self) -> None:
        """No P1 is taken while the users are not proven current (a revoked user must not get in)."""
        assert self.store is not None
        age = self.store.store.users_age_s()
        current = age is not None and age <= self.config.store_users_max_age_s
        if current != self.engine.users_current:
            self.engine.users_current = current
            if current:
                self.log.info("The users document is current again (revision %d): knocks are taken.",
                              self.users_revision)
            else:
                self.log.error("The users document is not proven current (last proof %s ago, store.users_max_age_s "
                               "%g): every knock is refused until the store answers again.",
                               "never" if age is None else f"{age:.1f} s", self.config.store_users_max_age_s)

    def maybe_reload_users(self) -> None:
        if self.store is not None:
            return  # the users come from the store's watch
        mtime = self._users_mtime()
        if mtime == self.users_mtime:
            return
        self.users_mtime = mtime
        try:
            users = load_users(self.config.users_file)
            if not self.engine.has_pair_server and any(u.public_key is not None for u in users.values()):
                # The first key-pair user: knock-admin made the server key just before adding her.
                server_key = load_server_key(self.config.key_file)
                if server_key is not None:
                    self.engine.set_pair_server(server_key)
                    self.log.info("Server key %s loaded (key-pair users)", self.config.key_file)
            actions = self.engine.replace_users(users)
        except (UsersFileError, ServerKeyError) as exc:
            self.log.error("Users file not reloaded, keeping the previous one: %s", exc)
            return
        self.execute(actions)

    def timeout_ms(self) -> int:
        timeout_ms = int(TICK_S * 1000)
        deadline = self.engine.next_deadline_ms()
        if deadline is not None:
            timeout_ms = max(0, min(timeout_ms, deadline - now_ms() + 1))
        return timeout_ms

    def figures(self) -> dict[str, Any]:
        opening, oldest_ms = self.engine.opening(now_ms())
        figures = {"rejections": dict(self.engine.rejections), "unmatched_syns": self.engine.unmatched_syns,
                   "gateway_refusals": dict(self.engine.gateway_refusals), "doors": self.engine.open_doors(),
                   "doors_opening": opening, "opening_age_ms": oldest_ms}
        if self.config.replica:
            figures["replica"] = self.config.replica
        if self.store is not None:
            waits = sorted(self.engine.claim_wait_ms)
            figures["store"] = {**self.store_health, "users_current": self.engine.users_current,
                                "claim_wait_ms_p50": waits[len(waits) // 2] if waits else 0,
                                "claim_wait_ms_p99": waits[min(len(waits) - 1, len(waits) * 99 // 100)] if waits else 0,
                                "claims_after_knocks": self.engine.claims_after_knocks,
                                "users_revision_taken": self.users_revision, **self.store.figures(),
                                "claims_refused": dict(self.claims_refused)}
        return figures

    def send_door_sets(self) -> None:
        """Tell each gate and relay every door auth believes open at its gateway: they empty the rest."""
        self.doors.send_door_sets(lambda gateway: [[d.door_id, str(d.client), d.port]
                                                   for d in self.engine.doors_at(gateway)], now_ms())

    def turn(self) -> None:
        self.flush()
        deadline = self.engine.next_deadline_ms()
        if deadline is not None and now_ms() >= deadline:
            self.execute(self.engine.on_timer(now_ms()))
        now = time.monotonic()
        if now >= self.next_tick:
            self.next_tick = now + TICK_S
            self.execute(self.engine.on_tick(now_ms()))
            self.flush()
            self.publish_hints(force=False)
            self.log_user.summarise(time.monotonic())
        if now >= self.next_filter:
            self.next_filter = now + self.filter_refresh_s
            self._publish_filter()  # a capture that restarted learns the pending knocks
            self.publish_hints(force=True)
            self.flush()  # every door command of the batch goes before the door sets
            self.send_door_sets()
        if now >= self.next_users:
            self.next_users = now + USERS_CHECK_S
            self.maybe_reload_users()
            self.flush()
        if self.store is not None:
            self.check_store()

    def closing(self) -> None:
        if self.store is not None:
            self.store.close()
        super().closing()


def main(argv: list[str] | None = None) -> int:
    args = common_arguments("dynknock auth stage (session engine, keys, users)").parse_args(argv)
    config = load_config_or_exit(args.config, "auth")
    log = setup_logging("auth")
    drop_privileges(config.run_as)  # started as root by hand: never keep it
    try:
        server_key = load_server_key(config.key_file)
        if config.store_kind == "etcd":
            # A replica: the users from the store (its watch hands every later change), the nonces claimed there.
            etcd = open_store(config)
            text, _ = etcd.load_users()
            users = parse_users(text, f"etcd {config.store_prefix}/users") if text else {}
            shell = AuthShell(config, users, log, server_key, etcd)
        else:
            users = load_users(config.users_file)
            shell = AuthShell(config, users, log, server_key)
    except (UsersFileError, TransportError, ServerKeyError, StoreError) as exc:
        print(f"knock-auth: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"knock-auth: {exc} (check server.addresses, server.control_port, server.state_dir "
              f"in {config.path})", file=sys.stderr)
        return 2
    if shell.store is not None:
        shell.store.start()
    return shell.run()


if __name__ == "__main__":
    raise SystemExit(main())
