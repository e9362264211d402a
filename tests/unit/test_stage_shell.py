"""dynknock/stage.py Shell, the skeleton of every stage: its loop, heartbeat, request decode and
dispatch, and the drop of a bad request, over real ipc sockets in a temporary directory.

The stages themselves run in tests/stage; here a minimal Shell answers DoorClose on a ROUTER,
so what the skeleton does is seen without any stage's logic around it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dynknock import bus
from dynknock.config import load
from dynknock.stage import Shell
from dynknock.topics import ALIVE, Topic


class Answering(Shell):
    DROPPED = Topic.GATE_MESSAGE_DROPPED

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.commands = self.socket(zmq.ROUTER, bind="gate")
        self.watch(self.commands, lambda: self.serve(self.commands, self.answer))
        self.turns = 0

    def answer(self, request: bus.Message) -> bus.DoorResult | None:
        if isinstance(request, bus.DoorClose):
            return bus.DoorResult(request.door_id, "gate", True)
        self.unexpected(request)
        return None

    def figures(self) -> dict[str, Any]:
        return {"turns": self.turns}

    def turn(self) -> None:
        self.turns += 1

    def closing(self) -> None:
        self.commands.close(0)


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Answering]:
    # The test's own process: StopSignal must not take pytest's SIGINT, and the bus's umask is put back.
    monkeypatch.setattr("dynknock.stage.signal.signal", lambda *_: None)
    umask = os.umask(0o022)
    os.umask(umask)
    config = tmp_path / "dynknock.toml"
    config.write_text(f"""\
[server]
interface = "lo"
addresses = ["127.0.0.1"]
users_file = "{tmp_path}/users.json"
key_file = "{tmp_path}/server.key"
state_dir = "{tmp_path}/state"

[bus]
runtime_dir = "{tmp_path}/run"

[services.ssh]
target = "127.0.0.1:22"
""")
    try:
        yield Answering("gate", load(config), logging.getLogger("test.stage.shell"))
    finally:
        os.umask(umask)


def test_the_skeleton_answers_drops_bad_requests_beats_and_stops(shell: Answering) -> None:
    endpoints = bus.Endpoints.in_directory(shell.config.runtime_dir)
    context: zmq.Context[Any] = zmq.Context()
    events = context.socket(zmq.SUB)
    events.setsockopt(zmq.SUBSCRIBE, b"gate.")
    events.setsockopt(zmq.RCVTIMEO, 5000)  # a hang becomes a failure
    events.bind(endpoints.events)
    auth = context.socket(zmq.DEALER)
    auth.setsockopt(zmq.RCVTIMEO, 5000)
    auth.connect(endpoints.gate)
    loop = threading.Thread(target=shell.run)
    loop.start()
    try:
        # A heartbeat comes every HEARTBEAT_S from the start; the first may go before our SUB is
        # connected (slow joiner): wait for one, whichever.
        topic, body = events.recv_multipart()
        assert topic == ALIVE["gate"].encode() and "turns" in bus.decode_as(body, bus.Event).fields
        auth.send(b"\xc1 not msgpack")  # dropped, logged and reported
        auth.send_multipart([b"one", b"two"])  # three frames at the ROUTER: dropped
        auth.send(bus.encode(bus.Syn("198.18.0.2", 1, 2)))  # valid, but not a request: dropped
        auth.send(bus.encode(bus.DoorClose("ab12", "198.18.0.2", 41000)))
        assert bus.decode_as(auth.recv(), bus.DoorResult) == bus.DoorResult("ab12", "gate", True)
        auth.send(bus.encode(bus.DoorClose("cd34", "198.18.0.2", 41000)))
        # The next answer is this one's: none went to the requests dropped before.
        assert bus.decode_as(auth.recv(), bus.DoorResult).door_id == "cd34"
        dropped: list[dict[str, Any]] = []
        while not dropped:
            topic, body = events.recv_multipart()
            if topic == Topic.GATE_MESSAGE_DROPPED.encode():
                dropped.append(bus.decode_as(body, bus.Event).fields)
        assert dropped[0]["reason"].startswith("not msgpack")
    finally:
        shell.stop.requested = True
        loop.join(timeout=10)
        context.destroy(0)
    assert not loop.is_alive() and shell.turns > 0
