"""knock-client installs on a laptop the way CLI tools do, and knocks with what it installed.

The distribution is built from this checkout (``python -m build``: sdist, then a wheel
from the sdist, as pip and pipx do), then installed from the sdist into a fresh venv
with no compiler on PATH (CC and CFLAGS pointing nowhere) and every dependency taken
as a wheel (``--only-binary=:all:``): anything that needed building, such as pypcap
against libpcap's headers, fails the install. The venv must then hold none of the
server's distributions, and its knock-client must open a door at the lab's server
and carry ssh through it as a ProxyCommand, with a key file and with a password.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynknock.keys import write_key_file
from tests.lab.netlab import NetLab, SshdInfo
from tests.lab.stack import VENV_BIN, LabUser, lab_stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"pypcap", "pyzmq", "supervisor", "prometheus-client", "dpkt", "msgpack"}
DOOR_LINE = re.compile(r"Door is open at (\S+) port (\d+) for (\d+) seconds")


class Installed:
    def __init__(self, venv: Path, sdist: Path, install_log: str) -> None:
        self.venv, self.sdist, self.install_log = venv, sdist, install_log
        self.client = str(venv / "bin" / "knock-client")


def _no_compiler_env(venv: Path) -> dict[str, str]:
    """No compiler; the user's own pip settings (PIP_*: an index, a certificate file) stay, as for any install."""
    pip = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    return {**pip, "PATH": f"{venv / 'bin'}:/nonexistent", "HOME": os.environ.get("HOME", "/root"),
            "CC": "/nonexistent/cc", "CXX": "/nonexistent/c++", "CFLAGS": "-I/nonexistent", "LDFLAGS": "-L/nonexistent",
            "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    work = Path(tempfile.mkdtemp(prefix="dynknock-install-"))
    dist = work / "dist"
    built = subprocess.run([str(VENV_BIN / "python"), "-m", "build", "--outdir", str(dist), str(REPO)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sdists = list(dist.glob("dynknock-*.tar.gz"))
    assert len(sdists) == 1 and list(dist.glob("dynknock-*.whl")), sorted(p.name for p in dist.iterdir())
    venv = work / "venv"
    # The system's interpreter, not the lab venv's packages: a fresh venv as a user would make.
    base_python = os.path.realpath(VENV_BIN / "python")
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--only-binary=:all:",
                           "--no-binary=dynknock", str(sdists[0])],
                          env=_no_compiler_env(venv), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield Installed(venv, sdists[0], done.stdout)
    subprocess.run(["rm", "-rf", str(work)], check=False)


def test_install_holds_no_server_dependency(installed: Installed) -> None:
    listed = subprocess.run([str(installed.venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            env=_no_compiler_env(installed.venv), capture_output=True, text=True, check=True)
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert "dynknock" in names
    assert not names & SERVER_ONLY, names
    assert names - {"dynknock", "pycryptodome", "pip", "setuptools"} == set(), names


def test_install_adds_one_top_level_package_and_no_generic_names(installed: Installed) -> None:
    """`client`, `auth`, ... in site-packages would collide with any other package of that name."""
    code = ("import json, sysconfig, pathlib; site = pathlib.Path(sysconfig.get_paths()['purelib']);"
            "print(json.dumps(sorted(p.name for p in site.iterdir())))")
    listed = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code], env=_no_compiler_env(installed.venv),
                            capture_output=True, text=True, check=True)
    ours = {name for name in json.loads(listed.stdout)
            if not name.lower().startswith(("pip", "setuptools", "pycryptodome", "crypto", "_distutils", "distutils",
                                            "__pycache__", "_virtualenv", "pkg_resources"))}
    assert ours == {"dynknock", "dynknock-0.1.0.dist-info"}, ours
    stages = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                             "import dynknock.client.main, dynknock.protocol, dynknock.keys; print('ok')"],
                            env=_no_compiler_env(installed.venv), capture_output=True, text=True, check=False)
    assert stages.stdout.strip() == "ok", stages.stderr


def test_every_console_script_stays_declared(installed: Installed) -> None:
    for script in ("knock-client", "knock-admin", "knock-capture", "knock-auth", "knock-gate", "knock-relay",
                   "knock-bus", "knock-tap", "knock-demo"):
        assert (installed.venv / "bin" / script).exists(), script
    done = subprocess.run([installed.client, "--help"], env=_no_compiler_env(installed.venv), capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: knock-client")


class World:
    def __init__(self, lab: NetLab, sshd: SshdInfo, key_file: Path) -> None:
        self.lab, self.sshd, self.key_file = lab, sshd, key_file


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    key = os.urandom(32)
    users = [LabUser("alice", password="alice-pw"), LabUser("bob", key=key)]
    with lab_stack("dki", REPO / "supervisord.conf", users, window_seconds=10) as (lab, stack, sshd):
        key_file = stack.workdir / "bob.key"
        write_key_file(key_file, key)
        yield World(lab, sshd, key_file)


def test_installed_client_carries_ssh_as_proxycommand_with_a_key_file(installed: Installed, world: World) -> None:
    proxy = f"{installed.client} --proxy -u bob -k {world.key_file} --timeout 5 %h"
    argv = world.sshd.ssh_argv(world.lab.server.ipv4) + ["-o", f"ProxyCommand={proxy}", "echo", "via-clean-venv"]
    done = world.lab.run(world.lab.client, ["env", f"PATH={installed.venv / 'bin'}:/usr/bin:/bin", *argv],
                         check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "via-clean-venv"


def test_installed_client_opens_a_door_with_a_password(installed: Installed, world: World) -> None:
    done = world.lab.run(world.lab.client, [installed.client, "-u", "alice", "--password-stdin", "--timeout", "5",
                                            world.lab.server.ipv4], input="alice-pw\n", check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    match = DOOR_LINE.search(done.stdout)
    assert match and match.group(1) == world.lab.server.ipv4, done.stdout
