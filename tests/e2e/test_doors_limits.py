"""Doors under pressure, with the real stack in the lab.

* A local user's squat: an unprivileged local user (nobody) binds the whole door range in
  the server's namespace; every knock still opens and ssh goes through, relayed and
  kernel-forwarded doors alike: nftables forwards every door before any socket lookup
  (a relayed one to the relay's one listener, on a port below 1024 that nobody cannot
  bind), so no door depends on a port a local user could take.
* A door hog: one key holder hogs doors; it holds at most max_doors_per_user, and another
  user still gets in.
* A removed user: knock-admin remove closes the removed user's open door (gate element and
  relay listener), so no new connection goes through it.

Every loop here is bounded in count and time; the squatter is stopped in finally.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from dynknock import bus
from dynknock.topics import Topic
from tests.lab.netlab import NetLab, SshdInfo
from tests.lab.stack import VENV_BIN, LabUser, Stack, door_port, lab_stack, ssh_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CLIENT = str(VENV_BIN / "knock-client")
ADMIN = str(VENV_BIN / "knock-admin")
WINDOW_S = 20
RANGE = (63000, 63063)  # 64 ports: small, so that squatting it is quick
SQUATTED = RANGE  # all of it
CAP = 4
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "hog")

SQUATTER = """\
import socket, sys, time
held = []
for port in range(int(sys.argv[1]), int(sys.argv[2]) + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    held.append(s)
print("squatting", len(held), flush=True)
time.sleep(float(sys.argv[3]))
"""


class World:
    def __init__(self, lab: NetLab, stack: Stack, sshd: SshdInfo) -> None:
        self.lab, self.stack, self.sshd, self.workdir = lab, stack, sshd, stack.workdir

    def knock(self, user: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.lab.client, [CLIENT, "-u", user, "--password-stdin", "--timeout", "3", *args,
                                              self.lab.server.ipv4],
                            check=False, timeout=timeout, input=f"{user}-pw\n")

    def door(self, user: str, *args: str) -> tuple[int, float]:
        """Knock; the door port and the seconds it took. Fails the test if no door opened."""
        started = time.monotonic()
        done = self.knock(user, *args)
        took = time.monotonic() - started
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return door_port(done.stdout + done.stderr), took

    def ssh_echo(self, user: str, word: str, *service: str) -> str:
        done = self.knock(user, *service, "--exec", ssh_command(self.sshd, f"echo {word}"), timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def door_elements(self) -> str:
        out = self.lab.run(self.lab.server, ["nft", "list", "set", "inet", "dynknock", "ronce4"]).stdout
        return "".join(line for line in out.splitlines() if "elements" in line or "." in line)

    def auth_doors(self, timeout_s: float = 8.0) -> list[dict[str, Any]]:
        """The door table of auth's next heartbeat."""
        with self.stack.tap("auth.alive") as sub:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if sub.poll(200):
                    event = bus.decode_as(sub.recv_multipart()[1], bus.Event)
                    doors = event.fields.get("doors", [])
                    assert isinstance(doors, list)
                    return doors
        raise AssertionError("no auth heartbeat")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = [LabUser(u, password=f"{u}-pw", services=("ssh", "sshk")) for u in USERS]
    # ssh relayed (redirected to the relay's listener); sshk the same sshd forwarded by the kernel;
    # the lab's door range narrowed to RANGE.
    config: dict[str, Any] = {
        "window_seconds": WINDOW_S, "extra": f"max_doors_per_user = {CAP}\n", "door_ports": f"{RANGE[0]}-{RANGE[1]}",
        "services": {"ssh": "127.0.0.1:22", "sshk": "127.0.0.1:22"}, "forward": {"ssh": "relay", "sshk": "kernel"}}
    with lab_stack("dkd", REPO / "supervisord.conf", users, **config) as (lab, stack, sshd):
        yield World(lab, stack, sshd)


def _count_until(sub: zmq.Socket[Any], topic: str, until: str, times: int, timeout_s: float = 10.0) -> int:
    """How many `topic` events come before the `times`-th `until` event (one publisher: in order)."""
    count = seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < times:
        assert sub.poll(max(0, int((deadline - time.monotonic()) * 1000))), f"{seen} of {times} {until} events"
        received = sub.recv_multipart()[0].decode()
        count += received == topic
        seen += received == until
    return count


def test_doors_open_while_an_unprivileged_user_squats_the_door_range(world: World) -> None:
    lab = world.lab
    squatter = lab.popen(lab.server, ["setpriv", "--reuid=nobody", "--regid=65534", "--clear-groups",
                                      sys.executable, "-c", SQUATTER, str(SQUATTED[0]), str(SQUATTED[1]), "90"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None
        line = squatter.stdout.readline()
        assert line.strip() == f"squatting {SQUATTED[1] - SQUATTED[0] + 1}", (line, squatter.stderr)
        # nor can it take the relay's own port, where every relayed door leads (a privileged port)
        taken = lab.run(lab.server, ["setpriv", "--reuid=nobody", "--regid=65534", "--clear-groups", sys.executable,
                                     "-c", "import socket; socket.socket().bind(('0.0.0.0', 1022))"], check=False)
        assert taken.returncode != 0 and "Permission denied" in taken.stderr, taken.stderr
        with world.stack.tap("auth.door.") as sub:  # subscribed before the first knock (a handshake)
            ports, took = [], []
            for i in range(9):  # three users in turn: each stays below its cap of doors
                port, seconds = world.door(("alice", "bob", "carol")[i % 3])
                ports.append(port)
                took.append(seconds)
            moved = _count_until(sub, Topic.AUTH_DOOR_MOVED, Topic.AUTH_DOOR_OPENED, 9)
        assert all(SQUATTED[0] <= p <= SQUATTED[1] for p in ports), ports  # every one on a squatted port
        assert moved == 0, moved  # no relayed door had to move: the relay binds no door port
        print(f"squat: 9/9 doors on squatted ports, {moved} moves, knock seconds median {sorted(took)[4]:.2f} "
              f"range {min(took):.2f}-{max(took):.2f}")
        assert world.ssh_echo("dave", "through-a-squatted-range") == "through-a-squatted-range"
        kernel_ports = [world.door("frank", "-s", "sshk")[0] for _ in range(2)]
        assert world.ssh_echo("frank", "kernel-door", "-s", "sshk") == "kernel-door", kernel_ports
    finally:
        if squatter.poll() is None:
            squatter.terminate()
            squatter.wait(timeout=10)


def test_one_user_hogging_doors_leaves_others_their_door(world: World) -> None:
    _, idle = world.door("dave")
    hog_ok = hog_refused = 0
    for _ in range(CAP + 4):
        done = world.knock("hog")
        if done.returncode == 0:
            hog_ok += 1
        else:
            assert done.returncode == 6, (done.returncode, done.stderr)  # UNAVAILABLE, not a hang
            hog_refused += 1
    assert (hog_ok, hog_refused) == (CAP, 4)
    held = [d for d in world.auth_doors() if d["user"] == "hog"]
    assert len(held) == CAP, held
    took = []
    for _ in range(2):  # dave still opens doors (2 more: his cap is 4 too, one is held already)
        _, seconds = world.door("dave")  # fails the test unless the door opened
        took.append(seconds)
    # How fast (against his idle knock) is bench/run.py's hog phase, not a timed assertion here.
    assert world.ssh_echo("erin", "still-in") == "still-in"
    print(f"hog: {hog_ok} doors, {hog_refused} refused; dave idle {idle:.2f} s, while hogged {took}")


def test_removed_users_open_door_is_closed(world: World) -> None:
    port, _ = world.door("erin")
    assert f". {port}" in world.door_elements()
    with world.stack.tap("auth.door.revoked") as sub:  # subscribed before the removal (a handshake)
        world.lab.run(world.lab.server, [ADMIN, "--users-file", str(world.workdir / "users.json"), "remove", "erin"])
        started = time.monotonic()
        revoked = False
        while time.monotonic() - started < 8 and not revoked:
            revoked = bool(sub.poll(200))
        assert revoked, "no auth.door.revoked within 8 s"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f". {port}" in world.door_elements():
        time.sleep(0.1)
    assert f". {port}" not in world.door_elements()
    # no new connection through it, long before its window ends
    assert world.lab.tcp_probe(world.lab.client, world.lab.server.ipv4, port, timeout=1.0) != "connected"
    assert time.monotonic() - started < WINDOW_S - 2
    done = world.knock("erin")
    assert done.returncode != 0  # and no new door either
