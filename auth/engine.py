"""The session engine: every decision of the auth stage, with no I/O.

Inputs are method calls with plain values and the current time; outputs are
lists of actions (send this datagram, open this door, publish this event) that
the shell in auth/main.py carries out in order. The engine never reads a clock
or a random source of its own, so tests drive it exactly.

Life of a request (docs/PROTOCOL.md, "State machine"):

    P1 ok ──> AWAITING_KNOCKS ──3 knocks──> OPENING ──gate+relay ok──> OPEN ──window──> gone
                  │ knock timeout             │ nack / timeout              (door closes
                  v                           v                              by itself)
                 gone                       FAILED ──timeout──> gone
    P1 for a service the user may not use ──> DENIED ──timeout──> gone

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
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeAlias

from dynknock import protocol as proto
from dynknock.auth.replay import ReplayCache
from dynknock.auth.users import User, UserDirectory, UsersFileError
from dynknock.config import Config, ServiceConfig, default_of
from dynknock.keys import HINT_EPOCH_SECONDS, SessionKeys, hint_epoch, user_hint
from dynknock.limits import TokenBuckets
from dynknock.protocol import IPAddress, KnockKind, RejectReason, Status
from dynknock.topics import Topic

# Who opens a door: the gate admits the client and the relay forwards; or, for a door the
# kernel forwards (services.NAME.forward), the gate alone.
DOOR_STAGES = frozenset({"gate", "relay"})
KERNEL_DOOR_STAGES = frozenset({"gate"})
# The ISN a connect() knock is awaited with: the kernel chose it, so any ISN matches.
ANY_ISN = -1

# --- actions -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SendReply:
    destination: IPAddress
    port: int
    source: IPAddress  # the server address the request came to, so the reply passes NAT
    payload: bytes
    gateway: str = ""  # the gateway that address belongs to ("": the one local gateway)


@dataclass(frozen=True, slots=True)
class OpenDoor:
    door_id: str
    user: str
    client: IPAddress
    port: int
    service: str
    target_host: str
    target_port: int
    expires_at_ms: int  # absolute: a command delivered late must not open a door for longer
    stages: frozenset[str] = DOOR_STAGES  # {"gate"}: the kernel forwards it; with "relay": the relay does
    gateway: str = ""  # where: the gateway whose capture saw the request ("": the one local gateway)


@dataclass(frozen=True, slots=True)
class CloseDoor:
    door_id: str
    client: IPAddress
    port: int
    gateway: str = ""
    target: tuple[str, int] | None = None  # a kernel door's service (the gate empties its map entry with it)


@dataclass(frozen=True, slots=True)
class SetKnockFilter:
    """The (source address, destination port) pairs whose SYNs capture should pass."""

    pairs: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Notify:
    """Publish this event on the bus (the shell stamps it with the stage and the time: a bus.Event)."""

    topic: Topic
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimNonce:
    """Auth replicas (shared_nonces): claim this P1's nonce in the shared store, then call
    Engine.on_claim with the request id and the outcome. Its door waits for the claim."""

    request_id: bytes
    nonce: bytes
    expiry_ms: int


Action: TypeAlias = SendReply | OpenDoor | CloseDoor | SetKnockFilter | Notify | ClaimNonce


# A service as [services.NAME] declares it; forward "kernel": doors of same-family clients are
# forwarded by the gate alone.
Service = ServiceConfig


def door_stages(service: Service, client: IPAddress) -> frozenset[str]:
    """The stages that open a door of this service for this client (NAT cannot change the address
    family: a kernel service whose target is IPv4 serves IPv6 clients through the relay)."""
    same_family = ipaddress.ip_address(service.host).version == client.version
    return KERNEL_DOOR_STAGES if service.forward == "kernel" and same_family else DOOR_STAGES


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's settings. A field the server's Config has too has its name, and its default from
    there (dynknock/config.py); :func:`engine_config` copies those. The others are the engine's own."""

    services: dict[str, Service]
    door_port_low: int
    door_port_high: int
    window_seconds: int = default_of("window_seconds")
    clock_skew_seconds: int = default_of("clock_skew_seconds")
    knock_timeout_seconds: int = default_of("knock_timeout_seconds")
    open_timeout_s: int = 3
    max_requests_per_user: int = 16
    # Rejections are counted always but reported one by one only this often per second
    # per user named (and as often for packets naming nobody), so a flood cannot flood
    # the bus or the logs, and a flood under one user's hint cannot mute the others.
    reject_events_per_second: int = 20
    max_doors_per_user: int = default_of("max_doors_per_user")
    max_doors_total: int = default_of("max_doors_total")
    doors_per_minute: int = default_of("doors_per_minute")
    single_use: bool = default_of("single_use")
    connect_knocks: bool = default_of("connect_knocks")
    # A tag check costs ~37 us in Python: 500 a second is ~2% of a core per flooded hint,
    # and far above what a user's clients send (a P1 and a P2 or two per door).
    hint_checks_per_second: int = 500
    # Bad tags from one source under one hint: past this, that source's packets under that
    # hint wait for the next second, so a flood from a few addresses does not spend the
    # hint's budget, and the user's own address keeps its checks.
    bad_tags_per_source_per_second: int = 10
    # Another port after "address_in_use", this often per request. Ports found busy are avoided
    # for a window, so each retry learns: with 40 of 64 ports squatted, 8 retries still left
    # ~1 knock in 100 UNAVAILABLE (the lab saw it); 32 leave none in practice, at ~1 ms each.
    door_retries: int = 32
    # Packets whose tag was checked, remembered by their bytes (~0.7 KB each with the decoded
    # message): only good tags make entries, at most hint_checks_per_second per user for ~3 min.
    checked_cache_max: int = 50_000
    # Wire protocol versions accepted (dynknock/protocol.py): a fleet takes only packets bound to
    # the gateway they were sent to (version 2, or 3 with the bound flag; server.fleet_accepts_v1).
    versions: tuple[int, ...] = proto.ALL_VERSIONS
    bound_only: bool = False
    # Signature checks (key-pair users' P1s, ~0.3 ms each) one hint may cost a second: past this a
    # holder of that user's pair key (the user, or a thief of the server's key) waits for the next second.
    hint_signatures_per_second: int = 20
    # A P2 that arrives while its request still awaits knocks is held this long before it is
    # answered PENDING: the client echoes its SYNs 5 ms after P2 (client/session.py), and a SYN
    # that raced capture's filter then completes the request and this same P2 gets OPEN, instead
    # of the client's PENDING round. Once per request, at most max_held_p2_per_user per user and
    # max_held_p2_total in all (past those: PENDING at once). 0: PENDING at once, always.
    p2_hold_ms: int = 0
    # Auth replicas (store.kind = "etcd"): each new request's P1 nonce is claimed in the shared store
    # before its door opens (invariant 14).
    shared_nonces: bool = False
    max_held_p2_per_user: int = 8
    max_held_p2_total: int = 1024


