"""Capture's shedding of floods under a live hint: no crypto, bounded memory, plain values in and out.

The cheap hint check drops junk under no current user's hint. What it cannot drop
is what an attacker who saw one knock on the wire can send without any key:
junk carrying that user's live hint, and copies of the captured P1/P2. Each costs
auth an AEAD check, so capture sheds them before they are forwarded:

* Exact copies: every P1 and P2 is sealed afresh (new nonce, client/session.py),
  so the same payload twice is a replay. The payloads forwarded recently are
  remembered with the sources they came from (first in, first out, bounded in
  number and age). A copy from a source already seen is shed; a copy from a new
  source is forwarded, up to SOURCES_PER_PAYLOAD sources: an on-path attacker
  who races a copy from its own address must not get the client's own packet,
  arriving later from the client's address, shed here (PROTOCOL.md invariant 3:
  auth refuses the copy and accepts the original), while a replay flood from
  spoofed sources costs auth at most that many packets per captured payload.
  Only forwarded payloads are remembered, and forwarding is rate limited below,
  so a flood of distinct junk can push a remembered payload out only at the pace
  the budgets allow: a replay then passes at most once per REPLAY_CAPACITY
  forwarded packets, never at the flood's rate.
* Budgets: token buckets per (hint, source address), per hint, and for all
  hints together. A flood under one hint from one address is held by the first,
  so the same user's knocks from their own address still pass; a flood from
  many (spoofed) addresses is held by the second, so it cannot take more than
  one hint's share; the third bounds the sum (it matters while auth has not yet
  said which hints are live, when any hint passes). A client sends a P1 and a
  P2 per burst, bursts 20 ms apart at the quickest (client/session.py), so the
  budgets leave a real client, even one knocking again and again, a wide margin.
* Order: within one batch read from the kernel, datagrams go to auth round-robin
  over hints (fair_order), so a hint's burst never queues ahead of the first
  datagram of another hint.

Tables are bounded; when one is full the entry made longest ago goes, which
only ever hands its owner a fresh (full) bucket.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from dynknock.limits import TokenBuckets

T = TypeVar("T")

DUPLICATE = "duplicate"
SOURCE_BUDGET = "source_budget"
HINT_BUDGET = "hint_budget"
TOTAL_BUDGET = "total_budget"
REASONS = (DUPLICATE, SOURCE_BUDGET, HINT_BUDGET, TOTAL_BUDGET)


@dataclass(frozen=True)
class Limits:
    # Rate (per second) and burst of each bucket. A user knocking again and again from one
    # address (a script, a benchmark) sends a P1 and a P2 per door: the per-address rate leaves
    # that whole, where a low one would hold knocks back until the client resends. auth checks at
    # most 500 tags per hint a second (auth/engine.py) and capture passes no more, so a flooded
    # hint costs auth little, and one address flooding a hint leaves the rest of the hint's share
    # to the user's own.
    source_rate: float = 200.0
    source_burst: float = 200.0
    hint_rate: float = 500.0
    hint_burst: float = 500.0
    total_rate: float = 4000.0
    total_burst: float = 2000.0
    max_sources: int = 16384  # (hint, source) buckets kept
    max_hints: int = 4096  # hint buckets kept
    replay_capacity: int = 65536  # payloads remembered
    # Older copies than this are past auth's timestamp window and under a hint that rotated away.
    replay_ttl_s: float = 300.0


# Sources a payload may come from before its copies are shed whatever their source: the
# client's own, an on-path attacker's racing copy, and room for a NAT changing its mind.
SOURCES_PER_PAYLOAD = 4


class ReplayFilter:
    """The payloads forwarded lately with their sources, oldest first, at most `capacity` payloads and
    none older than ttl_s."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        # payload -> (first forwarded, sources it came from); oldest first, as TokenBuckets
        self._seen: OrderedDict[bytes, tuple[float, tuple[bytes, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, payload: bytes, source: bytes, now: float) -> bool:
        entry = self._seen.get(payload)
        if entry is None or now - entry[0] >= self.ttl_s:
            return False
        return source in entry[1] or len(entry[1]) >= SOURCES_PER_PAYLOAD

    def remember(self, payload: bytes, source: bytes, now: float) -> None:
        seen = self._seen
        entry = seen.get(payload)
        if entry is not None and now - entry[0] < self.ttl_s:
            seen[payload] = (entry[0], (*entry[1], source))  # keeps its place: its age is its first copy's
            return
        seen.pop(payload, None)  # a stale copy moves to the young end
        while seen:
            when, _ = next(iter(seen.values()))
            if len(seen) < self.capacity and now - when < self.ttl_s:
                break
            seen.popitem(last=False)
        seen[payload] = (now, (source,))


class Shedder:
    """Decides, per datagram under a hint auth accepts, whether it may go to auth."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits = limits or Limits()
        self.replays = ReplayFilter(limits.replay_capacity, limits.replay_ttl_s)
        self.sources = TokenBuckets(limits.source_rate, limits.source_burst, limits.max_sources)
        self.hints = TokenBuckets(limits.hint_rate, limits.hint_burst, limits.max_hints)
        self.total = TokenBuckets(limits.total_rate, limits.total_burst, 1)
        self.dropped = dict.fromkeys(REASONS, 0)

    def admit(self, hint: bytes, source: bytes, payload: bytes, now: float) -> str | None:
        """None if this datagram may be forwarded (it then counts against every budget), else why it
        is shed (also counted in `dropped`)."""
        if self.replays.seen(payload, source, now):
            reason = DUPLICATE
        else:
            # Test every bucket before taking from any: a datagram shed by one costs the others nothing.
            # The hint's first: under a flood from spoofed addresses it is the one that is empty,
            # and then the flood never touches (nor churns) the table of addresses.
            by_hint = self.hints.has(hint, now)
            by_source = self.sources.has((hint, source), now) if by_hint is not None else None
            total = self.total.has(None, now) if by_source is not None else None
            if by_hint is not None and by_source is not None and total is not None:
                by_source[0] -= 1.0
                by_hint[0] -= 1.0
                total[0] -= 1.0
                self.replays.remember(payload, source, now)
                return None
            reason = HINT_BUDGET if by_hint is None else SOURCE_BUDGET if by_source is None else TOTAL_BUDGET
        self.dropped[reason] += 1
        return reason


def fair_order(items: Iterable[tuple[bytes, T]]) -> list[T]:
    """The items round-robin over their keys (hints), each key's items in arrival order, keys in order
    of first arrival: [(a,1),(a,2),(a,3),(b,4)] -> [1,4,2,3]."""
    queues: dict[bytes, list[T]] = {}
    for key, item in items:
        queue = queues.get(key)
        if queue is None:
            queues[key] = [item]
        else:
            queue.append(item)
    if len(queues) <= 1:
        return next(iter(queues.values()), [])
    out: list[T] = []
    rank = 0
    lists = list(queues.values())
    while lists:
        out.extend(queue[rank] for queue in lists)
        rank += 1
        lists = [queue for queue in lists if len(queue) > rank]
    return out


# A P1 under a live hint, within the budgets above, admits SYNs from its sender to any port in the
# kernel at once, before auth has read it (capture/bpf.py KernelFilter.knocks): a client sends its
# knocks 5 ms after P1, sooner than the round trip capture -> auth -> capture for the exact pairs
# under load, and a SYN the kernel drops costs the knock a PENDING round. auth's pairs narrow it
# again: an admission ends when auth's filter names the source, after ADMIT_S, or after ADMIT_SYNS
# SYNs from it (3 knocks, their echo, resends), whichever comes first. So a P1 copied by an
# eavesdropper and sent from spoofed sources buys each source a few SYNs, within the hint's budget;
# at most ADMIT_PER_HINT sources are admitted at once under one hint (junk under one sniffed hint
# must not take the others' places) and ADMIT_MAX in all; a scan from any other address stays in
# the kernel.
ADMIT_S = 0.5
ADMIT_SYNS = 12
ADMIT_PER_HINT = 16
ADMIT_MAX = 1024


class Admissions:
    """Sources whose SYNs pass the kernel filter to any port for a while; each method says whether the
    set changed (the filter must then be rebuilt)."""

    def __init__(self, seconds: float = ADMIT_S, syns: int = ADMIT_SYNS, limit: int = ADMIT_MAX,
                 per_hint: int = ADMIT_PER_HINT) -> None:
        self.seconds, self.syns, self.limit, self.per_hint = seconds, syns, limit, per_hint
        self._until: dict[str, float] = {}  # source -> end, oldest first (seconds is one constant)
        self._left: dict[str, int] = {}  # source -> SYNs it may still pass
        self._hint: dict[str, bytes] = {}  # source -> the hint of the P1 that admitted it
        self._of_hint: dict[bytes, int] = {}  # hint -> sources it holds admitted
        self.total = 0  # admissions made
        self.full = 0  # P1s that found the table full

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, source: object) -> bool:
        return source in self._until

    def sources(self) -> list[str]:
        return list(self._until)

    def p1(self, source: str, hint: bytes, now: float) -> bool:
        """A P1 under hint admitted by the budgets, from source: admit the source (again) for `seconds`."""
        if source in self._until:
            del self._until[source]  # to the young end: its new end is the latest
            self._until[source], self._left[source] = now + self.seconds, self.syns
            return False
        if len(self._until) >= self.limit or self._of_hint.get(hint, 0) >= self.per_hint:
            self.full += 1
            return False
        self._until[source], self._left[source], self._hint[source] = now + self.seconds, self.syns, hint
        self._of_hint[hint] = self._of_hint.get(hint, 0) + 1
        self.total += 1
        return True

    def narrowed(self, sources: Iterable[str]) -> bool:
        """auth's filter names these sources: their exact pairs take over."""
        changed = False
        for source in sources:
            if source in self._until:
                self._drop(source)
                changed = True
        return changed

    def syn(self, source: str) -> bool:
        """A SYN from source reached user space; past `syns` of them the source is no client's knock."""
        left = self._left.get(source)
        if left is None:
            return False
        if left > 1:
            self._left[source] = left - 1
            return False
        self._drop(source)
        return True

    def expire(self, now: float) -> bool:
        changed = False
        while self._until:
            source, until = next(iter(self._until.items()))
            if until > now:
                break
            self._drop(source)
            changed = True
        return changed

    def _drop(self, source: str) -> None:
        del self._until[source]
        del self._left[source]
        hint = self._hint.pop(source)
        if self._of_hint[hint] <= 1:
            del self._of_hint[hint]
        else:
            self._of_hint[hint] -= 1
