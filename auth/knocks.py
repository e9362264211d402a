"""The knocks awaited, and the knock filter capture is told (engine invariant 2).

Each pending request awaits its knocks here by (client, port, ISN); a connect() knock (the kernel chose
the ISN) by (client, port, ANY_ISN). The (address, port) pairs of the knocks awaited are what capture's
kernel filter passes: they are counted as knocks come and go, so the filter is not rebuilt (one str()
per knock awaited) after every packet, and a SetKnockFilter goes out only when the set changed.
"""

from __future__ import annotations

from collections import Counter

from dynknock.auth.actions import Action, SetKnockFilter
from dynknock.auth.state import Request
from dynknock.protocol import IPAddress

# The ISN a connect() knock is awaited with: the kernel chose it, so any ISN matches.
ANY_ISN = -1


class KnockTable:
    def __init__(self) -> None:
        self._knocks: dict[tuple[IPAddress, int, int], Request] = {}
        # (address text, port) -> knocks awaited there
        self._pairs: Counter[tuple[str, int]] = Counter()
        self._changed = False
        self._filter: frozenset[tuple[str, int]] = frozenset()

    def __len__(self) -> int:
        return len(self._knocks)

    def expect(self, request: Request) -> None:
        """Await the request's remaining knocks. A knock another request awaits too is taken over."""
        client = request.client
        for port, isn in request.remaining:
            if (client, port, isn) not in self._knocks:
                self._pairs[(str(client), port)] += 1
                self._changed = True
            self._knocks[(client, port, isn)] = request

    def match(self, source: IPAddress, port: int, isn: int, gateway: str) -> Request | None:
        """The request this SYN is a knock of, at this gateway, with the knock taken off its remaining
        ones; None: no request awaits it there (a copy seen at another gateway waits where it belongs)."""
        key = (source, port, isn)
        request = self._knocks.get(key)
        if request is None:
            key = (source, port, ANY_ISN)
            request = self._knocks.get(key)
        if request is None or request.gateway != gateway:
            return None
        del self._knocks[key]
        self._pair_removed(source, port)
        request.remaining.discard((port, key[2]))
        return request

    def forget(self, request: Request) -> None:
        """The request's knocks are no longer awaited (those another request took over stay its)."""
        for port, isn in request.remaining:
            key = (request.client, port, isn)
            if self._knocks.get(key) is request:
                del self._knocks[key]
                self._pair_removed(request.client, port)

    def update(self) -> list[Action]:
        """The new knock filter, if the pairs awaited changed since the last one."""
        if not self._changed:
            return []
        self._changed = False
        pairs = frozenset(self._pairs)
        if pairs == self._filter:
            return []
        self._filter = pairs
        return [SetKnockFilter(pairs)]

    def _pair_removed(self, client: IPAddress, port: int) -> None:
        key = (str(client), port)
        self._pairs[key] -= 1
        if self._pairs[key] <= 0:
            del self._pairs[key]
        self._changed = True
