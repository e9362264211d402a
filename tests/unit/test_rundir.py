"""dynknock.rundir, the root-run prelude of every supervisord program: the bus directory and fd caps."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from dynknock.rundir import RundirError, ensure_owned_dir

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")  # scripts/test.sh runs as root
SERVICE = pwd.getpwnam("nobody")


@needs_root
def test_missing_directory_is_created_0750_for_the_service(tmp_path: Path) -> None:
    path = tmp_path / "run" / "dynknock"  # the parent is missing too, as /run/dynknock after a boot is
    assert ensure_owned_dir(path, SERVICE.pw_uid, SERVICE.pw_gid) == "created"
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (SERVICE.pw_uid, SERVICE.pw_gid, 0o750)


@needs_root
def test_roots_directory_is_handed_over(tmp_path: Path) -> None:
    path = tmp_path / "dynknock"
    path.mkdir(mode=0o755)  # what systemd's RuntimeDirectory= or an admin's mkdir leaves
    assert ensure_owned_dir(path, SERVICE.pw_uid, SERVICE.pw_gid) == "taken over"
    st = path.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (SERVICE.pw_uid, 0o750)


@needs_root
def test_the_services_own_directory_is_left_for_the_stage_to_judge(tmp_path: Path) -> None:
    path = tmp_path / "dynknock"
    path.mkdir()
    os.chown(path, SERVICE.pw_uid, SERVICE.pw_gid)
    path.chmod(0o777)
    assert ensure_owned_dir(path, SERVICE.pw_uid, SERVICE.pw_gid) == "kept"
    assert path.stat().st_mode & 0o7777 == 0o777  # the stage refuses it with its one line


@needs_root
def test_another_users_directory_or_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dynknock"
    path.mkdir()
    os.chown(path, 4242, 4242)
    with pytest.raises(RundirError, match="uid 4242"):
        ensure_owned_dir(path, SERVICE.pw_uid, SERVICE.pw_gid)
    assert path.stat().st_uid == 4242
    other = tmp_path / "file"
    other.write_text("")
    with pytest.raises(RundirError, match="not a directory"):
        ensure_owned_dir(other, SERVICE.pw_uid, SERVICE.pw_gid)


@needs_root
def test_prelude_makes_the_directory_caps_descriptors_and_execs(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = tmp_path / "dynknock.toml"
    config.write_text(f'[server]\ninterface = "lo"\naddresses = ["127.0.0.1"]\nrun_as = "nobody"\n'
                      f'[bus]\nruntime_dir = "{run_dir}"\n[services.ssh]\ntarget = "127.0.0.1:22"\n')
    show = "import resource, os; print(resource.getrlimit(resource.RLIMIT_NOFILE), os.getpid())"
    done = subprocess.run([sys.executable, "-m", "dynknock.rundir", "--nofile", "321", "--", sys.executable,
                           "-c", show], capture_output=True, text=True, cwd=REPO, check=True,
                          env=dict(os.environ, DYNKNOCK_CONFIG=str(config)))
    assert done.stdout.startswith("(321, 321) "), done.stdout + done.stderr
    assert run_dir.stat().st_uid == SERVICE.pw_uid


def test_a_broken_config_is_left_to_the_stage_to_report(tmp_path: Path) -> None:
    config = tmp_path / "dynknock.toml"
    config.write_text("[server]\nwindow_seconds = 0\n")
    done = subprocess.run([sys.executable, "-m", "dynknock.rundir", "--", sys.executable, "-c", "print('ran')"],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, DYNKNOCK_CONFIG=str(config)))
    assert (done.returncode, done.stdout, done.stderr) == (0, "ran\n", "")


def test_a_missing_command_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "dynknock.rundir", "--", "/nonexistent/knock-x"],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 127
    assert done.stderr == "dynknock.rundir: cannot run /nonexistent/knock-x: No such file or directory\n"
