"""The network lab: a private, disposable network of Linux network namespaces.

knock-demo runs the whole stack in it, and so do the end-to-end tests and the
benchmarks (through tests/lab/netlab.py, which adds what only they use), so that
firewall rules, sniffers and daemons work for real without touching the machine's
own network:

    {prefix}-br    holds bridge br0, the "switch" every host is plugged into
    {prefix}-srv   server   198.18.0.1/24  2001:db8:d::1/64  (eth0)
    {prefix}-cli   client   198.18.0.2/24  2001:db8:d::2/64  (eth0)
    {prefix}-atk   attacker 198.18.0.3/24  2001:db8:d::3/64  (eth0)

Only addresses reserved for benchmarking (198.18.0.0/15, RFC 2544) and for
documentation (2001:db8::/32, RFC 3849) are used, so nothing in the lab can
ever be confused with, or routed to, a real network.

Everything here needs root (namespaces, veth pairs, sshd). Callers should run
require_privileges() first so that a missing privilege is a loud failure
rather than a silently skipped test.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "ATTACKER_IPV4",
    "ATTACKER_IPV6",
    "CLIENT_IPV4",
    "CLIENT_IPV6",
    "DEFAULT_PREFIX",
    "IPV4_PREFIXLEN",
    "IPV6_PREFIXLEN",
    "LAB_INTERFACE",
    "SERVER_IPV4",
    "SERVER_IPV6",
    "SSH_HOST_KEY_ALIAS",
    "CommandError",
    "Host",
    "LabUnavailable",
    "NetLab",
    "SshdInfo",
    "explain_netns_failure",
    "check_ipv4",
    "explain_nft_failure",
    "require_lab_support",
    "require_privileges",
    "run_plain",
    "signal_group",
    "start_sshd",
]

DEFAULT_PREFIX = "dk"

# The name the lab gives to each host's link to the bridge. Fixed so that
# code under test can be configured with a constant interface name.
LAB_INTERFACE = "eth0"

IPV4_PREFIXLEN = 24
IPV6_PREFIXLEN = 64
SERVER_IPV4 = "198.18.0.1"
CLIENT_IPV4 = "198.18.0.2"
ATTACKER_IPV4 = "198.18.0.3"
SERVER_IPV6 = "2001:db8:d::1"
CLIENT_IPV6 = "2001:db8:d::2"
ATTACKER_IPV6 = "2001:db8:d::3"

# The host key is recorded in known_hosts under this alias rather than under
# an address, so ssh can verify the lab's sshd whatever address or port
# (e.g. a knock-opened forwarded port) it reaches it through.
SSH_HOST_KEY_ALIAS = "dynknock-lab"

# The only IPv4 space the lab may ever use (RFC 2544 benchmarking block).
_ALLOWED_IPV4 = ipaddress.IPv4Network("198.18.0.0/15")

# How long teardown lets a process react to SIGTERM before SIGKILL.
_TERM_GRACE_S = 3.0

_BRIDGE = "br0"


class CommandError(subprocess.CalledProcessError):
    """A lab command failed; unlike the base class, str() shows its output.

    Subclassing CalledProcessError keeps `except CalledProcessError` working
    for callers, while the message carries stderr so that a failing test
    explains itself without rerunning anything by hand.
    """

    def __str__(self) -> str:
        stderr = _as_text(self.stderr).strip()
        stdout = _as_text(self.output).strip()
        message = f"command {self.cmd!r} exited with status {self.returncode}"
        if stderr:
            message += f"\n--- stderr ---\n{stderr}"
        if stdout:
            message += f"\n--- stdout ---\n{stdout}"
        return message


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def check_ipv4(address: str) -> str:
    # A guard, not a formality: a lab address outside 198.18.0.0/15 could
    # leak onto, or shadow, a real network if a namespace were misconfigured.
    if ipaddress.IPv4Address(address) not in _ALLOWED_IPV4:
        raise ValueError(f"{address} is outside {_ALLOWED_IPV4}")
    return address


@dataclass(frozen=True)
class Host:
    """One machine of the lab: its namespace and its addresses on eth0."""

    role: str
    ns: str
    ipv4: str
    ipv6: str
    bridge_port: str
    interface: str = LAB_INTERFACE
    ipv4_prefixlen: int = IPV4_PREFIXLEN
    ipv6_prefixlen: int = IPV6_PREFIXLEN

    @property
    def ipv4_cidr(self) -> str:
        return f"{self.ipv4}/{self.ipv4_prefixlen}"

    @property
    def ipv6_cidr(self) -> str:
        return f"{self.ipv6}/{self.ipv6_prefixlen}"


def require_privileges() -> None:
    """Raise RuntimeError unless this process can build a lab.

    Tests call this instead of skipping: an e2e suite that quietly skips on
    an unprivileged machine looks green while testing nothing.
    """
    if os.geteuid() != 0:
        raise RuntimeError(
            f"dynknock.lab.netlab needs root (network namespaces, veth, sshd); running as uid {os.geteuid()}"
        )
    if shutil.which("ip") is None:
        raise RuntimeError("dynknock.lab.netlab needs iproute2's `ip` in PATH")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"`ip netns` is unavailable (exit {probe.returncode}): {probe.stderr.strip()}")


class LabUnavailable(RuntimeError):
    """This machine cannot build the lab; str() is one line saying what is missing."""


def explain_netns_failure(stderr: str) -> str:
    """One line for a failed `ip netns exec`, from what ip said."""
    said = next((line.strip() for line in stderr.splitlines() if line.strip()), "no message")
    if "make-rslave" in said or "make-rprivate" in said:
        return (f"`ip netns exec` does not work here ({said}): / must be a mount point; in a chroot or "
                f"container run `mount --bind / /` first")
    return f"`ip netns exec` does not work here: {said}"


def explain_nft_failure(stderr: str | None) -> str:
    """One line for nft failing in a fresh namespace (None: the nft command itself is missing)."""
    if stderr is None:
        return "nftables is not installed: the `nft` command is missing (apt-get install nftables)"
    said = next((line.strip() for line in stderr.splitlines() if line.strip()), "no message")
    return (f"nftables is not usable in this kernel ({said}): load it with `modprobe nf_tables` "
            f"or use a kernel with CONFIG_NF_TABLES")


_LAB_SUPPORTED = False


def require_lab_support(probe: str = "dkprobe") -> None:
    """Raise LabUnavailable (one line) unless namespaces, `ip netns exec` and nftables all work.

    The namespace probe runs once per process, in a throw-away namespace, so that neither the
    machine's own firewall nor any lab is touched; require_privileges() runs every time.
    """
    global _LAB_SUPPORTED
    try:
        require_privileges()  # every time: cheap, and privileges can change (tests drop them)
    except RuntimeError as exc:
        raise LabUnavailable(str(exc)) from None
    if _LAB_SUPPORTED:
        return
    _delete_namespace(probe)
    added = run_plain(["ip", "netns", "add", probe], check=False)
    if added.returncode != 0:
        raise LabUnavailable(f"cannot create a network namespace: {added.stderr.strip() or added.returncode}")
    try:
        entered = run_plain(["ip", "netns", "exec", probe, "true"], check=False)
        if entered.returncode != 0:
            raise LabUnavailable(explain_netns_failure(entered.stderr))
        if shutil.which("nft") is None:
            raise LabUnavailable(explain_nft_failure(None))
        nft = run_plain(["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "dkprobe"], check=False)
        if nft.returncode != 0:
            raise LabUnavailable(explain_nft_failure(nft.stderr))
    finally:
        run_plain(["ip", "netns", "del", probe], check=False)
    _LAB_SUPPORTED = True


def run_plain(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the calling namespace, raising CommandError on failure."""
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
        # No stdin by default: a command that unexpectedly prompts must fail,
        # not hang a test run waiting on the terminal.
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise CommandError(result.returncode, list(argv), output=result.stdout, stderr=result.stderr)
    return result


