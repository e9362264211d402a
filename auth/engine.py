"""The session engine: every decision of the auth stage, with no I/O.

Inputs are method calls with plain values and the current time; outputs are
lists of actions (send this datagram, open this door, publish this event) that
the shell in auth/main.py carries out in order. The engine never reads a clock
or a random source of its own, so tests drive it exactly.

The Engine is the coordinator; each concern is a small pure object of its own module:
auth/state.py (a request and its life cycle, the one table of transitions), auth/actions.py (what
comes out), auth/settings.py (EngineConfig), auth/fleet.py (which gateway a packet belongs to),
auth/budgets.py (checks and rejection events per hint, source and user), auth/checked.py (packets
already checked), auth/knocks.py (the knocks awaited and the knock filter), auth/doors.py (ports,
doors and the caps on them), auth/race.py (the knock race, and the P2 hold).

Invariants:
1. At most one request per (user, client address); a newer authenticated P1
   with another request id replaces the older one.
2. A knock counts only for the request whose P1 declared exactly this
   (source address, destination port, ISN), or for connect() knocks (knock kind
   CONNECT: the kernel chose the ISN) this (source address, destination port);
   any other SYN changes nothing.
3. A nonce is remembered (and journalled) only when its packet is accepted, so
   a copy raced from another address cannot burn the real packet's nonce.
4. P3 OPEN is sent only after every stage that opens the door confirmed it: gate and
   relay for a relayed door, the gate alone for a door the kernel forwards.
5. A door port is in use by at most one door at a time.
6. Nothing unauthenticated ever gets a reply, and rejection events are rate
   limited per user named (and in all for none), the counters always count. A
   rejection after a good tag is no proof of a key: a replayed copy carries one.
7. A request dropped while its door is being opened (replaced, user removed)
   sends CloseDoor: no door stays open that no request accounts for.
8. A replay costs no cryptography: the nonce is looked up before the tag check,
   and a packet whose tag was checked once is recognised by its bytes after.
9. Tag checks under one hint are capped per second (and bad tags per source and
   hint), so a flood under one user's hint leaves every other user's packets
   their turn.
10. A user holds at most max_doors_per_user doors not used yet, all users max_doors_total;
    a single-use door stops counting (and frees its port) when a stage reports its connection
    (DoorUsed); a user opens at most doors_per_minute doors a minute (a bucket of as many).
11. A door lives only as long as its user may have it: a removed user, a new key,
    a service taken away or an account expired closes it (CloseDoor to both stages).
12. A door whose port a local process holds ("address_in_use" from a stage) is
    closed and opened again on another port, up to door_retries times.
13. A key-pair user's packets are version 3 and her P1 carries her Ed25519 signature, checked
    after every cheap check and within a budget per hint: what a thief of the server's files
    can compute (her session keys) makes no P1 that opens a door.
14. Auth replicas (shared_nonces): a request's door opens only once its P1's nonce is claimed
    in the shared store (ClaimNonce, on_claim), so a P1 accepted by one replica opens nothing at
    another; a store that cannot answer is a refusal (store_unavailable, P3 UNAVAILABLE), never
    an accept. While the users are not proven current (users_current False) no P1 is taken.
15. In a fleet a packet counts only for the gateway whose capture key pushed it, and a datagram
    only if it was sent to one of that gateway's addresses (auth/fleet.py).
"""

from __future__ import annotations

import ipaddress
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from dynknock import protocol as proto
from dynknock.auth.actions import (
    DOOR_STAGES,
    KERNEL_DOOR_STAGES,
    Action,
    ClaimNonce,
    CloseDoor,
    GatewayRefused,
    Notify,
    OpenDoor,
    SendReply,
    SetKnockFilter,
)
from dynknock.auth.admission import Admission, Admitted, PairServer
from dynknock.auth.answers import Answers
from dynknock.auth.budgets import Rejections
from dynknock.auth.doors import ADDRESS_IN_USE, Door, DoorTable, door_stages
from dynknock.auth.fleet import GatewayCheck
from dynknock.auth.knocks import ANY_ISN, KnockTable
from dynknock.auth.opener import Opener
from dynknock.auth.race import P2Hold
from dynknock.auth.replay import ReplayCache
from dynknock.auth.requests import Requests
from dynknock.auth.settings import EngineConfig, Service, engine_config
from dynknock.auth.state import Event, Request, State, transition
from dynknock.auth.users import User
from dynknock.protocol import IPAddress, KnockKind, RejectReason, Status
from dynknock.topics import Topic

