"""`knock-admin doctor`: check a server's setup and say what to fix, one line per thing.

Each check looks at one thing a stage needs (the config, the service user, the interface
and its addresses, libpcap on it, the kernel's view of the gate's ruleset, the users file,
the state and runtime directories, each service's target, supervisord and its programs)
and returns findings; a problem names what is wrong and how to fix it. The gate's ruleset
is checked by the gate's own program (`knock-gate --check`: a dry run in the kernel), so the
words are those the gate would print if it failed to start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dynknock.auth.users import UsersFileError, load_users
from dynknock.config import Config, ConfigError, load
from dynknock.keys import secret_file_problem
from dynknock.reasons import Supervisor, SupervisorUnreachable

OK, PROBLEM, NOTE = "ok", "FAIL", "note"


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # OK, PROBLEM or NOTE
    subject: str
    text: str


Check = Callable[[Config], Iterator[Finding]]


def _program(name: str) -> str:
    """A program of this install (the venv's bin beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def check_user(config: Config) -> Iterator[Finding]:
    try:
        entry = pwd.getpwnam(config.run_as)
    except KeyError:
        yield Finding(PROBLEM, "user", f"server.run_as user {config.run_as!r} does not exist "
                                       f"(scripts/setup.sh makes it; key server.run_as in {config.path})")
        return
    yield Finding(OK, "user", f"{config.run_as} (uid {entry.pw_uid})")


def _interface_addresses(interface: str) -> set[str] | None:
    done = subprocess.run(["ip", "-j", "address", "show", "dev", interface], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        return None
    return {str(ipaddress.ip_address(a["local"])) for link in json.loads(done.stdout or "[]")
            for a in link.get("addr_info", [])}


def check_interface(config: Config) -> Iterator[Finding]:
    interface = config.interface
    if not Path("/sys/class/net", interface).exists():
        have = ", ".join(sorted(p.name for p in Path("/sys/class/net").iterdir()))
        yield Finding(PROBLEM, "interface", f"server.interface = {interface!r} in {config.path}: no such interface "
                                            f"(this machine has: {have})")
        return
    state = Path("/sys/class/net", interface, "operstate").read_text().strip()
    if state == "down":
        yield Finding(PROBLEM, "interface", f"{interface} is down (ip link set {interface} up)")
    addresses = _interface_addresses(interface) or set()
    missing = [a for a in config.addresses if str(ipaddress.ip_address(a)) not in addresses]
    if missing:
        yield Finding(PROBLEM, "addresses", f"server.addresses {', '.join(missing)} in {config.path} "
                                            f"{'is' if len(missing) == 1 else 'are'} not on {interface} "
                                            f"(it has: {', '.join(sorted(addresses)) or 'none'}): capture takes "
                                            "only packets sent to these addresses")
    else:
        yield Finding(OK, "interface", f"{interface} ({state}), addresses {', '.join(config.addresses)}")


def check_capture(config: Config) -> Iterator[Finding]:
    if os.geteuid() != 0:
        yield Finding(NOTE, "capture", "not checked: opening libpcap needs root (run knock-admin doctor as root)")
        return
    if not Path("/sys/class/net", config.interface).exists():
        return  # said above
    try:
        import pcap

        handle = pcap.pcap(name=config.interface, promisc=False, immediate=True, timeout_ms=10)
        handle.setfilter(f"udp dst port {config.control_port}")
        del handle
    except ImportError:
        yield Finding(PROBLEM, "capture", "pypcap is not installed (scripts/setup.sh installs it)")
        return
    except OSError as exc:
        yield Finding(PROBLEM, "capture", f"libpcap cannot open {config.interface}: {exc}")
        return
    yield Finding(OK, "capture", f"libpcap opens {config.interface} and takes a filter")


def check_gate(config: Config) -> Iterator[Finding]:
    if config.gate_backend == "none":
        yield Finding(NOTE, "gate", f'gate.backend = "none" in {config.path}: no firewall; door ports are '
                                    "guarded by the relay's address check only")
        return
    if os.geteuid() != 0:
        yield Finding(NOTE, "gate", "not checked: the kernel's dry run of the ruleset needs CAP_NET_ADMIN (root)")
        return
    done = subprocess.run([_program("knock-gate"), "-c", config.path, "--check"], capture_output=True, text=True,
                          check=False, timeout=30)
    said = (done.stderr or done.stdout).strip().splitlines()
    line = said[-1].removeprefix("knock-gate: ") if said else f"knock-gate --check exited {done.returncode}"
    yield Finding(OK if done.returncode == 0 else PROBLEM, "gate", line)


def check_users_file(config: Config) -> Iterator[Finding]:
    path = config.users_file
    try:
        st = path.stat()
    except FileNotFoundError:
        yield Finding(PROBLEM, "users", f"{path} does not exist (knock-admin add NAME makes it; key server.users_file "
                                        f"in {config.path})")
        return
    problem = secret_file_problem(st, path, group_may_read=True)
    if problem:
        yield Finding(PROBLEM, "users", f"{path}: {problem}")
        return
    try:
        users = load_users(path)
    except UsersFileError as exc:
        yield Finding(PROBLEM, "users", str(exc))
        return
    try:
        service = pwd.getpwnam(config.run_as)
    except KeyError:
        service = None
    if service is not None and st.st_uid != service.pw_uid and not (
            st.st_gid == service.pw_gid and st.st_mode & stat.S_IRGRP):
        yield Finding(PROBLEM, "users", f"{path}: {config.run_as} cannot read it (chgrp {config.run_as} {path}; "
                                        f"chmod 640 {path})")
        return
    yield Finding(OK if users else NOTE, "users",
                  f"{path}: {len(users)} user{'s' * (len(users) != 1)}" + ("" if users else " (knock-admin add NAME)"))


def _directory(config: Config, subject: str, path: Path, mode: int, key: str, made_by: str) -> Iterator[Finding]:
    try:
        st = path.stat()
    except FileNotFoundError:
        yield Finding(NOTE, subject, f"{path} does not exist yet ({made_by})")
        return
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    if owner != config.run_as or stat.S_IMODE(st.st_mode) & ~mode:
        yield Finding(PROBLEM, subject, f"{path} is {owner}'s, mode {stat.S_IMODE(st.st_mode):04o}: the stages want "
                                        f"it {config.run_as}'s, mode {mode:04o} at most (chown {config.run_as} "
                                        f"{path}; chmod {mode:o} {path}; key {key} in {config.path})")
        return
    yield Finding(OK, subject, f"{path} ({owner}, {stat.S_IMODE(st.st_mode):04o})")


def check_directories(config: Config) -> Iterator[Finding]:
    yield from _directory(config, "state", config.state_dir, 0o700, "server.state_dir", "scripts/setup.sh makes it")
    if config.bus_transport == "ipc":
        yield from _directory(config, "runtime", config.runtime_dir, 0o750, "bus.runtime_dir",
                              "each stage's start makes it")


def check_services(config: Config) -> Iterator[Finding]:
    if not config.services:
        yield Finding(PROBLEM, "services", f"no [services.NAME] in {config.path}: no door can lead anywhere")
    for name, service in sorted(config.services.items()):
        try:
            with socket.create_connection((service.host, service.port), timeout=1.0):
                pass
        except OSError as exc:
            yield Finding(PROBLEM, f"service {name}", f"{service.host}:{service.port} does not answer "
                                                      f"({exc.strerror or exc}): is the service running there?")
            continue
        yield Finding(OK, f"service {name}", f"{service.host}:{service.port} answers ({service.forward} doors)")


def check_supervisord(supervisord_conf: Path) -> Iterator[Finding]:
    try:
        programs = Supervisor.from_conf(supervisord_conf).programs()
    except SupervisorUnreachable as exc:
        yield Finding(NOTE, "supervisord", str(exc))
        return
    for program in programs:
        if program.running:
            yield Finding(OK, program.name, f"{program.state.lower()} (supervisord)")
        else:
            yield Finding(PROBLEM, program.name, program.describe())


CHECKS: tuple[Check, ...] = (check_user, check_interface, check_capture, check_gate, check_users_file,
                             check_directories, check_services)


def examine(config_path: Path, supervisord_conf: Path) -> list[Finding]:
    try:
        config = load(config_path)
    except ConfigError as exc:
        return [Finding(PROBLEM, "config", str(exc))]
    findings = [Finding(OK, "config", str(config_path))]
    for check in CHECKS:
        findings += check(config)
    findings += check_supervisord(supervisord_conf)
    return findings


def render(findings: list[Finding]) -> str:
    width = max(len(f.subject) for f in findings)
    lines = [f"{f.level:<4}  {f.subject:<{width}}  {f.text}" for f in findings]
    problems = sum(f.level == PROBLEM for f in findings)
    lines.append(f"{problems} problem{'s' * (problems != 1)}." if problems else "No problem found.")
    return "\n".join(lines)
