"""Everyday use: an ordinary account knocks, as often as ssh connects.

A local account of its own (its own uid, no capability, its own HOME) has in ~/.ssh/config the
README's `ProxyCommand knock-client --proxy ...` and runs real OpenSSH through real doors: one
command (over IPv4, a kernel door; over IPv6, a relayed one), then 60 `ssh host true` in a row
without ControlMaster. Its knocks are ordinary connect()s (it has no raw socket); the server
matches them by address and port. What they leave on the wire is checked with tcpdump: one SYN
per knock socket, never retransmitted, no RST. During a door hog by another key holder (connect()
knocks from 60 addresses, every door used at once so the hog may open the next), a third user's
10 knocks all open and no stage's memory or descriptors run away. A knock that cannot leave says
so in one line.

Every loop is bounded in count and time; the account is removed at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from dynknock.keys import write_key_file
from dynknock.protocol import CONTROL_PORT
from dynknock.topics import Topic
from tests.lab.netlab import NetLab, SshdInfo
from tests.lab.stack import VENV_BIN, EventLog, LabUser, Stack, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PREFIX = "dkv"
ACCOUNT = "dkeveryday"
CLIENT = str(VENV_BIN / "knock-client")
ALICE_KEY, HOG_KEY, CAROL_KEY = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))
DOOR_LINE = re.compile(r"Door is open at \S+ port (\d+) for \d+ seconds")


@dataclass
class Account:
    """An ordinary local account: commands run as it have its uid, no capability, and its HOME."""

    name: str
    home: Path
    lab: NetLab

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.lab.client, [
            "setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--init-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs",
            "env", "-i", f"HOME={self.home}", f"USER={self.name}", f"LOGNAME={self.name}",
            "PATH=/usr/local/bin:/usr/bin:/bin", "sh", "-c", script], check=False, timeout=timeout)


def make_account(home: Path, sshd: SshdInfo, lab: NetLab) -> Account:
    if _exists(ACCOUNT):  # a crashed earlier run
        subprocess.run(["userdel", ACCOUNT], check=False)
    subprocess.run(["useradd", "--user-group", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                    ACCOUNT], check=True)
    entry = pwd.getpwnam(ACCOUNT)
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    shutil.copy(sshd.client_key, ssh / "id_ed25519")
    shutil.copy(sshd.known_hosts, ssh / "known_hosts")
    write_key_file(home / ".config" / "dynknock" / "lab.key", ALICE_KEY)
    # The README's ProxyCommand, and nothing of ControlMaster: every ssh is a connection of its own.
    (ssh / "config").write_text(f"""\
Host lab
    HostName {lab.server.ipv4}
Host lab6
    HostName {lab.server.ipv6}
Host lab lab6
    User root
    IdentityFile ~/.ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile ~/.ssh/known_hosts
    HostKeyAlias {sshd.host_key_alias}
    StrictHostKeyChecking yes
    BatchMode yes
    ProxyCommand {CLIENT} --proxy -q -u alice -k ~/.config/dynknock/lab.key %h
