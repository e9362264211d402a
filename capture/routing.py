"""Which auth replica gets a client's packets, and which replicas are alive to get any.

Pure: no zmq, no pcap; time is passed in (monotonic seconds). The shell (capture/main.py) tells it
what its sockets saw (a link's handshake done or its connection gone, a filter message heard),
asks it for a replica per packet (route()), and logs the changes its methods return.

Invariants:
* A replica is up when both its links (the PUSH of packets, the SUB of its filters) have finished
  their handshakes and a filter message has come from it within failover_after_s. Replicas publish
  their filters at least every 0.5 s, so silence that long means the replica, its host or the path
  to it is gone, even when no connection says so.
* A link lost forgets what the replica said: it is up again only once it has spoken after
  reconnecting (a restarted replica's first filters, not its previous life's, decide).
* Every packet from one source address goes to the same live replica: rendezvous (highest random
  weight) hashing of (replica, address), so P1, knocks and P2 of a client meet in one engine. When a
  replica goes, only its clients move (each to its second choice); when it comes back, they return,
  and nobody else moves.
* No live replica: route() says None and counts it; the shell drops the packet (fail closed).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterable
from dataclasses import dataclass

PACKETS = "packets"  # the PUSH to a replica's packets endpoint
FILTERS = "filters"  # the SUB to its knock_filter endpoint
LINKS = (PACKETS, FILTERS)

# Why a replica changed state (in the log line and the heartbeat).
STARTING = "starting"  # never up yet
UP = "connected and heard"
DISCONNECTED = "disconnected"  # a link's connection closed (process gone, or no heartbeat answer)
SILENT = "silent"  # no filter message within failover_after_s


def packed(address: str | bytes) -> bytes:
    """A source address as the bytes hashed: 4 (IPv4) or 16 (IPv6), whatever its text form. Already
    packed bytes are taken as they are."""
    if isinstance(address, bytes):
        if len(address) not in (4, 16):
            raise ValueError(f"a packed address has 4 or 16 bytes, not {len(address)}")
        return address
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def weight(replica: str, address: bytes) -> int:
    """The rendezvous weight of `replica` for a packed address: 64 bits of BLAKE2b over both. The
    replica's name comes first, ended by a NUL, so that no (name, address) pair reads as another."""
    digest = hashlib.blake2b(replica.encode() + b"\x00" + address, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose(replicas: Iterable[str], address: str | bytes) -> str | None:
    """The replica of highest weight for this address among `replicas`; None if there is none.
    Ties (a 2**-64 chance) go to the name that sorts first, so every capture agrees."""
    key = packed(address)
    best: tuple[int, str] | None = None
    for name in replicas:
        candidate = (weight(name, key), name)
        if best is None or candidate[0] > best[0] or (candidate[0] == best[0] and name < best[1]):
            best = candidate
    return None if best is None else best[1]


@dataclass(frozen=True, slots=True)
class Change:
    """A replica went up or down (the shell logs it once and updates the filters)."""

    replica: str
    up: bool
    why: str  # UP, DISCONNECTED or SILENT
    link: str = ""  # DISCONNECTED: which link closed


@dataclass(slots=True)
class Replica:
    name: str
    since: float  # monotonic time of the last change (or the start)
    links: set[str]  # links whose handshake is done and whose connection stands
    heard_at: float | None = None  # its last filter message since its links last came up
    up: bool = False
    why: str = STARTING
    routed: int = 0  # packets given to it


class Router:
    """The replicas of a gateway's capture, their state, and each packet's replica."""

    def __init__(self, names: Iterable[str], failover_after_s: float, now: float) -> None:
        self.failover_after_s = failover_after_s
        self.replicas = {name: Replica(name, now, set()) for name in sorted(names)}
        if not self.replicas:
            raise ValueError("a router needs at least one replica")
        self.live: tuple[str, ...] = ()  # the names of the replicas up, sorted
        self.dropped = 0  # packets with no live replica to take them

    def connected(self, name: str, link: str, now: float) -> Change | None:
        """A link's handshake is done."""
        self.replicas[name].links.add(link)
        return self._judge(name, now)

    def disconnected(self, name: str, link: str, now: float) -> Change | None:
        """A link's connection closed (or its heartbeat timed out): down at once."""
        replica = self.replicas[name]
        replica.links.discard(link)
        replica.heard_at = None
        return self._judge(name, now, link)

    def heard(self, name: str, now: float) -> Change | None:
        """A filter message came from it."""
        self.replicas[name].heard_at = now
        return self._judge(name, now)

    def expire(self, now: float) -> list[Change]:
        """The replicas up but silent for failover_after_s, now down."""
        changes = []
        for name in self.live:
            change = self._judge(name, now)
            if change is not None:
                changes.append(change)
        return changes

    def route(self, source: str | bytes) -> str | None:
        """The live replica for this source address, counted; None (counted as dropped) if none is up."""
        live = self.live
        if len(live) == 1:
            name: str | None = live[0]  # nothing to hash: the only choice
        else:
            name = choose(live, source)
        if name is None:
            self.dropped += 1
            return None
        self.replicas[name].routed += 1
        return name

    def wait_ms(self, now: float) -> int:
        """How long the loop may sleep before a live replica may turn silent (-1: none is up)."""
        deadlines = [r.heard_at + self.failover_after_s for r in self.replicas.values()
                     if r.up and r.heard_at is not None]
        if not deadlines:
            return -1
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    def figures(self, now: float, wall: float) -> dict[str, dict[str, object]]:
        """Each replica for the heartbeat: up, why, since (wall-clock seconds), packets routed."""
        return {r.name: {"up": r.up, "why": r.why, "since": round(wall - (now - r.since), 3), "routed": r.routed}
                for r in self.replicas.values()}

    def _judge(self, name: str, now: float, link: str = "") -> Change | None:
        replica = self.replicas[name]
        heard = replica.heard_at is not None and now - replica.heard_at < self.failover_after_s
        up = heard and len(replica.links) == len(LINKS)
        if up == replica.up:
            return None
        why = UP if up else DISCONNECTED if len(replica.links) < len(LINKS) else SILENT
        replica.up, replica.why, replica.since = up, why, now
        self.live = tuple(n for n, r in self.replicas.items() if r.up)
        return Change(name, up, why, link if why == DISCONNECTED else "")
