"""The life cycle of one request, as one table: everything that changes a request's state lives here.

A request is what one authenticated P1 made (auth/engine.py). Its state changes only through
:func:`transition`, which looks the change up in :data:`TRANSITIONS` and raises
:class:`IllegalTransition` for any other: a change the table lacks is a bug of ours, and the stage
crashes so that supervisord restarts it clean (a remote peer cannot cause one: what it sends is
refused before it reaches a request).

    P1 ok ──> AWAITING_KNOCKS ──knocks done──> OPENING ──confirmed──> OPEN ──forgotten──> GONE
                │     │    │                    │  ↺ moved                │ door failed
                │     │    └─refused─> FAILED <─┴─door failed─────────────┘ (the relay restarted)
                │     └─denied──> DENIED
                └─forgotten (knock timeout, replaced, revoked) ──> GONE
    FAILED and DENIED are forgotten after the knock timeout; any state is forgotten when its request
    is replaced by a newer P1 or its user loses the right to it.

What each state tells a P2 (auth/engine.py, Engine._answer): AWAITING_KNOCKS and OPENING, PENDING
(OPENING, and a request that awaits only the shared store's claim, answer once the door is known);
OPEN, the door; DENIED, why; FAILED, UNAVAILABLE. A GONE request is in no table of the engine.

Whether its P1's nonce is claimed in the shared store (auth replicas) is a flag beside the state,
not a state: the claim and the knocks arrive in either order, and the door waits for both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dynknock import protocol as proto
from dynknock.auth.actions import DOOR_STAGES
from dynknock.keys import SessionKeys
from dynknock.protocol import IPAddress, Status


class State(enum.Enum):
    AWAITING_KNOCKS = "awaiting_knocks"
    OPENING = "opening"
    OPEN = "open"
    FAILED = "failed"
    DENIED = "denied"
    GONE = "gone"  # forgotten: in no table of the engine, never answered again


class Event(enum.Enum):
    """What happens to a request; the engine names one with each change of state."""

    DENIED = "denied"  # its P1 asks for a service, or a knock kind, that is refused
    KNOCKS_DONE = "knocks_done"  # every knock seen and its nonce claimed: a door port drawn, OpenDoor sent
    REFUSED = "refused"  # no door for it: a cap, no free port, or the shared store could not answer
    MOVED = "moved"  # a stage found the door's port in use: the door asked for on another port
    CONFIRMED = "confirmed"  # every stage asked has confirmed the door
    DOOR_FAILED = "door_failed"  # a stage refused, none confirmed in time, or the relay serving it restarted
    FORGOTTEN = "forgotten"  # timed out, replaced, revoked, or its door's window ended


TRANSITIONS: dict[State, dict[Event, State]] = {
    State.AWAITING_KNOCKS: {Event.DENIED: State.DENIED, Event.KNOCKS_DONE: State.OPENING,
                            Event.REFUSED: State.FAILED, Event.FORGOTTEN: State.GONE},
    State.OPENING: {Event.MOVED: State.OPENING, Event.CONFIRMED: State.OPEN, Event.DOOR_FAILED: State.FAILED,
                    Event.FORGOTTEN: State.GONE},
    State.OPEN: {Event.DOOR_FAILED: State.FAILED, Event.FORGOTTEN: State.GONE},
    # REFUSED again: the shared store's answer for a request id that a refused request still holds.
    State.FAILED: {Event.REFUSED: State.FAILED, Event.FORGOTTEN: State.GONE},
    State.DENIED: {Event.FORGOTTEN: State.GONE},
    State.GONE: {},
}


class IllegalTransition(RuntimeError):
    """A change of state the table does not allow: our own bug, never a peer's doing."""


@dataclass(slots=True)
class Request:
    """One authenticated P1 and what became of it. Its state is read here and changed by transition()."""

    user: str
    keys: SessionKeys
    client: IPAddress
    request_id: bytes
    service: str
    created_ms: int
    remaining: set[tuple[int, int]]  # the (port, ISN) knocks not seen yet (auth/knocks.py ANY_ISN: any ISN)
    door_id: str = ""
    door_port: int = 0
    door_expires_ms: int = 0
    door_stages: frozenset[str] = DOOR_STAGES  # who must confirm this request's door
    confirmed: set[str] = field(default_factory=set)
    reply_to: tuple[IPAddress, int, IPAddress] | None = None  # where its latest P2 came from, and to
    retries: int = 0
    gateway: str = ""  # the gateway the P1 came to: its knocks, P2s and door are all there
    version: int = proto.VERSION  # the P1's wire version: P3s answer in it (3: a key-pair user)
    bound: bool = False  # the P1 was bound to the gateway address: so are its P3s
    held_once: bool = False  # a P2 of it was held once already (auth/race.py P2Hold)
    denial: Status = Status.SERVICE_NOT_ALLOWED  # what a DENIED request's P2s are told
    # Auth replicas: its P1's nonce is claimed in the shared store; no door until then.
    claimed: bool = True
    _state: State = field(default=State.AWAITING_KNOCKS, init=False)
    _state_since_ms: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._state_since_ms = self.created_ms

    @property
    def state(self) -> State:
        return self._state

    @property
    def state_since_ms(self) -> int:
        """When it entered its state: the knock, open and forget timeouts count from here."""
        return self._state_since_ms

    @property
    def awaits_claim_only(self) -> bool:
        """Every knock is in and only the shared store's answer is missing."""
        return self._state is State.AWAITING_KNOCKS and not self.remaining and not self.claimed


def transition(request: Request, event: Event, now_ms: int) -> State:
    """Change the request's state as TRANSITIONS says for this event, from now_ms; raise if it says nothing."""
    new = TRANSITIONS[request.state].get(event)
    if new is None:
        raise IllegalTransition(f"request of {request.user} in state {request.state.value}: no transition "
                                f"on {event.value}")
    request._state, request._state_since_ms = new, now_ms
    return new
