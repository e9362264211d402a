"""Over tcp + CURVE each bound socket admits exactly its own peers.

Every binding stage runs as a real process (auth, gate, relay, bus) with the bus
over tcp and CURVE keys from `knock-admin bus-keys`. The test then tries every
endpoint with every key we make (and a stranger's), with the socket type a real
peer would use, and reads the outcome of the CURVE/ZAP handshake from a socket
monitor: no sleep stands for "connected". Only the architecture's peers get
through; every other key is refused at the handshake, before any message, and
the refusals are counted in the stages' heartbeats. Then the attack of the issue
itself: a DoorOpen to the gate and the relay with the tap key (a monitoring
host's) opens nothing and gets no answer.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus
from dynknock.transport import KEY_NAMES, OWNER, PEERS, gateway_key_name
from tests.lab.stack import VENV_BIN, LabUser, write_users
from tests.stage.conftest import GATE_PRIVILEGES, StageEnv, free_port

pytestmark = pytest.mark.stage

# The socket type a real peer uses against each bound socket (a wrong type would fail the
# handshake for another reason and prove nothing about keys).
PEER_SOCKET = {"packets": zmq.PUSH, "knock_filter": zmq.SUB, "gate": zmq.DEALER, "relay": zmq.DEALER,
               "events": zmq.PUB, "tap": zmq.SUB}
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _keys(env: StageEnv, gateways: tuple[str, ...] = ()) -> Path:
    curve = env.workdir / "curve"
    done = subprocess.run([str(VENV_BIN / "knock-admin"), "bus-keys", str(curve),
                           *(f"--gateway={g}" for g in gateways)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    service = pwd.getpwnam("dynknock")
    for path in [curve, *curve.rglob("*")]:
        os.chown(path, service.pw_uid, service.pw_gid)
    stranger = env.workdir / "stranger"
    stranger.mkdir()
    zmq.auth.create_certificates(stranger, "stranger")
    return curve


def _start_stack(env: StageEnv, curve: Path) -> dict[str, str]:
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in OWNER}
    table = ", ".join(f'{k} = "{v}"' for k, v in endpoints.items())
    env.write_config(extra_bus=f'transport = "tcp"\ncurve_dir = "{curve}"\ntcp_endpoints = {{ {table} }}\n')
    write_users(env.workdir / "users.json", [LabUser("alice", key=bytes(range(32)))])
    env.start("knock-bus")
    env.start("knock-auth")
    env.start("knock-gate", prefix=GATE_PRIVILEGES)
    env.start("knock-relay")
    return endpoints


def _secret_file(env: StageEnv, curve: Path, name: str) -> Path:
    return env.workdir / "stranger" / "stranger.key_secret" if name == "stranger" else curve / f"{name}.key_secret"


def _handshake(env: StageEnv, curve: Path, endpoints: dict[str, str], endpoint: str, key_name: str,
               timeout_s: float = 10.0) -> tuple[str, zmq.Socket[Any]]:
    """Connect to endpoint as key_name; the handshake's outcome as the monitor reports it."""
    sock: zmq.Socket[Any] = env.context.socket(PEER_SOCKET[endpoint])
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.auth.load_certificate(_secret_file(env, curve, key_name))
    server_public, _ = zmq.auth.load_certificate(curve / "public" / f"{OWNER[endpoint]}.key")
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    if PEER_SOCKET[endpoint] == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    sock.connect(endpoints[endpoint])
    try:
        if not monitor.poll(int(timeout_s * 1000)):
            return "no handshake", sock
        event = recv_monitor_message(monitor)["event"]
    finally:
        sock.disable_monitor()
        monitor.close(0)
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return "admitted", sock
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "refused", sock
    return f"failed ({event})", sock


def _alive(env: StageEnv, curve: Path, endpoints: dict[str, str], stage: str, timeout_s: float = 10.0
           ) -> dict[str, Any]:
    outcome, sub = _handshake(env, curve, endpoints, "tap", "tap")
    assert outcome == "admitted"
    sub.setsockopt(zmq.UNSUBSCRIBE, b"")
    sub.setsockopt(zmq.SUBSCRIBE, f"{stage}.alive".encode())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(500):
            event = bus.decode_as(sub.recv_multipart()[-1], bus.Event)
            sub.close(0)
            return dict(event.fields)
    sub.close(0)
    raise AssertionError(f"no {stage}.alive within {timeout_s} s")


def test_every_socket_admits_exactly_its_peers(stage_env: StageEnv) -> None:
    curve = _keys(stage_env)
    endpoints = _start_stack(stage_env, curve)
    outcomes: dict[tuple[str, str], str] = {}
    for endpoint in OWNER:
        for key_name in (*KEY_NAMES, "stranger"):
            outcome, sock = _handshake(stage_env, curve, endpoints, endpoint, key_name)
            sock.close(0)
            outcomes[(endpoint, key_name)] = outcome
    expected = {(endpoint, key_name): "admitted" if key_name in PEERS[endpoint] else "refused"
                for endpoint, key_name in outcomes}
    assert outcomes == expected
    # Refusals are counted per socket in the heartbeats of the stages that bind them.
    wrong = {endpoint: sum(1 for k in (*KEY_NAMES, "stranger") if k not in PEERS[endpoint]) for endpoint in OWNER}
    for stage in ("auth", "gate", "relay"):
        owned = {e for e, owner in OWNER.items() if owner == stage}
        deadline = time.monotonic() + 10
        while True:
            refused = _alive(stage_env, curve, endpoints, stage).get("bus_refused", {})
            if all(refused.get(e, 0) >= wrong[e] for e in owned) or time.monotonic() > deadline:
                break
        for endpoint in owned:
            assert refused.get(endpoint) == wrong[endpoint], (stage, refused)
    # Logged too, in a rate-limited way (the 1st, 2nd, 4th... refusal of a socket).
    assert "Refused the auth key on the packets socket (1 refusals so far): it admits only capture" in \
        stage_env.log("knock-auth")
    assert "Refused the capture key on the gate socket (4 refusals so far): it admits only auth" in \
        stage_env.log("knock-gate")


