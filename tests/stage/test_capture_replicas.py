"""A gateway's knock-capture serving two auth replicas: routing, failover, the filters' union.

The checkout's capture runs for real (PYTHONPATH, as test_capture_filter_refused.py) on `lo` of a
throw-away network namespace, with the bus over tcp + CURVE and the keys of
`knock-admin bus-keys DIR --replica a --replica b --gateway gw-a`. The two replicas are played by
this process: for each, a PULL (packets) and a PUB (filters) bound with its auth@NAME key and a SUB
(its knock-bus's events) bound with bus@NAME, all inside the namespace (this thread enters it:
tests/etcdlab.py netns). Like the real auth a replica publishes its HintFilter and KnockFilter every
PUBLISH_EVERY_S. Clients are addresses of 198.18.0.0/15, local to the namespace's `lo`, so that a
datagram or a SYN sent from any of them is a real frame through libpcap and capture's kernel filter.

What it shows: each client's datagrams reach exactly one replica, the one rendezvous hashing names
(capture/routing.py choose); the SYNs the union of both knock filters names pass, each to its
client's replica; replica a's sockets closed (its process dead), its clients reach b within
failover_after_s; its return brings them back; a's silence (alive but no filter message) and a's
host vanishing (its packets black-holed by nftables in the namespace) move them within
failover_after_s of its last word. Each gap is measured and printed (pytest -s shows them).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from dynknock import bus
from dynknock import protocol as proto
from dynknock.capture.routing import choose
from dynknock.topics import ALIVE
from tests.etcdlab import netns
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import StageEnv
from tests.stage.test_capture_stage import client_payload

pytestmark = pytest.mark.stage

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "198.18.0.1"  # capture's server.addresses; with it, all of 198.18.0.0/15 is local to lo
REPLICA_ADDRESS = {"a": "198.18.0.21", "b": "198.18.0.22"}
CONTROL_PORT = 62201
FAILOVER_S = 1.5
PUBLISH_EVERY_S = 0.5  # as auth/main.py's REPLICA_FILTER_REFRESH_S
CLIENTS = 120  # client addresses, each sending DATAGRAMS_EACH datagrams
DATAGRAMS_EACH = 2
HINTS = [b"hint-one", b"hint-two", b"hint-3rd", b"hint-4th"]  # spread over, so no hint's budget sheds
ROUNDS = 3  # close and reopen replica a this often: several measures of the gaps
PROBE_EVERY_S = 0.02  # a moved client's probe datagrams, this often
# Bounds: a closed connection is seen at once (the monitor), so its clients move in a few poll turns;
# a return needs ZeroMQ's reconnect (100 ms), the handshake and the replica's next filter message.
CLOSED_BOUND_S = FAILOVER_S
RETURN_BOUND_S = FAILOVER_S + 1.0
# Silence and a vanished host: declared at failover_after_s after the last message heard, which came
# at most PUBLISH_EVERY_S before the cut; the loop notices within a poll turn.
SILENT_BOUND_S = FAILOVER_S + 0.5
WAIT_S = 15.0  # any other wait


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with lo up holding 198.18.0.1/15; deleted afterwards with what the test
    started in it."""
    ns = f"dkcaprep{os.getpid()}"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        # On a loopback device the prefix route is a local one: every address of the /15 is ours.
        run("ip", "-n", ns, "addr", "add", f"{GATEWAY}/15", "dev", "lo")
        yield ns
    finally:
        for pid in run("ip", "netns", "pids", ns).split():  # only what this test started in it
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)


def make_keys(env: StageEnv) -> Path:
    curve = env.workdir / "curve"
    run(str(VENV_BIN / "knock-admin"), "bus-keys", str(curve), "--replica", "a", "--replica", "b",
        "--gateway", "gw-a")
    service = os.stat(env.workdir / "run")  # owned by the dynknock user (prepare_workdir)
    for path in [curve, *curve.rglob("*")]:
        os.chown(path, service.st_uid, service.st_gid)
    return curve


def url(replica: str, port: int) -> str:
    return f"tcp://{REPLICA_ADDRESS[replica]}:{port}"


