"""A gateway's gate and relay serving two auth replicas: each replica's doors are its own.

The checkout's gate (real nftables, the dynknock user holding CAP_NET_ADMIN alone) and relay (bound to
server.relay_port, then no capability) run in a throw-away network namespace as gateway gw-a of replicas
a and b, with the bus over tcp + CURVE and the keys of `knock-admin bus-keys DIR --replica a --replica b
--replica c --gateway gw-a`. This process plays both replicas: for each a DEALER to the gate and one to
the relay with its auth@NAME key, as a replica's auth connects; and replica b's knock-bus (a SUB bound
with bus@b) hears the heartbeats and events. A client namespace behind a veth makes real connections
through the doors (a kernel door's DNAT seen by conntrack, a relayed door redirected to the relay).

What it shows: a key that is not a listed replica's (the shared auth key, auth@c) is refused at the
handshake and opens nothing; a's DoorSet empties a's unlisted doors and leaves b's; b may not close a's
doors; b's DoorResults and DoorUsed reports reach b and nothing reaches a; the heartbeats count doors per
opener; a's death (its sockets closed) leaves its doors to their kernel timeouts while b's DoorSets go
on, and the relay serves a's door meanwhile; a back (the same key, a new process) lists none of its old
doors, and they are emptied, b's untouched. A second test restarts the gate: the doors the kernel kept
are claimed by the replica that lists them, and one no replica lists is emptied only once both spoke.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus
from dynknock.gate.core import held_elements
from tests.etcdlab import netns
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import GATE_PRIVILEGES, StageEnv

pytestmark = pytest.mark.stage

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "198.18.123.1"  # the gateway namespace's eth0
CLIENT = "198.18.123.2"  # the client namespace's eth0
REPLICA_ADDRESS = {"a": "198.18.123.21", "b": "198.18.123.22"}  # on the gateway namespace's lo
GATE_URL, RELAY_URL = f"tcp://{GATEWAY}:7003", f"tcp://{GATEWAY}:7004"
TABLE = "dkrepl"
SSH = ("127.0.0.1", 22)  # a kernel door's target (nothing listens: the client gets a RST, conntrack a NEW)
WEB = (GATEWAY, 8080)  # a relayed door's target (nothing listens: the relay closes the connection)
# supervisord.conf's relay: the dynknock user with CAP_NET_BIND_SERVICE until relay_port is bound.
RELAY_PRIVILEGES = ("/usr/bin/setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups", "--no-new-privs",
                    "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
                    "--bounding-set=-all,+net_bind_service")
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
WAIT_S = 15.0  # any wait; the heartbeat comes every 2 s


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    """The gateway's namespace and the client's, joined by a veth (eth0 in each); deleted afterwards with
    whatever the test started in them."""
    gateway, client = f"dkrgw{os.getpid()}", f"dkrcl{os.getpid()}"
    run("ip", "netns", "add", gateway)
    try:
        run("ip", "netns", "add", client)
        try:
            run("ip", "-n", gateway, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client)
            for ns, address in ((gateway, GATEWAY), (client, CLIENT)):
                run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
            for address in REPLICA_ADDRESS.values():
                run("ip", "-n", gateway, "addr", "add", f"{address}/32", "dev", "lo")
            yield gateway, client
        finally:
            _delete(client)
    finally:
        _delete(gateway)


def _delete(ns: str) -> None:
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False).stdout.split():  # only what this test started in it
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def make_keys(env: StageEnv) -> Path:
    """Keys of replicas a, b and c (c is no replica of this gateway) and of gateway gw-a."""
    curve = env.workdir / "curve"
    run(str(VENV_BIN / "knock-admin"), "bus-keys", str(curve), "--replica", "a", "--replica", "b",
        "--replica", "c", "--gateway", "gw-a")
    service = os.stat(env.workdir / "run")  # owned by the dynknock user (prepare_workdir)
    for path in [curve, *curve.rglob("*")]:
        os.chown(path, service.st_uid, service.st_gid)
    return curve


def write_config(env: StageEnv, curve: Path) -> None:
    def url(replica: str, port: int) -> str:
        return f"tcp://{REPLICA_ADDRESS[replica]}:{port}"

    replicas = "".join(f'\n[replicas.{name}]\npackets = "{url(name, 7001)}"\nknock_filter = "{url(name, 7002)}"\n'
                       f'events = "{url(name, 7005)}"\n' for name in REPLICA_ADDRESS)
    # The one-auth endpoints must be named over tcp; a gateway serving replicas binds gate and relay only.
    endpoints = (f'packets = "{url("a", 7001)}", knock_filter = "{url("a", 7002)}", gate = "{GATE_URL}", '
                 f'relay = "{RELAY_URL}", events = "{url("a", 7005)}", tap = "{url("a", 7006)}"')
    env.config.write_text(f"""\
