"""knock-client as a user feels it: the whole process, from start to the service's first byte.

    sudo /opt/dynknock/venv/bin/python bench/client_startup.py [--runs 3] [--spawns 100]
        [--client LABEL=PATH ...] [--tree LABEL=DIR ...] [--json PATH] [--markdown PATH]

ssh's ProxyCommand starts knock-client for every connection, so Python's start-up and
the client's imports are part of every knock. This builds the namespace lab (prefix
"dkcs"), starts the real stack (supervisord.conf, nftables, libpcap) with a sink as the
service (one banner byte on accept, bench/labworker.py), and in the client namespace
measures, for each client under test, side by side and in alternating order:

* ``--proxy -q -k KEYFILE``: process start (just before fork) to the first byte of the
  banner on knock-client's stdout, ``--runs`` runs of ``--spawns`` processes;
* ``--help``: process start to exit; the same for a run that does every import and opens
  the sockets but stops at a missing key file (start-up without the knock), and for the
  client's interpreter alone (``python -c pass``: the floor);
* a password instead of a key file (``--password-stdin``, no --proxy: start to the
  "Door is open" line) against the same with a key file: the difference should be
  scrypt alone; and the password typed at a terminal (a pty, Enter 0.3 s after the prompt):
  Enter to the door line, against scrypt alone plus the knock;
* ``-X importtime`` (PYTHONPROFILEIMPORTTIME=1) of real ``--proxy`` runs: the median
  self time of every module imported, so that a regression shows where it came from.

Clients: ``--client LABEL=PATH`` is an installed ``knock-client`` (default: the lab
venv's); ``--unprivileged`` adds, for each, ``LABEL-unprivileged``: the same client run by an
ordinary account (``nobody``, no capability, its own copy of the key files), which knocks with
connect() where root's client sends the paper's raw SYNs; ``--pair`` adds ``LABEL-pair``: the same
client with a key pair's key file (protocol v3: X25519 and a signature, in pure Python), the server's
key pinned in its HOME; ``--tree LABEL=DIR`` runs the code of a
checkout or ``git archive`` (its ``client`` and ``auth`` packages) with the lab venv's Python, as its console script
would, e.g. the code before a change::

    git archive 84ce791 client auth | tar -x -C /tmp/before
    sudo /opt/dynknock/venv/bin/python bench/client_startup.py --tree before=/tmp/before \\
        --tree after=. --client clean-venv=/tmp/venv/bin/knock-client

Every loop is bounded in count and time; the lab is torn down in ``finally``.
Results go to stdout (and --json / --markdown); docs/BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import secrets
import select
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import med, pct  # bench/figures.py: this script's folder is first on sys.path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
PREFIX = "dkcs"
SINK_PORT = 5201
SERVICE = "bench"
BANNER = b"B"
PASSWORD_USERS = 30  # pw0..pw29, round-robin: a user holds at most max_doors_per_user (8) doors at once
PASSWORD = "correct horse battery staple"
SPAWN_TIMEOUT_S = 10.0


# --- statistics -------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    """'median (min-max)' of per-run figures."""
    if not values:
        return "n/a"
    return f"{med(values):.1f} ({min(values):.1f}-{max(values):.1f})"


# --- the worker, inside the client namespace -----------------------------------------------


def _spawn_first_byte(argv: list[str], stdin_data: bytes | None, env: dict[str, str] | None) -> dict[str, Any]:
    """Start argv; time until its first stdout byte; then end it (EOF on stdin) and reap it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    if stdin_data is not None:
        proc.stdin.write(stdin_data)
        proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], SPAWN_TIMEOUT_S)
    first = os.read(proc.stdout.fileno(), 1) if ready else b""
    elapsed_ms = (time.perf_counter() - t0) * 1000
    proc.stdin.close()  # --proxy: EOF upstream, the sink answers its count and closes
    proc.stdin = None  # communicate() must not flush the closed pipe
    try:
        _, err = proc.communicate(timeout=SPAWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return {"ms": elapsed_ms, "first": first.decode("latin-1"), "rc": proc.returncode,
            "stderr": err.decode(errors="replace")}


TYPING_S = 0.3  # how long after the prompt the typed password's Enter comes


def _typed_password(argv: list[str], password: str) -> dict[str, Any]:
    """knock-client on a terminal (a pty, as getpass wants), the password typed TYPING_S after the
    prompt: ms from Enter to the door line, i.e. what a user waits for after typing."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: knock-client with the pty as its terminal
        try:
            os.execvpe(argv[0], argv, _user_env())
        finally:
            os._exit(127)
    seen = b""
    entered = 0.0
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    row: dict[str, Any] = {"ok": False}
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not entered and b"Password for" in seen:
                time.sleep(TYPING_S)
                entered = time.perf_counter()
                os.write(fd, password.encode() + b"\n")
            elif entered and b"Door is open" in seen:
                row = {"ok": True, "ms": (time.perf_counter() - entered) * 1000}
                break
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not row["ok"]:
        row["output"] = seen.decode(errors="replace")[-300:]
    return row


def _spawn_to_exit(argv: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=SPAWN_TIMEOUT_S, check=False, env=_user_env())
    return {"ms": (time.perf_counter() - t0) * 1000, "rc": done.returncode}


def parse_importtime(stderr: str) -> dict[str, tuple[int, int, int]]:
    """{module: (self us, cumulative us, depth)} from -X importtime lines."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line.split(":", 1)[1].split("|", 2)
        depth = (len(name) - len(name.lstrip(" "))) // 2
        out[name.strip()] = (int(self_us), int(cumulative), depth)
    return out


def _user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell gives knock-client: none of ours (PYTHONDONTWRITEBYTECODE, PYTHONPATH...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(extra)
    return env


def _library_knock(tree: str | None, key: str, server: str, timing: dict[str, float]) -> dict[str, Any]:
    """bench/labworker.py's knock_and_connect with the client code under test (a tree, or the venv's)."""
    if tree is not None and tree not in sys.path:
        sys.path.insert(0, tree)
    if str(BENCH) not in sys.path:
        sys.path.insert(1, str(BENCH))
    import labworker

    result: dict[str, Any] = labworker.knock_and_connect(Path(key), server, SERVICE, labworker.client_timing(timing))
    if "door_ms" in result:
        result["ms"] = result["door_ms"]
    return result


def _phases(argv: list[str]) -> dict[str, Any]:
    """One --proxy run under strace (seccomp-filtered to a few syscalls, so the rest runs at full speed):
    ms from exec to the P1 (first UDP send), the P2 (second), the P3 (first receive), the door's connect
    and the banner written to stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        traced = ["strace", "--seccomp-bpf", "-f", "-ttt", "-o", trace.name, "-e",
                  "trace=execve,sendto,send,recvfrom,recv,connect,write", *argv]
        row = _spawn_first_byte(traced, None, _user_env())
        lines = trace.read().splitlines()
    marks: dict[str, float] = {}
    sends = 0
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) < 3 or "resumed>" in parts[2] and "= -1" in parts[2]:
            continue
        stamp, call = float(parts[1]), parts[2]
        if call.startswith("execve(") and "exec" not in marks:
            marks["exec"] = stamp
        elif call.startswith(("sendto(", "send(")) and "sa_family" not in call:  # UDP: connected, no address
            sends += 1
            marks.setdefault("p1" if sends == 1 else "p2" if sends == 2 else "resend", stamp)
        elif call.startswith(("recvfrom(", "recv(")) and "p3" not in marks and "= -1" not in call:
            marks["p3"] = stamp
        elif call.startswith("connect(") and "p3" in marks and "door" not in marks:
            marks["door"] = stamp
        elif call.startswith("write(1,") and "banner" not in marks:
            marks["banner"] = stamp
    start = marks.get("exec", 0.0)
    row["phases"] = {k: (v - start) * 1000 for k, v in marks.items()}
    row["ok"] = row["first"] == BANNER.decode() and "p1" in marks
    return row


def worker(args: dict[str, Any]) -> None:
    client: list[str] = args["client"]
    server: str = args["server"]
    keys = [str(Path(args["keys_dir"]) / f"u{i}.key") for i in range(int(args["key_count"]))]
    # Run as root, or (an unprivileged client) as nobody by setpriv around this whole worker, so that no
    # exec of setpriv falls into the figures.
    mode = args["mode"]
    if args.get("home"):  # a key-pair client's HOME: its known_servers pins the server's key
        os.environ["HOME"] = str(args["home"])
    deadline = time.monotonic() + float(args.get("max_seconds", 300))
    rows: list[dict[str, Any]] = []
    base = [*client, "-q", "--timeout", "5", "-s", SERVICE]
    count = int(args["count"])
    offset = int(args.get("key_offset", 0))
    pace = float(args.get("pace_s", 0.0))
    next_start = time.monotonic()
    for i in range(count):
        if time.monotonic() > deadline:
            break
        # The server's capture admits 10 datagrams a second per source address (burst 20,
        # capture/fairness.py) and every spawn comes from the client's one address: unpaced,
        # the spawns would measure that limit (a dropped P1 costs a 250 ms resend), not start-up.
        time.sleep(max(0.0, next_start - time.monotonic()))
        next_start = time.monotonic() + pace
        key = keys[(offset + i) % len(keys)]
        if mode == "proxy":
            row = _spawn_first_byte([*base, "--proxy", "-k", key, server], None, _user_env())
            row["ok"] = row["first"] == BANNER.decode()
        elif mode == "importtime":
            env = _user_env(PYTHONPROFILEIMPORTTIME="1")
            row = _spawn_first_byte([*base, "--proxy", "-k", key, server], None, env)
            row["ok"] = row["first"] == BANNER.decode()
            row["modules"] = parse_importtime(row["stderr"])
        elif mode == "keyfile-line":  # the door line on stdout (no --proxy), with a key file
            row = _spawn_first_byte([*base, "-k", key, server], None, _user_env())
            row["ok"] = row["first"] == "D"
        elif mode == "password-line":  # the same with a password: scrypt on top
            row = _spawn_first_byte([*base, "-u", f"pw{(offset + i) % PASSWORD_USERS}", "--password-stdin", server],
                                    (PASSWORD + "\n").encode(), _user_env())
            row["ok"] = row["first"] == "D"
        elif mode == "password-typed":  # a user at a terminal: Enter to the door line
            row = _typed_password([*base, "-u", f"pw{(offset + i) % PASSWORD_USERS}", server], PASSWORD)
        elif mode == "library":  # the knock alone, in this process: bursts and PENDING rounds are visible
            row = _library_knock(args.get("tree"), key, server, args.get("timing", {}))
        elif mode == "phases":  # where the time goes: the syscalls that mark each phase, under strace
            row = _phases([*base, "--proxy", "-k", key, server])
        elif mode == "help":
            row = _spawn_to_exit([*client, "--help"])
            row["ok"] = row["rc"] == 0
        elif mode == "no-key":  # every import and the sockets, no knock: the key file is missing (exit 2)
            row = _spawn_to_exit([*client, "--proxy", "-q", "-k", "/nonexistent/dynknock.key", server])
            row["ok"] = row["rc"] == 2
        elif mode == "python":  # the client's interpreter alone: the floor
            interpreter = Path(client[0]).read_text().splitlines()[0].removeprefix("#!").strip()
            row = _spawn_to_exit([interpreter, "-c", "pass"])
            row["ok"] = row["rc"] == 0
        else:
            raise SystemExit(f"unknown mode {mode}")
        if row["ok"]:
            row.pop("stderr", None)
        else:
            row["stderr"] = str(row.get("stderr", ""))[-300:]
        rows.append(row)
    print(json.dumps(rows))


# --- the lab, as root -------------------------------------------------------------------------


def _wrapper(tree: Path, directory: Path, python: str) -> Path:
    """A console script like pip's, running `tree`'s packages (first on sys.path) with `python`.
    The tree is byte-compiled first, as pip does on install."""
    subprocess.run([python, "-m", "compileall", "-q", str(tree / "dynknock"), str(tree / "client")], check=True)
    script = directory / f"knock-client-{secrets.token_hex(4)}"
    script.write_text(f"#!{python}\nimport sys\nsys.path.insert(0, {str(tree.resolve())!r})\n"
                      "from dynknock.client.main import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return script


def _write_key(path: Path) -> bytes:
    key = secrets.token_bytes(32)
    path.write_text(base64.b64encode(key).decode() + "\n")
    path.chmod(0o600)
    return key


def _machine() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs, {model}, kernel {platform.release()}, Python {platform.python_version()}"


def summarize(results: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"knock-client start-up ({results['date']}; {results['machine']}; load average "
        f"{results['load_start']} at the start, {results['load_end']} at the end)")
    add(f"command: {results['command']}")
    add("")
    add("| client | `--proxy -k`, start to first banner byte: p50 ms, median of runs (range) | p99 ms (range) | "
        "opened | `--help` p50 ms | start-up without the knock p50 ms | interpreter alone p50 ms | "
        "key-file door line p50 ms | password door line p50 ms | difference | scrypt alone p50 ms |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in results["clients"].items():
        runs = r["proxy_runs"]
        p50s = [pct([x["ms"] for x in run if x["ok"]], 50) for run in runs]
        p99s = [pct([x["ms"] for x in run if x["ok"]], 99) for run in runs]
        ok = sum(x["ok"] for run in runs for x in run)
        total = sum(len(run) for run in runs)
        help_p50 = pct([x["ms"] for x in r["help"] if x["ok"]], 50)
        key_line = pct([x["ms"] for x in r["keyfile_line"] if x["ok"]], 50)
        pw_line = pct([x["ms"] for x in r["password_line"] if x["ok"]], 50)
        no_key = pct([x["ms"] for x in r["no_key"] if x["ok"]], 50)
        floor = pct([x["ms"] for x in r["python"] if x["ok"]], 50)
        add(f"| {label} | {spread(p50s)} | {spread(p99s)} | {ok}/{total} | {help_p50:.1f} | {no_key:.1f} | "
            f"{floor:.1f} | {key_line:.1f} | "
            f"{pw_line:.1f} | {pw_line - key_line:.1f} | {med(results['scrypt_ms']):.1f} |")
    add("")
    typed = {label: r.get("password_typed", []) for label, r in results["clients"].items()}
    if any(typed.values()):
        add(f"A password typed at a terminal (a pty; Enter {TYPING_S:g} s after the prompt, as a user types): "
            "ms from Enter to the door line, against the key-file door line's knock (its p50 minus its "
            "start-up without the knock) and scrypt alone:")
        add("")
        add("| client | typed runs ok | Enter to door line p50 ms | scrypt alone p50 ms | key-file knock p50 ms | "
            "left over p50 ms |")
        add("|---|---:|---:|---:|---:|---:|")
        for label, rows in typed.items():
            r = results["clients"][label]
            enter = pct([x["ms"] for x in rows if x["ok"]], 50)
            knock = pct([x["ms"] for x in r["keyfile_line"] if x["ok"]], 50) - \
                pct([x["ms"] for x in r["no_key"] if x["ok"]], 50)
            scrypt_ms = med(results["scrypt_ms"])
            add(f"| {label} | {sum(x['ok'] for x in rows)}/{len(rows)} | {enter:.1f} | {scrypt_ms:.1f} | "
                f"{knock:.1f} | {enter - scrypt_ms - knock:.1f} |")
        add("")
    if any(r["library"] for r in results["clients"].values()):
        add(f"The knock alone (client library in one process, bench/labworker.py's knock_and_connect, timing "
            f"overrides {results.get('timing') or 'none'}, flood {results.get('flood') or 'none'}): key file "
            "read to the banner through the door.")
        add("")
        add("| client | knocks | opened | p50 ms | p90 ms | p99 ms | max ms | opened in the first burst | "
            "PENDING answers | bursts > 1 |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for label, r in results["clients"].items():
            rows = r["library"]
            ok = [x for x in rows if x.get("ok")]
            ms = [x["ms"] for x in ok]
            first = sum(1 for x in ok if x.get("bursts") == 1 and not x.get("pending"))
            add(f"| {label} | {len(rows)} | {len(ok)} | {pct(ms, 50):.1f} | {pct(ms, 90):.1f} | {pct(ms, 99):.1f} | "
                f"{max(ms, default=float('nan')):.1f} | {first} | {sum(x.get('pending', 0) for x in rows)} | "
                f"{sum(1 for x in rows if x.get('bursts', 1) > 1)} |")
        add("")
    for label, r in results["clients"].items():
        phased = [x["phases"] for x in r.get("phases", []) if x.get("ok")]
        if phased:
            phase_names = ("p1", "p2", "p3", "door", "banner")
            add(f"{label}: {len(phased)} --proxy runs under strace, ms from exec (medians): "
                + ", ".join(f"{n} {med([p[n] for p in phased if n in p]):.1f}" for n in phase_names)
                + f"; resends in {sum(1 for p in phased if 'resend' in p)}")
            add("")
    for label, r in results["clients"].items():
        samples = [x["modules"] for x in r["importtime"] if x.get("modules")]
        if not samples:
            continue
        names = {name for sample in samples for name in sample}
        self_us = {name: med([s[name][0] for s in samples if name in s]) for name in names}
        all_us = med([sum(v[0] for v in s.values()) for s in samples])
        top_level = sorted(((med([s[n][1] for s in samples if n in s]), n) for n in names
                            if all(s[n][2] == 0 for s in samples if n in s)), reverse=True)[:8]
        add(f"{label}: -X importtime of {len(samples)} `--proxy` runs (medians): all imports {all_us / 1000:.1f} ms, "
            f"{len(names)} modules. Top level (cumulative ms): "
            + ", ".join(f"{n} {us / 1000:.1f}" for us, n in top_level))
        top_self = sorted(((us, n) for n, us in self_us.items()), reverse=True)[:15]
        add("  heaviest by self ms: " + ", ".join(f"{n} {us / 1000:.2f}" for us, n in top_self))
        add("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(json.loads(base64.b64decode(sys.argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of --spawns --proxy processes per client")
    parser.add_argument("--spawns", type=int, default=100, help="processes per run")
    parser.add_argument("--help-spawns", type=int, default=40)
    parser.add_argument("--password-spawns", type=int, default=10)
    parser.add_argument("--importtime-spawns", type=int, default=10)
    parser.add_argument("--library-knocks", type=int, default=100,
                        help="knocks with the client library in one process (bursts and PENDING rounds counted)")
    parser.add_argument("--timing", type=json.loads, default={}, metavar="JSON",
                        help="client.session.Timing fields for the library knocks, e.g. '{\"knock_gap_s\": 0.002}'")
    parser.add_argument("--phases", type=int, default=0, metavar="N",
                        help="also N --proxy runs under strace, for the time of each phase (exec, P1, P2, P3, door)")
    parser.add_argument("--flood", choices=("syn", "junk", "sized"),
                        help="during the library knocks, bench/labworker.py's flood of this kind from the attacker")
    parser.add_argument("--flood-rate", type=int, default=50_000, metavar="PPS")
    parser.add_argument("--pace", type=float, default=0.25, metavar="SECONDS",
                        help="least time between two process starts (the server's per-source limit: 10 datagrams/s)")
    parser.add_argument("--client", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--unprivileged", action="store_true",
                        help="also run each client as an ordinary account (nobody): its connect() knocks")
    parser.add_argument("--pair", action="store_true",
                        help="also run each client with a key pair's key file (protocol v3)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tests.lab.netlab import NetLab
    from tests.lab.stack import VENV_BIN, LabUser, Stack, prepare_workdir, write_config, write_users

    python = str(VENV_BIN / "python")
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-startup-"))
    os.chmod(workdir, 0o755)
    clients: dict[str, list[str]] = {}
    trees: dict[str, str] = {}
    for spec in args.tree:
        label, _, tree = spec.partition("=")
        clients[label] = [str(_wrapper(Path(tree), workdir, python))]
        trees[label] = str(Path(tree).resolve())
    for spec in args.client:
        label, _, path = spec.partition("=")
        clients[label] = [path]
    if not clients:
        clients["installed"] = [str(VENV_BIN / "knock-client")]
    # label -> the account its worker runs as ("": root) and the key directory it reads.
    unprivileged = {f"{label}-unprivileged": argv for label, argv in clients.items()} if args.unprivileged else {}
    clients.update(unprivileged)
    trees.update({f"{label}-unprivileged": tree for label, tree in trees.items() if args.unprivileged})
    pair = {f"{label}-pair": argv for label, argv in clients.items() if label not in unprivileged} if args.pair else {}
    clients.update(pair)
    trees.update({f"{label}-pair": tree for label, tree in trees.items() if args.pair and label not in unprivileged})
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine(),
        "command": shlex.join(["sudo", python, "bench/client_startup.py", *(sys.argv[1:] if argv is None else argv)]),
        "load_start": Path("/proc/loadavg").read_text().split()[0], "clients": {}, "timing": args.timing,
        "flood": f"{args.flood} at {args.flood_rate}/s" if args.flood else None}
    try:
        with NetLab(PREFIX) as lab:
            keys_dir = workdir / "keys"
            keys_dir.mkdir(mode=0o700)
            # One user per spawn in a round (a user holds at most max_doors_per_user doors at once).
            names = [f"u{i}" for i in range(200)]
            users = [LabUser(n, key=_write_key(keys_dir / f"{n}.key"), services=(SERVICE,)) for n in names]
            nobody_keys = workdir / "keys-nobody"
            if unprivileged:  # an ordinary account's own copy: the client refuses a key file it does not own
                import pwd
                import shutil

                shutil.copytree(keys_dir, nobody_keys)
                (workdir / "home-nobody").mkdir(mode=0o700)  # nobody's own HOME (its config file: none)
                account = pwd.getpwnam("nobody")
                for path in [nobody_keys, *nobody_keys.iterdir(), workdir / "home-nobody"]:
                    os.chown(path, account.pw_uid, account.pw_gid)
            users += [LabUser(f"pw{i}", password=PASSWORD, services=(SERVICE,)) for i in range(PASSWORD_USERS)]
            pair_keys, pair_home = workdir / "keys-pair", workdir / "home-pair"
            prepare_workdir(workdir)
            if pair:  # key-pair users k0..: their seeds as u{i}.key (the worker's names), the server's key pinned
                from dynknock import curve25519
                from dynknock.auth.admin import share_with_service_group
                from dynknock.auth.serverkey import make_server_key
                from dynknock.keys import PAIR_PRIVATE, write_key_file

                server_key = make_server_key(workdir / "server.key")
                share_with_service_group(workdir / "server.key")
                for i in range(len(names)):
                    seed = secrets.token_bytes(32)
                    write_key_file(pair_keys / f"u{i}.key", seed, PAIR_PRIVATE)
                    users.append(LabUser(f"k{i}", public_key=curve25519.ed25519_public_key(seed),
                                         services=(SERVICE,)))
                known = pair_home / ".config" / "dynknock" / "known_servers"
                known.parent.mkdir(parents=True)
                known.write_text(f"{lab.server.ipv4} {server_key.line()}\n")
            write_users(workdir / "users.json", users)
            write_config(workdir / "dynknock.toml", workdir, lab, window_seconds=30,
                         services={SERVICE: f"127.0.0.1:{SINK_PORT}"})
            sink = lab.popen(lab.server, [python, str(BENCH / "labworker.py"), "sink", base64.b64encode(json.dumps(
                {"listen": [f"127.0.0.1:{SINK_PORT}"], "lifetime_s": 1800}).encode()).decode()],
                stdout=subprocess.PIPE, text=True)
            assert sink.stdout is not None
            if '"ready"' not in sink.stdout.readline():
                raise RuntimeError("the sink did not start")
            stack = Stack(lab, workdir, REPO / "supervisord.conf")
            stack.start()
            try:
                from dynknock.keys import derive_master_key

                results["scrypt_ms"] = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    derive_master_key("alice", PASSWORD)
                    results["scrypt_ms"].append((time.perf_counter() - t0) * 1000)
                offset = 0

                def run(label: str, mode: str, count: int) -> list[dict[str, Any]]:
                    nonlocal offset
                    as_nobody = label in unprivileged
                    payload = {"client": clients[label], "server": lab.server.ipv4,
                               "keys_dir": str(nobody_keys if as_nobody else pair_keys if label in pair else keys_dir),
                               "home": str(pair_home) if label in pair else "",
                               "key_count": len(names), "mode": mode, "count": count, "key_offset": offset,
                               "max_seconds": 600, "tree": trees.get(label), "timing": args.timing,
                               "pace_s": 0.0 if mode in ("help", "no-key", "python") else args.pace}
                    offset += count
                    runner = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
                              "--bounding-set=-all", "--no-new-privs", "env", f"HOME={workdir / 'home-nobody'}",
                              "USER=nobody", "LOGNAME=nobody"] if as_nobody else []
                    done = lab.run(lab.client, [*runner, python, __file__, "worker",
                                                base64.b64encode(json.dumps(payload).encode()).decode()],
                                   timeout=700, check=True)
                    rows: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
                    bad = [r for r in rows if not r["ok"]]
                    print(f"[startup] {label} {mode}: {len(rows) - len(bad)}/{len(rows)} ok, p50 "
                          f"{pct([r['ms'] for r in rows if r['ok']], 50):.1f} ms"
                          + (f"; first failure: {bad[0]}" if bad else ""), file=sys.stderr, flush=True)
                    return rows

                for label in clients:
                    results["clients"][label] = {"proxy_runs": [], "help": [], "keyfile_line": [],
                                                 "password_line": [], "password_typed": [], "importtime": [],
                                                 "no_key": [],
                                                 "python": [], "library": []}
                for label in clients:  # warm the page cache and the .pyc files of every client first
                    run(label, "proxy", 3)
                for round_ in range(args.runs):
                    order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                    for label in order:
                        results["clients"][label]["proxy_runs"].append(run(label, "proxy", args.spawns))
                flood: list[subprocess.Popen[str]] = []
                if args.flood and args.library_knocks:
                    # bench/labworker.py's flood from the attacker's namespace, for the library knocks only.
                    mac = lab.run(lab.server, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()
                    flood = [lab.popen(lab.attacker, [python, str(BENCH / "labworker.py"), "flood",
                                                      base64.b64encode(json.dumps({
                                                          "kind": args.flood, "rate": args.flood_rate, "seconds": 600,
                                                          "dst_mac": mac, "src_ip": lab.attacker.ipv4,
                                                          "dst_ip": lab.server.ipv4, "seed": 1}).encode()).decode()],
                                       stdout=subprocess.PIPE, text=True)]
                    time.sleep(2.0)  # the sender builds its frames, then floods
                try:
                    for round_ in range(args.runs if args.library_knocks else 0):
                        order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                        for label in order:
                            if label in pair:  # bench/labworker.py's knock takes symmetric key files only
                                continue
                            results["clients"][label]["library"] += run(label, "library",
                                                                        args.library_knocks // args.runs)
                finally:
                    for proc in flood:
                        proc.terminate()
                        proc.wait(10)
                for label in clients:
                    r = results["clients"][label]
                    r["phases"] = run(label, "phases", args.phases) if args.phases else []
                    r["help"] = run(label, "help", args.help_spawns)
                    r["no_key"] = run(label, "no-key", args.help_spawns)
                    r["python"] = run(label, "python", args.help_spawns)
                    r["keyfile_line"] = run(label, "keyfile-line", args.password_spawns)
                    r["password_line"] = run(label, "password-line", args.password_spawns)
                    r["password_typed"] = run(label, "password-typed", args.password_spawns)
                    r["importtime"] = run(label, "importtime", args.importtime_spawns)
            finally:
                stack.stop()
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    results["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    report = summarize(results)
    print(report)
    if args.markdown:
        args.markdown.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
