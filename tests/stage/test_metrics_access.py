"""Who may read the Prometheus endpoint: the dynknock group, nobody else.

knock-tap --metrics runs as supervisord.conf runs it (the dynknock user, no
capability); the scrapes run as root, as `nobody` and as a process of the
dynknock group, each through setpriv, as real processes over real HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.lab.stack import VENV_BIN
from tests.stage.conftest import StageEnv, free_port

pytestmark = pytest.mark.stage

AS_SERVICE = ("/usr/bin/setpriv", "--reuid=dynknock", "--regid=dynknock", "--init-groups", "--no-new-privs",
              "--inh-caps=-all", "--bounding-set=-all")
AS_NOBODY = ("/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--no-new-privs")
AS_GROUP_MEMBER = ("/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=dynknock", "--no-new-privs")

# Run by another user: what it can learn from the endpoint, with and without the token file.
PROBE = r"""
import json, sys, urllib.error, urllib.request
url, token_file = sys.argv[1], sys.argv[2]
out = {}
def get(path, authorization=None):
    request = urllib.request.Request(url + path)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
for name, (path, authorization) in {
        "bare": ("/metrics", None), "root": ("/", None), "wrong": ("/metrics", "Bearer " + "x" * 43),
        "empty": ("/metrics", "Bearer "), "basic": ("/metrics", "Basic ZHlua25vY2s6eA==")}.items():
    out[name] = get(path, authorization)
try:
    token = open(token_file).read().strip()
    out["token_read"] = True
    out["with_token"] = get("/metrics", "Bearer " + token)
except OSError as exc:
    out["token_read"] = exc.__class__.__name__
print(json.dumps(out))
"""


def start_metrics(env: StageEnv, port: int) -> subprocess.Popen[bytes]:
    process = env.start("knock-tap", "--metrics", f"127.0.0.1:{port}", prefix=AS_SERVICE)
    env.wait_for(lambda: _answers(port) or process.poll() is not None, what="metrics endpoint")
    assert process.poll() is None, env.log("knock-tap")
    return process


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def probe(prefix: tuple[str, ...], port: int, token_file: Path) -> dict[str, object]:
    done = subprocess.run([*prefix, sys.executable, "-c", PROBE, f"http://127.0.0.1:{port}", str(token_file)],
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_only_the_dynknock_group_can_read_the_metrics(stage_env: StageEnv) -> None:
    port = free_port()
    stage_env.start("knock-bus")
    start_metrics(stage_env, port)
    token_file = stage_env.workdir / "run" / "metrics.token"
    st = token_file.stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o640, os.stat(stage_env.workdir / "run").st_gid)

    stranger = probe(AS_NOBODY, port, token_file)
    assert stranger["token_read"] == "PermissionError"
    for name in ("bare", "wrong", "empty", "basic"):
        assert stranger[name] == [401, ""], (name, stranger[name])
    assert stranger["root"] == [404, ""]

    member = probe(AS_GROUP_MEMBER, port, token_file)
    assert member["token_read"] is True
    with_token = member["with_token"]
    assert isinstance(with_token, list)  # [status, body], as JSON gives a tuple back
    status, body = with_token
    assert status == 200 and 'dynknock_stage_up{stage="auth"} 0.0' in body

    token = token_file.read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert "dynknock_gate_rules_total" in answer.read().decode()


def test_a_restart_keeps_the_token(stage_env: StageEnv) -> None:
    port = free_port()
    first = start_metrics(stage_env, port)
    token = (stage_env.workdir / "run" / "metrics.token").read_text()
    first.terminate()
    first.wait(timeout=5)
    start_metrics(stage_env, port)
    assert (stage_env.workdir / "run" / "metrics.token").read_text() == token


@pytest.mark.parametrize("mode,expected", [
    (0o644, "mode 0644 is too open"),
    (0o660, "mode 0660 is too open"),
    (None, "not found"),
])
def test_metrics_refuse_a_token_file_others_may_read(stage_env: StageEnv, mode: int | None,
                                                     expected: str) -> None:
    token_file = stage_env.workdir / "metrics.token"
    if mode is not None:
        token_file.write_text("a-token-long-enough-to-be-used\n")
        os.chmod(token_file, mode)
    stage_env.config.write_text(stage_env.config.read_text()
                                + f'\n[metrics]\ntoken_file = "{token_file}"\n')
    done = subprocess.run([str(VENV_BIN / "knock-tap"), "-c", str(stage_env.config), "--metrics",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"metrics.token_file {token_file}" in lines[0] and expected in lines[0], lines
