"""End-to-end tests of dynknock.lab.netlab: the namespace lab every e2e test uses.

They need root and iproute2; without them they FAIL (require_privileges
raises) rather than skip, so a green run always means the lab really works.
Each test uses its own prefix so parallel runs by other engineers, which use
the default "dk" prefix, are never touched.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import netlab
from tests.lab.netlab import CommandError, NetLab, require_privileges, start_sshd

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def privileged() -> None:
    # Deliberately not a skip: missing root must turn the suite red.
    require_privileges()


def namespaces_with_prefix(prefix: str) -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {n for n in names if n.startswith(prefix + "-")}


def expected_namespaces(prefix: str) -> set[str]:
    return {f"{prefix}-br", f"{prefix}-srv", f"{prefix}-cli", f"{prefix}-atk"}


def pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (PID 1 here may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state letter follows the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def addresses(lab: NetLab, host: netlab.Host | str, ifname: str) -> list[dict[str, Any]]:
    out = lab.run(host, ["ip", "-j", "addr", "show", "dev", ifname]).stdout
    info: list[dict[str, Any]] = json.loads(out)
    return info[0]["addr_info"]  # type: ignore[no-any-return]


def ping(lab: NetLab, host: netlab.Host, target: str, *extra: str) -> str:
    result = lab.run(host, ["ping", "-c1", "-W2", *extra, target], check=False)
    assert result.returncode == 0, f"ping {target} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture
def lab() -> Iterator[NetLab]:
    prefix = "dkt"
    with NetLab(prefix) as built:
        yield built
    assert namespaces_with_prefix(prefix) == set()


def test_topology_addresses_and_names(lab: NetLab) -> None:
    assert namespaces_with_prefix("dkt") == expected_namespaces("dkt")
    assert lab.server.ns == "dkt-srv"
    assert lab.client.ns == "dkt-cli"
    assert lab.attacker.ns == "dkt-atk"
    assert lab.bridge_ns == "dkt-br"
    expected = {
        lab.server: ("198.18.0.1", "2001:db8:d::1"),
        lab.client: ("198.18.0.2", "2001:db8:d::2"),
        lab.attacker: ("198.18.0.3", "2001:db8:d::3"),
    }
    for host, (v4, v6) in expected.items():
        assert host.interface == "eth0"
        assert (host.ipv4, host.ipv6) == (v4, v6)
        # Every IPv4 address the lab hands out must be in 198.18.0.0/15.
        assert ipaddress.IPv4Address(host.ipv4) in ipaddress.IPv4Network("198.18.0.0/15")
        got = {(a["local"], a["prefixlen"]) for a in addresses(lab, host, "eth0")}
        assert (v4, 24) in got
        assert (v6, 64) in got
        # lo must be up: services in the lab listen on 127.0.0.1.
        lo = {a["local"] for a in addresses(lab, host, "lo")}
        assert "127.0.0.1" in lo
        ping(lab, host, "127.0.0.1")
    bridge = lab.run(lab.bridge_ns, ["ip", "-j", "link", "show", "master", "br0"]).stdout
    assert sorted(p["ifname"] for p in json.loads(bridge)) == ["v-atk", "v-cli", "v-srv"]


def test_client_pings_server_over_ipv4_and_ipv6(lab: NetLab) -> None:
    assert "1 received" in ping(lab, lab.client, lab.server.ipv4)
    assert "1 received" in ping(lab, lab.client, lab.server.ipv6)
    # The attacker shares the segment, as a LAN attacker would.
    assert "1 received" in ping(lab, lab.attacker, lab.server.ipv4)
    assert "1 received" in ping(lab, lab.attacker, lab.server.ipv6)


def test_run_reports_failures_with_stderr(lab: NetLab) -> None:
    argv = ["sh", "-c", "echo boom-on-stderr >&2; exit 3"]
    with pytest.raises(CommandError) as caught:
        lab.run(lab.client, argv)
    assert caught.value.returncode == 3
    assert "boom-on-stderr" in str(caught.value)
    unchecked = lab.run(lab.client, argv, check=False)
    assert unchecked.returncode == 3
    assert unchecked.stderr == "boom-on-stderr\n"
    assert lab.run(lab.client, ["cat"], input="piped\n").stdout == "piped\n"
    # Commands really run inside the namespace, not in the root one.
    assert lab.run(lab.client, ["ip", "netns", "identify"]).stdout.strip() == "dkt-cli"
    with pytest.raises(ValueError):
        lab.run("some-other-ns", ["true"])
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run(lab.client, ["sleep", "5"], timeout=0.5)


def neighbours(lab: NetLab, host: netlab.Host) -> list[str]:
    """The host's neighbour table, a line per entry (what `ip -n NS neigh show | wc -l` counts)."""
    return [line for line in lab.run(host, ["ip", "neigh", "show"]).stdout.splitlines() if line.strip()]