""")
    for path in [home, *home.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)
    return Account(ACCOUNT, home, lab)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class World:
    lab: NetLab
    stack: Stack
    account: Account
    events: EventLog


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = [LabUser("alice", key=ALICE_KEY), LabUser("hog", key=HOG_KEY), LabUser("carol", key=CAROL_KEY)]
    with lab_stack(PREFIX, REPO / "supervisord.conf", users, window_seconds=20) as (lab, stack, sshd):
        account = make_account(stack.workdir / "home", sshd, lab)
        events = EventLog(stack.endpoints.tap)
        try:
            events.wait_joined()
            yield World(lab, stack, account, events)
        finally:
            events.close()
            subprocess.run(["userdel", ACCOUNT], check=False)


def test_an_ordinary_account_runs_a_command_through_a_door_with_proxycommand(world: World) -> None:
    mark = world.events.mark()
    done = world.account.run("id -u; grep CapEff /proc/self/status; ssh lab 'echo hello from $(hostname)'")
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert lines[0] != "0" and lines[1].split()[1] == "0000000000000000", lines  # its own uid, no capability
    assert lines[2].startswith("hello from"), done.stdout
    # Its knocks were connect()s: the P1 said so, and the server matched them by address and port.
    received = world.events.wait_for(lambda e: e.topic == Topic.AUTH_REQUEST_RECEIVED, mark, 5)
    assert received is not None and received.fields["knocks"] == "connect", received
    used = world.events.wait_for(lambda e: e.topic == Topic.AUTH_DOOR_USED, mark, 5)
    assert used is not None and used.fields["seen_by"] == "gate", used  # a kernel door: conntrack saw it used
    # IPv6: an IPv4 service's doors are relayed for IPv6 clients, the same ProxyCommand.
    mark = world.events.mark()
    done = world.account.run("ssh lab6 'echo hello over IPv6'")
    assert done.returncode == 0 and "hello over IPv6" in done.stdout, done.stdout + done.stderr
    used = world.events.wait_for(lambda e: e.topic == Topic.AUTH_DOOR_USED, mark, 5)
    assert used is not None and used.fields["seen_by"] == "relay", used


def test_sixty_ssh_connections_in_a_row_all_succeed(world: World) -> None:
    started = time.monotonic()
    done = world.account.run("ok=0; i=0; while [ $i -lt 60 ]; do i=$((i+1)); "
                             "ssh lab true && ok=$((ok+1)); done; echo $ok", timeout=600)
    took = time.monotonic() - started
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "60", done.stdout + done.stderr
    print(f"60 ssh in a row through 60 doors: {took:.1f} s")
    # Every door was used at once: the user holds none (a used single-use door stops counting).
    alive = world.events.next_alive("auth")
    assert [d for d in alive["doors"] if d["user"] == "alice"] == [], alive["doors"]


def _syns(pcap: Path, client: str) -> list[tuple[int, int, int, int]]:
    """(source port, destination port, sequence, flags) of every TCP segment from the client in a capture."""
    found = []
    with pcap.open("rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP) and \
                    ip.src == bytes(map(int, client.split("."))):
                found.append((ip.data.sport, ip.data.dport, ip.data.seq, ip.data.flags))
    return found


def test_connect_knocks_leave_one_syn_each_never_retransmitted(world: World, tmp_path: Path) -> None:
    lab = world.lab
    pcap = tmp_path / "knocks.pcap"
    with lab.sniff(lab.server, f"tcp and src host {lab.client.ipv4}", pcap):
        done = world.account.run(f"{CLIENT} -u alice -k ~/.config/dynknock/lab.key {lab.server.ipv4}")
        assert done.returncode == 0 and DOOR_LINE.search(done.stdout), done.stdout + done.stderr
        door = int(DOOR_LINE.search(done.stdout).group(1))  # type: ignore[union-attr]
        time.sleep(3.5)  # not a handshake: a SYN-SENT socket would retransmit after 1 s, and 3 s after that
    segments = _syns(pcap, lab.client.ipv4)
    knocks = [s for s in segments if s[1] != door]
    assert knocks, segments
    assert all(flags == dpkt.tcp.TH_SYN for *_, flags in knocks), knocks  # SYNs only: no RST, no FIN
    sockets = [(sport, dport) for sport, dport, _, _ in knocks]
    assert len(sockets) == len(set(sockets)), knocks  # each socket sent one SYN: none was retransmitted
    ports = {dport for _, dport in sockets}
    assert len(ports) == 3 and all(49152 <= p <= 62999 for p in ports), ports  # the three knock ports only
    assert CONTROL_PORT not in ports


def _stage_usage(world: World) -> dict[str, tuple[int, int]]:
    """(resident KiB, open descriptors) of each server stage's process."""
    usage = {}
    for stage in ("capture", "auth", "gate", "relay"):
        pid = world.stack.stage_pid(stage)
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        usage[stage] = (rss, len(os.listdir(f"/proc/{pid}/fd")))
    return usage


