"""A stolen server opens nothing for key-pair users.

The whole stack runs with its bus over tcp and CURVE (so that it has bus keys to steal), with two
users of today's kinds (alice: a key file, bob: a password) and one key-pair user, paula, who is
provisioned as the docs say: her client makes the pair (`knock-client --key-gen`), the admin
registers the public line (`knock-admin add paula --public-key FILE`, which makes the server key and
prints the line she pins), auth takes the new key and user on its own, and her knocks open ssh.

Then a thief copies everything the server keeps on disk (users file, server key, bus keys, replay
journal, config) and knocks, from another host, as each user with the copy
(tests/e2e/tools/thief.py): as paula with every packet her computed session keys allow, and as
alice and bob with their master keys. Paula's doors stay shut (auth counts bad_signature and
bad_version, the firewall holds no element for the thief); alice's and bob's open. That is the
limit docs/SECURITY.md states: the copy is worth each symmetric user's key, and nothing of a
key-pair user's.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.netlab import NetLab, SshdInfo, require_privileges, start_sshd
from tests.lab.stack import VENV_BIN, LabUser, Stack, prepare_workdir, write_config, write_users

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENDPOINTS = {"packets": 7201, "knock_filter": 7202, "gate": 7203, "relay": 7204, "events": 7205, "tap": 7206}
CLIENT = str(VENV_BIN / "knock-client")
ADMIN = str(VENV_BIN / "knock-admin")
DOOR_LINE = re.compile(r"Door is open at \S+ port (\d+) for \d+ seconds")


@dataclass
class World:
    lab: NetLab
    stack: Stack
    sshd: SshdInfo
    workdir: Path
    home: Path  # paula's HOME on the client host (her key pair, her known_servers)
    server_line: str


def status(world: World) -> str:
    return world.lab.run(world.lab.server, ["setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups",
                                            ADMIN, "status", "-c", str(world.workdir / "dynknock.toml"),
                                            "--seconds", "2.5"], check=False).stdout


def wait_up(world: World) -> None:
    text, deadline = "", time.monotonic() + 40
    while time.monotonic() < deadline and not ("auth up" in text and "DOWN" not in text):
        text = status(world)
    assert "auth up" in text and "DOWN" not in text, text


def paula_knocks(world: World, *extra: str, command: str = "echo through-a-pair") -> subprocess.CompletedProcess[str]:
    ssh = " ".join(shlex.quote(a) for a in world.sshd.ssh_argv("{host}"))
    return world.lab.run(world.lab.client, ["env", f"HOME={world.home}", "USER=paula", CLIENT, "-u", "paula",
                                            "-k", str(world.home / "paula.key"), *extra,
                                            "--exec", f"{ssh} -p {{port}} {command}", world.lab.server.ipv4],
                         check=False, timeout=60)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-stolen-"))
    with NetLab("dks") as lab:
        prepare_workdir(workdir)
        curve = workdir / "curve"
        made = subprocess.run([ADMIN, "bus-keys", str(curve)], capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr
        service = pwd.getpwnam("dynknock")
        for path in [curve, *curve.rglob("*")]:
            os.chown(path, service.pw_uid, service.pw_gid)
        table = ", ".join(f'{name} = "tcp://127.0.0.1:{port}"' for name, port in ENDPOINTS.items())
        write_config(workdir / "dynknock.toml", workdir, lab,
                     bus_extra=f'transport = "tcp"\ncurve_dir = "{curve}"\ntcp_endpoints = {{ {table} }}\n')
        write_users(workdir / "users.json", [LabUser("alice", key=bytes(range(32))),
                                             LabUser("bob", password="bob-password-1")])
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        home = workdir / "paula-home"
        home.mkdir()
        try:
            stack.start(wait=False)
            world = World(lab, stack, sshd, workdir, home, "")
            wait_up(world)
            yield world
        finally:
            stack.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def test_a_key_pair_user_is_provisioned_as_the_docs_say_and_knocks(world: World) -> None:
    lab = world.lab
    made = lab.run(lab.client, ["env", f"HOME={world.home}", "USER=paula", CLIENT, "--key-gen",
                                str(world.home / "paula.key")], check=False)
    assert made.returncode == 0, made.stderr
    public_line = made.stdout.strip()
    assert public_line.startswith("dynknock-ed25519 ") and (world.home / "paula.key.pub").exists()
    # The admin registers her public line (from her .pub file), which makes the server's key.
    pub = world.workdir / "paula.pub"
    shutil.copy(world.home / "paula.key.pub", pub)
    added = subprocess.run([ADMIN, "--users-file", str(world.workdir / "users.json"), "--server-key-file",
                            str(world.workdir / "server.key"), "add", "paula", "--public-key", str(pub)],
                           capture_output=True, text=True, check=False)
    assert added.returncode == 0, added.stderr
    world.server_line = added.stdout.strip().splitlines()[-1]
    assert world.server_line.startswith("dynknock-x25519 ")
    key_stat = (world.workdir / "server.key").stat()
    assert key_stat.st_mode & 0o077 in (0, 0o040)  # root:dynknock 0640, as the users file
    users = json.loads((world.workdir / "users.json").read_text())["users"]
    assert set(users["paula"]) == {"public_key", "services"}  # nothing that signs as her
    listed = subprocess.run([ADMIN, "--users-file", str(world.workdir / "users.json"), "list"],
                            capture_output=True, text=True, check=True).stdout
    assert re.search(r"^paula\s+key pair\s+ssh", listed, re.M) and re.search(r"^alice\s+symmetric\s", listed, re.M)
    # Her first knock carries the admin's line and pins it; auth took the new key and user on its own
    # (within its users-file reload), so a few tries may find it not yet loaded.
    for _ in range(6):
        done = paula_knocks(world, "--server-key", world.server_line, "--timeout", "3")
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "through-a-pair"
    known = (world.home / ".config" / "dynknock" / "known_servers").read_text()
    assert known == f"{lab.server.ipv4} {world.server_line.rsplit(' ', 1)[0]}\n"
    # Later knocks need no line: the pin is used.
    again = paula_knocks(world)
    assert again.returncode == 0 and again.stdout.strip() == "through-a-pair", again.stderr
    # A different server key is refused before anything is sent.
    other = "dynknock-x25519 " + "A" * 42 + "E="
    refused = paula_knocks(world, "--server-key", other)
    assert refused.returncode == 2 and "not the one pinned" in refused.stderr, refused.stderr


def test_a_copy_of_every_server_file_opens_nothing_for_her_and_doors_for_the_others(world: World) -> None:
    assert world.server_line, "the provisioning test ran first"
    lab = world.lab
    stolen = world.workdir / "stolen"
    stolen.mkdir()
    for name in ("users.json", "server.key", "dynknock.toml"):
        shutil.copy2(world.workdir / name, stolen / name)
    shutil.copytree(world.workdir / "curve", stolen / "curve")
    shutil.copytree(world.workdir / "state", stolen / "state")
    assert (stolen / "state" / "replay.journal").exists() and any((stolen / "curve").rglob("*secret*"))
    before = status(world)
    done = lab.run(lab.attacker, [str(VENV_BIN / "python3"), str(REPO / "tests/e2e/tools/thief.py"),
                                  lab.server.ipv4, str(stolen), "paula", "alice", "bob"], check=False, timeout=240)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    # Her: every packet her computed keys allow is refused, silently.
    assert set(results["paula"]) == {"v3 signed: own key", "v3 signed: random", "v3 signed: zeros",
                                     "v3 bound, signed: own key", "her keys, v1", "her keys, v2"}
    assert set(results["paula"].values()) == {"no answer"}, results["paula"]
    # The limit we document: symmetric users' keys are in the copy.
    assert results["alice"]["her master key, v1"].startswith("open port"), results
    assert results["bob"]["her master key, v1"].startswith("open port"), results
    after = status(world)
    counts = dict(re.findall(r"(bad_signature|bad_version) (\d+)", after))
    counts_before = dict(re.findall(r"(bad_signature|bad_version) (\d+)", before))
    assert int(counts.get("bad_signature", 0)) - int(counts_before.get("bad_signature", 0)) >= 4, after
    assert int(counts.get("bad_version", 0)) - int(counts_before.get("bad_version", 0)) >= 2, after
    # The firewall holds doors for the thief's address only through alice's and bob's keys: two knocks.
    ruleset = lab.run(lab.server, ["nft", "list", "table", "inet", "dynknock"]).stdout
    assert ruleset.count(lab.attacker.ipv4) <= 4  # alice's and bob's doors (a set and a map element each)
    # Paula still knocks after all this (the thief's budget spent on her hint was per second).
    again = paula_knocks(world)
    assert again.returncode == 0 and again.stdout.strip() == "through-a-pair", again.stderr


def test_the_thief_cannot_reach_the_bus_with_the_stolen_bus_keys(world: World) -> None:
    """The bus keys are in the copy; the bus listens on the server's loopback (a fleet: a private network),
    so from outside they reach nothing."""
    lab = world.lab
    probe = ("import socket,sys\ns=socket.socket();s.settimeout(2)\n"
             "try:\n s.connect((sys.argv[1], int(sys.argv[2])));print('connected')\n"
             "except OSError as e:\n print('refused' if isinstance(e, ConnectionRefusedError) else 'silent')\n")
    for port in ENDPOINTS.values():
        out = lab.run(lab.attacker, [str(VENV_BIN / "python3"), "-c", probe, lab.server.ipv4, str(port)],
                      check=False).stdout.strip()
        assert out == "silent", (port, out)
