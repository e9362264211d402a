"""The client side of one knock request, with no I/O (docs/CLIENT.md).

The shell (client/knock.py) feeds a :class:`ClientSession` the time and every
datagram that arrives on its UDP socket, and carries out the commands it gets
back, in order: send a datagram, send the SYN knocks, pause, finish. Nonces come
from a callable given at construction, so tests drive the session exactly.

What the server does, and why the session behaves as it does (auth/engine.py):

* The server answers only an authenticated P2 for a request it holds. A lost
  P1, lost knocks or a lost P2 all look the same here: silence. So after each
  *burst* (P1, the three SYNs, P2) the session waits a short interval, doubling
  it each time, and sends the whole burst again until the deadline.
* P3 PENDING means the server holds the request but has not seen all knocks
  (or is opening the door): the burst is resent after a short wait. P1 goes
  along too, in case the request was dropped meanwhile (knock timeout).
* While the door is being opened a P2 gets no immediate answer; P3 OPEN
  follows on its own as soon as the door is confirmed.
* Shortly after the first burst's P2 the three SYNs go out once more (the knock
  echo, ``Timing.knock_echo_s``) unless the answer came first: a SYN that raced
  ahead of the server's knock filter is then seen without a PENDING round.

Invariants:
1. One session is one request: its request_id and knocks never change, however
   often P1 is resent, so the server recognises a retransmission instead of
   seeing a new request replace the old one.
2. Every P1 and P2 sent is sealed afresh (new nonce, new timestamp): the server
   refuses a nonce it has accepted before.
3. Only an authenticated P3 carrying our request_id ends the session; anything
   else that arrives is counted by reason and ignored.
4. Resends are bounded by the deadline and by ``Timing.max_bursts``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from dynknock.client import wire
from dynknock.client.wire import Knock, KnockKind, PacketType, Status
from dynknock.keys import SessionKeys, hint_epoch, user_hint

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    import secrets
    from typing import NamedTuple, TypeAlias

    from dynknock.client.pair import PairSeal
    from dynknock.client.wire import IPAddress
else:  # the same without typing's and secrets' ~7 ms of knock-client start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple, secrets

# Knock ports come from IANA's dynamic range (49152-65535, never assigned to a service) below the
# server's default door ports (63000-65535): a knock's SYN never meets a public service of the
# server, whose ports are the well-known and registered ones (docs/SECURITY.md).
KNOCK_PORT_LOW = 49152
KNOCK_PORT_HIGH = 62999

# --- the request -------------------------------------------------------------


# A NamedTuple, not a dataclass: creating a frozen slots dataclass costs knock-client ~0.5-1 ms of
# start-up each (bench/client_startup.py), a NamedTuple ~0.05 ms.
class Request(NamedTuple):
    request_id: bytes
    address: IPAddress | None  # None: "as seen" (NAT)
    service: str
    knocks: tuple[Knock, Knock, Knock]
    knock_kind: KnockKind = KnockKind.SYN


def new_request(service: str, address: IPAddress | None, knock_kind: KnockKind = KnockKind.SYN,
                token_bytes: Callable[[int], bytes] = secrets.token_bytes,
                randbelow: Callable[[int], int] = secrets.randbelow) -> Request:
    """A fresh request: random id, three distinct random ports and, for SYN knocks, random ISNs
    (connect() knocks carry none: the kernel chooses).

    The ports and ISNs are the knock secret (the paper's 144 bits), so they come
    from the OS CSPRNG, never from `random`.
    """
    ports: list[int] = []
    while len(ports) < wire.KNOCK_COUNT:
        port = KNOCK_PORT_LOW + randbelow(KNOCK_PORT_HIGH - KNOCK_PORT_LOW + 1)
        if port not in ports:
            ports.append(port)
    connect = knock_kind is KnockKind.CONNECT
    knocks = tuple(Knock(port, 0 if connect else int.from_bytes(token_bytes(4), "big")) for port in ports)
    return Request(token_bytes(wire.REQUEST_ID_LEN), address, service, (knocks[0], knocks[1], knocks[2]),
                   knock_kind)


# --- commands ------------------------------------------------------------------


class SendDatagram(NamedTuple):
    kind: PacketType
    payload: bytes


class SendKnocks(NamedTuple):
    knocks: tuple[Knock, Knock, Knock]


class Pause(NamedTuple):
    seconds: float


class Finished(NamedTuple):
    answer: wire.P3 | None  # None: gave up, nothing authentic came back in time


Command: TypeAlias = SendDatagram | SendKnocks | Pause | Finished


class Timing(NamedTuple):
    timeout_s: float = 5.0
    first_interval_s: float = 0.25  # a LAN answers in a few ms, a far server in ~100-300
    backoff: float = 2.0
    max_interval_s: float = 2.0
    max_bursts: int = 20
    # PENDING: the server holds the request but missed a knock, almost always a SYN that
    # raced ahead of its knock filter; resend soon, doubling the wait each time.
    pending_wait_s: float = 0.02
    # The server arms its knock filter only once P1 is processed (capture ->
    # auth -> capture, a few ms); SYNs racing ahead of P1 would be dropped and
    # cost a whole retry. A short gap costs little and saves that round.
    knock_gap_s: float = 0.005
    # No gap is needed before P2: the server holds its answer to a P2 that
    # arrives while the door is being opened and sends P3 the moment it opens.
    p2_gap_s: float = 0.0
    # The first burst's SYNs go out once more this long after P2 unless the answer came
    # first. A SYN that raced ahead of the server's knock filter (slow under load or a
    # flood) is then seen without a PENDING round (pending_wait_s and more), and the door
    # opens on the P2 the server holds. Duplicate knocks are harmless: the server counts
    # a knock once and its filter drops it once seen. 0 disables.
    knock_echo_s: float = 0.005


# --- the session ---------------------------------------------------------------


class ClientSession:
    def __init__(self, keys: SessionKeys, request: Request, timing: Timing,
                 nonces: Callable[[int], bytes] = secrets.token_bytes, server: IPAddress | None = None,
                 pair: PairSeal | None = None) -> None:
        self.keys = keys
        # Protocol v2 (a fleet): every packet bound to the server address, so a copy sniffed on its
        # way there opens nothing at another gateway; None: version 1, as before.
        self.server = server
        # A key-pair user (client/pair.py): version 3, her P1s signed; only version 3 answers count.
        self.pair = pair
        self._versions = (wire.PAIR_VERSION,) if pair is not None else wire.VERSIONS
        self.request = request
        self.timing = timing
        self._nonces = nonces
        self.ignored: Counter[str] = Counter()
        self.bursts = 0
        self.pending = 0  # PENDING answers seen: the server knows us but lacks knocks
        self.finished = False
        self.wake_at = 0.0  # monotonic time at which the shell must call on_wake
        self._deadline = 0.0
        self._resend_at = 0.0  # the next burst
        self._echo_at: float | None = None  # the knock echo after the first burst, if still due
        self._interval = timing.first_interval_s
        self._resend_for_pending = False

    # --- inputs ----------------------------------------------------------------

    def start(self, now: float, wall_ms: int) -> list[Command]:
        if self.bursts:
            raise RuntimeError("session already started")
        self._deadline = now + self.timing.timeout_s
        return self._burst(now, wall_ms, grow=True)

    def on_wake(self, now: float, wall_ms: int) -> list[Command]:
        """The shell's timer fired (now >= wake_at): echo the knocks, resend, or give up."""
        if self.finished:
            return []
        if self._echo_at is not None and now >= self._echo_at and now < self._resend_at:
            self._echo_at = None
            self._update_wake()
            return [SendKnocks(self.request.knocks)]
        self._echo_at = None
        if now >= self._deadline or self.bursts >= self.timing.max_bursts:
            self.finished = True
            return [Finished(None)]
        grow = not self._resend_for_pending
        self._resend_for_pending = False
        return self._burst(now, wall_ms, grow=grow)

    def on_datagram(self, packet: bytes, now: float) -> list[Command]:
        if self.finished:
            return []
        answer = self._authentic_answer(packet)
        if answer is None:
            return []
        if answer.status is Status.PENDING:
            self.pending += 1
            # Knocks are missing: resend soon rather than after the backoff,
            # but never later than the resend already planned.
            resend_at = now + self.timing.pending_wait_s * self.timing.backoff ** (self.pending - 1)
            if resend_at < self._resend_at:
                self._resend_at = resend_at
                self._resend_for_pending = True
                self._update_wake()
            return []
        self.finished = True
        return [Finished(answer)]

    # --- internals -------------------------------------------------------------

    def _authentic_answer(self, packet: bytes) -> wire.P3 | None:
        header = wire.parse_answer_header(packet, self._versions)
        if isinstance(header, str):
            self.ignored[header] += 1
            return None
        message = wire.open_answer(self.keys, header, packet, self.server)
        if isinstance(message, str):
            self.ignored[message] += 1
            return None
        # The id is authenticated and random per request, so an old or foreign P3
        # (say, the answer to a previous run) can never be taken for ours.
        if message.request_id != self.request.request_id:
            self.ignored["other_request"] += 1
            return None
        return message

    def _burst(self, now: float, wall_ms: int, grow: bool) -> list[Command]:
        self.bursts += 1
        gap = self.timing.knock_gap_s
        commands: list[Command] = [SendDatagram(PacketType.P1, self._seal_p1(wall_ms))]
        commands += [Pause(gap)] if gap > 0 else []
        commands.append(SendKnocks(self.request.knocks))
        p2_gap = self.timing.p2_gap_s
        commands += [Pause(p2_gap)] if p2_gap > 0 else []
        # P2 is sealed before the pauses run, stamped with the wall time it will
        # leave at; a few ms of error are nothing against the server's 60 s window.
        commands.append(SendDatagram(PacketType.P2, self._seal_p2(wall_ms + int((gap + p2_gap) * 1000))))
        self._resend_at = min(now + gap + p2_gap + self._interval, self._deadline)
        echo = self.timing.knock_echo_s
        if self.bursts == 1 and echo > 0 and now + gap + p2_gap + echo < self._resend_at:
            self._echo_at = now + gap + p2_gap + echo
        self._update_wake()
        if grow:
            self._interval = min(self._interval * self.timing.backoff, self.timing.max_interval_s)
        return commands

    def _update_wake(self) -> None:
        self.wake_at = self._resend_at if self._echo_at is None else min(self._echo_at, self._resend_at)

    def _hint(self, wall_ms: int) -> bytes:
        return user_hint(self.keys, hint_epoch(wall_ms / 1000))

    def _seal_p1(self, wall_ms: int) -> bytes:
        r = self.request
        message = wire.P1(wall_ms, r.request_id, r.address, r.service, r.knocks, r.knock_kind)
        return self._seal(message, wall_ms)

    def _seal_p2(self, wall_ms: int) -> bytes:
        return self._seal(wire.P2(wall_ms, self.request.request_id), wall_ms)

    def _seal(self, message: wire.P1 | wire.P2, wall_ms: int) -> bytes:
        hint, nonce = self._hint(wall_ms), self._nonces(wire.NONCE_LEN)
        if self.pair is not None:
            return wire.seal_pair(self.keys, message, hint, nonce, self.pair.server_key, self.server,
                                  self.pair.sign if isinstance(message, wire.P1) else None)
        return wire.seal(self.keys, message, hint, nonce, self.server)
