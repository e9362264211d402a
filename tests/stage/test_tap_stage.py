"""knock-tap and the metrics endpoint, fed by a real stage through a real knock-bus."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
import urllib.request

import pytest
import zmq

from dynknock import bus
from dynknock.topics import ALIVE
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import GATE_PRIVILEGES, StageEnv, free_port

pytestmark = pytest.mark.stage


def drive_gate(env: StageEnv, count: int) -> None:
    """Open `count` doors through the real gate (backend none); each publishes gate.rule.added."""
    sock = env.socket(zmq.DEALER, connect=env.endpoints.gate)
    for i in range(count):
        sock.send(bus.encode(bus.DoorOpen(f"{i:04x}", "alice", "198.18.0.2", 41000 + i, "127.0.0.1", 22,
                                          int(time.time() * 1000) + 10_000, True)))
        assert bus.decode_as(sock.recv(), bus.DoorResult).ok
    sock.send(bus.encode(bus.DoorOpen("ffff", "alice", "198.18.0.2", 80, "127.0.0.1", 22,
                                      int(time.time() * 1000) + 10_000, True)))  # refused: outside range
    assert not bus.decode_as(sock.recv(), bus.DoorResult).ok


def start_tap(env: StageEnv, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(VENV_BIN / "knock-tap"), "-c", str(env.config), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    env.processes.append(process)  # type: ignore[arg-type]
    return process


def test_tap_prints_events_of_a_real_stage_in_plain_english_paper_style_and_json(stage_env: StageEnv) -> None:
    stage_env.start("knock-bus")
    lines_tap = start_tap(stage_env, "--topic", "gate.rule.", "--count", "3")
    # The same three events by other prefixes than the first tap's: the bus passes on only a prefix new
    # to it, so that wait_subscribed can see that this tap's subscriptions arrived too.
    paper_tap = start_tap(stage_env, "--paper", "--topic", "gate.rule.added", "--topic", "gate.rule.refused",
                          "--count", "3")
    json_tap = start_tap(stage_env, "--json", "--topic", "gate.", "--count", "3")
    heartbeats = stage_env.socket(zmq.SUB, connect=stage_env.endpoints.tap)
    heartbeats.setsockopt(zmq.SUBSCRIBE, ALIVE["gate"].encode())
    # A tap sees only what follows its subscription: each of them (and ours) must have reached the bus.
    stage_env.wait_subscribed("gate.rule.", "gate.rule.added", "gate.rule.refused", "gate.", ALIVE["gate"])
    # Started after them, the gate's publisher takes every one of them at once as it connects to the bus:
    # its first heartbeat through the bus says that they are all in (the handshake, not a sleep).
    stage_env.start("knock-gate", prefix=GATE_PRIVILEGES)
    assert heartbeats.poll(10_000), "no heartbeat of the gate through the bus"
    drive_gate(stage_env, 2)
    lines, _ = lines_tap.communicate(timeout=10)
    paper = paper_tap.communicate(timeout=10)[0].splitlines()
    records = [json.loads(line) for line in json_tap.communicate(timeout=10)[0].splitlines()]
    printed = lines.splitlines()
    assert len(printed) == 3 and len(paper) == 3
    stamp, text = printed[0].split(" ", 1)
    # The door's time left as the gate computed it: 10 s from the command's clock, less the ms in between.
    assert re.fullmatch(r"Firewall opened port 41000 for 198\.18\.0\.2 \((9[0-9]{3}|10000) ms\)\.", text), printed[0]
    assert abs(datetime.datetime.fromisoformat(stamp).timestamp() - time.time()) < 60, stamp  # ISO 8601
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}\.\d{2}", paper[0][:19]), paper[0]  # 2026-11-26 23:04.49
    assert paper[0][20:] == text
    assert "Firewall refused port 80 for 198.18.0.2: port 80 outside the door range" in printed[2]
    assert [r["topic"] for r in records] == ["gate.rule.added", "gate.rule.added", "gate.rule.refused"]
    assert records[1]["port"] == 41001 and records[1]["stage"] == "gate" and records[1]["client"] == "198.18.0.2"


def scrape(port: int, token: str) -> dict[str, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("dynknock_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_endpoint_counts_events(stage_env: StageEnv) -> None:
    port = free_port()
    stage_env.start("knock-bus")
    stage_env.start("knock-gate", prefix=GATE_PRIVILEGES)
    start_tap(stage_env, "--metrics", f"127.0.0.1:{port}")
    token_file = stage_env.workdir / "run" / "metrics.token"  # made by knock-tap (dynknock/metrics.py)
    stage_env.wait_for(token_file.exists, what="metrics token")
    token = token_file.read_text().strip()
    stage_env.wait_for(lambda: _answers(port, token), what="metrics endpoint")
    before = scrape(port, token)
    assert before['dynknock_gate_rules_total{operation="added"}'] == 0
    # The gate's heartbeat counted: its publisher has the metrics tap's subscription (the tap's alone), so
    # the events below reach it (the handshake, not a sleep).
    stage_env.wait_for(lambda: scrape(port, token)['dynknock_stage_up{stage="gate"}'] == 1.0, what="gate heartbeat")
    drive_gate(stage_env, 3)
    stage_env.wait_for(lambda: scrape(port, token)['dynknock_gate_rules_total{operation="added"}'] == 3, what="3 rules")
    after = scrape(port, token)
    assert after['dynknock_gate_rules_total{operation="refused"}'] == 1
    stage_env.wait_for(lambda: scrape(port, token)['dynknock_stage_up{stage="gate"}'] == 1.0, what="gate heartbeat")
    assert scrape(port, token)['dynknock_stage_up{stage="auth"}'] == 0.0  # not running in this test


def _answers(port: int, token: str) -> bool:
    try:
        scrape(port, token)
        return True
    except OSError:
        return False