[server]
interface = "eth0"
addresses = ["{GATEWAY}"]
door_ports = "41000-41999"
window_seconds = 30
users_file = "{env.workdir}/users.json"
key_file = "{env.workdir}/server.key"
state_dir = "{env.workdir}/state"
run_as = "dynknock"
gateway = "gw-a"

[bus]
runtime_dir = "{env.workdir}/run"
transport = "tcp"
curve_dir = "{curve}"
tcp_endpoints = {{ {endpoints} }}
{replicas}
[gate]
backend = "nftables"
table = "{TABLE}"

[services.ssh]
target = "{SSH[0]}:{SSH[1]}"

[services.web]
target = "{WEB[0]}:{WEB[1]}"
forward = "relay"
""")


def start(env: StageEnv, ns: str, stage: str, privileges: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """The checkout's stage (PYTHONPATH: the code under test before it is installed) in the gateway namespace."""
    log = open(env.workdir / f"{stage}.log", "ab")  # noqa: SIM115 - owned by the process
    process = subprocess.Popen(["ip", "netns", "exec", ns, *privileges, str(VENV_BIN / "python"), "-m",
                                f"dynknock.{stage}.main", "-c", str(env.config)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    log.close()
    env.processes.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=10) == 0


def dealer(context: zmq.Context[Any], curve: Path, key_name: str, url: str, server: str) -> tuple[str, zmq.Socket[Any]]:
    """A DEALER connected to url as key_name, as a replica's auth connects; the handshake's outcome as its
    monitor reports it (no sleep stands for "connected")."""
    sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(curve / f"{key_name}.key_secret")
    sock.curve_serverkey = zmq.auth.load_certificate(curve / "public" / f"{server}.key")[0]
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    sock.connect(url)
    try:
        if not monitor.poll(int(WAIT_S * 1000)):
            return "no handshake", sock
        event = recv_monitor_message(monitor)["event"]
    finally:
        sock.disable_monitor()
        monitor.close(0)
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return "admitted", sock
    return ("refused" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else f"failed ({event})"), sock


class Replica:
    """One auth replica's connections to the gateway: a DEALER to its gate and one to its relay."""

    def __init__(self, context: zmq.Context[Any], curve: Path, name: str,
                 stages: tuple[str, ...] = ("gate", "relay")) -> None:
        self.name = name
        self.unasked: list[bus.Message] = []  # what the gate and relay sent it unasked (DoorUsed), in order
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        for stage in stages:
            outcome, sock = dealer(context, curve, f"auth@{name}", GATE_URL if stage == "gate" else RELAY_URL,
                                   f"{stage}@gw-a")
            assert outcome == "admitted", (name, stage, outcome)
            self.sockets[stage] = sock

    def send(self, stage: str, message: bus.Message) -> None:
        self.sockets[stage].send(bus.encode(message))

    def ask(self, stage: str, message: bus.Message) -> bus.DoorResult:
        self.send(stage, message)
        return self.result(stage)

    def result(self, stage: str) -> bus.DoorResult:
        """The next DoorResult from `stage`; DoorUsed reports on the way are kept in self.used."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if self.sockets[stage].poll(100):
                message = bus.decode(self.sockets[stage].recv())
                if isinstance(message, bus.DoorResult):
                    return message
                self.unasked.append(message)
        raise AssertionError(f"replica {self.name}: no answer from the {stage}")

    def hear(self, count: int, wait_s: float = WAIT_S) -> list[bus.Message]:
        """Everything sent to it unasked, once there are `count` such messages or wait_s has passed."""
        deadline = time.monotonic() + wait_s
        while len(self.unasked) < count and time.monotonic() < deadline:
            for sock in self.sockets.values():
                if sock.poll(20):
                    self.unasked.append(bus.decode(sock.recv()))
        return self.unasked

    def door_sets(self, gate: list[bus.DoorOpen], relay: list[bus.DoorOpen]) -> None:
        """The DoorSets auth sends every 2 s: every door it believes open, to the gate and to the relay."""
        sent = int(time.time() * 1000)
        self.send("gate", bus.DoorSet([[d.door_id, d.client, d.port] for d in gate], sent))
        if "relay" in self.sockets:
            self.send("relay", bus.DoorSet([[d.door_id, d.client, d.port] for d in relay], sent))

    def close(self) -> None:
        """Its auth process dies: both connections closed."""
        for sock in self.sockets.values():
            sock.close(0)
        self.sockets = {}


def door(door_id: str, port: int, *, kernel: bool, left_ms: int = 29_000) -> bus.DoorOpen:
    target = SSH if kernel else WEB
    return bus.DoorOpen(door_id, "alice", CLIENT, port, target[0], target[1], int(time.time() * 1000) + left_ms,
                        True, kernel=kernel, sent_ms=int(time.time() * 1000))


@dataclass
class Gateway:
    """What the test reads of the gateway: its door elements (nft), its heartbeats and events (b's bus)."""

    ns: str
    client_ns: str
    events: zmq.Socket[Any]

    def elements(self) -> set[int]:
        """The door ports the gate's table holds an element of (once, many, ronce, rmany, or the map)."""
        listing = run("ip", "netns", "exec", self.ns, "nft", "-j", "list", "table", "inet", TABLE)
        return {e.port for e in held_elements(json.loads(listing))}

    def event(self, topic: str, check: Callable[[dict[str, Any]], bool], what: str,
              after: float = 0.0) -> dict[str, Any]:
        """The first event on `topic` sent after `after` (time.time()) whose fields pass check."""
        deadline = time.monotonic() + WAIT_S
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.events.poll(100):
                name, body = self.events.recv_multipart()
                event = bus.decode_as(body, bus.Event)
                if name.decode() == topic and event.time > after:
                    last = dict(event.fields)
                    if check(last):
                        return last
        raise AssertionError(f"no {topic} with {what} within {WAIT_S} s (last: {last})")

    def connect(self, port: int) -> str:
        """One connection from the client to a door port: "refused" (a RST), "connected", or "timeout"."""
        with netns(self.client_ns):
            sock = socket.socket()  # made in the client's namespace, and stays there
        sock.settimeout(3)
        try:
            sock.connect((GATEWAY, port))
            return "connected"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        finally:
            sock.close()


def wait(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out ({timeout_s} s) waiting for {what}")


@pytest.fixture
def lab(stage_env: StageEnv, namespaces: tuple[str, str]) -> Iterator[tuple[StageEnv, Path, zmq.Context[Any], Gateway]]:
    """Keys, config, and replica b's knock-bus (its SUB) in the gateway namespace; this thread stays there
    for the test (its zmq context's I/O threads are born there)."""
    ns, client_ns = namespaces
    curve = make_keys(stage_env)
    write_config(stage_env, curve)
    with netns(ns):
        context: zmq.Context[Any] = zmq.Context()
        try:
            events: zmq.Socket[Any] = context.socket(zmq.SUB)
            events.setsockopt(zmq.LINGER, 0)
            events.curve_publickey, events.curve_secretkey = zmq.auth.load_certificate(curve / "bus@b.key_secret")
            events.curve_server = True
            for prefix in (b"gate.alive", b"relay.alive", b"relay.connection.accepted"):
                events.setsockopt(zmq.SUBSCRIBE, prefix)
            events.bind(f"tcp://{REPLICA_ADDRESS['b']}:7005")
            yield stage_env, curve, context, Gateway(ns, client_ns, events)
        finally:
            context.destroy(0)


def test_each_replica_opens_closes_and_hears_of_its_own_doors(
        lab: tuple[StageEnv, Path, zmq.Context[Any], Gateway]) -> None:
    env, curve, context, gateway = lab
    start(env, gateway.ns, "gate", GATE_PRIVILEGES)
    start(env, gateway.ns, "relay", RELAY_PRIVILEGES)
    a, b = Replica(context, curve, "a"), Replica(context, curve, "b")

    # A key that is no listed replica's is refused at the handshake, and its DoorOpen opens nothing.
    for key_name in ("auth@c", "auth"):
        for stage, url in (("gate", GATE_URL), ("relay", RELAY_URL)):
            outcome, sock = dealer(context, curve, key_name, url, f"{stage}@gw-a")
            assert outcome == "refused", (key_name, stage, outcome)
            try:
                sock.send(bus.encode(door("0bad", 41999, kernel=False)), zmq.NOBLOCK)
            except zmq.Again:
                pass  # not even queued: no connection
            assert not sock.poll(300), f"the {stage} answered a DoorOpen sent with the {key_name} key"
            sock.close(0)
    assert 41999 not in gateway.elements()
    # (Logged at the 1st, 2nd, 4th... refusal of a socket: auth@c's came first.)
    assert "Refused the auth@c key on the gate socket (1 refusals so far): it admits only auth@a, auth@b" in \
        env.log("gate")
    assert "Refused the auth@c key on the relay socket (1 refusals so far)" in env.log("relay")

    # Both replicas open doors: kernel doors at the gate; relayed doors at the gate and the relay.
    ka1, ra1, ra2, ra3 = (door("a1", 41001, kernel=True), door("a2", 41002, kernel=False),
                          door("a3", 41003, kernel=False), door("a5", 41005, kernel=False))
    ka2 = door("a4", 41004, kernel=True, left_ms=15_000)  # runs out while a is dead
    kb1, rb1, kb2, kb3 = (door("b1", 41011, kernel=True), door("b2", 41012, kernel=False),
                          door("b3", 41013, kernel=True), door("b4", 41014, kernel=True))
    for replica, doors in ((a, (ka1, ra1, ra2, ra3, ka2)), (b, (kb1, rb1, kb2, kb3))):
        for command in doors:
            assert replica.ask("gate", command).ok
            if not command.kernel:
                assert replica.ask("relay", command).ok
    a_ports, b_ports = {41001, 41002, 41003, 41004, 41005}, {41011, 41012, 41013, 41014}
    assert gateway.elements() == a_ports | b_ports
    # b may not take a's (client, port), at the gate nor at the relay; the prefix makes auth move b's door.
    taken = b.ask("gate", door("b9", 41001, kernel=True))
    assert not taken.ok and taken.detail == "address_in_use: the door is auth@a's, not auth@b's"
    taken = b.ask("relay", door("b9", 41003, kernel=False))
    assert not taken.ok and taken.detail == "address_in_use: port 41003 is already a door of auth@a"

    # a's DoorSet: a2 no longer; a's other doors listed; b's doors, which a does not list, stay.
    a.door_sets(gate=[ka1, ra2, ra3, ka2], relay=[ra2, ra3])
    wait(lambda: 41002 not in gateway.elements(), "a's door a2 emptied")
    assert gateway.elements() == (a_ports - {41002}) | b_ports

    # b may not close a's doors; its own, yes. Each answer goes to its sender, nothing to a.
    refused = b.ask("gate", bus.DoorClose("a1", CLIENT, 41001, *SSH))
    assert not refused.ok and refused.detail == "the door is auth@a's, not auth@b's"
    refused = b.ask("relay", bus.DoorClose("a3", CLIENT, 41003))
    assert not refused.ok and refused.detail == "the door is auth@a's, not auth@b's"
    assert b.ask("gate", bus.DoorClose("b3", CLIENT, 41013, *SSH)).ok
    assert gateway.elements() == (a_ports - {41002}) | (b_ports - {41013})
    assert "Refused to close port 41001 for 198.18.123.2 from auth@b: the door is auth@a's" in env.log("gate")
    assert "Refused to close port 41003 for 198.18.123.2 from auth@b: the door is auth@a's" in env.log("relay")

    # b's doors used: the gate (conntrack saw the kernel forward it) and the relay (it accepted) tell b.
    assert gateway.connect(41011) == "refused"  # DNAT to 127.0.0.1:22, where nothing listens: a RST
    assert b.hear(1) == [bus.DoorUsed("b1", "gate", CLIENT, 41011)]
    assert gateway.connect(41012) == "connected"  # redirected to the relay, which accepts, then finds no service
    assert b.hear(2)[1:] == [bus.DoorUsed("b2", "relay", CLIENT, 41012)]
    assert a.hear(1, wait_s=0.5) == []

    # The heartbeats count doors per opener (b1's record lasts until b closes it or its window ends).
    started = time.time()
    beat = gateway.event("gate.alive", lambda f: f.get("doors_by_opener") == {"auth@a": 4, "auth@b": 3},
                         "a's four doors and b's three", started)
    assert beat["foreign_refused"] == 2  # b's open of 41001 and its close of a1
    beat = gateway.event("relay.alive", lambda f: f.get("doors_by_opener") == {"auth@a": 2},
                         "a's two relayed doors (b's was used once: gone)", started)
    assert beat["foreign_refused"] == 1 and beat["door_ports"] == [41003, 41005]  # b's close of a3

    # a dies. b's DoorSets go on (every 0.5 s here) and leave a's doors alone: each runs out its own time.
    a.close()
    died = time.time()
    b_gate = [kb1, kb3]
    for _ in range(4):
        b.door_sets(gate=b_gate, relay=[])
        time.sleep(0.5)
    assert gateway.elements() == {41001, 41003, 41004, 41005, 41011, 41014}
    # The relay still serves a's door: it accepts its client (its DoorUsed finds no a to go to).
    assert gateway.connect(41005) == "connected"
    gateway.event("relay.connection.accepted", lambda f: f.get("port") == 41005, "a's door a5 served", died)
    # a4 runs out in the kernel, on time; nothing empties a's others.
    while 41004 in gateway.elements():
        assert time.time() * 1000 < ka2.expires_at_ms + 3_000, "a's door a4 outlived its timeout"
        b.door_sets(gate=b_gate, relay=[])
        time.sleep(0.5)
    assert time.time() * 1000 >= ka2.expires_at_ms - 1_000, "a4 went before its timeout"
    assert gateway.elements() == {41001, 41003, 41011, 41014}
    gateway.event("relay.alive", lambda f: f.get("door_ports") == [41003], "a's door a3 still served", died)

    # a comes back: a new process (the same key) that knows none of its old doors. They are emptied, as a
    # restarted auth's always were; b's stay.
    a_again = Replica(context, curve, "a")
    a_again.door_sets(gate=[], relay=[])
    wait(lambda: gateway.elements() == {41011, 41014}, "a's old doors emptied, b's kept")
    gateway.event("relay.alive", lambda f: f.get("door_ports") == [], "a's old relayed door closed", time.time())
    b.door_sets(gate=b_gate, relay=[])
    assert b.ask("gate", bus.DoorClose("b4", CLIENT, 41014, *SSH)).ok  # in order after b's set
    assert gateway.elements() == {41011}
    assert a_again.hear(1, wait_s=0.5) == [] and len(b.hear(3, wait_s=0.5)) == 2
    for stage in ("gate", "relay"):
        assert "Traceback" not in env.log(stage), env.log(stage)


def test_after_a_gate_restart_each_replica_claims_the_doors_it_lists(
        lab: tuple[StageEnv, Path, zmq.Context[Any], Gateway]) -> None:
    env, curve, context, gateway = lab
    gate = start(env, gateway.ns, "gate", GATE_PRIVILEGES)
    a, b = Replica(context, curve, "a", ("gate",)), Replica(context, curve, "b", ("gate",))
    ka1, ka2, kb1 = door("a1", 41001, kernel=True), door("a2", 41002, kernel=False), door("b1", 41011, kernel=True)
    for replica, command in ((a, ka1), (a, ka2), (b, kb1)):
        assert replica.ask("gate", command).ok

    # The gate restarts: the kernel keeps the doors, the new process knows no opener of any.
    stop(gate)
    start(env, gateway.ns, "gate", GATE_PRIVILEGES)
    for replica in (a, b):  # each replica's DEALER reconnects by itself: the new gate answers what it queued
        assert replica.ask("gate", bus.DoorClose("ffff", CLIENT, 41999)).ok
    assert gateway.elements() == {41001, 41002, 41011}

    # b speaks first: it claims b1; a's two, perhaps a's, wait for a (they would run out their timeouts).
    b.door_sets(gate=[kb1], relay=[])
    b.door_sets(gate=[], relay=[])  # b1 is b's now: emptied
    wait(lambda: gateway.elements() == {41001, 41002}, "b's claimed door emptied, a's unknown ones kept")
    # a lists a1 only: it claims a1, and a2, which no replica lists now that both spoke, is emptied.
    a.door_sets(gate=[ka1], relay=[])
    wait(lambda: gateway.elements() == {41001}, "the door no replica lists emptied")
    refused = b.ask("gate", bus.DoorClose("a1", CLIENT, 41001, *SSH))
    assert not refused.ok and "auth@a's" in refused.detail
    a.door_sets(gate=[], relay=[])
    wait(lambda: gateway.elements() == set(), "a's claimed door emptied by a")
    assert "Traceback" not in env.log("gate"), env.log("gate")
