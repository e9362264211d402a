"""The whole stack with its bus over tcp and CURVE (as for stages on several hosts).

Every stage binds or connects tcp://127.0.0.1 ports inside the server namespace with its own
CURVE key; the tap too (knock-admin status uses the "tap" key). A real knock and ssh prove the
control path works end to end over it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.lab.netlab import NetLab, require_privileges, start_sshd
from tests.lab.stack import VENV_BIN, LabUser, Stack, prepare_workdir, write_config, write_users

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ENDPOINTS = {"packets": 7101, "knock_filter": 7102, "gate": 7103, "relay": 7104, "events": 7105, "tap": 7106}


def test_knock_and_ssh_with_the_bus_over_tcp_and_curve() -> None:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-tcpbus-"))
    with NetLab("dkc") as lab:
        prepare_workdir(workdir)
        curve = workdir / "curve"
        made = subprocess.run([str(VENV_BIN / "knock-admin"), "bus-keys", str(curve)], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        service = pwd.getpwnam("dynknock")
        for path in [curve, *curve.rglob("*")]:
            os.chown(path, service.pw_uid, service.pw_gid)
        table = ", ".join(f'{name} = "tcp://127.0.0.1:{port}"' for name, port in ENDPOINTS.items())
        write_config(workdir / "dynknock.toml", workdir, lab,
                     bus_extra=f'transport = "tcp"\ncurve_dir = "{curve}"\ntcp_endpoints = {{ {table} }}\n')
        write_users(workdir / "users.json", [LabUser("alice", password="alice-pw")])
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        try:
            stack.start(wait=False)
            status = ""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not ("auth up" in status and "DOWN" not in status):
                # The tap is a CURVE client too (key "tap"); it works only from the server namespace.
                status = lab.run(lab.server, ["setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups",
                                              str(VENV_BIN / "knock-admin"), "status", "-c",
                                              str(workdir / "dynknock.toml"), "--seconds", "2.5"],
                                 check=False).stdout
            assert "auth up" in status and "DOWN" not in status, status
            ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv("{host}"))
            done = lab.run(lab.client, [str(VENV_BIN / "knock-client"), "-u", "alice", "--password-stdin",
                                        "--exec", f"{ssh} -p {{port}} echo over-curve", lab.server.ipv4],
                           input="alice-pw\n", check=False, timeout=60)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "over-curve"
            # Nothing listens on an ipc socket: the bus really is the tcp one.
            assert not list((workdir / "run").glob("*.sock"))
        finally:
            stack.stop()
