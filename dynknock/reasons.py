"""Why a stage is down, said where the admin looks.

A stage that cannot start prints one line saying why ("knock-gate: cannot install ...")
and exits; supervisord keeps that line in the stage's log and says on its own output only
"exited: gate (exit status 2; not expected)". This module finds the line again:

* :func:`why_stopped` picks it out of the tail of a stage's output (pure);
* :class:`Supervisor` asks supervisord, over its control socket (root), for its programs'
  states and output tails: `knock-admin status`, `knock-admin doctor` and the lab use it;
* :func:`main` is an event listener (`[eventlistener:reasons]` in supervisord.conf): when a
  program exits unexpectedly it prints the program's reason on supervisord's own output
  (the terminal of `supervisord -c ...`, the journal of the systemd unit), once per new
  reason, then a count once a minute while the program keeps failing, and a line when it
  runs again.
"""

from __future__ import annotations

import configparser
import re
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_SUPERVISORD_CONF = Path("/etc/dynknock/supervisord.conf")
TAIL_BYTES = 4096  # the end of a program's log that is searched for its reason
REPEAT_EVERY_S = 60.0  # a program failing for the same reason is mentioned again this often

# Lines that say why a program stopped: our programs' one-line errors, the privilege tools'
# and the last line of a Python traceback. Ordinary log lines ("2026-... gate: ...") are not.
_REASON = re.compile(r"^(?:knock-[a-z]+: |dynknock\.\w+: |setpriv: |supervisord: |"
                     r"[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b)")


def why_stopped(tail: str) -> str | None:
    """The last line of a program's output tail that says why it stopped, if any."""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if _REASON.match(line):
            return line
    return None


@dataclass(frozen=True, slots=True)
class ProgramState:
    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED, ...
    running: bool
    reason: str | None = None  # why_stopped of its output, for a program that is not running

    def describe(self) -> str:
        return f"{self.state.lower()} (supervisord): {self.reason or 'no error line at the end of its log'}"


class SupervisorUnreachable(Exception):
    """supervisord's control socket cannot be reached; the message says why, in one line."""


class Supervisor:
    """supervisord's XML-RPC interface, at the serverurl of a supervisord.conf or the one given."""

    def __init__(self, serverurl: str) -> None:
        from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

        self.serverurl = serverurl
        # ServerProxy wants an http URL; the transport goes to serverurl (a unix socket) whatever it says.
        self._proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport("", "", serverurl))

    @classmethod
    def from_conf(cls, conf: Path) -> Supervisor:
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
        try:
            with conf.open(encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as exc:
            raise SupervisorUnreachable(f"cannot read {conf}: {exc.strerror}") from None
        except configparser.Error as exc:
            raise SupervisorUnreachable(f"{conf} is not a supervisord.conf: {exc}") from None
        serverurl = parser.get("supervisorctl", "serverurl", fallback="")
        if not serverurl:
            raise SupervisorUnreachable(f"{conf} has no [supervisorctl] serverurl")
        return cls(serverurl)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except PermissionError:
            raise SupervisorUnreachable(f"no access to {self.serverurl} (run as root)") from None
        except OSError as exc:
            raise SupervisorUnreachable(f"supervisord is not running at {self.serverurl} "
                                        f"({exc.strerror or exc})") from None
        except (xmlrpc.client.Fault, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorUnreachable(f"supervisord at {self.serverurl}: {exc}") from None

    def tail(self, name: str, length: int = TAIL_BYTES) -> str:
        text, _, _ = self._call("tailProcessStdoutLog", name, 0, length)
        return str(text)

    def programs(self) -> list[ProgramState]:
        states = []
        for info in self._call("getAllProcessInfo"):
            name, state = str(info["name"]), str(info["statename"])
            # STARTING is a first start, or a restart in a loop of failures: its log tells which.
            if state == "RUNNING" or (state == "STARTING" and not info.get("stop")):
                states.append(ProgramState(name, state, True))
                continue
            reason = why_stopped(self.tail(name))
            states.append(ProgramState(name, state, state == "STARTING" and reason is None, reason))
        return states


# --- the event listener ----------------------------------------------------------------------

@dataclass
class Failing:
    reason: str
    count: int = 1
    told_at: float = 0.0


@dataclass
class ReasonTeller:
    """Decides what the listener says about one event (pure: time and the reason are passed in)."""

    repeat_every_s: float = REPEAT_EVERY_S
    failing: dict[str, Failing] = field(default_factory=dict)

    def on_failure(self, program: str, reason: str, now: float) -> str | None:
        known = self.failing.get(program)
        if known is None or known.reason != reason:
            self.failing[program] = Failing(reason, 1, now)
            return f"dynknock: {program} stopped: {reason}"
        known.count += 1
        if now - known.told_at >= self.repeat_every_s:
            known.told_at = now
            return f"dynknock: {program} still failing ({known.count} times): {reason}"
        return None

    def on_running(self, program: str) -> str | None:
        known = self.failing.pop(program, None)
        if known is None:
            return None
        return f"dynknock: {program} is running again (after {known.count} failure{'s' * (known.count > 1)})"


def _headers(line: str) -> dict[str, str]:
    return dict(part.split(":", 1) for part in line.split() if ":" in part)


def listen(stdin: TextIO, stdout: TextIO, stderr: TextIO, supervisor: Supervisor,
           clock: Any = time.monotonic) -> None:
    """supervisord's event listener protocol: READY, one event, RESULT; forever."""
    teller = ReasonTeller()
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return  # supervisord is gone
        headers = _headers(line)
        payload = _headers(stdin.read(int(headers.get("len", "0"))).split("\n", 1)[0])
        program = payload.get("processname", "?")
        event = headers.get("eventname", "")
        said: str | None = None
        if event == "PROCESS_STATE_RUNNING":
            said = teller.on_running(program)
        elif event in ("PROCESS_STATE_BACKOFF", "PROCESS_STATE_FATAL") or \
                (event == "PROCESS_STATE_EXITED" and payload.get("expected") == "0"):
            try:
                reason = why_stopped(supervisor.tail(program)) or "it printed no reason (see its log)"
            except SupervisorUnreachable as exc:
                reason = f"its log cannot be read: {exc}"
            said = teller.on_failure(program, reason, clock())
            if event == "PROCESS_STATE_FATAL":
                said = f"dynknock: {program} given up by supervisord: {reason}"
        if said is not None:
            print(said, file=stderr, flush=True)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main() -> int:
    import os

    url = os.environ.get("SUPERVISOR_SERVER_URL")
    if not url:
        print("dynknock.reasons: run by supervisord as an event listener (SUPERVISOR_SERVER_URL unset)",
              file=sys.stderr)
        return 2
    listen(sys.stdin, sys.stdout, sys.stderr, Supervisor(url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
