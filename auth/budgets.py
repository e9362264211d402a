"""What one hint, one source and one user may cost the auth stage a second (pure: time is passed in).

* :class:`CheckBudget`: tag checks and signature checks per hint, bad tags per (hint, source), so a
  flood under one user's hint leaves every other user's packets their turn, and the user's own
  address keeps its checks while a few others flood her hint (engine invariants 9 and 13).
* :class:`Rejections`: every rejection counted; the events reporting them one by one are limited
  per user named (and as much for packets naming nobody), so a flood can flood neither the bus nor
  the logs, and a flood under one user's name cannot mute another's (engine invariant 6).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from dynknock.auth.actions import Action, Notify
from dynknock.protocol import IPAddress, RejectReason
from dynknock.topics import Topic


class CheckBudget:
    """The second's tag checks and signature checks per hint, and bad tags per (hint, source).

    All three start afresh at the first tag check of a new second; a signature check with no tag
    check before it (a copy of a packet whose tag was checked) counts in the second of the last one.
    """

    def __init__(self, checks_per_hint: int, bad_tags_per_source: int, signatures_per_hint: int) -> None:
        self.checks_per_hint = checks_per_hint
        self.bad_tags_per_source = bad_tags_per_source
        self.signatures_per_hint = signatures_per_hint
        self._second = -1  # the second the counts belong to
        self._checks: Counter[bytes] = Counter()
        self._signatures: Counter[bytes] = Counter()
        self._bad_tags: Counter[tuple[bytes, IPAddress]] = Counter()

    def spend_check(self, hint: bytes, source: IPAddress, now_ms: int) -> bool:
        """Take one tag check from this hint's budget of the second; False: none left for this source."""
        second = now_ms // 1000
        if second != self._second:
            self._second = second
            self._checks.clear()
            self._signatures.clear()
            self._bad_tags.clear()
        if self._bad_tags.get((hint, source), 0) >= self.bad_tags_per_source:
            return False
        if self._checks[hint] >= self.checks_per_hint:
            return False
        self._checks[hint] += 1
        return True

    def bad_tag(self, hint: bytes, source: IPAddress) -> None:
        """A tag check failed: past bad_tags_per_source, this source waits for the next second."""
        self._bad_tags[(hint, source)] += 1

    def spend_signature(self, hint: bytes) -> bool:
        """Take one signature check from this hint's budget; False: none left this second."""
        if self._signatures[hint] >= self.signatures_per_hint:
            return False
        self._signatures[hint] += 1
        return True


def rejection_event(reason: RejectReason, source: IPAddress, user: str | None, detail: str = "") -> Notify:
    fields: dict[str, Any] = {"reason": reason.value, "source": str(source)}
    if user is not None:
        fields["user"] = user
    if detail:
        fields["detail"] = detail
    return Notify(Topic.AUTH_REQUEST_REJECTED, fields)


class Rejections:
    """Rejections counted by reason (`counts`), and the events that report them."""

    def __init__(self, events_per_second: int) -> None:
        self.events_per_second = events_per_second
        self.counts: Counter[str] = Counter()
        self._second = -1  # the second _sent belongs to; -1: no second seen yet
        self._sent: Counter[str | None] = Counter()  # user named (None: nobody) -> events sent

    def packet(self, reason: RejectReason, source: IPAddress, now_ms: int, detail: str = "",
               user: str | None = None) -> list[Action]:
        """A packet refused: counted; reported within the second's budget of the user it names.

        Rejections after a good tag are limited too: a replayer holds no key, yet its copies carry
        good tags.
        """
        self.counts[reason.value] += 1
        second = now_ms // 1000
        if second != self._second:
            self._second = second
            self._sent.clear()
        if self._sent[user] >= self.events_per_second:
            return []
        self._sent[user] += 1
        return [rejection_event(reason, source, user, detail)]

    def request(self, reason: RejectReason, client: IPAddress, user: str, detail: str = "") -> Notify:
        """A request of this user's refused (a denial, no door, a timeout): counted and always reported,
        since each follows an accepted P1 and a request ends this way at most once."""
        self.counts[reason.value] += 1
        return rejection_event(reason, client, user, detail)
