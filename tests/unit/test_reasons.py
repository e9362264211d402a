"""dynknock.reasons: the line that says why a stage stopped, and the listener that tells it."""

from __future__ import annotations

import io

import pytest

from dynknock import reasons
from dynknock.gate import core

GATE_TAIL = """\
2026-12-05T05:54:19+0000 gate: nftables table inet dynknock ready (via libnftables): doors 63000-65535, stealth.
knock-gate: cannot install the nftables table inet dynknock: nft said "Error: Could not resolve protocol name"
"""
TRACEBACK_TAIL = """\
2026-12-05T05:54:19+0000 auth: Auth started.
Traceback (most recent call last):
  File "/opt/dynknock/venv/bin/knock-auth", line 8, in <module>
    sys.exit(main())
zmq.error.ZMQError: Address already in use (addr='ipc:///run/dynknock/packets')
"""


@pytest.mark.parametrize(("tail", "expected"), [
    (GATE_TAIL, 'knock-gate: cannot install the nftables table inet dynknock: nft said '
                '"Error: Could not resolve protocol name"'),
    (TRACEBACK_TAIL, "zmq.error.ZMQError: Address already in use (addr='ipc:///run/dynknock/packets')"),
    ("setpriv: unknown user dynknock\n", "setpriv: unknown user dynknock"),
    ("dynknock.rundir: /run/dynknock is owned by uid 1000\n", "dynknock.rundir: /run/dynknock is owned by uid 1000"),
    ("knock-capture: cannot open interface 'eth9'\n\n\n", "knock-capture: cannot open interface 'eth9'"),
])
def test_the_reason_is_the_last_error_line(tail: str, expected: str) -> None:
    assert reasons.why_stopped(tail) == expected


@pytest.mark.parametrize("tail", ["", "2026-12-05T05:54:19+0000 gate: ready.\n", "   File x\n    y\n"])
def test_ordinary_log_lines_are_no_reason(tail: str) -> None:
    assert reasons.why_stopped(tail) is None


def test_the_teller_says_a_reason_once_then_counts_once_a_minute() -> None:
    teller = reasons.ReasonTeller(repeat_every_s=60)
    assert teller.on_failure("gate", "knock-gate: x", 0.0) == "dynknock: gate stopped: knock-gate: x"
    assert teller.on_failure("gate", "knock-gate: x", 1.0) is None
    assert teller.on_failure("gate", "knock-gate: x", 30.0) is None
    assert teller.on_failure("gate", "knock-gate: x", 61.0) == "dynknock: gate still failing (4 times): knock-gate: x"
    assert teller.on_failure("gate", "knock-gate: x", 62.0) is None
    # A new reason is said at once.
    assert teller.on_failure("gate", "knock-gate: y", 63.0) == "dynknock: gate stopped: knock-gate: y"
    # Another program has its own count.
    assert teller.on_failure("capture", "knock-capture: z", 63.0) == "dynknock: capture stopped: knock-capture: z"
    assert teller.on_running("gate") == "dynknock: gate is running again (after 1 failure)"
    assert teller.on_running("gate") is None  # was not failing any more


class FakeSupervisor(reasons.Supervisor):
    def __init__(self, tails: dict[str, str]) -> None:
        self.tails = tails
        self.serverurl = "unix:///nowhere"

    def tail(self, name: str, length: int = reasons.TAIL_BYTES) -> str:
        return self.tails[name]


def event(name: str, payload: str) -> str:
    return f"ver:3.0 server:supervisor serial:1 pool:reasons poolserial:1 eventname:{name} len:{len(payload)}\n" \
           + payload


def test_the_listener_speaks_supervisords_protocol_and_tells_unexpected_exits() -> None:
    stdin = io.StringIO(
        event("PROCESS_STATE_BACKOFF", "processname:gate groupname:gate from_state:STARTING tries:0")
        + event("PROCESS_STATE_EXITED", "processname:relay groupname:relay from_state:RUNNING expected:1 pid:7")
        + event("PROCESS_STATE_BACKOFF", "processname:gate groupname:gate from_state:STARTING tries:1")
        + event("PROCESS_STATE_RUNNING", "processname:gate groupname:gate from_state:STARTING pid:9"))
    stdout, stderr = io.StringIO(), io.StringIO()
    reasons.listen(stdin, stdout, stderr, FakeSupervisor({"gate": GATE_TAIL, "relay": ""}), clock=lambda: 0.0)
    # Four events, four results, then READY for a fifth that never comes (stdin ended).
    assert stdout.getvalue() == "READY\nRESULT 2\nOK" * 4 + "READY\n"
    said = stderr.getvalue().splitlines()
    assert said == ['dynknock: gate stopped: knock-gate: cannot install the nftables table inet dynknock: '
                    'nft said "Error: Could not resolve protocol name"',
                    "dynknock: gate is running again (after 2 failures)"]  # an expected exit says nothing


@pytest.mark.parametrize(("error", "cause"), [
    ("Error: Could not resolve protocol name", "/etc/protocols"),
    ("Error: Could not resolve service name", "/etc/services"),
    ("Error: Could not process rule: Operation not permitted", "CAP_NET_ADMIN"),
    ("Error: Could not process rule: No such file or directory", "modprobe"),
    ("cannot run /usr/sbin/nft: No such file or directory", "apt-get install nftables"),
    ("Error: something new", "nft -c -f"),
])
def test_nft_errors_are_explained_by_their_likely_cause(error: str, cause: str) -> None:
    assert cause in core.explain_nft_error(error)


def test_os_errors_of_the_gate_are_explained() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/proc/sys/net/ipv4/conf/eth9/route_localnet")
    assert core.explain_os_error(missing) == "there is no interface 'eth9' (server.interface)"
    denied = PermissionError(13, "Permission denied", "/proc/sys/net/netfilter/nf_conntrack_acct")
    assert "CAP_NET_ADMIN" in core.explain_os_error(denied)
