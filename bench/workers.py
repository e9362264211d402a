"""Running bench/labworker.py commands from a benchmark: their arguments in, their JSON rows out.

bench/run.py and bench/ha.py start labworker commands in the lab's namespaces; both pass the
arguments as one base64 JSON word and read back the JSON lines the worker writes (labworker.emit).
"""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any


def encode_args(args: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(args).encode()).decode()


def collect(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    """The rows of a worker started with stdout and stderr piped; killed past `timeout` (its rows so far
    kept), RuntimeError with its last error output if it failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err[-2000:]}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]
