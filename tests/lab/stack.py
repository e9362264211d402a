"""The installed stack of the lab (dynknock/lab/stack.py) with what only tests and benchmarks use.

knock-demo adds its user with knock-admin and watches the bus with knock-tap. The tests also write
users files straight from :class:`LabUser` records, run a lab with its stack around a test module
(:func:`lab_stack`), collect every event of the bus (:class:`EventLog`), kill a stage
(:meth:`Stack.kill_stage`) and read knock-client's output. Everything else is the installed
module's, re-exported.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import re
import shlex
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from dynknock import bus
from dynknock.auth.users import User, save_users
from dynknock.keys import derive_master_key
from dynknock.lab import stack as installed
from dynknock.lab.netlab import Host, SshdInfo, require_privileges, start_sshd
from dynknock.lab.stack import (
    ALIVE_TOPICS,
    DEFAULT_VENV,
    SERVICE_USER,
    VENV_BIN,
    connect_handshaken,
    lab_supervisord_conf,
    prepare_workdir,
    wait_subscribed,
    write_config,
)
from tests.lab.netlab import NetLab

__all__ = [
    "ALIVE_TOPICS",
    "DEFAULT_VENV",
    "DOOR_LINE",
    "SERVICE_USER",
    "VENV_BIN",
    "EventLog",
    "LabUser",
    "Stack",
    "connect_handshaken",
    "door_port",
    "host_mac",
    "lab_stack",
    "lab_supervisord_conf",
    "prepare_workdir",
    "ssh_command",
    "wait_subscribed",
    "write_config",
    "write_users",
]


@dataclass(frozen=True, slots=True)
class LabUser:
    name: str
    password: str = ""
    key: bytes = b""
    services: tuple[str, ...] = ("ssh",)
    expires: str | None = None
    nat: bool = False
    public_key: bytes | None = None  # a key-pair user (protocol v3): the server needs its key_file then


def write_users(path: Path, users: list[LabUser]) -> None:
    """The users file of `users`, root:dynknock 0640 as knock-admin leaves it."""
    records = []
    for u in users:
        expires = dt.datetime.fromisoformat(u.expires) if u.expires else None
        if u.public_key is not None:
            records.append(User(u.name, b"", u.services, (), expires, u.nat, public_key=u.public_key))
            continue
        key = u.key or derive_master_key(u.name, u.password)
        records.append(User(u.name, key, u.services, (), expires, u.nat))
    save_users(path, records)
    service = pwd.getpwnam(SERVICE_USER)
    os.chown(path, 0, service.pw_gid)
    os.chmod(path, 0o640)


class Stack(installed.Stack):
    """The installed lab's stack, whose stages a test can find and kill."""

    def stage_pid(self, stage: str) -> int:
        """PID of a stage's program (the Python process, below setpriv), as supervisorctl reports it."""
        done = self.supervisorctl("pid", stage)
        text = done.stdout.strip()
        if not text.isdigit() or int(text) == 0:
            raise LookupError(f"no running {stage}: supervisorctl pid {stage} said {text or done.stderr.strip()!r}")
        return int(text)

    def kill_stage(self, stage: str) -> int:
        pid = self.stage_pid(stage)
        os.kill(pid, signal.SIGKILL)
        return pid


@contextmanager
def lab_stack(prefix: str, supervisord_conf: Path, users: list[LabUser], **config: Any
              ) -> Iterator[tuple[NetLab, Stack, SshdInfo]]:
    """A lab named `prefix` whose server runs sshd and the whole stack (up when this yields): its config
    from write_config(**config), its users file from `users`; everything stopped and torn down after."""
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix=f"dynknock-e2e-{prefix}-"))
    with NetLab(prefix) as lab:
        prepare_workdir(workdir)
        write_config(workdir / "dynknock.toml", workdir, lab, **config)
        write_users(workdir / "users.json", users)
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        stack = Stack(lab, workdir, supervisord_conf)
        try:
            stack.start()
            yield lab, stack, sshd
        finally:
            stack.stop()


class EventLog:
    """Every event on the bus (a stack's tap endpoint), collected by a thread with its own zmq
    context for as long as a test module runs; tests mark a point and read what came after it."""

    def __init__(self, endpoint: str) -> None:
        self._events: list[bus.Event] = []
        self.arrivals: list[float] = []  # time.monotonic() each event was read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._joined = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(endpoint,), name="event-log", daemon=True)
        self._thread.start()

    def _run(self, endpoint: str) -> None:
        context: zmq.Context[Any] = zmq.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 1_000_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        monitor = sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)  # for wait_joined
        sub.connect(endpoint)
        try:
            while not self._stop.is_set():
                if not self._joined.is_set() and monitor.poll(0):
                    self._joined.set()
                if not sub.poll(100):
                    continue
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        event = bus.decode_as(frames[-1], bus.Event)
                    except bus.BadMessage:  # not an event of ours: nothing to collect
                        continue
                    with self._lock:
                        self._events.append(event)
                        self.arrivals.append(time.monotonic())
        finally:
            context.destroy(0)

    def wait_joined(self, timeout_s: float = 15.0) -> None:
        """Until the log's handshake with the bus is done (made before the stack starts, it waits for the
        bus): its subscription goes with it, so the events of what the test does next are collected."""
        if not self._joined.wait(timeout_s):
            raise RuntimeError(f"the event log did not join the bus within {timeout_s} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def mark(self) -> int:
        with self._lock:
            return len(self._events)

    def since(self, mark: int = 0, prefix: str = "") -> list[bus.Event]:
        with self._lock:
            return [e for e in self._events[mark:] if e.topic.startswith(prefix)]

    def wait_for(self, predicate: Callable[[bus.Event], bool], mark: int, timeout: float) -> bus.Event | None:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.since(mark):
                if predicate(event):
                    return event
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def next_alive(self, stage: str, timeout: float = 8.0, mark: int | None = None) -> dict[str, Any]:
        start = self.mark() if mark is None else mark
        event = self.wait_for(lambda e: e.topic == f"{stage}.alive", start, timeout)
        assert event is not None, f"no {stage}.alive within {timeout} s"
        return event.fields

    def timeline(self, start: float, end: float, user: str) -> list[tuple[str, int]]:
        """auth's events about user between start and end (monotonic): (topic, ms after start)."""
        with self._lock:
            pairs = list(zip(self.arrivals, self._events, strict=True))
        return [(e.topic.removeprefix("auth."), round((t - start) * 1000)) for t, e in pairs
                if start <= t <= end and e.topic.startswith("auth.") and e.fields.get("user") == user]


# knock-client's line once a door is open (client/main.py prints it): the tests read the door from it.
DOOR_LINE = re.compile(r"Door is open at (\S+) port (\d+) for (\d+) seconds")


def door_port(output: str) -> int:
    """The door's port in knock-client's output (stdout and stderr together); fails naming the output."""
    match = DOOR_LINE.search(output)
    if match is None:
        raise AssertionError(f"no door in knock-client's output: {output!r}")
    return int(match.group(2))


def host_mac(lab: NetLab, host: Host) -> bytes:
    """host's Ethernet address on the lab's bridge: frames injected from or to it carry it."""
    text = lab.run(host, ["cat", f"/sys/class/net/{host.interface}/address"]).stdout.strip()
    return bytes.fromhex(text.replace(":", ""))


def ssh_command(sshd: SshdInfo, command: str) -> str:
    """knock-client --exec text: ssh into the lab's sshd through the door ({host}, {port}) and run command."""
    ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv("{host}"))
    return f"{ssh} -p {{port}} {command}"