def engine_config(config: Config, **own: Any) -> EngineConfig:
    """The engine's settings from the server's config: every field the two share, by its name, and
    the engine's `own` settings. A fleet takes only protocol version 2 (bound to the gateway address)
    unless server.fleet_accepts_v1 says otherwise."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineConfig) if hasattr(config, f.name)}
    strict = config.fleet and not config.fleet_accepts_v1
    versions = (proto.BOUND_VERSION, proto.PAIR_VERSION) if strict else proto.ALL_VERSIONS
    return EngineConfig(**{**shared, "versions": versions, "bound_only": strict, **own})


CLAIM_SAMPLES = 1000


class State(enum.Enum):
    AWAITING_KNOCKS = "awaiting_knocks"
    OPENING = "opening"
    OPEN = "open"
    FAILED = "failed"
    DENIED = "denied"


@dataclass(slots=True)
class Request:
    user: str
    keys: SessionKeys
    client: IPAddress
    request_id: bytes
    service: str
    created_ms: int
    remaining: set[tuple[int, int]]
    state: State = State.AWAITING_KNOCKS
    door_id: str = ""
    door_port: int = 0
    door_expires_ms: int = 0
    door_stages: frozenset[str] = DOOR_STAGES  # who must confirm this request's door
    confirmed: set[str] = field(default_factory=set)
    reply_to: tuple[IPAddress, int, IPAddress] | None = None
    state_since_ms: int = 0
    retries: int = 0
    gateway: str = ""  # the gateway the P1 came to: its knocks, P2s and door are all there
    version: int = proto.VERSION  # the P1's wire version: P3s answer in it (3: a key-pair user)
    bound: bool = False  # the P1 was bound to the gateway address: so are its P3s
    held_until_ms: int = 0  # a P2 held (p2_hold_ms) until then; 0: none held
    held_once: bool = False
    denial: Status = Status.SERVICE_NOT_ALLOWED  # what a DENIED request's P2s are told
    # Auth replicas: its P1's nonce is claimed in the shared store; no door until then (invariant 14).
    claimed: bool = True


@dataclass(frozen=True, slots=True)
class Door:
    """A door port held from OpenDoor until its window ends (or it is revoked)."""

    door_id: str
    user: str
    client: IPAddress
    port: int
    service: str
    expires_ms: int
    gateway: str = ""
    stages: frozenset[str] = DOOR_STAGES  # who opened it, and so who may report its connection
    single_use: bool = True


# The detail of a DoorResult(ok=False) when the port is held by another socket (the relay
# binds it): the door moves to another port instead of failing.
ADDRESS_IN_USE = "address_in_use"


def _addr(value: IPAddress) -> str:
    return str(value)


class PairServer(Protocol):
    """The server's side of key-pair users (auth/serverkey.py): its public key, each user's session
    keys, and the check of a signature."""

    public: bytes

    def session_keys(self, user_public: bytes) -> SessionKeys: ...

    def verify(self, user_public: bytes, message: bytes, signature: bytes) -> bool: ...


class Engine:
    def __init__(self, config: EngineConfig, users: dict[str, User], replay: ReplayCache,
                 random_bytes: Callable[[int], bytes], random_below: Callable[[int], int],
                 pair_server: PairServer | None = None) -> None:
        self.config = config
        self._pair_server = pair_server
        self._directory = self._new_directory(users)
        # Auth replicas: False while the users document is not proven current (its watch silent or
        # broken): a revoked user must not get in through a stale copy (invariant 14).
        self.users_current = True
        self._replay = replay
        self._random_bytes = random_bytes
        self._random_below = random_below
        self._requests: dict[tuple[str, IPAddress], Request] = {}
        self._by_id: dict[bytes, Request] = {}
        self._by_door: dict[str, Request] = {}
        self._knocks: dict[tuple[IPAddress, int, int], Request] = {}
        # port -> door: reserved from OpenDoor until the window ends, even if the request
        # is replaced meanwhile (invariant 5), unless revoked (invariant 11).
        self._doors: dict[int, Door] = {}
        self._door_ports: dict[str, int] = {}  # door id -> its port, while it is in _doors
        self._doors_of: Counter[str] = Counter()  # user -> doors held (invariant 10)
        # user -> doors that user may still open this minute (invariant 10)
        self._door_rate = TokenBuckets(config.doors_per_minute / 60, config.doors_per_minute)
        self._busy_ports: dict[int, int] = {}  # port -> until when not to draw it again (address in use)
        # nonce -> (packet, what its tag check gave, forget after): invariant 8
        self._checked: dict[bytes, tuple[bytes, proto.Message | proto.Reject, int]] = {}
        self._next_checked_sweep = 0
        self._check_second = -1  # the second the budgets below belong to
        self._hint_checks: Counter[bytes] = Counter()
        self._hint_signatures: Counter[bytes] = Counter()
        # nonce -> the bytes (seen_as) of the v3 P1 whose signature verified under it: only those very
        # bytes skip the check again (a thief holding her keys can make other bytes under that nonce).
        self._signed_ok: dict[bytes, bytes] = {}
        self._bad_tags: Counter[tuple[bytes, IPAddress]] = Counter()
        # request_id -> source seen, for NAT diagnosis of a P1 declared elsewhere
        self._mismatches: dict[bytes, tuple[str, IPAddress, int]] = {}
        # nonce -> expiry of the P2s answered ADDRESS_MISMATCH: one answer per nonce, kept
        # apart from the replay cache (see _on_p2)
        self._mismatch_nonces: dict[bytes, int] = {}
        self.rejections: Counter[str] = Counter()
        self.unmatched_syns = 0
        # Auth replicas: ms from each P1 to its claim's answer, and whether its knocks were all in by then
        # (the last CLAIM_SAMPLES; the heartbeat's p50 and p99 say how much the store adds to a door).
        self.claim_wait_ms: deque[int] = deque(maxlen=CLAIM_SAMPLES)
        self.claims_after_knocks = 0
        self._reject_second = -1  # the second _reject_sent belongs to; -1: no second seen yet
        self._reject_sent: Counter[str | None] = Counter()  # user named (None: nobody) -> events sent
        self._filter: frozenset[tuple[str, int]] = frozenset()
        # (address text, port) -> knocks awaited there, kept with _knocks, so that the
        # filter is not recomputed (one str() per pending knock) after every packet.
        self._pairs: Counter[tuple[str, int]] = Counter()
        self._pairs_changed = False
        # request_id -> request whose P2 is held: in order of their deadlines (the hold is one constant)
        self._held: dict[bytes, Request] = {}
        self._held_of: Counter[str] = Counter()

    # --- users ---------------------------------------------------------------

    def replace_users(self, users: dict[str, User]) -> list[Action]:
        """A reloaded users file. A user removed or given a new key loses requests and doors;
        a door whose service or source its user may no longer use closes; the rest is untouched."""
        old = self._directory
        self._directory = self._new_directory(users)
        self._checked.clear()  # verdicts reached under the old keys are not reused under the new

        def revoked(name: str) -> bool:
            before, now = old.get(name), users.get(name)
            return now is None or before is None or before[0].master_key != now.master_key \
                or before[0].public_key != now.public_key

        actions: list[Action] = []
        for request in list(self._requests.values()):
            if revoked(request.user):
                actions += self._drop(request)  # a door being opened is closed here; open ones below
        for door in list(self._doors.values()):
            user = users.get(door.user)
            if revoked(door.user) or user is None or door.service not in user.services \
                    or not user.allows_source(door.client):
                actions += self._revoke(door, "user changed")
        actions.append(Notify(Topic.AUTH_USERS_RELOADED, {"users": len(users)}))
        return actions + self._filter_update()

    @property
    def has_pair_server(self) -> bool:
        return self._pair_server is not None

    def set_pair_server(self, pair_server: PairServer) -> None:
        """The server's key, made after start-up (the first key-pair user). Never replaced: every
        key-pair user pinned the first one, and a new one is a restart with every user told."""
        if self._pair_server is not None:
            raise ValueError("the server key is already set")
        self._pair_server = pair_server

    def _new_directory(self, users: dict[str, User]) -> UserDirectory:
        if self._pair_server is None and any(u.public_key is not None for u in users.values()):
            raise UsersFileError("the users file has key-pair users, and this server has no key of its own "
                                 "(server.key_file; knock-admin server-key makes it)")
        return UserDirectory(users, self.config.clock_skew_seconds,
                             self._pair_server.session_keys if self._pair_server is not None else None)

    # --- inputs --------------------------------------------------------------

    def on_datagram(self, source: IPAddress, source_port: int, destination: IPAddress,
                    payload: bytes, now_ms: int, gateway: str = "") -> list[Action]:
        """A P1 or P2 seen at `gateway`, sent to its address `destination` (version 2 is bound to it)."""
        header = proto.parse_header(payload, versions=self.config.versions)
        if isinstance(header, proto.Reject):
            return self._reject(header.reason, source, now_ms, header.detail)
        if self.config.bound_only and not header.bound:
            return self._reject(RejectReason.BAD_VERSION, source, now_ms, f"{header.version} unbound, in a fleet")
        found = self._directory.find(header.hint, now_ms / 1000)
        if found is None:
            return self._reject(RejectReason.UNKNOWN_USER, source, now_ms)
        user, keys = found
        # A key-pair user's packets are version 3 (her P1s signed), everyone else's 1 or 2: her keys sealing
        # an older version's P1 (which a thief of the server's key could make) open nothing.
        if (user.public_key is not None) != (header.version == proto.PAIR_VERSION):
            return self._reject(RejectReason.BAD_VERSION, source, now_ms,
                                f"{header.version} for a {'key-pair' if user.public_key else 'symmetric-key'} user",
                                user.name)
        # Invariant 8: a nonce accepted before is a replay, whatever the rest of the packet
        # says; no tag check needed to refuse it. Not a nonce answered ADDRESS_MISMATCH: that
        # answer may have gone to a copy raced from elsewhere, and the client's own P2 from
        # the declared address must still be answered (invariant 3); _on_p2 keeps its one
        # answer per nonce, and copies reach it without AEAD through the checked cache.
        if self._replay.seen(header.nonce, now_ms):
            return self._reject(RejectReason.REPLAY, source, now_ms, user=user.name)
        checked = self._checked.get(header.nonce)
        # Version 2: the verdict holds for these bytes sent to this address only (a copy sent to
        # another gateway is checked again, and fails).
        seen_as = payload + destination.packed if header.bound else payload
        if checked is not None and checked[0] == seen_as:
            message = checked[1]  # the very bytes whose tag was checked: same verdict, no AEAD
        else:
            refused = self._spend_check(header.hint, source, now_ms)
            if refused is not None:
                return self._reject(refused, source, now_ms, user=user.name)
            message = proto.open_packet(keys, header, payload, destination)
            if isinstance(message, proto.Reject) and message.reason is RejectReason.BAD_TAG:
                self._bad_tags[(header.hint, source)] += 1
                return self._reject(message.reason, source, now_ms, message.detail, user.name)
            self._remember_checked(header.nonce, seen_as, message, now_ms)
        if isinstance(message, proto.Reject):
            return self._reject(message.reason, source, now_ms, message.detail, user.name)
        # From here on the packet is authentic (or a copy of an authentic one): rejections
        # name the user, and stay rate limited (invariant 6).
        skew_ms = self.config.clock_skew_seconds * 1000
        if message.timestamp_ms < now_ms - skew_ms:
            return self._reject(RejectReason.STALE, source, now_ms, user=user.name)
        if message.timestamp_ms > now_ms + skew_ms:
            return self._reject(RejectReason.FUTURE, source, now_ms, user=user.name)
        if user.expired(now_ms / 1000):
            return self._reject(RejectReason.USER_EXPIRED, source, now_ms, user=user.name)
        if isinstance(message, proto.P1) and header.version == proto.PAIR_VERSION:
            refused = self._check_signature(user, header, message, destination, seen_as, now_ms)
            if refused is not None:
                return self._reject(refused, source, now_ms, user=user.name)
        # The nonce may be forgotten once the timestamp alone would refuse it.
        nonce_expiry = message.timestamp_ms + skew_ms + 1
        if isinstance(message, proto.P1):
            return self._on_p1(user, keys, message, header, nonce_expiry, source, now_ms, gateway)
        if isinstance(message, proto.P2):
            return self._on_p2(user, keys, message, header, nonce_expiry, source, source_port, destination,
                               now_ms, gateway)
        raise AssertionError("parse_header accepts only P1 and P2")

    def _check_signature(self, user: User, header: proto.Header, p1: proto.P1, destination: IPAddress,
                         seen_as: bytes, now_ms: int) -> RejectReason | None:
        """A key-pair user's P1 must carry her signature (invariant 13): the cheap checks all passed, so
        only a holder of her pair keys gets here, within a budget per hint; a copy is not checked twice."""
        if self._signed_ok.get(header.nonce) == seen_as:
            return None
        assert self._pair_server is not None and user.public_key is not None  # _new_directory saw to it
        if self._hint_signatures[header.hint] >= self.config.hint_signatures_per_second:
            return RejectReason.HINT_OVER_BUDGET
        self._hint_signatures[header.hint] += 1
        server = self._pair_server
        if server.verify(user.public_key, proto.signed_part(header, destination, server.public, p1), p1.signature):
            self._signed_ok[header.nonce] = seen_as
            return None
        # Its copies are refused at the checked cache from now on, at no cost.
        self._remember_checked(header.nonce, seen_as, proto.Reject(RejectReason.BAD_SIGNATURE), now_ms)
        return RejectReason.BAD_SIGNATURE

    def _spend_check(self, hint: bytes, source: IPAddress, now_ms: int) -> RejectReason | None:
        """Take one tag check from this hint's budget of the second, or say why not (invariant 9)."""
        second = now_ms // 1000
        if second != self._check_second:
            self._check_second = second
            self._hint_checks.clear()
            self._hint_signatures.clear()
            self._bad_tags.clear()
        if self._bad_tags.get((hint, source), 0) >= self.config.bad_tags_per_source_per_second:
            return RejectReason.HINT_OVER_BUDGET
        if self._hint_checks[hint] >= self.config.hint_checks_per_second:
            return RejectReason.HINT_OVER_BUDGET
        self._hint_checks[hint] += 1
        return None

    def _remember_checked(self, nonce: bytes, payload: bytes, message: proto.Message | proto.Reject,
                          now_ms: int) -> None:
        """Keep a packet whose tag was good, so that its copies need no AEAD (invariant 8).

        Kept while its hint can still be found: the hint's epoch is at most that of
        now + skew, and is found until that epoch ends plus skew. After that a copy is
        an unknown hint, refused before any look-up. Only packets with a good tag get
        here, so only key holders make entries; the cap bounds even theirs.
        """
        if len(self._checked) >= self.config.checked_cache_max:
            self._sweep_checked(now_ms, force=True)
            if len(self._checked) >= self.config.checked_cache_max:
                return  # full of live entries: copies cost a tag check again, nothing else changes
        forget = now_ms + 2 * self.config.clock_skew_seconds * 1000 + HINT_EPOCH_SECONDS * 1000 + 1
        self._checked[nonce] = (payload, message, forget)

    def _sweep_checked(self, now_ms: int, force: bool = False) -> None:
        if now_ms < self._next_checked_sweep and not force:
            return
        self._checked = {n: entry for n, entry in self._checked.items() if entry[2] > now_ms}
        self._signed_ok = {n: b for n, b in self._signed_ok.items() if n in self._checked}
        self._next_checked_sweep = now_ms + 10_000

    def on_syn(self, source: IPAddress, port: int, isn: int, now_ms: int, gateway: str = "") -> list[Action]:
        """A SYN seen at `gateway`: a knock only for a request whose P1 came to that gateway."""
        key = (source, port, isn)
        request = self._knocks.get(key)
        if request is None:
            key = (source, port, ANY_ISN)  # a connect() knock: the kernel chose the ISN
            request = self._knocks.get(key)
        if request is None or request.gateway != gateway:
            self.unmatched_syns += 1  # not awaited; or a copy at another gateway: it waits where it belongs
            return []
        del self._knocks[key]
        self._pair_removed(source, port)
        request.remaining.discard((port, key[2]))
        actions: list[Action] = [Notify(Topic.AUTH_KNOCK_MATCHED, {
            "user": request.user, "client": _addr(source), "port": port,
            "left": len(request.remaining)})]
        if not request.remaining and request.claimed:
            return actions + self._knocks_complete(request, now_ms)
        return actions + self._filter_update()  # this (source, port) needs no more SYNs; or on_claim opens

    @staticmethod
    def _awaits_claim_only(request: Request) -> bool:
        return request.state is State.AWAITING_KNOCKS and not request.remaining and not request.claimed

    def on_claim(self, request_id: bytes, claimed: bool | None, detail: str, now_ms: int) -> list[Action]:
        """The shared store's answer to a ClaimNonce: True, the nonce is this replica's (the door may
        open); False, another replica had it (a copy of the P1: refused as a replay); None, the store
        could not say (refused: P3 UNAVAILABLE to its P2s, no door)."""
        request = self._by_id.get(request_id)
        if request is None or request.claimed:
            return []  # dropped or replaced meanwhile: nothing waits for this answer
        self.claim_wait_ms.append(now_ms - request.created_ms)
        if claimed:
            request.claimed = True
            if not request.remaining and request.state is State.AWAITING_KNOCKS:
                self.claims_after_knocks += 1  # the knocks were in: the door waited for the store
                return self._knocks_complete(request, now_ms)
            return []
        reason = RejectReason.REPLAY if claimed is False else RejectReason.STORE_UNAVAILABLE
        self.rejections[reason.value] += 1
        actions: list[Action] = [self._rejection_event(reason, request.client, request.user,
                                                       detail or "claimed by another replica")]
        if claimed is False:
            return actions + self._drop(request) + self._filter_update()
        request.state, request.state_since_ms = State.FAILED, now_ms
        for port, isn in request.remaining:  # its knocks are no longer awaited (as _forget does)
            if self._knocks.get((request.client, port, isn)) is request:
                del self._knocks[(request.client, port, isn)]
                self._pair_removed(request.client, port)
        request.remaining.clear()
        return actions + self._maybe_answer(request, now_ms) + self._filter_update()

    def on_door_result(self, door_id: str, stage: str, ok: bool, detail: str, now_ms: int) -> list[Action]:
        request = self._by_door.get(door_id)
        if request is None or request.state is not State.OPENING or stage not in request.door_stages:
            return []  # late answer for a door already given up: nothing to do
        if not ok:
            if detail.startswith(ADDRESS_IN_USE) and request.retries < self.config.door_retries:
                return self._move_door(request, stage, detail, now_ms)
            return self._door_failed(request, f"{stage}: {detail}", now_ms)
        request.confirmed.add(stage)
        if request.confirmed != request.door_stages:
            return []
        request.state, request.state_since_ms = State.OPEN, now_ms
        actions: list[Action] = [Notify(Topic.AUTH_DOOR_OPENED, {
            "user": request.user, "client": _addr(request.client), "port": request.door_port,
            "service": request.service, "window": self.config.window_seconds,
            "latency_ms": now_ms - request.created_ms, **({"gateway": request.gateway} if request.gateway else {})})]
        if request.reply_to is not None:
            actions.append(self._answer(request, now_ms))
        return actions

    def on_door_stage_lost(self, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A door stage's connection dropped: it died or restarted.

        The relay's listeners die with it, so every door it confirmed is gone: fail those
        requests, so that no P3 OPEN is sent for a dead door (invariant 4) and the gate
        closes their rules. The gate's rules are kernel state and outlive a gate restart;
        a door still OPENING at the gate waits for open_timeout as before.
        """
        if stage != "relay":
            return []
        actions: list[Action] = []
        for request in list(self._by_door.values()):
            if "relay" not in request.door_stages or request.gateway != gateway:
                continue  # a kernel door: no listener of the relay's to lose; or another gateway's relay
            if request.state in (State.OPENING, State.OPEN) and now_ms < request.door_expires_ms:
                actions += self._door_failed(request, "relay restarted", now_ms)
        return actions

    def on_door_used(self, door_id: str, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A stage that opened this door saw its connection come (bus.DoorUsed).

        A single-use door has done its work: it stops counting against its user's and the server's
        caps (invariant 10) and its port is freed; CloseDoor takes what is left of it out of the
        gate (a kernel door's forwarding entry; the connection itself lives on in conntrack, or in
        the relay). A door of many connections counts until its window ends.
        """
        port = self._door_ports.get(door_id)
        door = self._doors.get(port) if port is not None else None
        if door is None or door.gateway != gateway or stage not in door.stages or not door.single_use:
            return []  # unknown, closed already, reported by a stage that did not open it, or of many uses
        request = self._by_door.get(door_id)
        if request is not None and request.state is State.OPENING:
            return []  # no client was told of it yet (invariant 4): it counts until it opens or fails
        self._release(door.port)
        return [self._close(door.door_id, door.client, door.port, door.gateway, door.service, door.stages),
                Notify(Topic.AUTH_DOOR_USED, {"user": door.user, "client": _addr(door.client), "port": door.port,
                                              "seen_by": stage, **({"gateway": gateway} if gateway else {})})]

    def on_tick(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        self._replay.sweep(now_ms)
        self._sweep_checked(now_ms)
        knock_timeout = self.config.knock_timeout_seconds * 1000
        for request in list(self._requests.values()):
            age = now_ms - request.state_since_ms
            if request.state is State.AWAITING_KNOCKS and age > knock_timeout:
                self._forget(request)
                actions.append(self._rejection_event(RejectReason.KNOCK_TIMEOUT, request.client,
                                                     request.user, f"{len(request.remaining)} knocks missing"))
                self.rejections[RejectReason.KNOCK_TIMEOUT.value] += 1
            elif request.state is State.OPENING and age > self.config.open_timeout_s * 1000:
                actions += self._door_failed(request, "no confirmation in time", now_ms)
            elif request.state in (State.FAILED, State.DENIED) and age > knock_timeout:
                self._forget(request)
            elif request.state is State.OPEN and now_ms >= request.door_expires_ms:
                self._forget(request)
        for door in list(self._doors.values()):
            if door.expires_ms <= now_ms:
                self._release(door.port)
                actions.append(Notify(Topic.AUTH_DOOR_EXPIRED, {"user": door.user, "client": _addr(door.client),
                                                                 "port": door.port}))
                continue
            found = self._directory.get(door.user)
            if found is not None and found[0].expired(now_ms / 1000):
                actions += self._revoke(door, "account expired")
        for port, until in list(self._busy_ports.items()):
            if until <= now_ms:
                del self._busy_ports[port]
        self._door_rate.forget_full(now_ms / 1000)
        for rid, (_, _, expiry) in list(self._mismatches.items()):
            if expiry <= now_ms:
                del self._mismatches[rid]
        for nonce, expiry in list(self._mismatch_nonces.items()):
            if expiry <= now_ms:
                del self._mismatch_nonces[nonce]
        return actions + self._filter_update()

    # --- P1 / P2 -------------------------------------------------------------

    def _on_p1(self, user: User, keys: SessionKeys, p1: proto.P1, header: proto.Header, nonce_expiry: int,
               source: IPAddress, now_ms: int, gateway: str = "") -> list[Action]:
        nonce = header.nonce
        if not self.users_current:
            return self._reject(RejectReason.STORE_UNAVAILABLE, source, now_ms, "users not proven current", user.name)
        if p1.address is None:
            if not user.nat:
                return self._reject(RejectReason.WRONG_SOURCE, source, now_ms,
                                    "address 'as seen' not allowed for this user", user.name)
            client = source
        elif p1.address != source:
            if not p1.address.is_global:
                # Most likely a client behind NAT declaring its private address:
                # remember what we saw so that its P2 can be told (encrypted).
                # The first source wins: a copy replayed from a spoofed address must not
                # overwrite it and so deny the real client its answer.
                self._mismatches.setdefault(p1.request_id,
                                            (user.name, source, now_ms + self.config.knock_timeout_seconds * 1000))
            return self._reject(RejectReason.WRONG_SOURCE, source, now_ms,
                                f"declared {p1.address}", user.name)
        else:
            client = source
        if not user.allows_source(client):
            return self._reject(RejectReason.SOURCE_NOT_ALLOWED, source, now_ms, user=user.name)
        existing = self._requests.get((user.name, client))
        if existing is not None and existing.request_id == p1.request_id and existing.gateway == gateway:
            self._replay.remember(nonce, nonce_expiry)  # a retransmitted P1: same request
            return [Notify(Topic.AUTH_REQUEST_RETRY, {"user": user.name, "client": _addr(client)})]
        mine = [r for r in self._requests.values() if r.user == user.name and r.state is not State.OPEN]
        if existing is None and len(mine) >= self.config.max_requests_per_user:
            return self._reject(RejectReason.TOO_MANY_REQUESTS, source, now_ms, user=user.name)
        if p1.request_id in self._by_id:
            return self._reject(RejectReason.REPLAY, source, now_ms, "request id reused", user.name)
        self._replay.remember(nonce, nonce_expiry)
        actions: list[Action] = []
        if existing is not None:
            actions.append(Notify(Topic.AUTH_REQUEST_REPLACED, {"user": user.name, "client": _addr(client)}))
            actions += self._drop(existing)
        connect = p1.knock_kind is KnockKind.CONNECT
        request = Request(user.name, keys, client, p1.request_id, p1.service, now_ms,
                          {(k.port, ANY_ISN if connect else k.isn) for k in p1.knocks}, state_since_ms=now_ms,
                          gateway=gateway, version=header.version, bound=header.bound)
        self._requests[(user.name, client)] = request
        self._by_id[p1.request_id] = request
        actions.append(Notify(Topic.AUTH_REQUEST_RECEIVED, {
            "user": user.name, "client": _addr(client), "source": _addr(source), "service": p1.service,
            "knocks": p1.knock_kind.name.lower(), **({"gateway": gateway} if gateway else {})}))
        denial = None
        if p1.service not in user.services or p1.service not in self.config.services:
            denial = (Status.SERVICE_NOT_ALLOWED, RejectReason.SERVICE_NOT_ALLOWED, p1.service)
        elif connect and not self.config.connect_knocks:
            denial = (Status.KNOCK_KIND_REFUSED, RejectReason.KNOCK_KIND_REFUSED, "server.connect_knocks = false")
        if denial is not None:
            request.state, request.denial = State.DENIED, denial[0]
            request.remaining.clear()
            self.rejections[denial[1].value] += 1
            actions.append(self._rejection_event(denial[1], client, user.name, denial[2]))
            return actions + self._filter_update()  # the replaced request's knocks are gone
        if self.config.shared_nonces:
            request.claimed = False
            actions.append(ClaimNonce(p1.request_id, nonce, nonce_expiry))
        for port, isn in request.remaining:
            if (client, port, isn) not in self._knocks:  # else it is taken over, not added
                self._pairs[(_addr(client), port)] += 1
                self._pairs_changed = True
            self._knocks[(client, port, isn)] = request
        return actions + self._filter_update()

    def _on_p2(self, user: User, keys: SessionKeys, p2: proto.P2, header: proto.Header, nonce_expiry: int,
               source: IPAddress, source_port: int, destination: IPAddress, now_ms: int,
               gateway: str = "") -> list[Action]:
        nonce = header.nonce
        request = self._by_id.get(p2.request_id)
        if request is None or request.user != user.name:
            mismatch = self._mismatches.get(p2.request_id)
            if mismatch is not None and mismatch[0] == user.name and mismatch[1] == source:
                # Not into the replay cache: this P2 may be a copy raced from the address the
                # note names, and burning its nonce there would refuse the real P2 when it
                # arrives from the declared address (invariant 3). Still one answer per nonce.
                if nonce in self._mismatch_nonces:
                    return self._reject(RejectReason.REPLAY, source, now_ms, user=user.name)
                self._mismatch_nonces[nonce] = nonce_expiry
                reply = proto.P3(now_ms, p2.request_id, Status.ADDRESS_MISMATCH, 0, 0, source)
                sealed = self._seal(keys, reply, now_ms, header.version, destination if header.bound else None)
                return [SendReply(source, source_port, destination, sealed, gateway)]
            return self._reject(RejectReason.NO_REQUEST, source, now_ms, user=user.name)
        if request.client != source:
            return self._reject(RejectReason.WRONG_SOURCE, source, now_ms, "P2 from another address", user.name)
        if request.gateway != gateway:
            return self._reject(RejectReason.WRONG_GATEWAY, source, now_ms, f"P2 at {gateway or 'local'}, request "
                                f"at {request.gateway or 'local'}", user.name)
        self._replay.remember(nonce, nonce_expiry)
        request.reply_to = (source, source_port, destination)
        if request.state is State.OPENING or self._awaits_claim_only(request):
            # Answered as soon as the door is confirmed (or refused); a request whose knocks are all in and
            # whose nonce the shared store has not answered for yet is not PENDING: a client told so would
            # resend its whole burst, every few tens of ms, while nothing is missing on its side.
            return []
        if request.state is State.AWAITING_KNOCKS and self._hold(request, now_ms):
            return []  # answered when the knocks complete, or PENDING at the deadline (on_timer)
        return [self._answer(request, now_ms)]

    # --- held P2s ------------------------------------------------------------

    def _hold(self, request: Request, now_ms: int) -> bool:
        if request.request_id in self._held:
            return True  # a second P2 meanwhile: the answer goes to it (reply_to), at the same deadline
        config = self.config
        if config.p2_hold_ms <= 0 or request.held_once or len(self._held) >= config.max_held_p2_total \
                or self._held_of[request.user] >= config.max_held_p2_per_user:
            return False
        request.held_once = True
        request.held_until_ms = now_ms + config.p2_hold_ms
        self._held[request.request_id] = request
        self._held_of[request.user] += 1
        return True

    def _unhold(self, request: Request) -> None:
        if self._held.pop(request.request_id, None) is not None:
            request.held_until_ms = 0
            self._held_of[request.user] -= 1
            if self._held_of[request.user] <= 0:
                del self._held_of[request.user]

    def next_deadline_ms(self) -> int | None:
        """When on_timer has something to do (a held P2's deadline), or None."""
        for request in self._held.values():
            return request.held_until_ms
        return None

    def on_timer(self, now_ms: int) -> list[Action]:
        """Answer PENDING to the held P2s whose knocks did not come in time."""
        actions: list[Action] = []
        while self._held:
            request = next(iter(self._held.values()))
            if request.held_until_ms > now_ms:
                break
            self._unhold(request)
            if request.state is State.AWAITING_KNOCKS and request.reply_to is not None \
                    and not self._awaits_claim_only(request):
                actions.append(self._answer(request, now_ms))
        return actions

    # --- doors ---------------------------------------------------------------

    def _knocks_complete(self, request: Request, now_ms: int) -> list[Action]:
        self._unhold(request)  # its P2 is answered below (refused) or when the door opens
        actions: list[Action] = [Notify(Topic.AUTH_KNOCK_COMPLETE,
                                        {"user": request.user, "client": _addr(request.client)})]
        request.state_since_ms = now_ms
        refusal: tuple[RejectReason, str] | None = None
        rate = self._door_rate.has(request.user, now_ms / 1000)
        if self._doors_of[request.user] >= self.config.max_doors_per_user:
            refusal = (RejectReason.TOO_MANY_DOORS, f"user holds {self.config.max_doors_per_user} unused")
        elif rate is None:
            refusal = (RejectReason.TOO_MANY_DOORS, f"user opened {self.config.doors_per_minute} in a minute")
        elif len(self._doors) >= self.config.max_doors_total:
            refusal = (RejectReason.TOO_MANY_DOORS, f"server holds {self.config.max_doors_total}")
        if refusal is None:
            port = self._allocate_port()
            if port is None:
                refusal = (RejectReason.NO_DOOR_PORT, "")
        if refusal is not None:
            request.state = State.FAILED
            self.rejections[refusal[0].value] += 1
            actions.append(self._rejection_event(refusal[0], request.client, request.user, refusal[1]))
            return actions + self._maybe_answer(request, now_ms) + self._filter_update()
        assert port is not None and rate is not None
        rate[0] -= 1.0  # the bucket's token: only a door really asked for takes one
        return actions + self._open_at(request, port, now_ms) + self._filter_update()

    def _open_at(self, request: Request, port: int, now_ms: int) -> list[Action]:
        service = self.config.services[request.service]
        request.state = State.OPENING
        request.state_since_ms = now_ms
        request.confirmed.clear()
        request.door_port = port
        request.door_id = self._random_bytes(8).hex()
        request.door_expires_ms = now_ms + self.config.window_seconds * 1000
        request.door_stages = door_stages(service, request.client)
        self._by_door[request.door_id] = request
        self._doors[port] = Door(request.door_id, request.user, request.client, port, request.service,
                                 request.door_expires_ms, request.gateway, request.door_stages, self.config.single_use)
        self._door_ports[request.door_id] = port
        self._doors_of[request.user] += 1
        return [OpenDoor(request.door_id, request.user, request.client, port, service.name,
                         service.host, service.port, request.door_expires_ms, request.door_stages, request.gateway)]

    def _move_door(self, request: Request, stage: str, detail: str, now_ms: int) -> list[Action]:
        """A local process holds the port: close what either stage opened, open on another port.

        The port is not drawn again for a window: whoever holds it likely still does.
        """
        old_port, old_id = request.door_port, request.door_id
        self._by_door.pop(old_id, None)
        self._release(old_port)
        self._busy_ports[old_port] = now_ms + self.config.window_seconds * 1000
        request.retries += 1
        actions: list[Action] = [self._close(old_id, request.client, old_port, request.gateway, request.service,
                                             request.door_stages)]
        port = self._allocate_port()
        if port is None:
            request.door_id = ""
            return actions + self._door_failed(request, f"{stage}: {detail}", now_ms, close=False)
        actions += self._open_at(request, port, now_ms)
        actions.append(Notify(Topic.AUTH_DOOR_MOVED, {"user": request.user, "client": _addr(request.client),
                                                      "port": old_port, "new_port": port,
                                                      "detail": f"{stage}: {detail}"}))
        # the Notify goes after OpenDoor; CloseDoor (old) goes before it: the gate's element for
        # the old port is gone before the new one is asked for.
        return actions

    def _revoke(self, door: Door, why: str) -> list[Action]:
        """Close a door its user may no longer have (invariant 11), open or being opened."""
        request = self._by_door.get(door.door_id)
        if request is not None:
            self._forget(request)
        self._release(door.port)
        return [self._close(door.door_id, door.client, door.port, door.gateway, door.service, door.stages),
                Notify(Topic.AUTH_DOOR_REVOKED, {"user": door.user, "client": _addr(door.client), "port": door.port,
                                                 "detail": why})]

    def _close(self, door_id: str, client: IPAddress, port: int, gateway: str, service: str,
               stages: frozenset[str]) -> CloseDoor:
        target = self.config.services.get(service)
        kernel = target is not None and stages == KERNEL_DOOR_STAGES
        return CloseDoor(door_id, client, port, gateway, (target.host, target.port) if kernel and target else None)

    def _release(self, port: int) -> None:
        door = self._doors.pop(port, None)
        if door is not None:
            del self._door_ports[door.door_id]
            self._doors_of[door.user] -= 1
            if self._doors_of[door.user] <= 0:
                del self._doors_of[door.user]

    def _door_failed(self, request: Request, detail: str, now_ms: int, close: bool = True) -> list[Action]:
        request.state, request.state_since_ms = State.FAILED, now_ms
        self.rejections[RejectReason.DOOR_FAILED.value] += 1
        actions: list[Action] = []
        if close:  # compensate: whichever stage did open must close again, so nothing is half-open
            actions.append(self._close(request.door_id, request.client, request.door_port, request.gateway,
                                       request.service, request.door_stages))
        actions.append(self._rejection_event(RejectReason.DOOR_FAILED, request.client, request.user, detail))
        self._by_door.pop(request.door_id, None)
        self._release(request.door_port)
        return actions + self._maybe_answer(request, now_ms)

    def _allocate_port(self) -> int | None:
        low, high = self.config.door_port_low, self.config.door_port_high
        size = high - low + 1
        if len(self._doors) + len(self._busy_ports) >= size:
            return None
        for _ in range(32):
            port = low + self._random_below(size)
            if port not in self._doors and port not in self._busy_ports:
                return port
        start = self._random_below(size)  # a nearly full range: scan from a random place
        for offset in range(size):
            port = low + (start + offset) % size
            if port not in self._doors and port not in self._busy_ports:
                return port
        return None

    def _drop(self, request: Request) -> list[Action]:
        """Forget a request before its time; a door being opened for it is closed again."""
        actions: list[Action] = []
        if request.state is State.OPENING:
            # The OpenDoor is already out: without this the door would open, unknown
            # to anyone, for its whole window (e.g. after its user was removed).
            actions.append(self._close(request.door_id, request.client, request.door_port, request.gateway,
                                       request.service, request.door_stages))
            self._release(request.door_port)
        self._forget(request)
        return actions

    def _forget(self, request: Request) -> None:
        self._unhold(request)
        for port, isn in request.remaining:
            key = (request.client, port, isn)
            if self._knocks.get(key) is request:  # another request may have declared the same knock
                del self._knocks[key]
                self._pair_removed(request.client, port)
        if self._requests.get((request.user, request.client)) is request:
            del self._requests[(request.user, request.client)]
        self._by_id.pop(request.request_id, None)
        self._by_door.pop(request.door_id, None)

    # --- replies -------------------------------------------------------------

    def _maybe_answer(self, request: Request, now_ms: int) -> list[Action]:
        return [self._answer(request, now_ms)] if request.reply_to is not None else []

    def _answer(self, request: Request, now_ms: int) -> SendReply:
        assert request.reply_to is not None
        destination, port, source = request.reply_to
        if request.state is State.OPEN:
            left = max(0, math.ceil((request.door_expires_ms - now_ms) / 1000))
            p3 = proto.P3(now_ms, request.request_id, Status.OPEN, request.door_port, left, destination)
        else:
            status = {State.AWAITING_KNOCKS: Status.PENDING, State.OPENING: Status.PENDING,
                      State.DENIED: request.denial, State.FAILED: Status.UNAVAILABLE}[request.state]
            p3 = proto.P3(now_ms, request.request_id, status, 0, 0, destination)
        bound = source if request.bound else None  # bound to the address it leaves from, as its P1 was
        return SendReply(destination, port, source, self._seal(request.keys, p3, now_ms, request.version, bound),
                         request.gateway)

    def _seal(self, keys: SessionKeys, message: proto.P3, now_ms: int, version: int,
              server: IPAddress | None = None) -> bytes:
        hint = user_hint(keys, hint_epoch(now_ms / 1000))
        nonce = self._random_bytes(proto.NONCE_LEN)
        if version == proto.PAIR_VERSION:
            assert self._pair_server is not None
            return proto.seal_pair(keys, message, hint, nonce, self._pair_server.public, server)
        return proto.seal(keys, message, hint, nonce, server)

    # --- rejections and the knock filter -------------------------------------

    def _reject(self, reason: RejectReason, source: IPAddress, now_ms: int, detail: str = "",
                user: str | None = None) -> list[Action]:
        """Count a rejection; report it within the second's budget of the user it names.

        Every rejection is limited, those after a good tag too: a replayer holds no key,
        yet its copies carry good tags (issue 11: 78,368 events in 11 s). One budget per
        user named, so a flood under one user's hint does not mute another's rejections.
        """
        self.rejections[reason.value] += 1
        second = now_ms // 1000
        if second != self._reject_second:
            self._reject_second = second
            self._reject_sent.clear()
        if self._reject_sent[user] >= self.config.reject_events_per_second:
            return []
        self._reject_sent[user] += 1
        return [self._rejection_event(reason, source, user, detail)]

    @staticmethod
    def _rejection_event(reason: RejectReason, source: IPAddress, user: str | None,
                         detail: str = "") -> Notify:
        fields: dict[str, Any] = {"reason": reason.value, "source": _addr(source)}
        if user is not None:
            fields["user"] = user
        if detail:
            fields["detail"] = detail
        return Notify(Topic.AUTH_REQUEST_REJECTED, fields)

    def _pair_removed(self, client: IPAddress, port: int) -> None:
        key = (_addr(client), port)
        self._pairs[key] -= 1
        if self._pairs[key] <= 0:
            del self._pairs[key]
        self._pairs_changed = True

    def _filter_update(self) -> list[Action]:
        if not self._pairs_changed:
            return []
        self._pairs_changed = False
        pairs = frozenset(self._pairs)
        if pairs == self._filter:
            return []
        self._filter = pairs
        return [SetKnockFilter(pairs)]

    # --- views for status and tests -----------------------------------------

    def hints(self, now_ms: int) -> frozenset[bytes]:
        """The hints a packet may carry now (for capture's early drop)."""
        return self._directory.hints(now_ms / 1000)

    def doors_at(self, gateway: str) -> list[Door]:
        """The doors believed open or being opened at a gateway (the gate and relay reconcile with them)."""
        return [d for d in self._doors.values() if d.gateway == gateway]

    def opening(self, now_ms: int) -> tuple[int, int]:
        """Doors asked for and not yet confirmed, and the oldest one's age in ms (a stage falling behind)."""
        ages = [now_ms - r.state_since_ms for r in self._by_door.values() if r.state is State.OPENING]
        return len(ages), max(ages, default=0)

    def open_doors(self) -> list[dict[str, Any]]:
        return [{"user": d.user, "client": _addr(d.client), "port": d.port, "expires_ms": d.expires_ms,
                 **({"gateway": d.gateway} if d.gateway else {})} for d in self._doors.values()]