def test_extra_ipv4_addresses_reach_the_server(lab: NetLab) -> None:
    first = lab.add_ipv4_addresses(lab.client, 300)
    second = lab.add_ipv4_addresses(lab.attacker, 2)
    assert len(first) == 300
    assert len(second) == 2
    assert len(set(first + second)) == 302
    block = ipaddress.IPv4Network("198.19.0.0/16")
    assert all(ipaddress.IPv4Address(a) in block for a in first + second)
    on_client = {a["local"] for a in addresses(lab, lab.client, "eth0")}
    assert set(first) <= on_client
    # The server owns nothing in the block: it reaches each address through the host that owns it.
    on_server = {a["local"] for a in addresses(lab, lab.server, "eth0")}
    assert not any(ipaddress.IPv4Address(a) in block for a in on_server if ":" not in a)
    routes = json.loads(lab.run(lab.server, ["ip", "-j", "-4", "route", "show"]).stdout)
    via = {route["dst"]: route.get("gateway") for route in routes if route["dst"] != "default"}
    covered = {a: next(gw for dst, gw in via.items() if "/" in dst and ipaddress.IPv4Address(a) in
                       ipaddress.IPv4Network(dst) or dst == a) for a in first + second}
    assert {covered[a] for a in first} == {lab.client.ipv4}
    assert {covered[a] for a in second} == {lab.attacker.ipv4}
    assert len(via) < 40  # a few prefixes per /24, not a route per address
    # Sourced from an extra address, the echo reply has to find its way back.
    assert "1 received" in ping(lab, lab.client, lab.server.ipv4, "-I", first[-1])
    assert "1 received" in ping(lab, lab.attacker, lab.server.ipv4, "-I", second[0])
    # Another host reaches them too (through their owner), and the owner answers from them.
    assert "1 received" in ping(lab, lab.attacker, first[0])
    assert "1 received" in ping(lab, lab.client, second[1], "-I", first[5])


# Inside the client: one TCP connection to the server from each extra address given, a byte each way.
CONNECT_FROM_EACH = """
import socket, sys
server, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ok = 0
for source in sources:
    with socket.create_connection((server, port), timeout=3, source_address=(source, 0)) as conn:
        conn.sendall(b"x")
        ok += conn.recv(1) == b"x"
print(ok)
"""
# Inside the server: echo one byte on each connection, for as many connections as given.
ECHO_EACH = """
import socket, sys
server = socket.create_server((sys.argv[1], 0), backlog=512)
server.settimeout(60)
print(server.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(1))
"""