def test_a_door_hog_from_many_addresses_leaves_a_third_user_every_door(world: World, tmp_path: Path) -> None:
    lab = world.lab
    sources = lab.add_ipv4_addresses(lab.client, 60)
    for key, name in ((HOG_KEY, "hog.key"), (CAROL_KEY, "carol.key")):
        write_key_file(tmp_path / name, key)
    before = _stage_usage(world)
    pids = {stage: world.stack.stage_pid(stage) for stage in before}
    hog = lab.popen(lab.client, [str(VENV_BIN / "python"), str(REPO / "tests/e2e/tools/door_hog.py"),
                                 lab.server.ipv4, str(tmp_path / "hog.key"), "15", "6", "1", *sources],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ,
                                                                                      PYTHONPATH=str(REPO)))
    try:
        time.sleep(2)  # not a handshake: the hog is under way before carol knocks
        mark = world.events.mark()
        opened, failures = 0, []
        for _ in range(10):
            # As ssh would: --proxy goes through the door (ssh's banner comes back), stdin's EOF ends it.
            done = lab.run(lab.client, [CLIENT, "--proxy", "-u", "carol", "-k", str(tmp_path / "carol.key"),
                                        "--timeout", "5", lab.server.ipv4], check=False, timeout=30, input="")
            if done.returncode == 0 and done.stdout.startswith("SSH-2.0-"):
                opened += 1
            else:
                failures.append(f"exit {done.returncode}: {done.stderr.strip()}")
        out, err = hog.communicate(timeout=60)
    finally:
        if hog.poll() is None:
            hog.kill()
    counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    print(f"hog: {counts}; carol: {opened}/10 opened")
    refusals = [e.fields for e in world.events.since(mark) if e.topic == Topic.AUTH_REQUEST_REJECTED
                and e.fields.get("user") == "carol"]
    assert opened == 10, (failures, refusals)
    assert counts.get("opened and used", 0) > 20, (counts, err)  # the hog really hogged
    time.sleep(2)  # not a handshake: what the hog's last doors held is let go
    after = _stage_usage(world)
    print(f"stages (RSS KiB, descriptors) before {before}, after {after}")
    assert {stage: world.stack.stage_pid(stage) for stage in before} == pids  # no stage died meanwhile
    for stage, (rss, fds) in after.items():
        assert rss - before[stage][0] < 40_000, (stage, before[stage], after[stage])  # KiB
        assert fds - before[stage][1] < 40, (stage, before[stage], after[stage])


def test_a_knock_that_cannot_leave_says_why_in_one_line(world: World) -> None:
    lab = world.lab
    # This machine's firewall rejects every knock port: the knock is refused at once.
    lab.run(lab.client, ["nft", "add table inet dkvfw; "
                                "add chain inet dkvfw out { type filter hook output priority 0; }; "
                                "add rule inet dkvfw out tcp dport 49152-62999 reject with icmp type admin-prohibited"])
    try:
        done = world.account.run(f"{CLIENT} -q -u alice -k ~/.config/dynknock/lab.key {lab.server.ipv4}")
    finally:
        lab.run(lab.client, ["nft", "delete table inet dkvfw"])
    assert done.returncode == 5, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "refused at once" in done.stderr, done.stderr
    # No route at all (an IPv6 documentation address, an IPv4 address outside the lab): nothing is sent.
    for host, family in (("2001:db8:ffff::1", "-6"), ("198.18.200.1", "-4")):
        done = world.account.run(f"{CLIENT} {family} -q -u alice -k ~/.config/dynknock/lab.key {host}")
        assert done.returncode == 7, done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and "no route" in done.stderr, done.stderr