def _existing_namespaces() -> set[str]:
    listing = run_plain(["ip", "netns", "list"]).stdout
    # Lines look like "dk-srv (id: 3)" or just "dk-srv".
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def _namespace_pids(ns: str) -> list[int]:
    result = run_plain(["ip", "netns", "pids", ns], check=False)
    if result.returncode != 0:
        return []
    return [int(tok) for tok in result.stdout.split() if tok.isdigit()]


def _kill_namespace_pids(ns: str) -> list[int]:
    """Stop every process still living in `ns`, by PID; return survivors.

    Deleting a namespace only unlinks its name: processes inside keep it
    (and their sockets, and any veth in it) alive. Whatever is still in a
    lab namespace at teardown was started there through the lab, e.g. a
    daemon that forked away from its process group, or sshd's per-connection
    children, which call setsid().
    """
    own = os.getpid()
    pids = [pid for pid in _namespace_pids(ns) if pid != own]
    if not pids:
        return []
    for pid in pids:
        _signal_pid(pid, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_GRACE_S
    remaining = pids
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        # Re-list instead of probing each PID: a zombie no longer belongs to
        # any namespace, so it drops off this list once it has exited.
        alive = set(_namespace_pids(ns))
        remaining = [pid for pid in remaining if pid in alive]
    for pid in remaining:
        _signal_pid(pid, signal.SIGKILL)
    deadline = time.monotonic() + _TERM_GRACE_S
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = set(_namespace_pids(ns))
        remaining = [pid for pid in remaining if pid in alive]
    return remaining


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group that may be gone already: one process's end must never stop the
    teardown of the others, or their processes would outlive the lab."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _delete_namespace(ns: str) -> None:
    """Delete `ns`, stopping what still runs inside; absent is fine."""
    if ns not in _existing_namespaces():
        return
    survivors = _kill_namespace_pids(ns)
    result = run_plain(["ip", "netns", "del", ns], check=False)
    # Checking existence afterwards, rather than matching the error text,
    # also copes with another process deleting it concurrently.
    if result.returncode != 0 and ns in _existing_namespaces():
        raise CommandError(
            result.returncode,
            ["ip", "netns", "del", ns],
            output=result.stdout,
            stderr=result.stderr,
        )
    if survivors:
        raise RuntimeError(f"processes {survivors} in namespace {ns} survived SIGKILL")


class NetLab:
    """A bridge plus server, client and attacker namespaces.

    Use as a context manager: entering builds the lab (after removing any
    leftovers of a crashed run with the same prefix), leaving stops every
    process started through the lab and deletes all its namespaces, also
    when the block raised.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        # Namespace names become file names under /run/netns; keep them
        # simple so they are also safe inside ip's batch syntax and logs.
        if not prefix or not all(c.isalnum() or c in "-_" for c in prefix):
            raise ValueError(f"invalid lab prefix {prefix!r}")
        self.prefix = prefix
        self.bridge_ns = f"{prefix}-br"
        self.server = self._new_host("server", "srv", SERVER_IPV4, SERVER_IPV6)
        self.client = self._new_host("client", "cli", CLIENT_IPV4, CLIENT_IPV6)
        self.attacker = self._new_host("attacker", "atk", ATTACKER_IPV4, ATTACKER_IPV6)
        # A subclass may add hosts (and their namespaces) before the lab is entered: tests/lab/netlab.py.
        self.hosts: tuple[Host, ...] = (self.server, self.client, self.attacker)
        self.namespaces: tuple[str, ...] = (self.bridge_ns,) + tuple(h.ns for h in self.hosts)
        self._procs: list[subprocess.Popen[Any]] = []
        self._active = False

    def _new_host(self, role: str, short: str, ipv4: str, ipv6: str) -> Host:
        """A host in namespace {prefix}-{short}, bridge port v-{short} (interface names stop at 15 characters)."""
        return Host(role=role, ns=f"{self.prefix}-{short}", ipv4=check_ipv4(ipv4), ipv6=ipv6,
                    bridge_port=f"v-{short}"[:15])

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Self:
        require_lab_support()
        self._active = True
        try:
            self._remove_namespaces()
            self._build()
        except BaseException:
            # A half-built lab must not outlive a failed __enter__, since
            # __exit__ is not called in that case.
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception:
            if exc is None:
                raise
            # Do not hide the test's own failure behind a teardown error;
            # the original exception is the one worth reading.

    def close(self) -> None:
        """Stop the lab's processes and delete its namespaces (idempotent)."""
        errors: list[str] = []
        try:
            self._stop_processes()
        except Exception as err:  # keep going: namespaces must still go
            errors.append(f"stopping processes: {err}")
        try:
            self._remove_namespaces()
        except Exception as err:
            errors.append(f"removing namespaces: {err}")
        self._active = False
        if errors:
            raise RuntimeError("NetLab teardown failed: " + "; ".join(errors))

    def _remove_namespaces(self) -> None:
        errors: list[str] = []
        for ns in self.namespaces:
            try:
                _delete_namespace(ns)
            except Exception as err:
                errors.append(str(err))
        if errors:
            raise RuntimeError("; ".join(errors))

    def _stop_processes(self) -> None:
        procs, self._procs = self._procs, []
        # Signal everything first and wait once, so teardown costs at most
        # one grace period in total rather than one per process.
        for proc in procs:
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + _TERM_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        stuck: list[int] = []
        for proc in procs:
            # SIGKILL the group even when the leader has exited: children it
            # left in its group (start_new_session made pgid == leader pid)
            # would otherwise linger.
            signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=_TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                stuck.append(proc.pid)
        if stuck:
            raise RuntimeError(f"processes {stuck} did not exit after SIGKILL")

    def _build(self) -> None:
        for ns in self.namespaces:
            run_plain(["ip", "netns", "add", ns])
        br = self.bridge_ns
        # The bridge namespace is a pure layer-2 switch: without IPv6 on its
        # ports it sends no router solicitations or MLD reports of its own
        # that would show up in captures taken on the hosts.
        self._sysctl(br, "net.ipv6.conf.default.disable_ipv6", "1")
        self._sysctl(br, "net.ipv6.conf.all.disable_ipv6", "1")
        self._ip(br, "link", "set", "lo", "up")
        # Multicast snooping would let the bridge drop IPv6 neighbour
        # solicitations for groups it has not yet seen an MLD report for,
        # making the first IPv6 packets flaky; flood them instead.
        self._ip(br, "link", "add", _BRIDGE, "type", "bridge", "mcast_snooping", "0")
        self._ip(br, "link", "set", _BRIDGE, "up")
        for host in self.hosts:
            self._attach(host)

    def _attach(self, host: Host) -> None:
        # Set before eth0 exists so it inherits the value: the link-local
        # address then skips DAD too and is usable at once, like the
        # `nodad` global addresses below.
        self._sysctl(host.ns, "net.ipv6.conf.default.accept_dad", "0")
        self._ip(host.ns, "link", "set", "lo", "up")
        # Creating the pair in the bridge namespace with the peer placed
        # straight into the host namespace avoids a temporary name in the
        # root namespace that could collide with another engineer's lab.
        self._ip(
            self.bridge_ns,
            "link", "add", host.bridge_port, "type", "veth",
            "peer", "name", host.interface, "netns", host.ns,
        )  # fmt: skip
        self._ip(self.bridge_ns, "link", "set", host.bridge_port, "master", _BRIDGE)
        self._ip(self.bridge_ns, "link", "set", host.bridge_port, "up")
        self._ip(host.ns, "addr", "add", host.ipv4_cidr, "dev", host.interface)
        self._ip(host.ns, "addr", "add", host.ipv6_cidr, "dev", host.interface, "nodad")
        self._ip(host.ns, "link", "set", host.interface, "up")

    # -- helpers -----------------------------------------------------------

    def _ip(self, ns: str, *args: str, input: str | None = None) -> None:
        # `ip -n` switches namespace itself: cheaper than `ip netns exec`,
        # which also remounts /sys for every call.
        run_plain(["ip", "-n", ns, *args], input=input)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        # /proc/sys/net is per network namespace, so this changes only `ns`.
        run_plain(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"])

    def _namespace_of(self, host: Host | str) -> str:
        """Resolve a Host, or one of this lab's namespace names."""
        ns = host.ns if isinstance(host, Host) else host
        # Refusing foreign names stops a typo from running commands in the
        # root namespace or in another engineer's lab.
        if ns not in self.namespaces:
            raise ValueError(f"{ns!r} is not a namespace of lab {self.prefix!r}")
        if not self._active:
            raise RuntimeError(f"lab {self.prefix!r} is not running (use `with`)")
        return ns

    # -- public API --------------------------------------------------------

    def run(
        self,
        host: Host | str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside host's namespace and capture its text output.

        Raises CommandError (with stderr in its message) on a non-zero exit
        when check is true, and subprocess.TimeoutExpired after timeout s.
        """
        ns = self._namespace_of(host)
        return run_plain(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, input=input)

    def popen(self, host: Host | str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside host's namespace; it is stopped at teardown.

        `ip netns exec` execs argv in place, so the returned Popen's pid is
        argv's own pid. It leads a new session, letting teardown signal its
        whole process group.
        """
        ns = self._namespace_of(host)
        if not kwargs.pop("start_new_session", True):
            raise ValueError("lab processes must start a new session for teardown")
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], start_new_session=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def tcp_probe(self, host: Host | str, address: str, port: int, timeout: float = 1.0) -> str:
        """Try one TCP connect from host; return "connected" or the error name.

        Runs a tiny probe under this same Python inside the namespace (3.11
        has no os.setns), so results read like "ConnectionRefusedError" or
        "TimeoutError" and tests can tell "reached, nothing listening" from
        "silently dropped".
        """
        script = (
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])),"
            " timeout=float(sys.argv[3])).close()\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print(type(e).__name__)\n"
        )
        result = self.run(
            host,
            [sys.executable, "-c", script, address, str(port), str(timeout)],
            timeout=timeout + 10,
        )
        return result.stdout.strip()

    def can_connect(self, host: Host | str, address: str, port: int, timeout: float = 1.0) -> bool:
        return self.tcp_probe(host, address, port, timeout) == "connected"


