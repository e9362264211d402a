"""The checks a maintainer runs by hand, run with the suite so that CI holds the tree to them:
mypy --strict over the package, the tests and the benchmarks (pyproject's [tool.mypy]), and ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_mypy_strict_passes_over_package_tests_and_benchmarks() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/tmp/dynknock-mypy-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout


def test_ruff_passes() -> None:
    done = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