def test_a_door_command_with_the_tap_key_opens_nothing(stage_env: StageEnv) -> None:
    """The attack of the issue: a monitoring host's key sends DoorOpen to the gate and the relay."""
    curve = _keys(stage_env)
    endpoints = _start_stack(stage_env, curve)
    port = 40000 + free_port() % 9000
    for endpoint in ("gate", "relay"):
        for key_name in ("tap", "capture", "bus", "stranger"):
            # The monitor tells when the server has refused the key: no wait for an answer that cannot come.
            outcome, sock = _handshake(stage_env, curve, endpoints, endpoint, key_name)
            assert outcome != "admitted", f"{endpoint} admitted the {key_name} key"
            command = bus.DoorOpen("0badc0de", "mallory", "127.0.0.1", port, "127.0.0.1", 22,
                                   int(time.time() * 1000) + 10_000, False)
            try:
                sock.send(bus.encode(command), zmq.NOBLOCK)  # queued for a reconnect, refused again
            except zmq.Again:
                pass  # not even queued: no connection
            assert not sock.poll(200), f"{endpoint} answered a DoorOpen sent with the {key_name} key"
            sock.close(0)
    # Nothing listens on the door port: the relay never took the command.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    # And auth's own key still works, so the refusals above were about the keys.
    outcome, sock = _handshake(stage_env, curve, endpoints, "gate", "auth")
    sock.close(0)
    assert outcome == "admitted"


def _serve_as(env: StageEnv, curve: Path, key_name: str, port: int) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A ROUTER bound at port with key_name's key, as a gateway's gate would be; and its monitor."""
    sock: zmq.Socket[Any] = env.context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(curve / f"{key_name}.key_secret")
    sock.curve_server = True
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    sock.bind(f"tcp://127.0.0.1:{port}")
    return sock, monitor


def _first_handshake(monitor: zmq.Socket[Any], timeout_s: float = 10.0) -> str:
    if not monitor.poll(int(timeout_s * 1000)):
        return "no handshake"
    event = recv_monitor_message(monitor)["event"]
    return "admitted" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "failed"


def test_a_fleets_auth_tells_its_gateways_apart_by_their_keys(stage_env: StageEnv) -> None:
    """Issue 14: each gateway's stages hold keys of their own. Gateway B's capture key cannot
    report packets as gateway A's, the role's shared capture key (which names no gateway) is
    refused at the handshake, and auth takes gateway A's gate only with gateway A's gate key."""
    curve = _keys(stage_env, gateways=("gw-a", "gw-b"))
    endpoints = {name: f"tcp://127.0.0.1:{free_port()}" for name in OWNER}
    gate_port = {"gw-a": free_port(), "gw-b": free_port()}
    table = ", ".join(f'{k} = "{v}"' for k, v in endpoints.items())
    fleet = "".join(f'\n[gateways.{name}]\naddresses = ["{address}"]\ngate = "tcp://127.0.0.1:{gate_port[name]}"\n'
                    for name, address in (("gw-a", "198.18.0.1"), ("gw-b", "198.18.0.11")))
    # gw-a's "gate" holds the role's shared gate key, gw-b's its own: auth must take only the second.
    impostor, impostor_monitor = _serve_as(stage_env, curve, "gate", gate_port["gw-a"])
    genuine, genuine_monitor = _serve_as(stage_env, curve, gateway_key_name("gate", "gw-b"), gate_port["gw-b"])
    stage_env.write_config(extra_server='gateway = "auth-host"',
                           extra_bus=f'transport = "tcp"\ncurve_dir = "{curve}"\ntcp_endpoints = {{ {table} }}\n'
                                     + fleet)
    write_users(stage_env.workdir / "users.json", [LabUser("alice", key=bytes(range(32)))])
    stage_env.start("knock-bus")
    stage_env.start("knock-auth")
    try:
        assert _first_handshake(genuine_monitor) == "admitted"
        assert _first_handshake(impostor_monitor) == "failed"
    finally:
        for sock in (impostor, genuine):
            sock.disable_monitor()
            sock.close(0)
        for monitor in (impostor_monitor, genuine_monitor):
            monitor.close(0)
    # The shared capture key speaks for no gateway: refused before any message.
    outcome, sock = _handshake(stage_env, curve, endpoints, "packets", "capture")
    sock.close(0)
    assert outcome == "refused"
    # Gateway B's own capture key gets in, but only as gateway B.
    outcome, push = _handshake(stage_env, curve, endpoints, "packets", gateway_key_name("capture", "gw-b"))
    assert outcome == "admitted"
    payload = bytes(130)
    push.send(bus.encode(bus.Datagram("198.18.0.50", 40000, "198.18.0.1", payload, "gw-a")))  # claims A
    push.send(bus.encode(bus.Datagram("198.18.0.50", 40001, "198.18.0.1", payload, "gw-b")))  # A's address
    deadline = time.monotonic() + 10
    refused: dict[str, int] = {}
    while time.monotonic() < deadline:
        refused = _alive(stage_env, curve, endpoints, "auth").get("gateway_refusals", {})
        if sum(refused.values()) >= 2:
            break
    push.close(0)
    assert refused == {"other_gateways_key": 1, "not_its_address": 1}
    assert "Dropped a packet claiming gateway gw-a from the capture key of gateway 'gw-b'" in \
        stage_env.log("knock-auth")
