"""Packets whose tag (and signature) the engine checked, remembered by their bytes (engine invariant 8).

A copy of a packet already checked gets the same verdict with no cryptography: a replay flood costs
a dict look-up. Entries are keyed by nonce and hold the exact bytes seen (for a bound packet, with
the address it was sent to): other bytes under the same nonce are checked afresh.
"""

from __future__ import annotations

from dynknock import protocol as proto
from dynknock.keys import HINT_EPOCH_SECONDS

Verdict = proto.Message | proto.Reject
SWEEP_EVERY_MS = 10_000


class CheckedCache:
    def __init__(self, max_entries: int, clock_skew_seconds: int) -> None:
        self.max_entries = max_entries
        self.clock_skew_seconds = clock_skew_seconds
        # nonce -> (bytes seen, what its tag check gave, forget after)
        self._checked: dict[bytes, tuple[bytes, Verdict, int]] = {}
        # nonce -> the bytes of the version 3 P1 whose signature verified under it: only those very bytes
        # skip the check again (a thief holding her keys can make other bytes under that nonce).
        self._signed: dict[bytes, bytes] = {}
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._checked)

    def verdict(self, nonce: bytes, seen_as: bytes) -> Verdict | None:
        """The verdict on exactly these bytes, if they were checked."""
        entry = self._checked.get(nonce)
        return entry[1] if entry is not None and entry[0] == seen_as else None

    def remember(self, nonce: bytes, seen_as: bytes, verdict: Verdict, now_ms: int) -> None:
        """Keep a packet whose tag was good, so that its copies need no AEAD.

        Kept while its hint can still be found: the hint's epoch is at most that of
        now + skew, and is found until that epoch ends plus skew. After that a copy is
        an unknown hint, refused before any look-up. Only packets with a good tag get
        here, so only key holders make entries; the cap bounds even theirs.
        """
        if len(self._checked) >= self.max_entries:
            self.sweep(now_ms, force=True)
            if len(self._checked) >= self.max_entries:
                return  # full of live entries: copies cost a tag check again, nothing else changes
        forget = now_ms + 2 * self.clock_skew_seconds * 1000 + HINT_EPOCH_SECONDS * 1000 + 1
        self._checked[nonce] = (seen_as, verdict, forget)

    def signed(self, nonce: bytes, seen_as: bytes) -> bool:
        """These very bytes carried a signature that verified."""
        return self._signed.get(nonce) == seen_as

    def remember_signed(self, nonce: bytes, seen_as: bytes) -> None:
        self._signed[nonce] = seen_as

    def forget_verdicts(self) -> None:
        """New keys: verdicts reached under the old ones are not reused (the signatures' entries go at the
        next sweep, with the verdicts they stood beside)."""
        self._checked.clear()

    def sweep(self, now_ms: int, force: bool = False) -> None:
        """Drop the entries past their time, at most every SWEEP_EVERY_MS unless forced."""
        if now_ms < self._next_sweep and not force:
            return
        self._checked = {n: entry for n, entry in self._checked.items() if entry[2] > now_ms}
        self._signed = {n: b for n, b in self._signed.items() if n in self._checked}
        self._next_sweep = now_ms + SWEEP_EVERY_MS
