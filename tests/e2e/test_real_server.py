"""The README's "Install on a real server", run line by line on a fresh simulated server.

The server is the lab's server namespace plus a machine of its own: a private mount
namespace (overlays on /etc, /opt, /usr/local, /var and /root whose writes land in a tmpfs,
a fresh tmpfs on /run) and a private PID namespace, in which nothing of dynknock is
installed (no /etc/dynknock, /var/lib/dynknock, /var/log/dynknock, venv, commands, unit or
user). So setup.sh, useradd, the uninstaller's userdel and everything else run for real,
and this machine's own files, users and processes never change. setup.sh alone uses this
host's network namespace, for pip's downloads (the lab has no way out); the stack runs in
the lab's. The commands come from the README itself (only `sudo` is dropped where it is
not installed: the test runs as root), the config is edited only where the README says,
and a client in the client namespace knocks and reaches sshd. Then the operator's days:
supervisorctl, descriptor limits, logs, a reboot, an upgrade, an uninstall.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt
import pytest
from supervisor.datatypes import byte_size  # type: ignore[import-untyped]

from dynknock.protocol import CONTROL_PORT
from tests.lab.netlab import NetLab, SshdInfo, require_privileges, start_sshd
from tests.lab.stack import wait_subscribed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PREFIX = "dkr"
PASSWORD = "alice on a real server"
CONF = "/etc/dynknock/supervisord.conf"
STAGES = ("bus", "auth", "gate", "relay", "capture", "metrics")
LISTENERS = ("reasons",)  # supervisord's event listener that prints why a stage stopped
CLIENT = "/opt/dynknock/venv/bin/knock-client"  # on the client machine: this host's install
DOOR_LINE = re.compile(r"Door is open at \S+ port (\d+) for \d+ seconds")

# Overlays whose writes go to the scratch tmpfs; then everything of dynknock is removed
# inside them (whiteouts in the tmpfs, nothing on disk), as on a server that never had it.
MACHINE_SETUP = r"""
set -eu
scratch=$1
mount -t tmpfs -o mode=0700 dk-scratch "$scratch"
for d in etc opt usr/local var root; do
    name=$(echo "$d" | tr / _)
    mkdir -p "$scratch/$name.up" "$scratch/$name.work"
    mount -t overlay "dk-$name" -o "lowerdir=/$d,upperdir=$scratch/$name.up,workdir=$scratch/$name.work" "/$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev dk-run /run
rm -rf /etc/dynknock /var/lib/dynknock /var/log/dynknock /opt/dynknock /etc/systemd/system/dynknock.service
for t in knock-client knock-admin knock-tap supervisord supervisorctl; do rm -f "/usr/local/bin/$t"; done
if getent passwd dynknock >/dev/null; then userdel dynknock; fi
if getent group dynknock >/dev/null; then groupdel dynknock; fi
"""


def readme_blocks() -> list[list[str]]:
    """The code blocks of the README's server section, one command per line, comments cut."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Install on a real server\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in section.splitlines() + [""]:
        if line.startswith("    ") and line.strip():
            current.append(re.split(r"\s{2,}#", line.strip(), maxsplit=1)[0].strip())
        elif current:
            blocks.append(current)
            current = []
    return blocks


def as_root(command: str) -> str:
    # The test is root already; a fresh Debian server may have no sudo installed.
    if command.startswith("sudo ") and shutil.which("sudo") is None:
        return command[len("sudo "):]
    return command


