"""auth's sockets to each gateway's gate and relay, and what it sends on them.

One host has one implicit gateway, "", whose gate and relay are found by the endpoint table. In a
fleet each gateway's gate (and relay) has its own url ([gateways.NAME]) and must answer with that
gateway's own key. A DoorOpen goes to every stage its door needs or to none (fail closed: no stage
opens a door another cannot); a DoorClose goes to every stage of its gateway; the door sets go to
every stage; a fleet's P3s leave from the gateway's gate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import zmq

from dynknock import bus
from dynknock.config import Config
from dynknock.stage import Shell
from dynknock.transport import gateway_key_name

DoorStage = tuple[str, str]  # (gateway, stage)


class DoorStages:
    def __init__(self, shell: Shell, config: Config) -> None:
        self.sockets: dict[DoorStage, zmq.Socket[Any]] = {}
        gateways = [(g.name, {"gate": g.gate, "relay": g.relay}) for g in config.gateways.values()] \
            or [("", {"gate": "", "relay": ""})]
        for gateway, urls in gateways:
            for stage, url in urls.items():
                if gateway and not url:
                    continue  # a gateway without relay: its relay doors fail closed
                # IMMEDIATE: never queue a door command for a stage that is not connected; the send
                # fails now and the door fails closed.
                sock = shell.socket(zmq.DEALER, options={zmq.IMMEDIATE: 1})
                if url:
                    shell.transport.connect_url(sock, url, gateway_key_name(stage, gateway))
                else:
                    shell.transport.connect(sock, stage)
                self.sockets[(gateway, stage)] = sock

    def __iter__(self) -> Iterator[tuple[DoorStage, zmq.Socket[Any]]]:
        return iter(self.sockets.items())

    def open(self, command: bus.DoorOpen, gateway: str, stages: frozenset[str]) -> list[str]:
        """Send the DoorOpen to each of `stages` at `gateway`, or to none if one of them is not
        connected (IMMEDIATE makes POLLOUT mean "connected"). Returns the stages that did not get
        it, for the engine to take as refusals."""
        targets = {stage: sock for (at, stage), sock in self.sockets.items() if at == gateway and stage in stages}
        down = [stage for stage, sock in targets.items() if not sock.poll(0, zmq.POLLOUT)]
        down += sorted(stages - set(targets))  # a gateway without relay
        if down:
            return down[:1]
        frame = bus.encode(command)
        missed = []
        for stage, sock in targets.items():
            try:
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                missed.append(stage)
        return missed

    def close(self, command: bus.DoorClose, gateway: str) -> None:
        """Send the DoorClose to every stage of `gateway`; one that is down closes the rule by its
        kernel timeout anyway."""
        frame = bus.encode(command)
        for (at, _), sock in self.sockets.items():
            if at == gateway:
                try:
                    sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    pass

    def send_door_sets(self, doors_at: Callable[[str], list[list[Any]]], sent_ms: int) -> None:
        """Tell each gate and relay every door auth believes open at its gateway (`doors_at`): they
        empty the rest. A stage that is down or far behind hears it the next time."""
        for (gateway, _), sock in self.sockets.items():
            try:
                sock.send(bus.encode(bus.DoorSet(doors_at(gateway), sent_ms)), zmq.NOBLOCK)
            except zmq.Again:
                pass

    def gate(self, gateway: str) -> zmq.Socket[Any] | None:
        return self.sockets.get((gateway, "gate"))
