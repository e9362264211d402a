"""The two limiters every stage uses, pure: time is passed in, nothing is read or sent.

PerSecond bounds log lines and reports of remote garbage (dynknock/stage.py RateLimitedLog,
capture's reject events); TokenBuckets bounds work per key (auth's per-user log, capture's
shedding of datagrams by source, hint and in all, capture/fairness.py).
"""

from __future__ import annotations

from collections import OrderedDict


class PerSecond:
    """At most `limit` a second, counted in whole seconds of the clock passed in (pure).

    A fixed window, not a bucket: cheap, and a burst at a second's end and the next
    second's start gets twice the limit, which is fine for what it bounds (log lines and
    reports of remote garbage: their volume, not their spacing).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._second = -1
        self._used = 0
        self.refused = 0  # in the current second

    def ended(self, now: float) -> int:
        """What was refused in a second that is over by `now` (0 while it lasts): for a summary."""
        return self.refused if int(now) != self._second else 0

    def take(self, now: float) -> bool:
        second = int(now)
        if second != self._second:
            self._second, self._used, self.refused = second, 0, 0
        if self._used < self.limit:
            self._used += 1
            return True
        self.refused += 1
        return False


Bucket = list[float]  # [tokens, time of the last refill]


class TokenBuckets:
    """Token buckets by key, each filling at `rate` a second up to `burst`, new ones full (pure).

    At most `limit` keys (None: no bound): when the table is full the bucket made longest
    ago goes, which only ever hands its owner a fresh, full bucket again.
    """

    def __init__(self, rate: float, burst: float, limit: int | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.limit = limit
        # OrderedDict: dropping the oldest of a plain dict again and again scans the holes the
        # earlier deletions left at its front (quadratic under a flood of spoofed addresses).
        self._table: OrderedDict[object, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def has(self, key: object, now: float) -> Bucket | None:
        """The key's bucket refilled to now if it holds a token, else None; nothing is taken, so a
        caller can test several buckets and take from all (bucket[0] -= 1) or from none."""
        bucket = self._table.get(key)
        if bucket is None:
            if self.limit is not None and len(self._table) >= self.limit:
                self._table.popitem(last=False)
            bucket = self._table[key] = [self.burst, now]
        elif now > bucket[1]:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket if bucket[0] >= 1.0 else None

    def take(self, key: object, now: float) -> bool:
        """One token from the key's bucket, if it has one."""
        bucket = self.has(key, now)
        if bucket is None:
            return False
        bucket[0] -= 1.0
        return True

    def forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled by now: a full bucket is what a new key gets anyway."""
        self._table = OrderedDict((key, bucket) for key, bucket in self._table.items()
                                  if bucket[0] + (now - bucket[1]) * self.rate < self.burst)
