"""The bus over tcp with CURVE: only holders of our stage keys can talk to a stage."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from dynknock import bus
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import GATE_PRIVILEGES, StageEnv, free_port

pytestmark = pytest.mark.stage


def make_keys(env: StageEnv) -> Path:
    curve = env.workdir / "curve"
    done = subprocess.run([str(VENV_BIN / "knock-admin"), "bus-keys", str(curve)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    service = pwd.getpwnam("dynknock")
    for path in [curve, *curve.rglob("*")]:
        os.chown(path, service.pw_uid, service.pw_gid)
    assert oct((curve / "auth.key_secret").stat().st_mode & 0o777) == "0o600"
    return curve


def tcp_config(env: StageEnv, curve: Path) -> dict[str, str]:
    names = ("packets", "knock_filter", "gate", "relay", "events", "tap")
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in names}
    table = ", ".join(f'{k} = "{v}"' for k, v in endpoints.items())
    env.write_config(extra_bus=f'transport = "tcp"\ncurve_dir = "{curve}"\ntcp_endpoints = {{ {table} }}\n')
    return endpoints


def dealer(env: StageEnv, endpoint: str, curve: Path, secret_file: Path | None) -> zmq.Socket[Any]:
    sock = env.socket(zmq.DEALER)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    if secret_file is not None:
        public, secret = zmq.auth.load_certificate(secret_file)
        server_public, _ = zmq.auth.load_certificate(curve / "public" / "gate.key")
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    sock.connect(endpoint)
    return sock


def door_open() -> bytes:
    return bus.encode(bus.DoorOpen("ab12", "alice", "198.18.0.2", 41000, "127.0.0.1", 22,
                                   int(time.time() * 1000) + 10_000, True))


def test_gate_over_tcp_answers_only_curve_clients_with_our_keys(stage_env: StageEnv) -> None:
    curve = make_keys(stage_env)
    endpoints = tcp_config(stage_env, curve)
    stage_env.start("knock-gate", prefix=GATE_PRIVILEGES)
    ours = dealer(stage_env, endpoints["gate"], curve, curve / "auth.key_secret")
    stage_env.wait_connected(ours, what="the gate, over CURVE")  # then our 2 s receive timeout is for the answer
    ours.send(door_open())
    assert bus.decode_as(ours.recv(), bus.DoorResult).ok
    # A client without CURVE, and one with a key pair of its own: no answer, no door.
    plain = dealer(stage_env, endpoints["gate"], curve, None)
    plain.send(door_open())
    with pytest.raises(zmq.Again):
        plain.recv()
    stranger_dir = stage_env.workdir / "stranger"
    stranger_dir.mkdir()
    zmq.auth.create_certificates(stranger_dir, "auth")
    stranger = dealer(stage_env, endpoints["gate"], curve, stranger_dir / "auth.key_secret")
    stranger.send(door_open())
    with pytest.raises(zmq.Again):
        stranger.recv()
    assert stage_env.log("knock-gate").count("Refused to open") == 0  # no command reached it
    assert "Refused an unknown key on the gate socket" in stage_env.log("knock-gate")
