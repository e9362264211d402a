"""What a P2 is told: the P3 of its request's state, sealed for its user; and the NAT notes.

A P1 that declares a private address other than its source most likely comes from behind a NAT: it is
refused, and the source seen is noted, so that the P2 from that same source is told (sealed, so only
the user reads it) ADDRESS_MISMATCH and the address the server saw, once per nonce. The first source
wins: a copy replayed from a spoofed address must not overwrite the note and so deny the real client
its answer. Pure: time and randomness are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dynknock import protocol as proto
from dynknock.auth.actions import Action, SendReply
from dynknock.auth.state import Request, State
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import IPAddress, RejectReason, Status


class Answers:
    def __init__(self, random_bytes: Callable[[int], bytes], server_public: Callable[[], bytes | None]) -> None:
        """`server_public`: the server's own public key, once it has one (key-pair users' P3s name it)."""
        self._random_bytes = random_bytes
        self._server_public = server_public
        # request_id -> (user, source seen, forget after), for NAT diagnosis of a P1 declared elsewhere
        self._notes: dict[bytes, tuple[str, IPAddress, int]] = {}
        # nonce -> expiry of the P2s answered ADDRESS_MISMATCH: one answer per nonce, kept apart from the
        # replay cache (a copy raced from the noted address must not burn the real P2's nonce)
        self._answered: dict[bytes, int] = {}

    def request(self, request: Request, now_ms: int) -> SendReply:
        """The P3 for the request's latest P2 (reply_to), as its state stands."""
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

    def if_asked(self, request: Request, now_ms: int) -> list[Action]:
        """The P3 for the request's P2 if one came (a P1 alone is never answered)."""
        return [self.request(request, now_ms)] if request.reply_to is not None else []

    def note(self, request_id: bytes, user: str, source: IPAddress, until_ms: int) -> None:
        """A P1 of `user` declared a private address and came from `source`."""
        self._notes.setdefault(request_id, (user, source, until_ms))

    def mismatch(self, p2: proto.P2, user: str, keys: SessionKeys, header: proto.Header, nonce_expiry: int,
                 source: IPAddress, source_port: int, destination: IPAddress, now_ms: int,
                 gateway: str) -> SendReply | RejectReason | None:
        """The ADDRESS_MISMATCH answer to a P2 from the source a note names; REPLAY for a second P2 with
        that nonce; None: no note for it."""
        note = self._notes.get(p2.request_id)
        if note is None or note[0] != user or note[1] != source:
            return None
        if header.nonce in self._answered:
            return RejectReason.REPLAY
        self._answered[header.nonce] = nonce_expiry
        reply = proto.P3(now_ms, p2.request_id, Status.ADDRESS_MISMATCH, 0, 0, source)
        sealed = self._seal(keys, reply, now_ms, header.version, destination if header.bound else None)
        return SendReply(source, source_port, destination, sealed, gateway)

    def sweep(self, now_ms: int) -> None:
        for rid, (_, _, expiry) in list(self._notes.items()):
            if expiry <= now_ms:
                del self._notes[rid]
        for nonce, expiry in list(self._answered.items()):
            if expiry <= now_ms:
                del self._answered[nonce]

    def _seal(self, keys: SessionKeys, message: proto.P3, now_ms: int, version: int,
              server: IPAddress | None = None) -> bytes:
        hint = user_hint(keys, hint_epoch(now_ms / 1000))
        nonce = self._random_bytes(proto.NONCE_LEN)
        if version == proto.PAIR_VERSION:
            public = self._server_public()
            assert public is not None  # a key-pair user exists only with the server's key
            return proto.seal_pair(keys, message, hint, nonce, public, server)
        return proto.seal(keys, message, hint, nonce, server)
