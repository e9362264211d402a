"""The requests the engine holds: one per (user, client address) (engine invariant 1), found also by
request id (a P2, the shared store's answer) and by door id while a door is theirs (a stage's answer)."""

from __future__ import annotations

from collections.abc import Iterator

from dynknock.auth.state import Event, Request, State, transition
from dynknock.protocol import IPAddress


class Requests:
    def __init__(self) -> None:
        self._by_client: dict[tuple[str, IPAddress], Request] = {}
        self._by_id: dict[bytes, Request] = {}
        self._by_door: dict[str, Request] = {}

    def __len__(self) -> int:
        return len(self._by_client)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._by_client.values()))  # a copy: the caller may forget as it goes

    def of(self, user: str, client: IPAddress) -> Request | None:
        return self._by_client.get((user, client))

    def by_id(self, request_id: bytes) -> Request | None:
        return self._by_id.get(request_id)

    def by_door(self, door_id: str) -> Request | None:
        return self._by_door.get(door_id)

    def with_doors(self) -> list[Request]:
        """The requests whose door is being opened or open (a copy)."""
        return list(self._by_door.values())

    def pending_of(self, user: str) -> int:
        """The user's requests whose door is not open (max_requests_per_user bounds them)."""
        return sum(1 for r in self._by_client.values() if r.user == user and r.state is not State.OPEN)

    def add(self, request: Request) -> None:
        self._by_client[(request.user, request.client)] = request
        self._by_id[request.request_id] = request

    def door_asked(self, request: Request) -> None:
        """Its door (request.door_id) is asked for: the stages' answers find it by that id."""
        self._by_door[request.door_id] = request

    def door_given_up(self, door_id: str) -> None:
        """That door failed or moved: answers about it find no request any more."""
        self._by_door.pop(door_id, None)

    def forget(self, request: Request) -> bool:
        """The request is GONE and in no table; False if it was gone already."""
        if request.state is State.GONE:
            return False
        transition(request, Event.FORGOTTEN, request.state_since_ms)  # no one reads a gone request's time
        if self._by_client.get((request.user, request.client)) is request:
            del self._by_client[(request.user, request.client)]
        self._by_id.pop(request.request_id, None)
        self._by_door.pop(request.door_id, None)
        return True
