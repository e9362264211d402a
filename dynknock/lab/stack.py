"""The whole server stack in the lab's server namespace, started as users start it.

knock-demo uses it as it is, the end-to-end tests through tests/lab/stack.py (which adds
what only they use): it writes a config into a work directory, starts the real
`supervisord -c supervisord.conf` inside the server namespace with DYNKNOCK_CONFIG
pointing at that config, and waits until every stage reports alive on the bus. ipc
endpoints live in the file system, so the tap works from any namespace.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from dynknock import bus
from dynknock.lab.netlab import Host, NetLab
from dynknock.protocol import CONTROL_PORT
from dynknock.reasons import TAIL_BYTES, why_stopped
from dynknock.topics import ALIVE

# The installed stages the lab runs (scripts/setup.sh); DYNKNOCK_VENV points the tests at another install,
# e.g. a second checkout tested beside this one.
DEFAULT_VENV = Path("/opt/dynknock/venv")
VENV_BIN = Path(os.environ.get("DYNKNOCK_VENV", str(DEFAULT_VENV))) / "bin"
ALIVE_TOPICS: tuple[str, ...] = tuple(ALIVE.values())  # every stage that sends a heartbeat
SERVICE_USER = "dynknock"
# Prefix of the lab's supervisord command: a private mount namespace with an empty /run.
PRIVATE_RUN = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount -t tmpfs -o mode=0755,nosuid,nodev dynknock-run /run && exec "$@"', "sh")


def write_config(path: Path, workdir: Path, lab: NetLab, *, backend: str = "nftables",
                 window_seconds: int = 30, table: str = "dynknock", extra: str = "",
                 public_tcp_ports: tuple[int, ...] = (), services: dict[str, str] | None = None,
                 bus_extra: str = "", forward: dict[str, str] | None = None,
                 door_ports: str = "63000-65535") -> None:
    """The lab's server config; `extra` lines go into [server], `bus_extra` into [bus];
    `forward` gives services.NAME.forward where a test wants other than "auto"."""
    services = services or {"ssh": "127.0.0.1:22"}
    forward = forward or {}
    service_text = "".join(f'\n[services.{name}]\ntarget = "{target}"\n'
                           + (f'forward = "{forward[name]}"\n' if name in forward else "")
                           for name, target in services.items())
    path.write_text(f"""\