# What auth/main.py, the tests and the benchmarks import from here.
__all__ = ["ADDRESS_IN_USE", "ANY_ISN", "DOOR_STAGES", "KERNEL_DOOR_STAGES", "Action", "ClaimNonce", "CloseDoor",
           "Door", "Engine", "EngineConfig", "GatewayRefused", "Notify", "OpenDoor", "PairServer", "Request",
           "SendReply", "Service", "SetKnockFilter", "State", "door_stages", "engine_config"]

CLAIM_SAMPLES = 1000


class Engine:
    def __init__(self, config: EngineConfig, users: dict[str, User], replay: ReplayCache,
                 random_bytes: Callable[[int], bytes], random_below: Callable[[int], int],
                 pair_server: PairServer | None = None) -> None:
        self.config = config
        self._rejections = Rejections(config.reject_events_per_second)
        self.rejections: Counter[str] = self._rejections.counts
        self._admission = Admission(config, users, replay, self._rejections, pair_server)
        # Auth replicas: False while the users document is not proven current (its watch silent or
        # broken): a revoked user must not get in through a stale copy (invariant 14).
        self.users_current = True
        self._replay = replay
        self._answers = Answers(random_bytes, self._admission.server_public)
        self._requests = Requests()
        self._gateways = GatewayCheck(config)
        self._knocks = KnockTable()
        self._doors = DoorTable(config, random_below)
        self._held = P2Hold(config.p2_hold_ms, config.max_held_p2_per_user, config.max_held_p2_total)
        self._opener = Opener(config, self._requests, self._doors, self._knocks, self._held, self._rejections,
                              self._answers, random_bytes)
        self.unmatched_syns = 0
        # Auth replicas: ms from each P1 to its claim's answer, and whether its knocks were all in by then
        # (the last CLAIM_SAMPLES; the heartbeat's p50 and p99 say how much the store adds to a door).
        self.claim_wait_ms: deque[int] = deque(maxlen=CLAIM_SAMPLES)
        self.claims_after_knocks = 0

    # --- users ---------------------------------------------------------------

    def replace_users(self, users: dict[str, User]) -> list[Action]:
        """A reloaded users file. A user removed or given a new key loses requests and doors;
        a door whose service or source its user may no longer use closes; the rest is untouched."""
        old = self._admission.replace_users(users)

        def revoked(name: str) -> bool:
            before, now = old.get(name), users.get(name)
            return now is None or before is None or before[0].master_key != now.master_key \
                or before[0].public_key != now.public_key

        actions: list[Action] = []
        for request in self._requests:
            if revoked(request.user):
                actions += self._opener.drop(request)  # a door being opened is closed here; open ones below
        for door in self._doors:
            user = users.get(door.user)
            if revoked(door.user) or user is None or door.service not in user.services \
                    or not user.allows_source(door.client):
                actions += self._opener.revoke(door, "user changed")
        actions.append(Notify(Topic.AUTH_USERS_RELOADED, {"users": len(users)}))
        return actions + self._knocks.update()

    @property
    def has_pair_server(self) -> bool:
        return self._admission.pair_server is not None

    def set_pair_server(self, pair_server: PairServer) -> None:
        """The server's key, made after start-up (the first key-pair user). Never replaced: every
        key-pair user pinned the first one, and a new one is a restart with every user told."""
        if self._admission.pair_server is not None:
            raise ValueError("the server key is already set")
        self._admission.pair_server = pair_server

    # --- inputs from capture -------------------------------------------------

    def on_captured_datagram(self, source: str, source_port: int, destination: str, payload: bytes, now_ms: int,
                             gateway: str = "", sender_key: str = "") -> list[Action]:
        """A bus Datagram as capture reported it, pushed with the capture key `sender_key` (a fleet's):
        the fleet's checks (invariant 15), then on_datagram. A bad address raises ValueError."""
        claimed = self._gateways.claimed(gateway, sender_key)
        if isinstance(claimed, GatewayRefused):
            return [claimed]
        to = ipaddress.ip_address(destination)
        refused = self._gateways.sent_to(claimed, to)
        if refused is not None:
            return [refused]
        return self.on_datagram(ipaddress.ip_address(source), source_port, to, payload, now_ms, claimed)

    def on_captured_syn(self, source: str, port: int, isn: int, now_ms: int, gateway: str = "",
                        sender_key: str = "") -> list[Action]:
        """A bus Syn as capture reported it: the fleet's checks, then on_syn. A bad address raises ValueError."""
        claimed = self._gateways.claimed(gateway, sender_key)
        if isinstance(claimed, GatewayRefused):
            return [claimed]
        return self.on_syn(ipaddress.ip_address(source), port, isn, now_ms, claimed)

    def on_captured_other(self, sender_key: str = "") -> list[Action]:
        """Another message on the packet socket. It names no gateway: a fleet refuses it as from an
        unknown one; one host has nothing to say ([]) and the shell reports it as unexpected."""
        claimed = self._gateways.claimed("", sender_key)
        return [claimed] if isinstance(claimed, GatewayRefused) else []

    @property
    def gateway_refusals(self) -> Counter[str]:
        """Packets refused for the gateway they claim, by reason (auth's heartbeat)."""
        return self._gateways.refusals

    # --- inputs --------------------------------------------------------------

    def on_datagram(self, source: IPAddress, source_port: int, destination: IPAddress,
                    payload: bytes, now_ms: int, gateway: str = "") -> list[Action]:
        """A P1 or P2 seen at `gateway`, sent to its address `destination` (version 2 is bound to it)."""
        admitted = self._admission.check(source, destination, payload, now_ms)
        if isinstance(admitted, list):
            return admitted
        if isinstance(admitted.message, proto.P1):
            return self._on_p1(admitted, admitted.message, source, now_ms, gateway)
        return self._on_p2(admitted, admitted.message, source, source_port, destination, now_ms, gateway)

    def on_syn(self, source: IPAddress, port: int, isn: int, now_ms: int, gateway: str = "") -> list[Action]:
        """A SYN seen at `gateway`: a knock only for a request whose P1 came to that gateway."""
        request = self._knocks.match(source, port, isn, gateway)
        if request is None:
            self.unmatched_syns += 1  # not awaited; or a copy at another gateway: it waits where it belongs
            return []
        actions: list[Action] = [Notify(Topic.AUTH_KNOCK_MATCHED, {
            "user": request.user, "client": str(source), "port": port, "left": len(request.remaining)})]
        if not request.remaining and request.claimed:
            return actions + self._opener.knocks_complete(request, now_ms)
        return actions + self._knocks.update()  # this (source, port) needs no more SYNs; or on_claim opens

    def on_claim(self, request_id: bytes, claimed: bool | None, detail: str, now_ms: int) -> list[Action]:
        """The shared store's answer to a ClaimNonce: True, the nonce is this replica's (the door may
        open); False, another replica had it (a copy of the P1: refused as a replay); None, the store
        could not say (refused: P3 UNAVAILABLE to its P2s, no door)."""
        request = self._requests.by_id(request_id)
        if request is None or request.claimed:
            return []  # dropped or replaced meanwhile: nothing waits for this answer
        self.claim_wait_ms.append(now_ms - request.created_ms)
        if claimed:
            request.claimed = True
            if not request.remaining and request.state is State.AWAITING_KNOCKS:
                self.claims_after_knocks += 1  # the knocks were in: the door waited for the store
                return self._opener.knocks_complete(request, now_ms)
            return []
        reason = RejectReason.REPLAY if claimed is False else RejectReason.STORE_UNAVAILABLE
        actions: list[Action] = [self._rejections.request(reason, request.client, request.user,
                                                          detail or "claimed by another replica")]
        if claimed is False:
            return actions + self._opener.drop(request) + self._knocks.update()
        transition(request, Event.REFUSED, now_ms)
        self._knocks.forget(request)  # its knocks are no longer awaited
        request.remaining.clear()
        return actions + self._answers.if_asked(request, now_ms) + self._knocks.update()

    def on_door_result(self, door_id: str, stage: str, ok: bool, detail: str, now_ms: int) -> list[Action]:
        """A stage's DoorResult: the door confirmed, moved to another port, or failed (auth/opener.py)."""
        return self._opener.on_door_result(door_id, stage, ok, detail, now_ms)

    def on_door_stage_lost(self, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A door stage's connection dropped: it died or restarted (auth/opener.py)."""
        return self._opener.on_door_stage_lost(stage, now_ms, gateway)

    def on_door_used(self, door_id: str, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A stage that opened this door saw its connection come (bus.DoorUsed; auth/opener.py)."""
        return self._opener.on_door_used(door_id, stage, now_ms, gateway)

    def on_tick(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        self._replay.sweep(now_ms)
        self._admission.sweep(now_ms)
        knock_timeout = self.config.knock_timeout_seconds * 1000
        for request in self._requests:
            age = now_ms - request.state_since_ms
            if request.state is State.AWAITING_KNOCKS and age > knock_timeout:
                self._opener.forget(request)
                actions.append(self._rejections.request(RejectReason.KNOCK_TIMEOUT, request.client, request.user,
                                                        f"{len(request.remaining)} knocks missing"))
            elif request.state is State.OPENING and age > self.config.open_timeout_s * 1000:
                actions += self._opener.door_failed(request, "no confirmation in time", now_ms)
            elif request.state in (State.FAILED, State.DENIED) and age > knock_timeout:
                self._opener.forget(request)
            elif request.state is State.OPEN and now_ms >= request.door_expires_ms:
                self._opener.forget(request)
        for door in self._doors:
            if door.expires_ms <= now_ms:
                self._doors.release(door.port)
                actions.append(Notify(Topic.AUTH_DOOR_EXPIRED, {"user": door.user, "client": str(door.client),
                                                                 "port": door.port}))
                continue
            found = self._admission.directory.get(door.user)
            if found is not None and found[0].expired(now_ms / 1000):
                actions += self._opener.revoke(door, "account expired")
        self._doors.sweep(now_ms)
        self._answers.sweep(now_ms)
        return actions + self._knocks.update()

    def next_deadline_ms(self) -> int | None:
        """When on_timer has something to do (a held P2's deadline), or None."""
        return self._held.deadline()

    def on_timer(self, now_ms: int) -> list[Action]:
        """Answer PENDING to the held P2s whose knocks did not come in time."""
        return [self._answers.request(request, now_ms) for request in self._held.due(now_ms)
                if request.state is State.AWAITING_KNOCKS and request.reply_to is not None
                and not request.awaits_claim_only]

    # --- P1 / P2 -------------------------------------------------------------

    def _on_p1(self, admitted: Admitted, p1: proto.P1, source: IPAddress, now_ms: int, gateway: str) -> list[Action]:
        user, header, nonce, nonce_expiry = admitted.user, admitted.header, admitted.header.nonce, admitted.nonce_expiry
        if not self.users_current:
            return self._reject(RejectReason.STORE_UNAVAILABLE, source, now_ms, "users not proven current", user.name)
        if p1.address is None:
            if not user.nat:
                return self._reject(RejectReason.WRONG_SOURCE, source, now_ms,
                                    "address 'as seen' not allowed for this user", user.name)
            client = source
        elif p1.address != source:
            if not p1.address.is_global:  # most likely a client behind NAT: its P2 is told what we saw
                self._answers.note(p1.request_id, user.name, source, now_ms + self.config.knock_timeout_seconds * 1000)
            return self._reject(RejectReason.WRONG_SOURCE, source, now_ms,
                                f"declared {p1.address}", user.name)
        else:
            client = source
        if not user.allows_source(client):
            return self._reject(RejectReason.SOURCE_NOT_ALLOWED, source, now_ms, user=user.name)
        existing = self._requests.of(user.name, client)
        if existing is not None and existing.request_id == p1.request_id and existing.gateway == gateway:
            self._replay.remember(nonce, nonce_expiry)  # a retransmitted P1: same request
            return [Notify(Topic.AUTH_REQUEST_RETRY, {"user": user.name, "client": str(client)})]
        if existing is None and self._requests.pending_of(user.name) >= self.config.max_requests_per_user:
            return self._reject(RejectReason.TOO_MANY_REQUESTS, source, now_ms, user=user.name)
        if self._requests.by_id(p1.request_id) is not None:
            return self._reject(RejectReason.REPLAY, source, now_ms, "request id reused", user.name)
        self._replay.remember(nonce, nonce_expiry)
        actions: list[Action] = []
        if existing is not None:
            actions.append(Notify(Topic.AUTH_REQUEST_REPLACED, {"user": user.name, "client": str(client)}))
            actions += self._opener.drop(existing)
        connect = p1.knock_kind is KnockKind.CONNECT
        request = Request(user.name, admitted.keys, client, p1.request_id, p1.service, now_ms,
                          {(k.port, ANY_ISN if connect else k.isn) for k in p1.knocks},
                          gateway=gateway, version=header.version, bound=header.bound)
        self._requests.add(request)
        actions.append(Notify(Topic.AUTH_REQUEST_RECEIVED, {
            "user": user.name, "client": str(client), "source": str(source), "service": p1.service,
            "knocks": p1.knock_kind.name.lower(), **({"gateway": gateway} if gateway else {})}))
        denial = None
        if p1.service not in user.services or p1.service not in self.config.services:
            denial = (Status.SERVICE_NOT_ALLOWED, RejectReason.SERVICE_NOT_ALLOWED, p1.service)
        elif connect and not self.config.connect_knocks:
            denial = (Status.KNOCK_KIND_REFUSED, RejectReason.KNOCK_KIND_REFUSED, "server.connect_knocks = false")
        if denial is not None:
            transition(request, Event.DENIED, now_ms)
            request.denial = denial[0]
            request.remaining.clear()
            actions.append(self._rejections.request(denial[1], client, user.name, denial[2]))
            return actions + self._knocks.update()  # the replaced request's knocks are gone
        if self.config.shared_nonces:
            request.claimed = False
            actions.append(ClaimNonce(p1.request_id, nonce, nonce_expiry))
        self._knocks.expect(request)
        return actions + self._knocks.update()

    def _on_p2(self, admitted: Admitted, p2: proto.P2, source: IPAddress, source_port: int, destination: IPAddress,
               now_ms: int, gateway: str) -> list[Action]:
        user, header = admitted.user, admitted.header
        request = self._requests.by_id(p2.request_id)
        if request is None or request.user != user.name:
            # A NAT note's answer, not into the replay cache: this P2 may be a copy raced from the address
            # the note names, and burning its nonce would refuse the real P2 from the declared address
            # (invariant 3).
            answer = self._answers.mismatch(p2, user.name, admitted.keys, header, admitted.nonce_expiry, source,
                                            source_port, destination, now_ms, gateway)
            if isinstance(answer, SendReply):
                return [answer]
            return self._reject(answer or RejectReason.NO_REQUEST, source, now_ms, user=user.name)
        if request.client != source:
            return self._reject(RejectReason.WRONG_SOURCE, source, now_ms, "P2 from another address", user.name)
        if request.gateway != gateway:
            return self._reject(RejectReason.WRONG_GATEWAY, source, now_ms, f"P2 at {gateway or 'local'}, request "
                                f"at {request.gateway or 'local'}", user.name)
        self._replay.remember(header.nonce, admitted.nonce_expiry)
        request.reply_to = (source, source_port, destination)
        if request.state is State.OPENING or request.awaits_claim_only:
            # Answered as soon as the door is confirmed (or refused); a request whose knocks are all in and
            # whose nonce the shared store has not answered for yet is not PENDING: a client told so would
            # resend its whole burst, every few tens of ms, while nothing is missing on its side.
            return []
        if request.state is State.AWAITING_KNOCKS and self._held.hold(request, now_ms):
            return []  # answered when the knocks complete, or PENDING at the deadline (on_timer)
        return [self._answers.request(request, now_ms)]

    # --- rejections ----------------------------------------------------------

    def _reject(self, reason: RejectReason, source: IPAddress, now_ms: int, detail: str = "",
                user: str | None = None) -> list[Action]:
        """Count a rejection; report it within the second's budget of the user it names (invariant 6)."""
        return self._rejections.packet(reason, source, now_ms, detail, user)

    # --- views for status and tests -----------------------------------------

    def hints(self, now_ms: int) -> frozenset[bytes]:
        """The hints a packet may carry now (for capture's early drop)."""
        return self._admission.directory.hints(now_ms / 1000)

    def doors_at(self, gateway: str) -> list[Door]:
        """The doors believed open or being opened at a gateway (the gate and relay reconcile with them)."""
        return self._doors.at(gateway)

    def opening(self, now_ms: int) -> tuple[int, int]:
        """Doors asked for and not yet confirmed, and the oldest one's age in ms (a stage falling behind)."""
        ages = [now_ms - r.state_since_ms for r in self._requests.with_doors() if r.state is State.OPENING]
        return len(ages), max(ages, default=0)

    def open_doors(self) -> list[dict[str, Any]]:
        return [{"user": d.user, "client": str(d.client), "port": d.port, "expires_ms": d.expires_ms,
                 **({"gateway": d.gateway} if d.gateway else {})} for d in self._doors]
