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
* A change that lets something new in (a new pending knock, a P1's sender admitted) is
  attached at once: a knock's SYNs follow its P1 by 5 ms. A change that only shuts something
  out (knocks seen, admissions ended) waits up to NARROW_AFTER_S for the next widening, and
  they are attached together: one attach per new knock instead of four (1,800 in the scale
  benchmark).
* If the kernel refuses every form of the filter, even alone (capture/bpf.py KernelFilter.knocks),
  the attach is tried again RETRY_S later, or at once for something new; the form says "refused".
"""

from __future__ import annotations

import ipaddress

from dynknock.bus import HintFilter, KnockFilter
from dynknock.capture.core import valid_hints, valid_pairs
from dynknock.capture.fairness import Admissions

NARROW_AFTER_S = 0.05
IDLE_WAIT_MS = 500  # nothing to attach: the loop wakes for packets and messages only
ADMITTED_WAIT_MS = 100  # admissions run out on their own (ADMIT_S): look at them this often
RETRY_S = 0.5  # the kernel refused every form of the filter: try again this much later


class Filters:
    """auth's knock pairs and live hints, the P1 senders admitted meanwhile, and what is attached."""

    def __init__(self, atomic: bool, admitted: Admissions | None = None) -> None:
        # Only where the filter is swapped atomically (capture/bpf.py) is an admission worth its attach.
        self.atomic = atomic
        self.generation = -1  # of auth's newest knock filter; -1: none yet (no knock can pass)
        self.pairs: list[tuple[str, int]] = []
        self.hints: frozenset[bytes] | None = None  # None until auth has said: every hint passes
        self.hints_generation = -1
        self.admitted = admitted if admitted is not None else Admissions()
        self.changes = 0  # filters attached
        self.form = "pairs"  # how narrowly the attached filter passes SYNs (KernelFilter.knocks)
        self._widen = False  # something new must pass: attach now
        self._narrow_at: float | None = None  # something may be shut out: attach by then
        self._installed_pairs: frozenset[tuple[str, int]] = frozenset()
        self._installed_admitted: frozenset[str] = frozenset()

    def on_hints(self, message: HintFilter) -> bool:
        """auth's live hints; False if one is malformed (the message is dropped, the old set stays)."""
        if message.generation == self.hints_generation:
            return True
        fresh = valid_hints(message.hints)
        if fresh is None:
            return False
        self.hints, self.hints_generation = fresh, message.generation
        return True

    def on_knocks(self, message: KnockFilter, now: float) -> bool:
        """auth's pending (source, port) pairs; False if one is malformed (the message is dropped, the
        old pairs stay; its generation counts as seen, so the same bad message is judged once)."""
        if message.generation == self.generation:
            return True
        self.generation = message.generation
        pairs = valid_pairs(message.pairs)
        if pairs is None:
            return False
        self.pairs = pairs
        self.admitted.narrowed(source for source, _ in pairs)  # auth has read those P1s
        if all(pair in self._installed_pairs or pair[0] in self._installed_admitted for pair in pairs):
            self._narrow_by(now + NARROW_AFTER_S)
        else:
            self._widen = True
        return True

    def knows(self, hint: bytes) -> bool:
        return self.hints is None or hint in self.hints

    def on_p1(self, source: str | bytes, hint: bytes, now: float) -> None:
        """A P1 under a live hint passed the budgets: its knocks follow 5 ms behind, let them in now
        (auth narrows it to the exact pairs later). `source` as text, or packed as capture peeked it:
        made text only where admissions apply (live hints known, an atomic filter), as before."""
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
