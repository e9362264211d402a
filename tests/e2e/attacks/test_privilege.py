"""Refused at start, and local privilege (docs/SECURITY.md 2.9, 2.10): a stage that would run unsafe
does not start, a local user cannot reach the bus, and no stage holds more than it needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.attacks.world import DOOR_LOW, FIGURES, PYTHON, STAGES, World, record_figures, start_refused

pytestmark = pytest.mark.e2e

START_CASES = [
    ("runtime_dir_0777", stage) for stage in STAGES
] + [("users_file_missing", "auth"), ("users_file_0644", "auth")] + [("bad_config_value", stage) for stage in STAGES]


@pytest.mark.parametrize("case,stage", START_CASES, ids=[f"{c}-{s}" for c, s in START_CASES])
def test_bad_start_is_refused_with_one_line(world: World, case: str, stage: str) -> None:
    returncode, stderr, expect = start_refused(world, case, stage)
    lines = [line for line in stderr.splitlines() if line.strip()]
    FIGURES.setdefault("bad_start", {})[f"{case}-{stage}"] = {"exit": returncode, "stderr": lines}
    record_figures("bad_start")
    assert returncode == 2, f"knock-{stage} was not refused at start (exit {returncode}): {stderr!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert lines[0].startswith(f"knock-{stage}: "), lines[0]
    for needle in expect:
        assert needle in lines[0], f"{needle!r} not named in {lines[0]!r}"


def test_local_unprivileged_user_cannot_reach_the_bus(no_doors: World) -> None:
    world = no_doors  # no door of an earlier test closes (and publishes) while the intruder tries
    lab = world.lab
    run_dir = world.workdir / "run"
    target_port = DOOR_LOW + 1242
    mark = world.events.mark()
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PYTHON,
            world.tool("bus_intruder.py"), str(run_dir), lab.attacker.ipv4, str(target_port)]
    done = lab.run(lab.server, argv, check=False, timeout=30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # A heartbeat of the gate and of the relay after the intruder is done: each has gone round its
    # loop since (and would have read a command, had one reached it).
    after = world.events.mark()
    world.events.next_alive("gate", mark=after)
    world.events.next_alive("relay", mark=after)
    doors = {d for d in world.doors() if d[0] == lab.attacker.ipv4 or d[1] == target_port}
    listeners = world.door_listeners()
    door_events = [e.topic for e in world.events.since(mark) if e.topic.startswith(("gate.rule.", "relay.door."))]
    record_figures("local_privilege", intruder=result, doors_wrongly_opened=len(doors))
    assert result["uid"] != 0 and result["euid"] != 0
    assert result["listdir"] == "denied" and result["stat_socket"] == "denied", result
    assert {result[f"connect_{e}"] for e in ("gate", "relay", "packets")} == {"denied"}, result
    assert result["zmq_gate_reply"] is False and result["zmq_relay_reply"] is False, result
    assert doors == set() and target_port not in listeners, (doors, listeners)
    assert door_events == [], door_events
    mode = (run_dir.stat().st_mode & 0o777)
    assert mode & 0o007 == 0, oct(mode)


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_stages_run_without_root_and_gate_holds_only_net_admin(world: World) -> None:
    found: dict[str, dict[str, str]] = {}
    for stage, pid in world.pids().items():
        status = _status(pid)
        found[stage] = {k: status[k].strip() for k in ("Uid", "Gid", "CapPrm", "CapEff", "CapBnd", "NoNewPrivs")}
    record_figures("privileges", stages=found)
    for stage, status in found.items():
        assert all(int(x) != 0 for x in status["Uid"].split()), (stage, status)
        assert all(int(x) != 0 for x in status["Gid"].split()), (stage, status)
        expected = 1 << 12 if stage == "gate" else 0  # CAP_NET_ADMIN
        assert int(status["CapEff"], 16) == expected, (stage, status)
        assert int(status["CapPrm"], 16) == expected, (stage, status)
        assert status["NoNewPrivs"] == "1", (stage, status)  # no setuid program can give privileges back
    assert int(found["gate"]["CapBnd"], 16) == 1 << 12, found["gate"]
