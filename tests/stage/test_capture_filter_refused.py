"""knock-capture when the kernel refuses its knock filter: it falls back to a shorter form and runs on.

The kernel charges a socket's old and new BPF program together against net.core.optmem_max while
it swaps them; with ~2,000 pending clients (128 KiB) capture's swap failed with `SO_ATTACH_FILTER:
Cannot allocate memory`, the exception ended capture, and supervisord restarted it again and again.
Here the same refusal is made with a few hundred pending pairs: capture runs on `lo` in a
throw-away network namespace whose optmem_max (a per-namespace sysctl) is lowered to 32 KiB. The
machine's own value is never touched.

This runs the checkout's capture (PYTHONPATH), not the installed copy the other stage tests run:
the fallback is in the code under test before it is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynknock import bus
from dynknock import protocol as proto
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import StageEnv, free_port
from tests.stage.test_capture_stage import Auth, client_payload

pytestmark = pytest.mark.stage

REPO = Path(__file__).resolve().parents[2]
OPTMEM = 32 * 1024
OPTMEM_PATH = Path("/proc/sys/net/core/optmem_max")
LOCAL = "127.0.0.1"
# Sent from inside the namespace: a connect() to a closed port on lo is one SYN, answered by a RST;
# then, if given, a datagram to the control port (its source port printed).
SEND = """import socket, sys
s = socket.socket()
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
except ConnectionRefusedError:
    print("refused")
if len(sys.argv) > 2:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.sendto(bytes.fromhex(sys.argv[3]), ("127.0.0.1", int(sys.argv[2])))
    print(u.getsockname()[1])
"""


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture
def small_optmem() -> Iterator[str]:
    """A network namespace with lo up and net.core.optmem_max lowered to OPTMEM; deleted afterwards,
    with whatever the test started in it."""
    ns = f"dkcapmem{os.getpid()}"
    machine = OPTMEM_PATH.read_text()
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.core.optmem_max={OPTMEM}")
        assert run("ip", "netns", "exec", ns, "cat", str(OPTMEM_PATH)).strip() == str(OPTMEM)
        yield ns
    finally:
        for pid in run("ip", "netns", "pids", ns).split():  # only what this test started in it
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=30)
        assert OPTMEM_PATH.read_text() == machine  # the machine's own value never changed


def pending(sources: int, knock: int) -> list[tuple[str, int]]:
    """The knock (LOCAL, knock) and three pairs each of `sources - 1` other clients."""
    others = [(f"198.18.{1 + i // 250}.{1 + i % 250}", 20000 + 3 * i + k) for i in range(sources - 1) for k in range(3)]
    return [(LOCAL, knock), *others]


def test_a_refused_knock_filter_falls_back_and_capture_runs_on(stage_env: StageEnv, small_optmem: str) -> None:
    ns = small_optmem
    auth = Auth(stage_env)
    log = open(stage_env.workdir / "capture.log", "ab")  # noqa: SIM115 - owned by the process
    capture = subprocess.Popen(["ip", "netns", "exec", ns, str(VENV_BIN / "python"), "-m", "dynknock.capture.main",
                                "-c", str(stage_env.config)], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    log.close()
    stage_env.processes.append(capture)
    assert auth.filter.recv() == b"\x01"
    auth.heartbeat(lambda fields: True)

    def send(port: int, *datagram: str) -> list[str]:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND, str(port), *datagram],
                             capture_output=True, text=True, check=True, timeout=30).stdout.split()
        assert out[0] == "refused"
        return out[1:]

    knock = free_port()
    exact = auth.knock_filter([])
    assert exact["filter_form"] == "pairs" and exact["filter_refused"] == 0

    # 200 pending clients: exact pairs are ~1,650 instructions, more than 32 KiB of optmem takes.
    held = auth.knock_filter(pending(200, knock))
    assert capture.poll() is None, stage_env.log("capture")
    assert held["filter_form"] in ("sources", "all") and held["filter_refused"] >= 1
    assert held["filter_pairs"] == 1 + 3 * 199
    send(knock)  # the knock's SYN passes the shorter form and reaches auth
    message = auth.packet()
    assert isinstance(message, bus.Syn) and (message.source, message.port) == (LOCAL, knock)

    # Another change as large: the old "sources" program holds so much of the 32 KiB that not even
    # "all" (52 instructions) fits beside it; capture takes it off and attaches a form alone.
    again = auth.knock_filter(pending(201, knock))
    assert capture.poll() is None and again["filter_form"] in ("sources", "all")
    assert again["filter_refused"] > held["filter_refused"]

    # The knocks are done: the exact (empty) filter fits again. The SYN sent first stays in the kernel:
    # the datagram sent after it is the first thing auth gets.
    done = auth.knock_filter([])
    assert done["filter_form"] == "pairs" and done["filter_refused"] == again["filter_refused"]
    p2 = client_payload(proto.PacketType.P2, b"hint-one")
    (source_port,) = send(knock, str(stage_env.control_port), p2.hex())
    assert auth.packet() == bus.Datagram(LOCAL, int(source_port), LOCAL, p2)

    capture.send_signal(signal.SIGTERM)
    assert capture.wait(timeout=10) == 0
    text = stage_env.log("capture")
    assert "Traceback" not in text, text
    # Said once, with the kernel's words and the way out; not once per refusal.
    assert text.count("The kernel refused capture's knock filter") == 1, text
    assert "Cannot allocate memory" in text and "net.core.optmem_max" in text
    assert "Capture stopped." in text
