"""Tier 2: one stage at a time, as a real process, over real ZeroMQ sockets.

Stages are started from the installed console scripts (scripts/setup.sh puts them
in /opt/dynknock/venv) and run as the unprivileged `dynknock` user, as in
production. Our side of the bus is played by plain zmq sockets in the test.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus
from tests.lab.netlab import signal_group
from tests.lab.stack import VENV_BIN, prepare_workdir, wait_subscribed


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port outside the door range 40000-49999 the stage configs use."""
    while True:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not 40000 <= port <= 49999:
            return port


@dataclass
class StageEnv:
    workdir: Path
    config: Path
    endpoints: bus.Endpoints
    control_port: int
    context: zmq.Context[Any]
    processes: list[subprocess.Popen[bytes]]
    # Each socket of ours reports its finished ZMTP handshakes here (see wait_connected).
    handshakes: dict[zmq.Socket[Any], zmq.Socket[Any]] = field(default_factory=dict)

    def write_config(self, *, backend: str = "none", services: dict[str, str] | None = None,
                     window_seconds: int = 30, extra_server: str = "", extra_bus: str = "") -> None:
        services = services or {"ssh": "127.0.0.1:22"}
        service_text = "".join(f'[services.{n}]\ntarget = "{t}"\n\n' for n, t in services.items())
        self.config.write_text(f"""\
[server]
interface = "lo"
addresses = ["127.0.0.1"]
control_port = {self.control_port}
door_ports = "40000-49999"
window_seconds = {window_seconds}
users_file = "{self.workdir}/users.json"
key_file = "{self.workdir}/server.key"
state_dir = "{self.workdir}/state"
run_as = "dynknock"
{extra_server}
[bus]
runtime_dir = "{self.workdir}/run"
{extra_bus}

[gate]
backend = "{backend}"
table = "dkstage"

{service_text}""")

    def start(self, program: str, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Start an installed stage; `prefix` wraps it (setpriv for the gate, ip netns exec...)."""
        log = open(self.workdir / f"{program}.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen([*prefix, str(VENV_BIN / program), "-c", str(self.config), *args],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes.append(process)
        return process

    def log(self, program: str) -> str:
        return (self.workdir / f"{program}.log").read_text(errors="replace")

    def socket(self, kind: int, *, bind: str | None = None, connect: str | None = None) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)  # a hang becomes a failure, not a stuck suite
        # Monitored before it binds or connects, so that no handshake goes unseen.
        self.handshakes[sock] = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        if bind:
            sock.bind(bind)
            if bind.startswith("ipc://"):  # we bind as root; the stage (dynknock) must connect
                path = bind.removeprefix("ipc://")
                service = pwd.getpwnam("dynknock")
                os.chown(path, service.pw_uid, service.pw_gid)
        if connect:
            sock.connect(connect)
        return sock

    def wait_connected(self, sock: zmq.Socket[Any], what: str, timeout_s: float = 10.0) -> None:
        """Until one more peer of `sock` (made by :meth:`socket`) has finished its ZMTP handshake:
        from then on a message either side sends reaches the other (no sleep stands for it)."""
        if not self.handshakes[sock].poll(int(timeout_s * 1000)):
            raise AssertionError(f"no handshake with {what} within {timeout_s} s")
        recv_monitor_message(self.handshakes[sock])

    def wait_subscribed(self, *prefixes: str, timeout_s: float = 10.0) -> None:
        """Until knock-bus has taken a subscription to each prefix from some tap (see stack.wait_subscribed)."""
        wait_subscribed(self.endpoints.events, prefixes, timeout_s)

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or condition}")


# Exactly how supervisord.conf starts the gate: the dynknock user with only CAP_NET_ADMIN.
def next_result(sock: zmq.Socket[Any]) -> bus.DoorResult:
    """The next DoorResult on a door stage's socket, past the DoorUsed reports it sends unasked."""
    while True:
        message = bus.decode(sock.recv())
        if isinstance(message, bus.DoorResult):
            return message
        assert isinstance(message, bus.DoorUsed), message


GATE_PRIVILEGES = ("/usr/bin/setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups", "--no-new-privs",
                   "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin")


@pytest.fixture
def echo_service() -> Iterator[int]:
    """A TCP echo service on 127.0.0.1 (a thread per connection) that echoes until EOF, then closes."""
    server = socket.create_server(("127.0.0.1", 0), backlog=64)

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def start_relay(env: StageEnv, services: dict[str, str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """knock-relay for `services`, once its command socket is there (door commands may follow)."""
    env.write_config(services=services)
    relay = env.start("knock-relay", prefix=prefix)
    env.wait_for(lambda: (env.workdir / "run" / "relay.sock").exists(), what="relay socket")
    return relay


@pytest.fixture
def stage_env() -> Iterator[StageEnv]:
    if os.geteuid() != 0:
        raise RuntimeError("stage tests run the stages as the 'dynknock' user: run them as root")
    # Not pytest's tmp_path: its parent is 0700 root, so the dynknock user could not reach it.
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-stage-"))
    prepare_workdir(workdir)
    context: zmq.Context[Any] = zmq.Context()
    env = StageEnv(workdir, workdir / "dynknock.toml", bus.Endpoints.in_directory(workdir / "run"),
                   free_port(socket.SOCK_DGRAM), context, [])
    env.write_config()
    try:
        yield env
    finally:
        for process in env.processes:  # each in its own session (start_new_session): its group
            if process.poll() is None:
                signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    signal_group(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        context.destroy(0)
