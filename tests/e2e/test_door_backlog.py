"""Doors at scale: no backlog at the gate, and no door outlives auth's knowledge of it.

With the door caps raised out of the way (5,000 doors, 100,000 a minute; a 60 s window, so that no door
expires while the module runs), one key holder knocks as fast as it can from 60 addresses for 7 s
without using its doors, so every door stays open. Then:

* the gate keeps up: no door fails "stage not running" (auth's queue to the gate full), and every
  door command reaches the gate while its door is young (the gate's heartbeat: command age);
* the firewall holds exactly the doors auth believes open, compared element by element with auth's
  own list (its heartbeat), after the hog, after SIGKILL of the gate in the middle of a hog (it
  restarts onto its table, which outlived it), and after SIGKILL of auth (which restarts knowing no
  door: the gate empties them all within a door-set period).

Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dynknock.gate.core import held_elements
from dynknock.keys import write_key_file
from dynknock.topics import Topic
from tests.lab.netlab import NetLab
from tests.lab.stack import VENV_BIN, EventLog, LabUser, Stack, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HOG_KEY = bytes(range(5, 37))
CAPS = "max_doors_per_user = 5000\nmax_doors_total = 5000\ndoors_per_minute = 100000\n"
SET_PERIOD_S = 2.0  # auth's door sets (auth/main.py FILTER_REFRESH_S)


@dataclass
class World:
    lab: NetLab
    stack: Stack
    events: EventLog
    key_file: Path
    sources: list[str]

    def hog(self, seconds: float) -> subprocess.Popen[str]:
        return self.lab.popen(self.lab.client, [str(VENV_BIN / "python"), str(REPO / "tests/e2e/tools/door_hog.py"),
                                                self.lab.server.ipv4, str(self.key_file), str(seconds), "6", "0",
                                                *self.sources],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))

    def firewall(self) -> set[tuple[str, int]]:
        """(client, port) of every door element the server's kernel holds."""
        listing = self.lab.run(self.lab.server, ["nft", "-j", "list", "table", "inet", "dynknock"]).stdout
        return {(e.address, e.port) for e in held_elements(json.loads(listing))}

    def auths_doors(self) -> set[tuple[str, int]]:
        return {(d["client"], d["port"]) for d in self.events.next_alive("auth")["doors"]}

    def agree(self, timeout_s: float = 3 * SET_PERIOD_S + 2) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """Until the firewall holds exactly auth's doors (within a few door-set periods), or the last look."""
        deadline = time.monotonic() + timeout_s
        while True:
            believed, held = self.auths_doors(), self.firewall()
            if held == believed or time.monotonic() > deadline:
                return believed, held


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with lab_stack("dkq", REPO / "supervisord.conf", [LabUser("hog", key=HOG_KEY)], window_seconds=60,
                   extra=CAPS) as (lab, stack, _):
        key_file = tmp_path_factory.mktemp("keys") / "hog.key"
        write_key_file(key_file, HOG_KEY)
        events = EventLog(stack.endpoints.tap)
        try:
            events.wait_joined()
            yield World(lab, stack, events, key_file, lab.add_ipv4_addresses(lab.client, 60))
        finally:
            events.close()


def _counts(proc: subprocess.Popen[str]) -> dict[str, int]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    counts: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return counts


def test_a_hog_with_raised_caps_leaves_no_backlog_and_the_firewall_holds_auths_doors(world: World) -> None:
    mark = world.events.mark()
    counts = _counts(world.hog(7))
    opened = counts.get("opened", 0)
    gate_beats = [e.fields for e in world.events.since(mark) if e.topic == Topic.GATE_ALIVE]
    failed = [e.fields for e in world.events.since(mark) if e.topic == Topic.AUTH_REQUEST_REJECTED
              and e.fields.get("reason") == "door_failed"]
    print(f"hog: {counts}; gate heartbeats (backlog, command age ms): "
          f"{[(b.get('backlog'), b.get('command_age_ms')) for b in gate_beats]}")
    assert opened > 100, counts  # it hogged
    assert failed == [], failed[:3]  # no "stage not running", no confirmation too late
    assert max(b.get("command_age_ms", 0) for b in gate_beats) < 1000, gate_beats
    believed, held = world.agree()
    assert held == believed and len(held) > 100, (len(held), len(believed), sorted(held ^ believed)[:5])


def test_the_firewall_holds_auths_doors_after_the_gate_dies_mid_hog(world: World) -> None:
    hog = world.hog(6)
    time.sleep(2)  # not a handshake: the hog is opening doors when the gate dies
    world.stack.kill_stage("gate")
    counts = _counts(hog)
    world.stack.wait_alive()
    believed, held = world.agree()
    print(f"hog: {counts}; auth believes {len(believed)} doors, the firewall holds {len(held)}")
    assert held == believed, (len(held), len(believed), sorted(held ^ believed)[:5])


def test_after_auth_dies_the_gate_empties_every_door_auth_no_longer_knows(world: World) -> None:
    counts = _counts(world.hog(4))
    before = world.firewall()
    assert before, counts  # doors open before auth dies
    world.stack.kill_stage("auth")
    world.stack.wait_alive()
    believed, held = world.agree()
    print(f"hog: {counts}; {len(before)} doors before auth died; after: auth believes {len(believed)}, "
          f"the firewall holds {len(held)}")
    assert held == believed == set(), (len(held), len(believed))
