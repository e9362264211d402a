"""What auth writes to its log about users' doors, and how much: the topics that tell a door's story,
each user's lines within a budget of their own and everyone's within a total.

Apart from the shell (auth/main.py): a pure rate limit over log lines, tested on its own, that the
shell calls with each line and the time.
"""

from __future__ import annotations

import logging
from collections import Counter

from dynknock.limits import TokenBuckets
from dynknock.topics import Topic

# Logged (each user's within that user's budget, see UserLog): the story of every door.
LOGGED_TOPICS = {Topic.AUTH_REQUEST_RECEIVED, Topic.AUTH_KNOCK_COMPLETE, Topic.AUTH_DOOR_OPENED,
                  Topic.AUTH_DOOR_EXPIRED, Topic.AUTH_REQUEST_REPLACED, Topic.AUTH_USERS_RELOADED,
                  Topic.AUTH_DOOR_REVOKED, Topic.AUTH_DOOR_MOVED, Topic.AUTH_REQUEST_REJECTED}


class UserLog:
    """Log lines about users, each user within a token bucket, all users within another.

    A key holder cycling doors writes megabytes of auth.log a minute: a key does
    not make lines free. A knock tells its story in about four lines, so a burst of 20
    lets a user knock a few times at once and see every line; after that a user gets
    one line a second, and everyone together 50. What is left out is counted and
    summarised every SUMMARY_S seconds in one line. Pure: time is passed in.
    """

    SUMMARY_S = 10.0

    def __init__(self, log: logging.Logger, rate: float = 1.0, burst: float = 20.0,
                 total_rate: float = 50.0, total_burst: float = 500.0) -> None:
        self._log = log
        self._users = TokenBuckets(rate, burst)  # kept to active users by summarise()
        self._total = TokenBuckets(total_rate, total_burst, 1)
        self.suppressed: Counter[str] = Counter()
        self._next_summary = 0.0

    def __call__(self, user: str, line: str, now: float) -> None:
        # The user's token is spent even when the total refuses: a user's lines count against them.
        if self._users.take(user, now) and self._total.take(None, now):
            self._log.info(line)
        else:
            self.suppressed[user] += 1
        self.summarise(now)

    def summarise(self, now: float) -> None:
        if now < self._next_summary:
            return
        self._next_summary = now + self.SUMMARY_S
        if self.suppressed:  # one line, however many users: the summary must not flood either
            top = ", ".join(f"user {u} {n}" for u, n in self.suppressed.most_common(5))
            more = len(self.suppressed) - 5
            self._log.info("(%d lines suppressed: %s%s)", sum(self.suppressed.values()), top,
                           f" and {more} more users" if more > 0 else "")
        self.suppressed.clear()
        self._users.forget_full(now)  # refilled buckets carry no information: keep the table to active users
