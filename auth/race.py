"""The knock race, explained once, and auth's part in it: the P2 hold.

The race. A client sends P1, then its three SYN knocks, then P2, a few milliseconds apart. capture's
kernel filter passes a SYN only from a (source, port) that auth named, and auth names a request's
knocks only once it has read that request's P1: capture -> auth -> KnockFilter -> capture, a few ms on
an idle server and more under load or a flood. A SYN that arrives before its pair is in the filter
dies in the kernel; the request then lacks a knock, its P2 is answered PENDING, and the client pays
a resend round. Nothing is lost to security either way (a knock counts only for the request that
declared it, a duplicate only once), only time. Three parts, one in each stage that takes part, and
none of them moved from its stage:

1. capture admits early (capture/fairness.py ``Admissions``, applied by capture/filters.py and
   capture/bpf.py ``KernelFilter.knocks``): a P1 under a live hint, within capture's budgets, lets
   SYNs from its sender through the kernel filter to any port at once, before auth has read it.
   auth's exact pairs narrow it again; an admission also ends after ``ADMIT_S`` or ``ADMIT_SYNS`` SYNs,
   and is capped per hint and in all, so a sniffed P1 replayed from spoofed sources buys little.
2. The client spaces and repeats its knocks (client/session.py ``Timing``): ``knock_gap_s`` between P1
   and the SYNs, and the knock echo, ``knock_echo_s`` after the first burst's P2: the same SYNs
   once more unless the answer came first. After a PENDING it resends soon (``pending_wait_s``).
3. auth holds the P2 (:class:`P2Hold` below, driven by auth/engine.py): a P2 that finds its request
   still awaiting knocks is not answered PENDING at once but held ``p2_hold_ms`` (auth/main.py
   ``P2_HOLD_MS``, longer than the client's echo delay), so the echoed SYN completes the request and
   this same P2 is answered OPEN. A P2 whose door is being opened, or whose knocks are all in and
   whose nonce only awaits the shared store, is not answered PENDING at all: it gets the door's answer.

Changing one part's timing means reading the other two: the echo must come within the hold, and the
early admission must outlast the knock gap and the echo.
"""

from __future__ import annotations

from collections import Counter

from dynknock.auth.state import Request


class P2Hold:
    """P2s held until their knocks complete or their deadline passes. Each request's P2 is held once at
    most; at most `per_user` held per user and `total` in all (past those: PENDING at once)."""

    def __init__(self, hold_ms: int, per_user: int, total: int) -> None:
        self.hold_ms, self.per_user, self.total = hold_ms, per_user, total
        # request id -> (deadline, request), in the order of their deadlines (hold_ms is one constant)
        self._held: dict[bytes, tuple[int, Request]] = {}
        self._of: Counter[str] = Counter()  # user -> P2s held

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, request: Request, now_ms: int) -> bool:
        """Hold this request's P2; False: answer it now."""
        if request.request_id in self._held:
            return True  # a second P2 meanwhile: the answer goes to it (reply_to), at the same deadline
        if self.hold_ms <= 0 or request.held_once or len(self._held) >= self.total \
                or self._of[request.user] >= self.per_user:
            return False
        request.held_once = True
        self._held[request.request_id] = (now_ms + self.hold_ms, request)
        self._of[request.user] += 1
        return True

    def release(self, request: Request) -> None:
        """Its P2 is no longer held (answered, or its request gone)."""
        if self._held.pop(request.request_id, None) is not None:
            self._of[request.user] -= 1
            if self._of[request.user] <= 0:
                del self._of[request.user]

    def deadline(self) -> int | None:
        """The earliest deadline of a held P2, or None."""
        for deadline, _ in self._held.values():
            return deadline
        return None

    def due(self, now_ms: int) -> list[Request]:
        """Release the P2s whose deadline has come, in order; the caller answers those still pending."""
        released: list[Request] = []
        while self._held:
            deadline, request = next(iter(self._held.values()))
            if deadline > now_ms:
                break
            self.release(request)
            released.append(request)
        return released