def write_config(env: StageEnv, curve: Path) -> None:
    replicas = "".join(f'\n[replicas.{name}]\npackets = "{url(name, 7001)}"\nknock_filter = "{url(name, 7002)}"\n'
                       f'events = "{url(name, 7005)}"\n' for name in REPLICA_ADDRESS)
    # The one-auth endpoints must be named over tcp; a capture serving replicas uses none of them.
    endpoints = (f'packets = "{url("a", 7001)}", knock_filter = "{url("a", 7002)}", '
                 f'gate = "tcp://{GATEWAY}:7003", relay = "tcp://{GATEWAY}:7004", events = "{url("a", 7005)}", '
                 f'tap = "{url("a", 7006)}"')
    env.config.write_text(f"""\
[server]
interface = "lo"
addresses = ["{GATEWAY}"]
control_port = {CONTROL_PORT}
door_ports = "40000-49999"
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
failover_after_s = {FAILOVER_S}
{replicas}
[services.ssh]
target = "127.0.0.1:22"
""")


class Replica:
    """One auth replica's side of capture's links (and its knock-bus's), bound in the namespace."""

    def __init__(self, context: zmq.Context[Any], curve: Path, name: str) -> None:
        self.context, self.curve, self.name = context, curve, name
        self.pairs: list[list[Any]] = []
        self.generation = 1
        self.speaking = True  # publishes its filters every PUBLISH_EVERY_S
        self.published_at = float("-inf")
        self.received: list[bus.Message] = []
        self.sockets: dict[str, zmq.Socket[Any]] = {}
        self.events = self._bound(zmq.SUB, f"bus@{name}", 7005)
        self.events.setsockopt(zmq.SUBSCRIBE, ALIVE["capture"].encode())
        self.open()

    def _bound(self, kind: int, key_name: str, port: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(self.curve / f"{key_name}.key_secret")
        sock.curve_server = True
        sock.bind(url(self.name, port))
        return sock

    def open(self) -> None:
        """Its auth process (re)starts: packets and filters bound again."""
        self.sockets = {"packets": self._bound(zmq.PULL, f"auth@{self.name}", 7001),
                        "filters": self._bound(zmq.PUB, f"auth@{self.name}", 7002)}
        self.published_at = float("-inf")

    def close(self) -> None:
        """Its auth process dies: both sockets closed, their connections with them."""
        for sock in self.sockets.values():
            sock.close(0)
        self.sockets = {}

    def set_pairs(self, pairs: list[tuple[str, int]]) -> None:
        self.pairs = [[address, port] for address, port in pairs]
        self.generation += 1
        self.published_at = float("-inf")  # at once, as auth does on a change

    def pump(self, now: float) -> None:
        """Publish when due; take in what capture sent."""
        if not self.sockets:
            return
        if self.speaking and now - self.published_at >= PUBLISH_EVERY_S:
            self.published_at = now
            self.sockets["filters"].send(bus.encode(bus.HintFilter(list(HINTS), 1, self.name)))
            self.sockets["filters"].send(bus.encode(bus.KnockFilter(self.pairs, self.generation, self.name)))
        for _ in range(10_000):
            try:
                frame = self.sockets["packets"].recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.received.append(bus.decode(frame))

    def datagram_sources(self) -> list[str]:
        return [m.source for m in self.received if isinstance(m, bus.Datagram)]

    def shut(self) -> None:
        self.close()
        self.events.close(0)


class Lab:
    """The two replicas and the clients' side, all in the namespace; every wait pumps the replicas."""

    def __init__(self, context: zmq.Context[Any], curve: Path) -> None:
        self.replicas = {name: Replica(context, curve, name) for name in REPLICA_ADDRESS}
        self.beats: list[dict[str, Any]] = []

    def pump(self) -> None:
        now = time.monotonic()
        for replica in self.replicas.values():
            replica.pump(now)
            for _ in range(100):  # heartbeats: b's bus hears every one (a's may be closed meanwhile)
                try:
                    _topic, body = replica.events.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if replica.name == "b":
                    self.beats.append(dict(bus.decode_as(body, bus.Event).fields))

    def wait(self, condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> float:
        """Pump until condition holds; the monotonic time it first did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            if condition():
                return time.monotonic()
            time.sleep(0.005)
        raise AssertionError(f"timed out ({timeout_s} s) waiting for {what}")

    def heartbeat(self, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """The first heartbeat from now on that satisfies check."""
        seen = len(self.beats)
        found: list[dict[str, Any]] = []

        def condition() -> bool:
            found[:] = [beat for beat in self.beats[seen:] if check(beat)]
            return bool(found)
        self.wait(condition, f"a capture heartbeat with {what} (last: {self.beats[-1:]})")
        return found[0]

    def send_datagram(self, source: str, hint: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.sendto(client_payload(proto.PacketType.P2, hint), (GATEWAY, CONTROL_PORT))

    def send_syn(self, source: str, port: int) -> None:
        """One SYN from source (the kernel answers RST: nothing listens there)."""
        with socket.socket() as sock:
            sock.bind((source, 0))
            with pytest.raises(ConnectionRefusedError):
                sock.connect((GATEWAY, port))

    def probe(self, source: str, to: str, started: float, bound_s: float) -> float:
        """Datagrams from source every PROBE_EVERY_S until replica `to` has one from it: the seconds
        since `started` (a time.monotonic())."""
        target = self.replicas[to]
        before = target.datagram_sources().count(source)
        deadline = started + bound_s + 2.0  # past the bound: still measured, then the assert says by how much
        next_probe = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_probe:
                self.send_datagram(source, HINTS[0])
                next_probe = now + PROBE_EVERY_S
            self.pump()
            if target.datagram_sources().count(source) > before:
                return time.monotonic() - started
            time.sleep(0.002)
        raise AssertionError(f"{source}'s datagrams did not reach replica {to} within {bound_s + 2.0} s")

    def shut(self) -> None:
        for replica in self.replicas.values():
            replica.shut()


def up(*names: str) -> Callable[[dict[str, Any]], bool]:
    def check(beat: dict[str, Any]) -> bool:
        replicas = beat.get("replicas", {})
        return {n for n, r in replicas.items() if r["up"]} == set(names)
    return check


def everyone_routed(lab: Lab, clients: list[str], live: list[str]) -> dict[str, str]:
    """One datagram from each client; each must reach the replica choose() names among `live`, and
    only it. Returns client -> replica. (Probes are sent from other addresses: a late one is no client's.)"""
    wanted = set(clients)
    start = {name: len(replica.received) for name, replica in lab.replicas.items()}

    def arrived() -> list[tuple[str, bus.Datagram]]:
        return [(name, m) for name, replica in lab.replicas.items() for m in replica.received[start[name]:]
                if isinstance(m, bus.Datagram) and m.source in wanted]
    for i, client in enumerate(clients):
        lab.send_datagram(client, HINTS[i % len(HINTS)])
    lab.wait(lambda: len(arrived()) >= len(clients), f"{len(clients)} datagrams")
    got: dict[str, str] = {}
    for name, message in arrived():
        assert message.gateway == "gw-a"
        assert message.source not in got, f"{message.source} reached {got[message.source]} and {name}"
        got[message.source] = name
    assert got == {client: choose(live, client) for client in clients}
    return got


def test_capture_routes_each_client_to_one_live_replica_and_fails_over(stage_env: StageEnv, namespace: str) -> None:
    curve = make_keys(stage_env)
    write_config(stage_env, curve)
    clients = [f"198.18.{1 + i // 200}.{1 + i % 200}" for i in range(CLIENTS)]
    # Probes come from an address of their own that a serves while it is up (not one of `clients`).
    probe = next(p for p in (f"198.18.100.{i}" for i in range(1, 255)) if choose(["a", "b"], p) == "a")
    measured: dict[str, list[float]] = {"closed": [], "returned": [], "silent": [], "vanished": []}
    with netns(namespace):
        context: zmq.Context[Any] = zmq.Context()  # its I/O threads are born in the namespace
        lab = Lab(context, curve)
        try:
            log = open(stage_env.workdir / "capture.log", "ab")  # noqa: SIM115 - owned by the process
            capture = subprocess.Popen(["ip", "netns", "exec", namespace, str(VENV_BIN / "python"), "-m",
                                        "dynknock.capture.main", "-c", str(stage_env.config)],
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
            log.close()
            stage_env.processes.append(capture)
            lab.heartbeat(up("a", "b"), "both replicas up")

            # Every client's datagrams to one replica, the same each time, as choose() says.
            routes: dict[str, str] = {}
            for _ in range(DATAGRAMS_EACH):
                routes = everyone_routed(lab, clients, ["a", "b"])
            of = {name: [c for c in clients if routes[c] == name] for name in REPLICA_ADDRESS}
            assert all(len(of[name]) >= CLIENTS // 4 for name in of), {n: len(c) for n, c in of.items()}

            # The knock filter is the union: a pending knock of a's client and one of b's both pass,
            # each SYN to its client's replica; a SYN nobody asked for stays in the kernel (sent first,
            # on the same path: the first Syn each replica gets is the expected one).
            knock_a, knock_b = (of["a"][0], 20001), (of["b"][0], 20002)
            lab.replicas["a"].set_pairs([knock_a])
            lab.replicas["b"].set_pairs([knock_b])
            beat = lab.heartbeat(lambda b: b["filter_pairs"] == 2, "both pairs")
            assert {n: r["filter_pairs"] for n, r in beat["replicas"].items()} == {"a": 1, "b": 1}
            for source, port in (knock_a, knock_b):
                lab.send_syn(source, port + 100)
                lab.send_syn(source, port)
            lab.wait(lambda: all(any(isinstance(m, bus.Syn) for m in r.received) for r in lab.replicas.values()),
                     "the knocks' SYNs")
            for name, (source, port) in (("a", knock_a), ("b", knock_b)):
                syns = [m for m in lab.replicas[name].received if isinstance(m, bus.Syn)]
                assert (syns[0].source, syns[0].port) == (source, port)

            a = lab.replicas["a"]
            for _ in range(ROUNDS):
                # a's process dies: its connections close and its clients reach b at once.
                a.close()
                closed = time.monotonic()
                measured["closed"].append(lab.probe(probe, "b", closed, CLOSED_BOUND_S))
                everyone_routed(lab, clients, ["b"])
                beat = lab.heartbeat(up("b"), "a down")
                assert beat["replicas"]["a"]["why"] == "disconnected" and beat["filter_pairs"] == 1  # b's alone
                # a comes back: its clients, and only they, return to it, and its pending knock with it.
                a.open()
                reopened = time.monotonic()
                measured["returned"].append(lab.probe(probe, "a", reopened, RETURN_BOUND_S))
                everyone_routed(lab, clients, ["a", "b"])
                lab.heartbeat(lambda b: up("a", "b")(b) and b["filter_pairs"] == 2, "a up again, with its pair")

            # a falls silent (alive, connected, says nothing): down failover_after_s after its last word.
            a.speaking = False
            last_word = a.published_at
            measured["silent"].append(lab.probe(probe, "b", last_word, SILENT_BOUND_S))
            assert lab.heartbeat(up("b"), "a silent")["replicas"]["a"]["why"] == "silent"
            a.speaking = True
            lab.probe(probe, "a", time.monotonic(), RETURN_BOUND_S)

            # a's host vanishes: nothing from or to it gets through, no FIN, no RST.
            lab.wait(lambda: a.published_at > time.monotonic() - 0.05, "a's next publication")
            last_word = a.published_at
            rules = (f"table ip dkcaprep {{\n chain out {{\n type filter hook output priority 0;\n"
                     f" ip daddr {REPLICA_ADDRESS['a']} drop\n ip saddr {REPLICA_ADDRESS['a']} drop\n }}\n}}\n")
            done = subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=rules, text=True,
                                  capture_output=True, timeout=30)
            assert done.returncode == 0, done.stderr
            measured["vanished"].append(lab.probe(probe, "b", last_word, SILENT_BOUND_S))
            everyone_routed(lab, clients, ["b"])
            subprocess.run(["ip", "netns", "exec", namespace, "nft", "delete", "table", "ip", "dkcaprep"],
                           check=True, timeout=30)
            # Stopped while b still stands: b's sockets closing now would be a change of its own.
            capture.send_signal(signal.SIGTERM)
            assert capture.wait(timeout=10) == 0
        finally:
            lab.shut()
            context.destroy(0)

    print("capture failover gaps (s):", {k: [round(v, 3) for v in values] for k, values in measured.items()})
    assert max(measured["closed"]) < CLOSED_BOUND_S, measured
    assert max(measured["returned"]) < RETURN_BOUND_S, measured
    # Silence is judged from a's last word: never before failover_after_s (a ZMTP ping sent just
    # before the cut may start its timeout up to one interval early), nor long after.
    assert min(measured["silent"] + measured["vanished"]) >= FAILOVER_S - 0.3, measured
    assert max(measured["silent"] + measured["vanished"]) < SILENT_BOUND_S, measured

    text = stage_env.log("capture")
    assert "Traceback" not in text, text
    # Each change said once, with its reason: closed ROUNDS times, silent once, vanished once (silent, or
    # disconnected if its heartbeat timed out first).
    assert text.count("Replica a is down") == ROUNDS + 2, text
    assert text.count("Replica a is down (disconnected: its") >= ROUNDS, text
    assert text.count("Replica a is down (silent for 1.5 s)") >= 1, text
    assert text.count("Replica b is down") == 0 and "Capture stopped." in text
