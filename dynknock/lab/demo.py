"""knock-demo: the whole system on this one machine, in network namespaces.

Builds a server, a client and an attacker namespace on a bridge; starts a real
sshd on the server's 127.0.0.1:22 only, and the dynknock stack with
`supervisord -c supervisord.conf`; then shows that the attacker sees nothing,
knocks from the client with knock-client, runs ssh through the door, and prints
what knock-tap saw on the bus. Everything is torn down at the end, also on
failure or Ctrl-C. Needs root.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynknock.config import load
from dynknock.lab.netlab import LabUnavailable, NetLab, require_lab_support, start_sshd
from dynknock.lab.stack import VENV_BIN, Stack, prepare_workdir, wait_subscribed, write_config
from dynknock.protocol import CONTROL_PORT
from dynknock.topics import Topic

PASSWORD = "demo password, not a secret"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--supervisord-conf", default=str(Path.cwd() / "supervisord.conf"),
                        help="the supervisord.conf to run (default: ./supervisord.conf)")
    parser.add_argument("--prefix", default="dkdemo", help="namespace name prefix")
    args = parser.parse_args(argv)
    conf = Path(args.supervisord_conf)
    if not conf.is_file():
        print(f"knock-demo: {conf} not found (run from the checkout, or pass --supervisord-conf)", file=sys.stderr)
        return 2
    try:
        require_lab_support()
    except LabUnavailable as exc:  # one line saying what this machine lacks, not a traceback
        print(f"knock-demo: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-demo-"))
    with NetLab(args.prefix) as lab:
        say(f"Network: server {lab.server.ipv4}, client {lab.client.ipv4}, attacker {lab.attacker.ipv4} "
            f"(namespaces {', '.join(lab.namespaces)})")
        prepare_workdir(workdir)
        write_config(workdir / "dynknock.toml", workdir, lab)
        say(f"knock-admin add alice --services ssh   (users file {workdir / 'users.json'})")
        added = subprocess.run([str(VENV_BIN / "knock-admin"), "--users-file", str(workdir / "users.json"), "add",
                                "alice", "--services", "ssh"], input=PASSWORD + "\n", capture_output=True, text=True)
        print(f"   {added.stdout.strip() or added.stderr.strip()}")
        if added.returncode != 0:
            return 1
        sshd = start_sshd(lab, lab.server, workdir / "ssh")
        say("sshd listens on the server's 127.0.0.1:22 only; starting dynknock with "
            f"supervisord -c {conf}")
        stack = Stack(lab, workdir, conf)
        tap = None
        try:
            try:
                stack.start()
            except RuntimeError as exc:  # e.g. a stage that cannot start here: say which, no traceback
                print(f"knock-demo: {exc}", file=sys.stderr)
                return 1
            # Every topic by the stages' prefixes, not by "" (which the metrics program has taken already):
            # the bus passes a prefix on only when it is new, so wait_subscribed sees this tap join.
            prefixes = sorted({topic.split(".")[0] + "." for topic in Topic})
            tap = subprocess.Popen([str(VENV_BIN / "knock-tap"), "--endpoint", stack.endpoints.tap,
                                    *(f"--topic={prefix}" for prefix in prefixes)], stdout=subprocess.PIPE, text=True)
            wait_subscribed(stack.endpoints.events, prefixes)
            say("The attacker scans the control port and a door port: no answer at all")
            door_port = load(workdir / "dynknock.toml").door_port_low  # one of the door range
            for port in (CONTROL_PORT, 22, door_port):
                print(f"   attacker -> {lab.server.ipv4}:{port}: "
                      f"{lab.tcp_probe(lab.attacker, lab.server.ipv4, port, timeout=0.5)}")
            ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv("{host}"))
            command = f"{ssh} -p {{port}} 'echo hello from $(hostname) through the door; uname -sr'"
            say(f"The client knocks as alice and runs ssh through the door:\n   knock-client -u alice "
                f"--exec 'ssh -p {{port}} {{host}} ...' {lab.server.ipv4}")
            started = time.monotonic()
            done = lab.run(lab.client, [str(VENV_BIN / "knock-client"), "-u", "alice", "--password-stdin",
                                        "--exec", command, lab.server.ipv4],
                           input=PASSWORD + "\n", check=False, timeout=60)
            print(done.stderr.rstrip())
            say(f"ssh said (exit {done.returncode}, {time.monotonic() - started:.2f} s from knock to done):")
            print(done.stdout.rstrip())
            time.sleep(1.0)  # not a handshake: the session's last events are still on their way to knock-tap
        finally:
            if tap is not None:
                tap.terminate()
                events, _ = tap.communicate(timeout=5)
                say("What knock-tap saw on the bus:")
                print(events.rstrip())
            stack.stop()
    say(f"Torn down: namespaces, processes and the nftables table are gone (work files in {workdir}).")
    return 0 if done.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
