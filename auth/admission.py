"""From a datagram's bytes to an authentic, fresh P1 or P2 of a known user, or its rejection.

The checks run cheapest first, so what costs cryptography comes last and within a budget: the header
(size, version, type), the user by her rotating hint (one dict look-up), the version her kind of key
allows, the nonce journal (a replay costs no cryptography: engine invariant 8), the checked cache (a
copy of a packet already checked gets its verdict by its bytes), the hint's budget of tag checks, the
AEAD tag, the timestamp window, the account's expiry, and last a key-pair user's signature over her
P1, within the hint's budget of signature checks (invariant 13). Pure: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dynknock import protocol as proto
from dynknock.auth.actions import Action
from dynknock.auth.budgets import CheckBudget, Rejections
from dynknock.auth.checked import CheckedCache
from dynknock.auth.replay import ReplayCache
from dynknock.auth.settings import EngineConfig
from dynknock.auth.users import User, UserDirectory, UsersFileError
from dynknock.keys import SessionKeys
from dynknock.protocol import IPAddress, RejectReason


class PairServer(Protocol):
    """The server's side of key-pair users (auth/serverkey.py): its public key, each user's session
    keys, and the check of a signature."""

    public: bytes

    def session_keys(self, user_public: bytes) -> SessionKeys: ...

    def verify(self, user_public: bytes, message: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """A packet that passed every check: its nonce is not yet remembered (the engine does that when it
    takes the packet, invariant 3)."""

    user: User
    keys: SessionKeys
    header: proto.Header
    message: proto.P1 | proto.P2
    nonce_expiry: int  # the nonce may be forgotten from then on: its timestamp alone refuses it


class Admission:
    def __init__(self, config: EngineConfig, users: dict[str, User], replay: ReplayCache, rejections: Rejections,
                 pair_server: PairServer | None = None) -> None:
        self.config = config
        self.pair_server = pair_server
        self.directory = self.new_directory(users)
        self._replay = replay
        self._rejections = rejections
        self._checked = CheckedCache(config.checked_cache_max, config.clock_skew_seconds)
        self._budget = CheckBudget(config.hint_checks_per_second, config.bad_tags_per_source_per_second,
                                   config.hint_signatures_per_second)

    def server_public(self) -> bytes | None:
        """The server's own public key, once it has one."""
        return self.pair_server.public if self.pair_server is not None else None

    def new_directory(self, users: dict[str, User]) -> UserDirectory:
        if self.pair_server is None and any(u.public_key is not None for u in users.values()):
            raise UsersFileError("the users file has key-pair users, and this server has no key of its own "
                                 "(server.key_file; knock-admin server-key makes it)")
        return UserDirectory(users, self.config.clock_skew_seconds,
                             self.pair_server.session_keys if self.pair_server is not None else None)

    def replace_users(self, users: dict[str, User]) -> UserDirectory:
        """Take these users from now on (raises UsersFileError, changing nothing); returns the old directory."""
        old, self.directory = self.directory, self.new_directory(users)
        self._checked.forget_verdicts()  # verdicts reached under the old keys are not reused under the new
        return old

    def sweep(self, now_ms: int) -> None:
        self._checked.sweep(now_ms)

    def check(self, source: IPAddress, destination: IPAddress, payload: bytes, now_ms: int) -> Admitted | list[Action]:
        """The packet, admitted; or the rejection's actions (counted, reported within the budget)."""
        reject = self._rejections.packet
        header = proto.parse_header(payload, versions=self.config.versions)
        if isinstance(header, proto.Reject):
            return reject(header.reason, source, now_ms, header.detail)
        if self.config.bound_only and not header.bound:
            return reject(RejectReason.BAD_VERSION, source, now_ms, f"{header.version} unbound, in a fleet")
        found = self.directory.find(header.hint, now_ms / 1000)
        if found is None:
            return reject(RejectReason.UNKNOWN_USER, source, now_ms)
        user, keys = found
        # A key-pair user's packets are version 3 (her P1s signed), everyone else's 1 or 2: her keys sealing
        # an older version's P1 (which a thief of the server's key could make) open nothing.
        if (user.public_key is not None) != (header.version == proto.PAIR_VERSION):
            kind = "key-pair" if user.public_key else "symmetric-key"
            return reject(RejectReason.BAD_VERSION, source, now_ms, f"{header.version} for a {kind} user", user.name)
        # A nonce accepted before is a replay, whatever the rest of the packet says; no tag check
        # needed to refuse it. Not a nonce answered ADDRESS_MISMATCH: that answer may have gone to a
        # copy raced from elsewhere, and the client's own P2 from the declared address must still be
        # answered (invariant 3); the engine keeps its one answer per nonce, and copies reach it
        # without AEAD through the checked cache.
        if self._replay.seen(header.nonce, now_ms):
            return reject(RejectReason.REPLAY, source, now_ms, user=user.name)
        # Version 2: the verdict holds for these bytes sent to this address only (a copy sent to
        # another gateway is checked again, and fails).
        seen_as = payload + destination.packed if header.bound else payload
        message = self._checked.verdict(header.nonce, seen_as)  # the very bytes checked: same verdict, no AEAD
        if message is None:
            if not self._budget.spend_check(header.hint, source, now_ms):
                return reject(RejectReason.HINT_OVER_BUDGET, source, now_ms, user=user.name)
            message = proto.open_packet(keys, header, payload, destination)
            if isinstance(message, proto.Reject) and message.reason is RejectReason.BAD_TAG:
                self._budget.bad_tag(header.hint, source)
                return reject(message.reason, source, now_ms, message.detail, user.name)
            self._checked.remember(header.nonce, seen_as, message, now_ms)
        if isinstance(message, proto.Reject):
            return reject(message.reason, source, now_ms, message.detail, user.name)
        # From here on the packet is authentic (or a copy of an authentic one): rejections
        # name the user, and stay rate limited (invariant 6).
        skew_ms = self.config.clock_skew_seconds * 1000
        if message.timestamp_ms < now_ms - skew_ms:
            return reject(RejectReason.STALE, source, now_ms, user=user.name)
        if message.timestamp_ms > now_ms + skew_ms:
            return reject(RejectReason.FUTURE, source, now_ms, user=user.name)
        if user.expired(now_ms / 1000):
            return reject(RejectReason.USER_EXPIRED, source, now_ms, user=user.name)
        if isinstance(message, proto.P1) and header.version == proto.PAIR_VERSION:
            refused = self._check_signature(user, header, message, destination, seen_as, now_ms)
            if refused is not None:
                return reject(refused, source, now_ms, user=user.name)
        if not isinstance(message, proto.P1 | proto.P2):
            raise AssertionError("parse_header accepts only P1 and P2")
        return Admitted(user, keys, header, message, message.timestamp_ms + skew_ms + 1)

    def _check_signature(self, user: User, header: proto.Header, p1: proto.P1, destination: IPAddress,
                         seen_as: bytes, now_ms: int) -> RejectReason | None:
        """A key-pair user's P1 must carry her signature: the cheap checks all passed, so only a holder of
        her pair keys gets here, within a budget per hint; a copy is not checked twice."""
        if self._checked.signed(header.nonce, seen_as):
            return None
        assert self.pair_server is not None and user.public_key is not None  # new_directory saw to it
        if not self._budget.spend_signature(header.hint):
            return RejectReason.HINT_OVER_BUDGET
        server = self.pair_server
        if server.verify(user.public_key, proto.signed_part(header, destination, server.public, p1), p1.signature):
            self._checked.remember_signed(header.nonce, seen_as)
            return None
        # Its copies are refused at the checked cache from now on, at no cost.
        self._checked.remember(header.nonce, seen_as, proto.Reject(RejectReason.BAD_SIGNATURE), now_ms)
        return RejectReason.BAD_SIGNATURE