def test_extra_addresses_cost_the_server_one_neighbour_entry_per_host_not_per_address(lab: NetLab) -> None:
    """The kernel's ARP table is shared by every namespace (gc_thresh3 1,024 on this kernel): a server that
    answered each extra address on-link held an entry for each, and past ~1,000 clients it overflowed and
    clients never heard back. The server's table must not grow with the number of extra addresses."""
    count = 400
    extra = lab.add_ipv4_addresses(lab.client, count)
    echo = lab.popen(lab.server, [sys.executable, "-c", ECHO_EACH, lab.server.ipv4, str(count)],
                     stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    port = echo.stdout.readline().strip()
    few = lab.run(lab.client, [sys.executable, "-c", CONNECT_FROM_EACH, lab.server.ipv4, port, *extra[:10]])
    assert few.stdout.strip() == "10"
    with_few = neighbours(lab, lab.server)
    many = lab.run(lab.client, [sys.executable, "-c", CONNECT_FROM_EACH, lab.server.ipv4, port, *extra[10:]],
                   timeout=120)
    assert many.stdout.strip() == str(count - 10)  # each extra address reached the server and heard back
    with_many = neighbours(lab, lab.server)
    assert len(with_many) == len(with_few) <= len(lab.hosts), with_many
    assert not [line for line in with_many if line.startswith("198.19.")], with_many
    echo.wait(timeout=10)


def test_sshd_on_server_loopback_only(tmp_path: Path) -> None:
    with NetLab("dkt") as lab:
        info = start_sshd(lab, lab.server, tmp_path / "sshd")
        sshd_pid = info.pid
        # The tracked PID is sshd itself (ip netns exec execs in place).
        assert int(info.pid_file.read_text()) == sshd_pid
        out = lab.run(lab.server, info.ssh_argv("127.0.0.1") + ["echo", "hello"])
        assert out.stdout == "hello\n"
        out6 = lab.run(lab.server, info.ssh_argv("::1", 22) + ["echo", "hello6"])
        assert out6.stdout == "hello6\n"
        argv = info.ssh_argv("198.18.0.1", 2222)
        assert argv[-3:] == ["-p", "2222", "root@198.18.0.1"]
        assert "HostKeyAlias=dynknock-lab" in argv
        # Nothing listens on the server's LAN address: the kernel answers RST.
        assert lab.tcp_probe(lab.client, lab.server.ipv4, 22) == "ConnectionRefusedError"
        assert not lab.can_connect(lab.client, lab.server.ipv4, 22)
        assert lab.can_connect(lab.server, "127.0.0.1", 22)
        assert pid_alive(sshd_pid)
    assert namespaces_with_prefix("dkt") == set()
    assert info.process.returncode is not None
    assert not pid_alive(sshd_pid)


def test_teardown_on_exception_kills_stubborn_process_groups() -> None:
    class Boom(Exception):
        pass

    started = time.monotonic()
    with pytest.raises(Boom):
        with NetLab("dkt") as lab:
            # Ignores SIGTERM (inherited by its child too), so only the
            # SIGKILL after the grace period can stop the group.
            stubborn = lab.popen(
                lab.server,
                ["sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"],
                stdout=subprocess.PIPE,
                text=True,
            )
            stubborn_out = stubborn.stdout
            assert stubborn_out is not None
            grandchild = int(stubborn_out.readline())
            polite = lab.popen(lab.client, ["sleep", "300"])
            assert pid_alive(grandchild)
            raise Boom()
    assert namespaces_with_prefix("dkt") == set()
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert wait_dead(grandchild)
    # One shared grace period (3 s), not one per process.
    assert time.monotonic() - started < 10
    assert stubborn.stdout is not None
    stubborn.stdout.close()


def test_two_labs_in_a_row() -> None:
    for _ in range(2):
        with NetLab("dkt") as lab:
            assert namespaces_with_prefix("dkt") == expected_namespaces("dkt")
            assert "1 received" in ping(lab, lab.client, lab.server.ipv4)
            assert "1 received" in ping(lab, lab.client, lab.server.ipv6)
        assert namespaces_with_prefix("dkt") == set()


def test_lab_replaces_leftovers_of_a_crashed_run() -> None:
    prefix = "dktleft"
    leftover = f"{prefix}-srv"
    subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    stale_proc: subprocess.Popen[bytes] | None = None
    try:
        # Mark the stale namespace so we can tell it from a fresh one (veth:
        # this kernel may lack the dummy driver), and leave a process in it,
        # as a crashed run would.
        subprocess.run(
            ["ip", "-n", leftover, "link", "add", "stale0", "type", "veth",
             "peer", "name", "stale1"],
            check=True,
        )  # fmt: skip
        stale_proc = subprocess.Popen(["ip", "netns", "exec", leftover, "sleep", "300"], start_new_session=True)
        assert pid_alive(stale_proc.pid)
        stale_links = subprocess.run(
            ["ip", "-n", leftover, "-j", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        assert "stale0" in {link["ifname"] for link in json.loads(stale_links)}
        with NetLab(prefix) as lab:
            assert namespaces_with_prefix(prefix) == expected_namespaces(prefix)
            links = lab.run(lab.server, ["ip", "-j", "link", "show"]).stdout
            assert "stale0" not in {link["ifname"] for link in json.loads(links)}
            assert stale_proc.wait(timeout=5) == -signal.SIGTERM
            assert "1 received" in ping(lab, lab.client, lab.server.ipv4)
            assert "1 received" in ping(lab, lab.client, lab.server.ipv6)
        assert namespaces_with_prefix(prefix) == set()
    finally:
        if stale_proc is not None and stale_proc.poll() is None:
            os.killpg(stale_proc.pid, signal.SIGKILL)
            stale_proc.wait()
        subprocess.run(["ip", "netns", "del", leftover], capture_output=True, check=False)


def test_require_privileges_fails_loudly_without_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="needs root"):
        require_privileges()
    with pytest.raises(RuntimeError, match="needs root"):
        NetLab("dktnoroot").__enter__()
    assert namespaces_with_prefix("dktnoroot") == set()
