"""bench/run.py's own machinery, without the lab: --code's copy of a checkout, and the sampler of the
scale window (how busy the whole machine was while the clients started). No root, no namespace:
the measuring itself is covered by tests/e2e/test_bench_smoke.py."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/run.py, imported as it imports its neighbours (bench/ is not a package)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("run")


def test_code_copies_a_checkout_as_the_install_lays_it_out(run: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """In a checkout dynknock/capture (auth, gate, relay, client) is a symlink to the stage's folder: the copy
    must hold each package once, as the install does (it failed at FileExistsError on dynknock/lab)."""
    execs: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append((path, argv, env))

    monkeypatch.setattr(run.os, "execve", execve)
    monkeypatch.setattr(run.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "code"))
    (tmp_path / "code").mkdir()
    run.reexec_with_code(REPO, ["--only", "scale"], "sudo bench/run.py --only scale")
    ((path, argv, env),) = execs
    assert path == sys.executable and argv[-2:] == ["--only", "scale"]
    target = Path(env["PYTHONPATH"])
    assert target == tmp_path / "code" and env["DYNKNOCK_BENCH_CODE_FROM"] == str(REPO)
    for package in run.PACKAGES:
        copy = target / package
        assert copy.is_dir() and not copy.is_symlink(), package
        assert {p.name for p in copy.glob("*.py")} == {p.name for p in (REPO / package).glob("*.py")}, package
        assert stat.S_IMODE(copy.stat().st_mode) == 0o755  # the stages run unprivileged
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in copy.glob("*.py"))
    # Python finds the copy's code there, every package of it (cwd elsewhere: not the checkout's).
    found = subprocess.run([sys.executable, "-c", "import dynknock.capture.bpf as a, dynknock.lab.netlab as b, "
                            "dynknock.auth.engine as c; print(a.__file__, b.__file__, c.__file__)"],
                           env=dict(os.environ, PYTHONPATH=str(target)), cwd=tmp_path, capture_output=True,
                           text=True, check=True, timeout=60).stdout.split()
    assert all(Path(f).is_relative_to(target) for f in found), found
    assert (target / "dynknock" / "capture" / "bpf.py").read_bytes() == (REPO / "capture" / "bpf.py").read_bytes()


def test_the_window_sampler_measures_exactly_the_window(run: ModuleType) -> None:
    start = time.time() + 0.2
    window = run.Window(start, 0.5, {"me": os.getpid()})
    window.start()
    deadline = time.monotonic() + 0.4
    while time.monotonic() < deadline:  # a little work of our own inside the window
        sum(range(10_000))
    result: dict[str, Any] = window.result(timeout=5)
    # A sleeping thread wakes a little late on a busy machine; the figures are over what it did measure.
    assert 0 <= result["start_wall"] - start < 0.2 and 0.45 < result["seconds"] < 0.9
    assert 0.0 <= result["busy_share"] <= 1.0
    assert len(result["cpu_shares"]) == os.cpu_count()
    assert all(0.0 <= share <= 1.0 for share in result["cpu_shares"])
    assert result["total_s"] == pytest.approx(result["seconds"] * (os.cpu_count() or 1), rel=0.25)
    # Per-process and per-CPU times come from different kernel counters: equal within a few ticks.
    assert 0.0 < result["processes_s"]["me"] <= result["busy_s"] + 0.1
    for key in ("loadavg_start", "loadavg_end"):
        assert len(result[key]) == 3 and all(value >= 0 for value in result[key])
