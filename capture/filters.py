"""What capture keeps between messages about its filters, and when its kernel filter must change.

Pure: no pcap, no zmq; time is passed in (monotonic seconds). The shell (capture/main.py) feeds
it auth's filter messages and what each batch of packets showed, asks it whether the kernel
filter is due (due()), attaches the filter it describes (pairs, admitted sources) and tells it
so (installed()).

Invariants:
* Until auth has named its live hints, every hint passes (capture may have started first);
  until auth has sent a knock filter, no knock's SYN passes (generation -1).
* Each filter message is whole: only the newest generation matters, and one repeated (auth
  sends it every 2 s) changes nothing.
* Several auth replicas: each replica's pairs and hints are kept apart, under the name
  the shell read them from, and what passes is the union of the live replicas' (set_live). A
  replica that goes down takes its pairs and hints out and is forgotten (forget), so that its next
  life starts afresh whatever generation it counts from. Until a live replica has named hints,
  every hint passes, as with one auth. One auth is the replica "" and always live: its pairs and
  hints pass exactly as they came.
* A change that lets something new in (a new pending knock, a P1's sender admitted) is
  attached at once: a knock's SYNs follow its P1 by 5 ms. A change that only shuts something
  out (knocks seen, admissions ended) waits up to NARROW_AFTER_S for the next widening, and
  they are attached together: one attach per new knock instead of four.
* If the kernel refuses every form of the filter, even alone (capture/bpf.py KernelFilter.knocks),
  the attach is tried again RETRY_S later, or at once for something new; the form says "refused".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from dynknock.bus import HintFilter, KnockFilter
from dynknock.capture.core import valid_hints, valid_pairs
from dynknock.capture.fairness import Admissions

NARROW_AFTER_S = 0.05
IDLE_WAIT_MS = 500  # nothing to attach: the loop wakes for packets and messages only
ADMITTED_WAIT_MS = 100  # admissions run out on their own (ADMIT_S): look at them this often
RETRY_S = 0.5  # the kernel refused every form of the filter: try again this much later
ONE_AUTH = ""  # the replica name of the one auth of a host or fleet without [replicas]


class Filters:
    """auth's knock pairs and live hints (each replica's apart), the P1 senders admitted meanwhile, and
    what is attached."""

    def __init__(self, atomic: bool, admitted: Admissions | None = None) -> None:
        # Only where the filter is swapped atomically (capture/bpf.py) is an admission worth its attach.
        self.atomic = atomic
        # Per replica: the generation of its newest knock filter (counted as seen even when malformed),
        # its pairs, its hints and their generation.
        self.generations: dict[str, int] = {}
        self.replica_pairs: dict[str, list[tuple[str, int]]] = {}
        self.replica_hints: dict[str, tuple[int, frozenset[bytes]]] = {}
        self.live: frozenset[str] = frozenset((ONE_AUTH,))
        # The union over the live replicas: what the kernel filter and the hint check use.
        self.pairs: list[tuple[str, int]] = []
        self.hints: frozenset[bytes] | None = None  # None until a live replica has said: every hint passes
        self.admitted = admitted if admitted is not None else Admissions()
        self.changes = 0  # filters attached
        self.form = "pairs"  # how narrowly the attached filter passes SYNs (KernelFilter.knocks)
        self._widen = False  # something new must pass: attach now
        self._narrow_at: float | None = None  # something may be shut out: attach by then
        self._installed_pairs: frozenset[tuple[str, int]] = frozenset()
        self._installed_admitted: frozenset[str] = frozenset()

    @property
    def generation(self) -> int:
        """The newest knock filter's generation among the live replicas (one auth: auth's); -1: none yet,
        no knock can pass."""
        return max((self.generations[r] for r in self.live if r in self.generations), default=-1)

    @property
    def hints_generation(self) -> int:
        return max((self.replica_hints[r][0] for r in self.live if r in self.replica_hints), default=-1)

    def on_hints(self, message: HintFilter, replica: str = ONE_AUTH) -> bool:
        """A replica's live hints (one auth: replica ""); False if one is malformed (the message is
        dropped, the old set stays)."""
        known = self.replica_hints.get(replica)
        if known is not None and message.generation == known[0]:
            return True
        fresh = valid_hints(message.hints)
        if fresh is None:
            return False
        self.replica_hints[replica] = (message.generation, fresh)
        if replica in self.live:
            self.hints = self._union_hints()
        return True

    def on_knocks(self, message: KnockFilter, now: float, replica: str = ONE_AUTH) -> bool:
        """A replica's pending (source, port) pairs (one auth: replica ""); False if one is malformed
        (the message is dropped, the old pairs stay; its generation counts as seen, so the same bad
        message is judged once). A replica not live keeps them until it is."""
        if message.generation == self.generations.get(replica):
            return True
        self.generations[replica] = message.generation
        pairs = valid_pairs(message.pairs)
        if pairs is None:
            return False
        self.replica_pairs[replica] = pairs
        if replica in self.live:
            self.admitted.narrowed(source for source, _ in pairs)  # auth has read those P1s
            self._take(self._union_pairs(), now)
        return True

    def set_live(self, replicas: Iterable[str], now: float) -> None:
        """The replicas up now (capture/routing.py Router.live): only theirs pass. A replica gone is
        forgotten (its next life starts afresh)."""
        live = frozenset(replicas)
        if live == self.live:
            return
        for gone in self.live - live:
            self.forget(gone)
        self.live = live
        self.hints = self._union_hints()
        pairs = self._union_pairs()
        if pairs != self.pairs:
            self._take(pairs, now)

    def forget(self, replica: str) -> None:
        """Everything a replica said (it went down): what it says next is judged as new."""
        self.generations.pop(replica, None)
        self.replica_pairs.pop(replica, None)
        self.replica_hints.pop(replica, None)

    def _union_pairs(self) -> list[tuple[str, int]]:
        lists = [self.replica_pairs[r] for r in sorted(self.live) if r in self.replica_pairs]
        if len(lists) == 1:
            return lists[0]  # one auth (or one replica speaking): its pairs exactly as they came
        return list(dict.fromkeys(pair for pairs in lists for pair in pairs))

    def _union_hints(self) -> frozenset[bytes] | None:
        named = [self.replica_hints[r][1] for r in self.live if r in self.replica_hints]
        if not named:
            return None
        return named[0] if len(named) == 1 else frozenset[bytes]().union(*named)

    def _take(self, pairs: list[tuple[str, int]], now: float) -> None:
        """New pairs to pass: attached at once if one is not let in already, else soon with the next."""
        self.pairs = pairs
        if all(pair in self._installed_pairs or pair[0] in self._installed_admitted for pair in pairs):
            self._narrow_by(now + NARROW_AFTER_S)
        else:
            self._widen = True

    def knows(self, hint: bytes) -> bool:
        return self.hints is None or hint in self.hints

    def on_p1(self, source: str | bytes, hint: bytes, now: float) -> None:
        """A P1 under a live hint passed the budgets: its knocks follow 5 ms behind, let them in now
        (auth narrows it to the exact pairs later). `source` as text, or packed as capture peeked it:
        made text only where admissions apply (live hints known, an atomic filter)."""
        if self.hints is not None and self.atomic and self.admitted.p1(str(ipaddress.ip_address(source)), hint, now):
            self._widen = True

    def on_syn(self, source: str, now: float) -> None:
        """A SYN reached user space: past a knock's few from an admitted source, shut it out."""
        if self.admitted and self.admitted.syn(source):
            self._narrow_by(now)

    def expire(self, now: float) -> None:
        if self.admitted and self.admitted.expire(now):
            self._narrow_by(now)

    def due(self, now: float) -> bool:
        """Whether the kernel filter must be attached now (pairs and admitted sources as they are)."""
        return self._widen or (self._narrow_at is not None and now >= self._narrow_at)

    def installed(self, form: str) -> None:
        """The shell attached the filter of self.pairs and self.admitted.sources(): form is how narrow."""
        self._widen, self._narrow_at = False, None
        self.form = form
        self._installed_pairs, self._installed_admitted = frozenset(self.pairs), frozenset(self.admitted.sources())
        self.changes += 1

    def refused(self, now: float) -> None:
        """The shell could attach no form of the filter (the kernel refused them all): tried again
        RETRY_S later, or at once when something new must pass."""
        self._widen, self._narrow_at = False, now + RETRY_S
        self.form = "refused"

    def wait_ms(self, now: float) -> int:
        """How long the loop may sleep without missing an attach that is due."""
        if self._widen:
            return 0
        wait = ADMITTED_WAIT_MS if self.admitted else IDLE_WAIT_MS
        if self._narrow_at is not None:
            wait = max(0, min(wait, int((self._narrow_at - now) * 1000) + 1))
        return wait

    def _narrow_by(self, when: float) -> None:
        self._narrow_at = when if self._narrow_at is None else self._narrow_at