@dataclass(frozen=True)
class SshdInfo:
    """What a client needs to log into the lab's sshd, and its process."""

    client_key: Path
    known_hosts: Path
    config: Path
    pid_file: Path
    log_file: Path
    process: subprocess.Popen[Any]
    host_key_alias: str = SSH_HOST_KEY_ALIAS

    @property
    def pid(self) -> int:
        return self.process.pid

    def ssh_argv(self, host: str, port: int | None = None) -> list[str]:
        """ssh command line (without the remote command) for root@host."""
        argv = [
            "ssh",
            # Ignore ~/.ssh/config and /etc/ssh/ssh_config: the lab must not
            # depend on whoever runs it.
            "-F", "none",
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", f"HostKeyAlias={self.host_key_alias}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5",
        ]  # fmt: skip
        if port is not None:
            argv += ["-p", str(port)]
        argv.append(f"root@{host}")
        return argv


def _sshd_path(path: Path) -> str:
    # sshd_config values are split on whitespace and AuthorizedKeysFile
    # expands %-tokens, so refuse what cannot be written safely.
    text = str(path)
    if any(c.isspace() or c in "\"'#" for c in text):
        raise ValueError(f"path unusable in sshd_config: {text!r}")
    return text.replace("%", "%%")


def start_sshd(lab: NetLab, host: Host | str, workdir: Path) -> SshdInfo:
    """Start a real OpenSSH server inside host, listening on loopback only.

    It listens on 127.0.0.1:22 and [::1]:22 only, so it is reachable from
    the other hosts only through something that forwards to loopback (which
    is what dynknock does after a valid knock).
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "client_ed25519"
    for key, comment in ((host_key, "dynknock-lab-host"), (client_key, "dynknock-lab-client")):
        # ssh-keygen asks before overwriting; a rerun in the same workdir
        # should just make fresh keys.
        for stale in (key, key.with_name(key.name + ".pub")):
            stale.unlink(missing_ok=True)
        run_plain(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])
    authorized_keys = workdir / "authorized_keys"
    authorized_keys.write_text(client_key.with_name(client_key.name + ".pub").read_text())
    host_pub = host_key.with_name(host_key.name + ".pub").read_text().split()
    known_hosts = workdir / "known_hosts"
    # "alias keytype base64": ssh matches it through -o HostKeyAlias.
    known_hosts.write_text(f"{SSH_HOST_KEY_ALIAS} {host_pub[0]} {host_pub[1]}\n")
    pid_file = workdir / "sshd.pid"
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1:22",
                "ListenAddress [::1]:22",
                f"HostKey {_sshd_path(host_key)}",
                f"PidFile {_sshd_path(pid_file)}",
                f"AuthorizedKeysFile {_sshd_path(authorized_keys)}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # No PAM: the lab has no PAM session setup to rely on, and
                # key auth needs none.
                "UsePAM no",
                # Keys live in a test tmpdir whose modes sshd would reject.
                "StrictModes no",
                "",
            ]
        )
    )
    # sshd refuses to start without its privilege-separation directory,
    # which is normally created by the systemd unit we are not using.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log_file = workdir / "sshd.log"
    with log_file.open("w") as log:
        process = lab.popen(
            host,
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    info = SshdInfo(
        client_key=client_key,
        known_hosts=known_hosts,
        config=config,
        pid_file=pid_file,
        log_file=log_file,
        process=process,
    )
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"sshd exited with status {process.returncode}:\n" + log_file.read_text(errors="replace")
            )
        if lab.can_connect(host, "127.0.0.1", 22, timeout=0.5):
            return info
        if time.monotonic() > deadline:
            raise RuntimeError(
                "sshd did not accept connections on 127.0.0.1:22 within 10 s:\n" + log_file.read_text(errors="replace")
            )
        time.sleep(0.1)
