"""A request's door, from its last knock: drawn, asked for, confirmed, moved, failed, used, revoked, dropped.

The engine (auth/engine.py) hands a request here once its knocks are all in and its nonce claimed, and
passes on what the gate and relay answer (DoorResult, DoorUsed, a lost connection). Each change of the
request's state goes through auth/state.py; the ports and the caps are the door table's (auth/doors.py).
Engine invariants 4, 5, 7, 10, 11 and 12 are kept here.
"""

from __future__ import annotations

from collections.abc import Callable

from dynknock.auth.actions import Action, Notify
from dynknock.auth.answers import Answers
from dynknock.auth.budgets import Rejections
from dynknock.auth.doors import ADDRESS_IN_USE, Door, DoorTable
from dynknock.auth.knocks import KnockTable
from dynknock.auth.race import P2Hold
from dynknock.auth.requests import Requests
from dynknock.auth.settings import EngineConfig
from dynknock.auth.state import Event, Request, State, transition
from dynknock.protocol import RejectReason
from dynknock.topics import Topic


class Opener:
    def __init__(self, config: EngineConfig, requests: Requests, doors: DoorTable, knocks: KnockTable, held: P2Hold,
                 rejections: Rejections, answers: Answers, random_bytes: Callable[[int], bytes]) -> None:
        self.config = config
        self._requests, self._doors, self._knocks, self._held = requests, doors, knocks, held
        self._rejections, self._answers, self._random_bytes = rejections, answers, random_bytes

    def on_door_result(self, door_id: str, stage: str, ok: bool, detail: str, now_ms: int) -> list[Action]:
        """A stage's DoorResult: OPEN once every stage asked confirmed (invariant 4), the door moved if its
        port is in use (invariant 12), else failed."""
        request = self._requests.by_door(door_id)
        if request is None or request.state is not State.OPENING or stage not in request.door_stages:
            return []  # late answer for a door already given up: nothing to do
        if not ok:
            if detail.startswith(ADDRESS_IN_USE) and request.retries < self.config.door_retries:
                return self._move(request, stage, detail, now_ms)
            return self.door_failed(request, f"{stage}: {detail}", now_ms)
        request.confirmed.add(stage)
        if request.confirmed != request.door_stages:
            return []
        transition(request, Event.CONFIRMED, now_ms)
        actions: list[Action] = [Notify(Topic.AUTH_DOOR_OPENED, {
            "user": request.user, "client": str(request.client), "port": request.door_port,
            "service": request.service, "window": self.config.window_seconds,
            "latency_ms": now_ms - request.created_ms, **({"gateway": request.gateway} if request.gateway else {})})]
        if request.reply_to is not None:
            actions.append(self._answers.request(request, now_ms))
        return actions

    def on_door_stage_lost(self, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A door stage's connection dropped: it died or restarted.

        The relay's listeners die with it, so every door it confirmed is gone: fail those
        requests, so that no P3 OPEN is sent for a dead door (invariant 4) and the gate
        closes their rules. The gate's rules are kernel state and outlive a gate restart;
        a door still OPENING at the gate waits for open_timeout.
        """
        if stage != "relay":
            return []
        actions: list[Action] = []
        for request in self._requests.with_doors():
            if "relay" not in request.door_stages or request.gateway != gateway:
                continue  # a kernel door: no listener of the relay's to lose; or another gateway's relay
            if request.state in (State.OPENING, State.OPEN) and now_ms < request.door_expires_ms:
                actions += self.door_failed(request, "relay restarted", now_ms)
        return actions

    def on_door_used(self, door_id: str, stage: str, now_ms: int, gateway: str = "") -> list[Action]:
        """A stage that opened this door saw its connection come (bus.DoorUsed).

        A single-use door has done its work: it stops counting against its user's and the server's
        caps (invariant 10) and its port is freed; CloseDoor takes what is left of it out of the
        gate (a kernel door's forwarding entry; the connection itself lives on in conntrack, or in
        the relay). A door of many connections counts until its window ends.
        """
        door = self._doors.by_id(door_id)
        if door is None or door.gateway != gateway or stage not in door.stages or not door.single_use:
            return []  # unknown, closed already, reported by a stage that did not open it, or of many uses
        request = self._requests.by_door(door_id)
        if request is not None and request.state is State.OPENING:
            return []  # no client was told of it yet (invariant 4): it counts until it opens or fails
        self._doors.release(door.port)
        return [self._doors.close(door), Notify(Topic.AUTH_DOOR_USED, {
            "user": door.user, "client": str(door.client), "port": door.port, "seen_by": stage,
            **({"gateway": gateway} if gateway else {})})]

    def knocks_complete(self, request: Request, now_ms: int) -> list[Action]:
        """Every knock is in and the nonce claimed: ask for a door on a free port, or refuse (invariant 10)."""
        self._held.release(request)  # its P2 is answered below (refused) or when the door opens
        actions: list[Action] = [Notify(Topic.AUTH_KNOCK_COMPLETE,
                                        {"user": request.user, "client": str(request.client)})]
        port = self._doors.draw(request.user, now_ms)
        if isinstance(port, tuple):
            transition(request, Event.REFUSED, now_ms)
            actions.append(self._rejections.request(port[0], request.client, request.user, port[1]))
            return actions + self._answers.if_asked(request, now_ms) + self._knocks.update()
        return actions + self._open_at(request, port, Event.KNOCKS_DONE, now_ms) + self._knocks.update()

    def _open_at(self, request: Request, port: int, event: Event, now_ms: int) -> list[Action]:
        transition(request, event, now_ms)
        opened = self._doors.open(request, port, self._random_bytes(8).hex(), now_ms)
        self._requests.door_asked(request)
        return [opened]

    def _move(self, request: Request, stage: str, detail: str, now_ms: int) -> list[Action]:
        """A local process holds the port: close what either stage opened, open on another port.

        The port is not drawn again for a window: whoever holds it likely still does.
        """
        old_port, old_id = request.door_port, request.door_id
        self._requests.door_given_up(old_id)
        self._doors.release(old_port)
        self._doors.busy(old_port, now_ms + self.config.window_seconds * 1000)
        request.retries += 1
        actions: list[Action] = [self._doors.close_for(request)]
        port = self._doors.free_port()
        if port is None:
            request.door_id = ""
            return actions + self.door_failed(request, f"{stage}: {detail}", now_ms, close=False)
        actions += self._open_at(request, port, Event.MOVED, now_ms)
        # the Notify goes after OpenDoor; CloseDoor (old) goes before it: the gate's element for
        # the old port is gone before the new one is asked for.
        actions.append(Notify(Topic.AUTH_DOOR_MOVED, {"user": request.user, "client": str(request.client),
                                                      "port": old_port, "new_port": port,
                                                      "detail": f"{stage}: {detail}"}))
        return actions

    def revoke(self, door: Door, why: str) -> list[Action]:
        """Close a door its user may no longer have (invariant 11), open or being opened."""
        request = self._requests.by_door(door.door_id)
        if request is not None:
            self.forget(request)
        self._doors.release(door.port)
        return [self._doors.close(door), Notify(Topic.AUTH_DOOR_REVOKED, {
            "user": door.user, "client": str(door.client), "port": door.port, "detail": why})]

    def door_failed(self, request: Request, detail: str, now_ms: int, close: bool = True) -> list[Action]:
        """The door will not open (or is gone with the relay): FAILED, its port freed, its P2 told UNAVAILABLE."""
        transition(request, Event.DOOR_FAILED, now_ms)
        actions: list[Action] = []
        if close:  # compensate: whichever stage did open must close again, so nothing is half-open
            actions.append(self._doors.close_for(request))
        actions.append(self._rejections.request(RejectReason.DOOR_FAILED, request.client, request.user, detail))
        self._requests.door_given_up(request.door_id)
        self._doors.release(request.door_port)
        return actions + self._answers.if_asked(request, now_ms)

    def drop(self, request: Request) -> list[Action]:
        """Forget a request before its time; a door being opened for it is closed again."""
        actions: list[Action] = []
        if request.state is State.OPENING:
            # The OpenDoor is already out: without this the door would open, unknown
            # to anyone, for its whole window (e.g. after its user was removed).
            actions.append(self._doors.close_for(request))
            self._doors.release(request.door_port)
        self.forget(request)
        return actions

    def forget(self, request: Request) -> None:
        """The request is GONE: out of every table, its knocks no longer awaited, its P2 no longer held."""
        if self._requests.forget(request):  # else gone already: dropped with its user, then its door revoked
            self._held.release(request)
            self._knocks.forget(request)
