"""A stage that cannot start says why, where the admin looks.

The server's config names an interface the machine does not have: capture cannot open it
and the gate cannot set its sysctl. The admin who ran `supervisord -c supervisord.conf`
in a terminal sees each one's reason on supervisord's own output (the reasons listener),
`knock-admin status` shows it beside the stage, and the lab's Stack (knock-demo) says it
instead of pointing at the logs.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.lab.netlab import NetLab, require_privileges
from tests.lab.stack import VENV_BIN, LabUser, Stack, lab_stack, prepare_workdir, write_config, write_users

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MISSING = "dkf-nowhere"
CAPTURE_WHY = f"knock-capture: cannot open interface '{MISSING}'"
GATE_WHY = f"there is no interface '{MISSING}' (server.interface)"


def wait_for_text(path: Path, pattern: str, timeout_s: float = 20.0) -> str:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not in {path} within {timeout_s} s:\n{text[-3000:]}")


def test_a_stage_that_cannot_start_says_why_on_supervisords_output_in_status_and_in_the_demo() -> None:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-e2e-dkf-"))
    with NetLab("dkf") as lab:
        prepare_workdir(workdir)
        config = workdir / "dynknock.toml"
        write_config(config, workdir, lab)
        config.write_text(config.read_text().replace(f'interface = "{lab.server.interface}"',
                                                     f'interface = "{MISSING}"'))
        write_users(workdir / "users.json", [LabUser("alice", key=bytes(32))])
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        try:
            with pytest.raises(RuntimeError) as raised:
                stack.start(timeout_s=8)
            # What knock-demo prints: each missing stage with its own line, no "see the logs".
            said = str(raised.value)
            assert f"capture: {CAPTURE_WHY}" in said and GATE_WHY in said, said
            assert "/var/log" not in said

            # The terminal of `supervisord -c`: the exits, then each stage's reason.
            output = wait_for_text(stack.output_path, rf"dynknock: capture stopped: {re.escape(CAPTURE_WHY)}")
            assert re.search(rf"dynknock: gate stopped: knock-gate: .*{re.escape(GATE_WHY)}", output), output
            assert "exited: capture (exit status 2; not expected)" in output

            # knock-admin status, as root on the server: the stages down, and why.
            status = subprocess.run(["nsenter", f"--target={stack.process.pid}", "--mount", "--net", "--",
                                     str(VENV_BIN / "knock-admin"), "status", "-c", str(config), "--seconds", "2.5",
                                     "--supervisord-conf", str(stack.supervisord_conf)],
                                    capture_output=True, text=True, timeout=30)
            lines = status.stdout.splitlines()
            assert status.returncode == 0, status.stdout + status.stderr  # auth is up
            assert "capture DOWN" in lines[0] and "gate DOWN" in lines[0] and "auth up" in lines[0], status.stdout
            capture = [line for line in lines if line.startswith("  capture: ")]
            assert capture and "(supervisord)" in capture[0] and CAPTURE_WHY in capture[0], status.stdout
            assert [line for line in lines if line.startswith("  gate: ") and GATE_WHY in line], status.stdout

            # knock-admin doctor names each thing to fix (no sshd runs in this lab, and the users file is
            # made readable to all for the occasion).
            (workdir / "users.json").chmod(0o644)
            doctor = subprocess.run(["nsenter", f"--target={stack.process.pid}", "--mount", "--net", "--",
                                     str(VENV_BIN / "knock-admin"), "doctor", "-c", str(config),
                                     "--supervisord-conf", str(stack.supervisord_conf)],
                                    capture_output=True, text=True, timeout=60)
            found = {line.split()[1]: line for line in doctor.stdout.splitlines() if line.startswith("FAIL")}
            assert doctor.returncode == 1, doctor.stdout + doctor.stderr
            assert f"server.interface = '{MISSING}'" in found["interface"] and "no such interface" in found["interface"]
            assert "chmod 640" in found["users"], doctor.stdout
            assert "127.0.0.1:22 does not answer" in doctor.stdout, doctor.stdout
            assert CAPTURE_WHY in doctor.stdout and GATE_WHY in doctor.stdout, doctor.stdout
        finally:
            stack.stop()


def test_doctor_finds_nothing_wrong_with_a_running_stack() -> None:
    with lab_stack("dkg", REPO / "supervisord.conf", [LabUser("alice", key=bytes(32))]) as (lab, stack, _):
        doctor = subprocess.run(["nsenter", f"--target={stack.process.pid}", "--mount", "--net", "--",
                                 str(VENV_BIN / "knock-admin"), "doctor", "-c", str(stack.config_path),
                                 "--supervisord-conf", str(stack.supervisord_conf)],
                                capture_output=True, text=True, timeout=60)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert doctor.stdout.splitlines()[-1] == "No problem found.", doctor.stdout
        for subject in ("interface", "capture", "gate", "users", "service ssh", "gate", "capture", "auth"):
            assert any(line.split()[:2] == ["ok", subject.split()[0]] for line in doctor.stdout.splitlines()), \
                (subject, doctor.stdout)