[server]
interface = "{lab.server.interface}"
addresses = ["{lab.server.ipv4}", "{lab.server.ipv6}"]
control_port = {CONTROL_PORT}
door_ports = "{door_ports}"
window_seconds = {window_seconds}
users_file = "{workdir}/users.json"
key_file = "{workdir}/server.key"
state_dir = "{workdir}/state"
run_as = "{SERVICE_USER}"
{extra}
[bus]
runtime_dir = "{workdir}/run"
{bus_extra}
[gate]
backend = "{backend}"
stealth = true
table = "{table}"
public_tcp_ports = [{", ".join(map(str, public_tcp_ports))}]
{service_text}""")


def prepare_workdir(workdir: Path) -> None:
    service = pwd.getpwnam(SERVICE_USER)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # the stages (not root) must reach their files in here
    for name, mode in (("state", 0o700), ("run", 0o750)):
        sub = workdir / name
        sub.mkdir(exist_ok=True)
        os.chown(sub, service.pw_uid, service.pw_gid)
        os.chmod(sub, mode)


def lab_supervisord_conf(conf: Path, out: Path, log_dir: Path | None = None) -> Path:
    """A copy of `conf` whose programs are those of the install under test (DYNKNOCK_VENV) and,
    with `log_dir`, whose logs go there (several stacks of one lab must not share log files)."""
    text = conf.read_text(encoding="utf-8").replace(f"{DEFAULT_VENV}/", f"{VENV_BIN.parent}/")
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        text = text.replace("/var/log/dynknock/", f"{log_dir}/")
    out.write_text(text, encoding="utf-8")
    return out


class Stack:
    """One host's stack under the real supervisord, in that host's namespace."""

    def __init__(self, lab: NetLab, workdir: Path, supervisord_conf: Path, host: Host | None = None,
                 config_path: Path | None = None, name: str = "") -> None:
        """`host` (default the lab's server) runs supervisord with `config_path` (default
        workdir/dynknock.toml); `name` tells several stacks of one lab apart (their logs)."""
        self.lab = lab
        self.workdir = workdir
        self.host = host or lab.server
        self.config_path = config_path or workdir / "dynknock.toml"
        self.name = name
        if VENV_BIN.parent != DEFAULT_VENV or name:
            # The programs of the install under test, not of /opt/dynknock/venv; a named stack logs apart.
            suffix = f"-{name}" if name else ""
            supervisord_conf = lab_supervisord_conf(supervisord_conf, workdir / f"supervisord{suffix}.conf",
                                                    workdir / f"log-{name}" if name else None)
        self.supervisord_conf = supervisord_conf
        self.endpoints = bus.Endpoints.in_directory(workdir / "run")
        self.process: Any = None
        self.output: Any = None
        # supervisord's own output: its log lines and the reasons listener's (dynknock/reasons.py).
        self.output_path = workdir / f"supervisord{'-' + name if name else ''}.out"

    def start(self, timeout_s: float = 20.0, wait: bool = True) -> None:
        """Start supervisord; with `wait`, until every stage is alive on the (ipc) tap.

        It runs in a mount namespace of its own with a fresh tmpfs on /run, as after a boot:
        its pid file and control socket (/run/dynknock-*) never meet those of another lab's
        stack or of a dynknock installed on this machine.
        """
        env = dict(os.environ, DYNKNOCK_CONFIG=str(self.config_path))
        supervisord = shutil.which("supervisord", path=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
        if supervisord is None:
            raise RuntimeError("supervisord not found: run scripts/setup.sh first")
        # supervisord echoes its own log; keep it in the work directory, not on the terminal.
        self.output = open(self.output_path, "ab")  # noqa: SIM115 (closed in stop())
        self.process = self.lab.popen(self.host, [*PRIVATE_RUN, supervisord, "-c", str(self.supervisord_conf)],
                                      env=env, stdout=self.output, stderr=subprocess.STDOUT)
        if wait:
            self.wait_alive(timeout_s)

    def wait_alive(self, timeout_s: float = 20.0, stages: tuple[str, ...] = ALIVE_TOPICS) -> None:
        """Wait until every stage has published its heartbeat (after any restart too)."""
        seen: set[str] = set()
        with self.tap(connected=False) as sub:  # the bus itself may be starting: wait below, not there
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and not set(stages) <= seen:
                if self.process is not None and self.process.poll() is not None:
                    output = self.output_path.read_text(errors="replace").strip().splitlines()
                    raise RuntimeError(f"supervisord exited with {self.process.returncode}: "
                                       f"{output[-1] if output else 'no output'}")
                if sub.poll(200):
                    topic = sub.recv_multipart()[0].decode()
                    seen.add(topic)
        missing = set(stages) - seen
        if missing:
            said = "; ".join(f"{program}: {self.why_down(program)}"
                             for program in sorted(topic.split(".", 1)[0] for topic in missing))
            raise RuntimeError(f"stages not alive after {timeout_s} s: {said}")

    def why_down(self, program: str) -> str:
        """The line a program printed when it stopped, as `knock-admin status` would show it."""
        done = self.supervisorctl("tail", f"-{TAIL_BYTES}", program)
        return why_stopped(done.stdout) or f"no error line in its log ({done.stdout.strip()[-200:] or done.stderr})"

    @contextmanager
    def tap(self, prefix: str = "", connected: bool = True) -> Iterator[zmq.Socket[Any]]:
        """A SUB on the bus's tap for topics starting with `prefix`; with `connected`, yielded once its
        ZMTP handshake with knock-bus is done: the subscription goes out with it, ahead of anything the
        test then does (no sleep stands for "subscribed")."""
        context: zmq.Context[Any] = zmq.Context()
        sub: zmq.Socket[Any] = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        try:
            connect_handshaken(sub, self.endpoints.tap) if connected else sub.connect(self.endpoints.tap)
            yield sub
        finally:
            context.destroy(0)

    def supervisorctl(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run supervisorctl against this stack's supervisord (in its namespaces, over its socket)."""
        if self.process is None:
            raise RuntimeError("the stack is not running")
        return subprocess.run(["nsenter", f"--target={self.process.pid}", "--mount", "--net", "--",
                               str(VENV_BIN / "supervisorctl"), "-c", str(self.supervisord_conf.resolve()), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
        if self.output is not None:
            self.output.close()
            self.output = None


def connect_handshaken(sock: zmq.Socket[Any], endpoint: str, timeout_s: float = 10.0) -> None:
    """Connect `sock` and return once its ZMTP handshake with the peer has succeeded (a socket monitor
    reports it): from then on what either side sends reaches the other."""
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(endpoint)
        if not monitor.poll(int(timeout_s * 1000)):
            raise RuntimeError(f"no ZMTP handshake with {endpoint} within {timeout_s} s")
        recv_monitor_message(monitor)
    finally:
        sock.disable_monitor()
        monitor.close(0)


def wait_subscribed(events: str, prefixes: Iterable[str], timeout_s: float = 10.0) -> None:
    """Until knock-bus, whose XSUB is at `events`, has taken a subscription to each of `prefixes` from
    some tap. The bus passes each subscription new to it on to its publishers, and this connects as
    one: a tap whose subscription arrived sees every event published after (no slow-joiner sleep)."""
    context: zmq.Context[Any] = zmq.Context()
    publisher: zmq.Socket[Any] = context.socket(zmq.XPUB)
    publisher.setsockopt(zmq.LINGER, 0)
    wanted = {prefix.encode() for prefix in prefixes}
    deadline = time.monotonic() + timeout_s
    try:
        publisher.connect(events)
        while wanted:
            if not publisher.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                raise RuntimeError(f"no subscription to {sorted(wanted)} reached the bus within {timeout_s} s")
            frame = publisher.recv()
            if frame[:1] == b"\x01":  # 1 and the prefix: a subscription (0: its end)
                wanted.discard(frame[1:])
    finally:
        context.destroy(0)
