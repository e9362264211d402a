"""The whole system as a user runs it: real packets, nftables, supervisord, sshd.

One lab and one stack serve the module (started with the very supervisord.conf
users run). The client side is always the real knock-client in the client
namespace; the attacker is a third namespace on the same bridge. These tests
need root and netns and FAIL without them: CI has both.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynknock import bus
from dynknock.keys import write_key_file
from tests.lab.netlab import NetLab, SshdInfo, pcap_text
from tests.lab.stack import DOOR_LINE, VENV_BIN, LabUser, Stack, door_port, lab_stack, ssh_command

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
WINDOW_S = 5
CLIENT = str(VENV_BIN / "knock-client")


class Lab:
    def __init__(self, lab: NetLab, stack: Stack, sshd: SshdInfo) -> None:
        self.lab, self.stack, self.sshd, self.workdir = lab, stack, sshd, stack.workdir
        self.bob_key = self.workdir / "bob.key"

    def knock(self, *args: str, user: str = "alice", password: str | None = "alice-pw",
              host: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        argv = [CLIENT, "-u", user, "--timeout", "3"]
        if password is not None:
            argv.append("--password-stdin")
        else:
            argv += ["-k", str(self.bob_key)]
        argv += [*args, host or self.lab.server.ipv4]
        return self.lab.run(self.lab.client, argv, check=False, timeout=timeout,
                            input=f"{password}\n" if password is not None else None)

    def open_door(self, host: str | None = None, **kwargs: str) -> int:
        done = self.knock(host=host, **kwargs)  # type: ignore[arg-type]
        assert done.returncode == 0, done.stderr
        return door_port(done.stdout + done.stderr)

    def ssh_command(self, command: str) -> str:
        return ssh_command(self.sshd, command)

    def door_elements(self) -> str:
        out = "".join(self.lab.run(self.lab.server, ["nft", "list", "set", "inet", "dynknock", name]).stdout
                      for name in ("ronce4", "ronce6", "rmany4", "rmany6"))
        return "".join(line for line in out.splitlines() if "elements" in line)

    def doors(self) -> set[tuple[str, int]]:
        """(client address, door port) of every door in the sets: what an earlier test opened and
        what is not yet timed out stays, so a test compares these before and after its own knock."""
        return {(address, int(port)) for address, port in re.findall(r"([0-9a-f:.]+) \. (\d+)", self.door_elements())}


BOB_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def world() -> Iterator[Lab]:
    users = [LabUser("alice", password="alice-pw"), LabUser("bob", key=BOB_KEY),
             LabUser("carol", password="carol-pw", expires="2020-01-01T00:00:00+00:00")]
    with lab_stack("dke", REPO / "supervisord.conf", users, window_seconds=WINDOW_S) as (lab, stack, sshd):
        world = Lab(lab, stack, sshd)
        write_key_file(world.bob_key, BOB_KEY)
        yield world


def test_exec_ssh_through_the_door(world: Lab) -> None:
    done = world.knock("--exec", world.ssh_command("echo hello"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"
    assert "Can I come in?" in done.stderr and DOOR_LINE.search(done.stderr)


def test_ssh_proxycommand(world: Lab) -> None:
    proxy = f"{CLIENT} --proxy -u bob -k {world.bob_key} --timeout 3 %h"
    argv = world.sshd.ssh_argv(world.lab.server.ipv4) + ["-o", f"ProxyCommand={proxy}", "echo", "via-proxy"]
    done = world.lab.run(world.lab.client, argv, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "via-proxy"


def test_ipv6_knock_and_ssh(world: Lab) -> None:
    done = world.knock("-6", "--exec", world.ssh_command("echo hello6"), host=world.lab.server.ipv6)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello6"


def _silence_probe(world: Lab, ports: list[int], udp_ports: list[int]) -> tuple[list[str], str]:
    """From the attacker: TCP connects and UDP junk; returns (tcp results, what the server sent back)."""
    server = world.lab.server.ipv4
    with world.lab.sniff(world.lab.attacker, f"ip src {server}",
                         world.workdir / f"silence-{secrets.token_hex(4)}.pcap") as capture:
        results = [world.lab.tcp_probe(world.lab.attacker, server, port, timeout=0.5) for port in ports]
        script = ("import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                  f"for p in {udp_ports!r}:\n    s.sendto(os.urandom(130),('{server}',p))\n")
        world.lab.run(world.lab.attacker, ["python3", "-c", script])
        time.sleep(1.0)  # not a handshake: the second in which an answer (there must be none) would come
    return results, pcap_text(capture)


def test_attacker_gets_nothing_from_an_open_door(world: Lab) -> None:
    port = world.open_door()
    results, replies = _silence_probe(world, [port], [])
    assert results == ["TimeoutError"], results  # no SYN-ACK and no RST: dropped silently
    assert replies.strip() == "", replies
    # The door was not used up by the attacker: the client still gets in.
    assert world.lab.tcp_probe(world.lab.client, world.lab.server.ipv4, port) == "connected"


def test_silence_before_knock_and_after_window(world: Lab) -> None:
    ports = [62201, 22, 40000, 44444, 49999, 80]
    results, replies = _silence_probe(world, ports, [62201, 53, 40000])
    assert all(r == "TimeoutError" for r in results), results
    assert replies.strip() == "", replies
    port = world.open_door()
    time.sleep(WINDOW_S + 1.5)  # the behaviour under test: the door's window runs out
    results, replies = _silence_probe(world, [port], [62201])
    assert results == ["TimeoutError"] and replies.strip() == "", (results, replies)


def test_door_closes_on_time_but_established_session_stays(world: Lab) -> None:
    # A session that outlives the window by several seconds.
    command = world.ssh_command(f"'sleep {WINDOW_S + 3}; echo still-here'")
    # bob's session and alice's door: two users, so neither request replaces the other.
    session = world.lab.popen(world.lab.client, [CLIENT, "-u", "bob", "-k", str(world.bob_key), "--exec", command,
                                                 world.lab.server.ipv4],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = world.open_door()
    time.sleep(WINDOW_S + 1)  # the behaviour under test: the door's window runs out, the session does not
    # The unused door's window has ended: a new connection gets nowhere.
    assert world.lab.tcp_probe(world.lab.client, world.lab.server.ipv4, port) == "TimeoutError"
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0, err
    assert out.strip() == "still-here"


@pytest.mark.parametrize("user,password", [("alice", "wrong-password"), ("mallory", "alice-pw"),
                                           ("carol", "carol-pw")])
def test_bad_credentials_get_silence_and_no_door(world: Lab, user: str, password: str) -> None:
    doors_before = world.doors()  # an earlier test's door may still be open: this knock must add none
    with world.stack.tap() as tap:  # subscribed before the knock (a handshake)
        done = world.knock(user=user, password=password)
        rejected = []
        while tap.poll(100):
            event = bus.decode_as(tap.recv_multipart()[1], bus.Event)
            # Unknown hints are dropped (and reported) by capture already; the rest by auth.
            if event.topic in ("auth.request.rejected", "capture.packet.rejected"):
                rejected.append(event)
    assert done.returncode == 3, done.stderr
    assert "silen" in done.stderr.lower()
    assert world.doors() <= doors_before
    reasons = {e.fields["reason"] for e in rejected}
    expected = "user_expired" if user == "carol" else "unknown_user"
    assert expected in reasons, reasons


@pytest.mark.parametrize("stage", ["capture", "auth", "gate", "relay", "bus"])
def test_stage_killed_restarts_and_fails_closed(world: Lab, stage: str) -> None:
    port = world.open_door()
    old_pid = world.stack.kill_stage(stage)
    world.stack.wait_alive(20)
    assert world.stack.stage_pid(stage) != old_pid
    time.sleep(WINDOW_S + 1)  # the behaviour under test: the kernel times the rule out on its own
    assert world.door_elements() == ""  # the kernel timed the rule out, whoever died
    assert world.lab.tcp_probe(world.lab.client, world.lab.server.ipv4, port) == "TimeoutError"
    done = world.knock("--exec", world.ssh_command("echo back"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "back"


def scrape_metrics(world: Lab) -> dict[str, float]:
    """The metrics program of supervisord.conf, scraped over HTTP inside the server namespace."""
    token = (world.workdir / "run" / "metrics.token").read_text().strip()  # made by the metrics program
    script = ("import sys,urllib.request as u;print(u.urlopen(u.Request('http://127.0.0.1:9877/metrics',"
              "headers={'Authorization':'Bearer '+sys.stdin.read()}),timeout=5).read().decode())")
    text = world.lab.run(world.lab.server, [str(VENV_BIN / "python"), "-c", script], input=token).stdout
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("dynknock_"))}


def test_metrics_move_after_a_knock_and_a_rejection(world: Lab) -> None:
    opened = 'dynknock_requests_total{outcome="door_opened"}'
    unknown = 'dynknock_rejections_total{reason="unknown_user"}'
    before = scrape_metrics(world)
    world.open_door()
    assert world.knock(password="not-alice").returncode == 3
    deadline = time.monotonic() + 8  # rejection counts ride on auth's 2 s heartbeat
    after = scrape_metrics(world)
    while time.monotonic() < deadline and after.get(unknown, 0) <= before.get(unknown, 0):
        time.sleep(0.5)
        after = scrape_metrics(world)
    assert after[opened] == before.get(opened, 0) + 1
    assert after[unknown] > before.get(unknown, 0)
    assert after['dynknock_stage_up{stage="capture"}'] == 1.0
    assert after['dynknock_capture_packets{kind="received"}'] > 0


def test_admin_status_shows_stages_and_open_doors(world: Lab) -> None:
    port = world.open_door()
    done = world.lab.run(world.lab.server, [str(VENV_BIN / "knock-admin"), "status", "-c",
                                            str(world.stack.config_path)])
    assert "auth up" in done.stdout and "DOWN" not in done.stdout, done.stdout
    assert f"port {port}" in done.stdout and "alice" in done.stdout, done.stdout