@dataclass
class Machine:
    """The simulated server: commands run in its namespaces as a root login shell would."""

    lab: NetLab
    scratch: Path
    init_pid: int = 0
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def boot(self) -> None:
        holder = self.lab.popen(self.lab.server, ["unshare", "--mount", "--propagation", "private", "--pid",
                                                  "--fork", "--mount-proc", "--", "sleep", "infinity"])
        deadline = time.monotonic() + 10
        while not self.init_pid:
            children = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "sleep":
                self.init_pid = int(pids[0])
            elif time.monotonic() > deadline:
                raise RuntimeError("the server's namespaces did not come up")
            else:
                time.sleep(0.05)
        self.run(f"sh -c {shlex.quote(MACHINE_SETUP)} machine {shlex.quote(str(self.scratch))}")

    def argv(self, command: str, internet: bool = False) -> list[str]:
        """`internet`: this host's network instead of the lab's (pip downloads; the lab has no way out)."""
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8"]
        env += [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]  # this host's wheel source
        namespaces = ["--mount", "--pid"] if internet else ["--mount", "--net", "--pid"]
        return ["nsenter", f"--target={self.init_pid}", *namespaces, "--", "env", "-i", *env,
                "sh", "-c", f"cd {shlex.quote(str(REPO))} && {command}"]

    def run(self, command: str, *, input: str | None = None, timeout: float = 300, check: bool = True,
            internet: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.argv(command, internet), input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"{command!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def start(self, command: str, log: Path) -> subprocess.Popen[Any]:
        with log.open("ab") as out:
            process = subprocess.Popen(self.argv(f"exec {command}"), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(process)
        return process

    def path(self, path: str) -> Path:
        """A path as the server sees it (through its init's root)."""
        return Path(f"/proc/{self.init_pid}/root{path}")

    def read(self, path: str) -> bytes:
        return self.path(path).read_bytes()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(timeout=5)


@dataclass
class Server:
    lab: NetLab
    machine: Machine
    sshd: SshdInfo
    workdir: Path
    blocks: list[list[str]]
    supervisord: subprocess.Popen[Any] | None = None
    setup_output: str = ""

    def supervisorctl(self, *args: str, check: bool = False) -> str:
        return self.machine.run(f"supervisorctl -c {CONF} {' '.join(args)}", check=check).stdout

    def pids(self) -> dict[str, int]:
        return {stage: int(self.supervisorctl("pid", stage).strip() or 0) for stage in STAGES}

    def wait_up(self, timeout: float = 40) -> dict[str, int]:
        """Until supervisorctl says RUNNING for every program and every stage is alive on the bus."""
        deadline = time.monotonic() + timeout
        status = alive = ""
        while time.monotonic() < deadline:
            status = self.supervisorctl("status")
            running = [line for line in status.splitlines() if " RUNNING " in f" {line} "]
            if len(running) == len(STAGES + LISTENERS):
                alive = self.machine.run("knock-admin status --seconds 2.5", check=False).stdout
                if "DOWN" not in alive and "auth up" in alive:
                    return self.pids()
            time.sleep(0.5)
        raise AssertionError(f"stack not up after {timeout} s:\n{status}\n{alive}\n{self.logs()}")

    def logs(self) -> str:
        return self.machine.run("tail -n 5 /var/log/dynknock/*.log", check=False).stdout

    def knock(self, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.lab.client, [CLIENT, "-u", "alice", "--password-stdin", "--timeout", "5", *args,
                                              self.lab.server.ipv4], input=password + "\n", check=False, timeout=60)

    def ssh_through_a_door(self, word: str) -> subprocess.CompletedProcess[str]:
        ssh = " ".join(shlex.quote(a) for a in self.sshd.ssh_argv("{host}"))
        return self.knock("--exec", f"{ssh} -p {{port}} echo {word}")

    def open_door(self) -> int:
        done = self.knock()
        assert done.returncode == 0, done.stderr
        match = DOOR_LINE.search(done.stdout + done.stderr)
        assert match, done.stdout + done.stderr
        return int(match.group(1))

    def start_supervisord(self, line: str) -> None:
        self.supervisord = self.machine.start(as_root(line), self.workdir / "supervisord.out")

    def stop_supervisord(self) -> None:
        """The admin's way: supervisorctl shutdown; supervisord stops every stage and exits."""
        self.supervisorctl("shutdown", check=True)
        assert self.supervisord is not None
        self.supervisord.wait(timeout=30)

    def state(self) -> dict[str, bytes]:
        """Users file, config and every file of the replay journal, as they are now."""
        files = {p: self.machine.read(p) for p in ("/etc/dynknock/users.json", "/etc/dynknock/dynknock.toml")}
        listing = self.machine.run("find /var/lib/dynknock -type f").stdout.split()
        files.update({p: self.machine.read(p) for p in listing})
        return files


def digest(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(data).hexdigest()[:16] for path, data in files.items()}


def edit_config_where_the_readme_says(machine: Machine, lab: NetLab) -> None:
    """"then edit interface, addresses and [services.*]": those keys, nothing else."""
    path = machine.path("/etc/dynknock/dynknock.toml")
    text = path.read_text()
    text, n_interface = re.subn(r'(?m)^interface = "[^"]*"', f'interface = "{lab.server.interface}"', text)
    text, n_addresses = re.subn(r"(?m)^addresses = \[[^\]]*\]", f'addresses = ["{lab.server.ipv4}", '
                                f'"{lab.server.ipv6}"]', text)
    text, n_target = re.subn(r'(?m)^(\[services\.ssh\]\ntarget = )"[^"]*"', r'\1"127.0.0.1:22"', text)
    assert (n_interface, n_addresses, n_target) == (1, 1, 1), "examples/dynknock.toml changed shape"
    path.write_text(text)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-realserver-"))
    scratch = workdir / "machine"
    scratch.mkdir()
    blocks = readme_blocks()
    with NetLab(PREFIX) as lab:
        machine = Machine(lab, scratch)
        try:
            machine.boot()
            sshd = start_sshd(lab, lab.server, workdir / "ssh")
            yield Server(lab, machine, sshd, workdir, blocks)
        finally:
            machine.stop_all()
    shutil.rmtree(workdir, ignore_errors=True)


def test_readme_install_section_has_the_expected_shape(server: Server) -> None:
    install, control, upgrade, uninstall = server.blocks
    assert [c.split()[1] for c in install] == ["./scripts/setup.sh", "cp", "knock-admin", "supervisord"], install
    assert install[1] == "sudo cp examples/dynknock.toml /etc/dynknock/", install
    assert all("supervisorctl -c /etc/dynknock/supervisord.conf" in c for c in control), control
    assert upgrade == ["git pull", "sudo ./scripts/setup.sh"], upgrade
    assert uninstall == ["sudo ./scripts/uninstall.sh", "sudo ./scripts/uninstall.sh --purge"], uninstall


def test_install_as_the_readme_says_and_knock_through_to_sshd(server: Server) -> None:
    setup, copy, add_user, start = server.blocks[0]
    started = time.monotonic()
    done = server.machine.run(as_root(setup), internet=True)
    setup_seconds = time.monotonic() - started
    steps = [line for line in done.stdout.splitlines() if line.startswith("setup: ")]
    assert len(steps) >= 8 and steps[-1].startswith("setup: done"), done.stdout
    server.machine.run(as_root(copy))
    edit_config_where_the_readme_says(server.machine, server.lab)
    added = server.machine.run(as_root(add_user), input=PASSWORD + "\n")
    assert "alice" in added.stdout + added.stderr
    users = server.machine.path("/etc/dynknock/users.json").stat()
    assert (users.st_mode & 0o777, users.st_uid) == (0o640, 0), oct(users.st_mode)
    # /run is empty, as after a boot: nothing has made /run/dynknock; supervisord must.
    assert not server.machine.path("/run/dynknock").exists()
    server.start_supervisord(start)
    server.wait_up()
    run_dir = server.machine.path("/run/dynknock").stat()
    assert run_dir.st_mode & 0o777 == 0o750
    assert server.machine.run("stat -c %U /run/dynknock").stdout.strip() == "dynknock"
    done = server.ssh_through_a_door("through-the-real-install")
    assert done.returncode == 0, done.stderr + server.logs()
    assert done.stdout.strip() == "through-the-real-install"
    print(f"setup.sh on a fresh server: {setup_seconds:.1f} s, {len(steps)} progress lines")


def test_systemd_unit_verifies(server: Server) -> None:
    unit = "/etc/systemd/system/dynknock.service"
    assert server.machine.path(unit).exists()
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    done = server.machine.run(f"systemd-analyze verify {unit}", check=False)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    text = server.machine.path(unit).read_text()
    for needed in ("RuntimeDirectory=dynknock", "ConfigurationDirectory=dynknock", f"--configuration {CONF}",
                   "CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "NoNewPrivileges=yes"):
        assert needed in text, needed


def test_supervisorctl_is_root_only_and_restarts_a_stage(server: Server) -> None:
    socket = server.machine.path("/run/dynknock-supervisor.sock").stat()
    assert (socket.st_uid, socket.st_mode & 0o777) == (0, 0o700)
    before = server.pids()
    status, restart = server.blocks[1]
    lines = server.machine.run(as_root(status)).stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(STAGES + LISTENERS), lines
    server.machine.run(as_root(restart))
    after = server.wait_up()
    assert after["gate"] != before["gate"]
    assert {k: v for k, v in after.items() if k != "gate"} == {k: v for k, v in before.items() if k != "gate"}
    # The dynknock user can read neither the config nor reach the control socket.
    denied = server.machine.run("setpriv --reuid=dynknock --regid=dynknock --init-groups /opt/dynknock/venv/bin/"
                                "supervisorctl -s unix:///run/dynknock-supervisor.sock pid", check=False)
    assert not denied.stdout.strip().isdigit(), denied.stdout
    assert "ermission denied" in denied.stdout + denied.stderr, denied.stdout + denied.stderr


NOFILE = {"relay": 16384, "bus": 4096, "auth": 4096, "gate": 1024, "capture": 1024, "metrics": 1024}


def test_descriptor_limits_are_set_per_program(server: Server) -> None:
    def limit(pid: str) -> tuple[int, int]:
        line = next(line for line in server.machine.run(f"cat /proc/{pid}/limits").stdout.splitlines()
                    if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        return int(soft), int(hard)

    supervisord = server.supervisorctl("pid").strip()
    assert limit(supervisord)[0] >= 16384  # minfds: raised to it if lower, never lowered
    found = {stage: limit(str(pid)) for stage, pid in server.pids().items()}
    assert found == {stage: (n, n) for stage, n in NOFILE.items()}, found


def test_logs_rotate(server: Server) -> None:
    parser = configparser.RawConfigParser()
    parser.read_string(server.machine.path(CONF).read_text())
    assert 0 < byte_size(parser.get("supervisord", "logfile_maxbytes")) <= 50 * 1024 * 1024
    assert int(parser.get("supervisord", "logfile_backups")) > 0
    programs = [name for name in parser.sections() if name.startswith("program:")]
    assert sorted(name.split(":", 1)[1] for name in programs) == sorted(STAGES)
    for name in programs:
        assert parser.get(name, "stdout_logfile").startswith("/var/log/dynknock/"), name
        assert 0 < byte_size(parser.get(name, "stdout_logfile_maxbytes")) <= 50 * 1024 * 1024, name
        assert int(parser.get(name, "stdout_logfile_backups")) > 0, name


def captured_p1(server: Server, pcap: Path) -> bytes:
    with pcap.open("rb") as handle:
        for _, raw in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(raw).data
            if isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == CONTROL_PORT:
                return bytes(ip.data.data)
    raise AssertionError("no P1 captured")


def test_reboot_keeps_users_and_journal_and_closes_doors(server: Server) -> None:
    lab = server.lab
    with lab.sniff(lab.client, f"udp dst port {CONTROL_PORT}", server.workdir / "knock.pcap") as pcap:
        door = server.open_door()  # knocked, never used: open when the power goes
    p1 = captured_p1(server, pcap)
    before = server.state()
    assert any(path.startswith("/var/lib/dynknock/") for path in before), "no replay journal was written"

    # Power off: every process stops, the kernel forgets its firewall, /run is empty again.
    server.stop_supervisord()
    server.machine.run("nft flush ruleset && umount /run && mount -t tmpfs -o mode=0755,nosuid,nodev dk-run /run")
    assert server.machine.run("ls -A /run").stdout.strip() == ""
    # Power on: started again exactly as the README says.
    server.start_supervisord(server.blocks[0][3])
    server.wait_up()

    after = server.state()
    assert digest({p: d for p, d in after.items() if not p.startswith("/var/lib/")}) == \
        digest({p: d for p, d in before.items() if not p.startswith("/var/lib/")})
    for path, data in before.items():  # the journal only grows
        assert after[path][:len(data)] == data, path
    assert lab.tcp_probe(lab.client, lab.server.ipv4, door, timeout=1.5) == "TimeoutError"
    # The P1 of the knock before the reboot, sent again: the journal remembers it.
    tap = server.machine.start("knock-tap --json --topic auth.request. --count 1", server.workdir / "tap.json")
    wait_subscribed(f"ipc://{server.machine.path('/run/dynknock/events.sock')}", ["auth.request."])
    send = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
            "s.sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],int(sys.argv[3])))")
    lab.run(lab.client, ["python3", "-c", send, p1.hex(), lab.server.ipv4, str(CONTROL_PORT)])
    tap.wait(timeout=15)
    event = json.loads((server.workdir / "tap.json").read_text().splitlines()[-1])
    assert (event["topic"], event["reason"]) == ("auth.request.rejected", "replay"), event
    done = server.ssh_through_a_door("after-reboot")
    assert done.returncode == 0 and done.stdout.strip() == "after-reboot", done.stderr + server.logs()


def test_upgrade_keeps_users_config_journal_and_restarts_onto_new_code(server: Server) -> None:
    before_state = server.state()
    before = server.pids()
    pull, setup = server.blocks[2]
    assert pull == "git pull"  # this checkout is the new code already
    done = server.machine.run(as_root(setup), internet=True)
    assert "setup: restart: supervisorctl reload" in done.stdout, done.stdout
    after = server.wait_up()
    assert all(after[stage] != before[stage] for stage in STAGES), (before, after)
    state = server.state()
    for path, data in before_state.items():
        if path.startswith("/var/lib/"):
            assert state[path][:len(data)] == data, path
        else:
            assert state[path] == data, path
    done = server.ssh_through_a_door("after-upgrade")
    assert done.returncode == 0 and done.stdout.strip() == "after-upgrade", done.stderr + server.logs()


def test_uninstall_keeps_the_users_file_unless_purged(server: Server) -> None:
    remove, purge = server.blocks[3]
    done = server.machine.run(as_root(remove))
    assert server.supervisord is not None
    server.supervisord.wait(timeout=30)
    assert "uninstall: done" in done.stdout, done.stdout
    machine = server.machine
    assert machine.run("nft list table inet dynknock", check=False).returncode != 0
    assert machine.run("getent passwd dynknock", check=False).returncode != 0
    assert machine.run("getent group dynknock", check=False).returncode != 0
    for gone in ("/opt/dynknock", "/etc/systemd/system/dynknock.service", "/usr/local/bin/knock-admin",
                 "/etc/dynknock/supervisord.conf", "/run/dynknock", "/run/dynknock-supervisor.sock"):
        assert not machine.path(gone).exists(), gone
    for kept in ("/etc/dynknock/users.json", "/etc/dynknock/dynknock.toml"):
        assert machine.path(kept).exists(), kept
    assert machine.run("find /var/lib/dynknock -type f").stdout.strip(), "the replay journal went"
    done = machine.run(as_root(purge))
    for gone in ("/etc/dynknock", "/var/lib/dynknock", "/var/log/dynknock"):
        assert not machine.path(gone).exists(), gone
