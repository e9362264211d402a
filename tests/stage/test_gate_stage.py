"""knock-gate as a process: commands over a real DEALER socket, rules in a real nftables."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator

import pytest
import zmq

from dynknock import bus
from tests.lab.stack import VENV_BIN
from tests.stage.conftest import GATE_PRIVILEGES, StageEnv

pytestmark = pytest.mark.stage


def door(port: int = 41000, client: str = "198.18.0.2", left_ms: int = 10_000, door_id: str = "ab12") -> bus.DoorOpen:
    return bus.DoorOpen(door_id, "alice", client, port, "127.0.0.1", 22, int(time.time() * 1000) + left_ms, True)


def ask(sock: zmq.Socket[object], message: bus.Message | bytes) -> bus.DoorResult:
    sock.send(message if isinstance(message, bytes) else bus.encode(message))
    return bus.decode_as(sock.recv(), bus.DoorResult)


def test_gate_none_backend_answers_and_validates(stage_env: StageEnv) -> None:
    stage_env.start("knock-gate", prefix=GATE_PRIVILEGES)
    sock = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.gate)
    assert ask(sock, door()).ok
    late = ask(sock, door(left_ms=-5))
    assert not late.ok and "after the door's end" in late.detail
    outside = ask(sock, door(port=80))
    assert not outside.ok and "outside the door range" in outside.detail
    # Garbage is dropped (no answer) and the gate lives on.
    sock.send(b"\xc1 not msgpack")
    sock.send(bus.encode(bus.Syn("1.2.3.4", 1, 2)))
    assert ask(sock, door(door_id="cd34")).door_id == "cd34"
    assert 'gate.backend = "none"' in stage_env.log("knock-gate")


@pytest.fixture
def netns() -> Iterator[str]:
    name = "dkstage-gate"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def nft_set(netns: str, name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "set", "inet", "dkstage", name],
                          capture_output=True, text=True, check=True).stdout


def test_gate_nftables_adds_and_removes_elements_with_only_cap_net_admin(stage_env: StageEnv, netns: str) -> None:
    stage_env.write_config(backend="nftables")
    process = stage_env.start("knock-gate", prefix=("ip", "netns", "exec", netns, *GATE_PRIVILEGES))
    sock = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.gate)
    assert ask(sock, door(port=41234, client="198.18.0.7")).ok
    assert "198.18.0.7 . 41234 timeout" in nft_set(netns, "ronce4")
    assert ask(sock, door(port=41235, client="2001:db8:d::7", door_id="ef56")).ok
    assert "2001:db8:d::7 . 41235" in nft_set(netns, "ronce6")
    assert ask(sock, bus.DoorClose("ab12", "198.18.0.7", 41234)).ok
    assert "41234" not in nft_set(netns, "ronce4")
    # Closing again is not an error: closed is closed.
    assert ask(sock, bus.DoorClose("ab12", "198.18.0.7", 41234)).ok
    # The Python process (child of setpriv's exec: same PID) holds CAP_NET_ADMIN (bit 12) and nothing else.
    status = open(f"/proc/{process.pid}/status").read()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 1 << 12
    assert fields["Uid"].split()[0] != "0"


def sysctl(netns: str, path: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_gate_kernel_door_elements_route_localnet_and_its_restore(stage_env: StageEnv, netns: str) -> None:
    """A kernel door is a once/fwd element pair; route_localnet is set while the table lives, restored after."""
    stage_env.write_config(backend="nftables")  # ssh -> 127.0.0.1:22 on this host: forward = auto = kernel
    route_localnet = "/proc/sys/net/ipv4/conf/lo/route_localnet"
    assert sysctl(netns, route_localnet) == "0"
    stage_env.start("knock-gate", prefix=("ip", "netns", "exec", netns, *GATE_PRIVILEGES))
    sock = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.gate)
    kernel_door = dataclasses.replace(door(port=41236, client="198.18.0.8"), kernel=True)
    assert ask(sock, kernel_door).ok
    assert "198.18.0.8 . 41236 timeout" in nft_set(netns, "once4")
    fwd = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "map", "inet", "dkstage", "fwd4"],
                         capture_output=True, text=True, check=True).stdout
    assert "198.18.0.8 . 41236 timeout" in fwd and ": 127.0.0.1 . 22" in fwd
    assert sysctl(netns, route_localnet) == "1"
    assert sysctl(netns, "/proc/sys/net/netfilter/nf_conntrack_acct") == "1"
    # Only a configured kernel target: another port of the same host is refused.
    other = ask(sock, dataclasses.replace(kernel_door, door_id="cd34", port=41237, target_port=23))
    assert not other.ok and "no kernel-forwarded service" in other.detail
    assert ask(sock, bus.DoorClose("ab12", "198.18.0.8", 41236)).ok
    assert "41236" not in nft_set(netns, "once4")
    # Uninstall: the table goes and route_localnet is what it was.
    removed = subprocess.run(["ip", "netns", "exec", netns, *GATE_PRIVILEGES, str(VENV_BIN / "knock-gate"), "-c",
                              str(stage_env.config), "--remove-table"], capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    assert sysctl(netns, route_localnet) == "0"


def nft_elements(netns: str) -> set[tuple[str, str, int]]:
    """(set, client, port) of every door element of the gate's table."""
    from dynknock.gate.core import held_elements

    listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", "dkstage"],
                             capture_output=True, text=True, check=True).stdout
    import json

    return {(e.name, e.address, e.port) for e in held_elements(json.loads(listing))}


def test_gate_closes_a_used_kernel_door_in_one_transaction_and_reconciles_with_auths_doors(
        stage_env: StageEnv, netns: str) -> None:
    stage_env.write_config(backend="nftables")  # ssh -> 127.0.0.1:22: kernel doors
    stage_env.start("knock-gate", prefix=("ip", "netns", "exec", netns, *GATE_PRIVILEGES))
    sock = stage_env.socket(zmq.DEALER, connect=stage_env.endpoints.gate)
    # A burst of commands, sent before the gate reads any: answered each, in order, all applied.
    opens = [dataclasses.replace(door(port=41300 + i, client=f"198.18.0.{10 + i}", door_id=f"b{i:02x}"),
                                 kernel=i % 2 == 0) for i in range(40)]
    for command in opens:
        sock.send(bus.encode(command))
    results = [ask_next(sock) for _ in opens]
    assert [r.door_id for r in results] == [c.door_id for c in opens] and all(r.ok for r in results)
    held = nft_elements(netns)
    assert {(f"198.18.0.{10 + i}", 41300 + i) for i in range(40)} == {(a, p) for _, a, p in held}
    assert ("fwd4", "198.18.0.10", 41300) in held and ("ronce4", "198.18.0.11", 41301) in held
    # A kernel door closed with its target: every element of it gone (once, and the map entry).
    assert ask(sock, bus.DoorClose("b00", "198.18.0.10", 41300, "127.0.0.1", 22)).ok
    # Closed again, or a door that was never there: still one transaction that cannot fail.
    assert ask(sock, bus.DoorClose("b00", "198.18.0.10", 41300, "127.0.0.1", 22)).ok
    assert ask(sock, bus.DoorClose("ee", "198.18.0.99", 41399)).ok
    assert not {(a, p) for _, a, p in nft_elements(netns)} & {("198.18.0.10", 41300), ("198.18.0.99", 41399)}
    # Auth believes only four doors open: the gate empties the other 35, and answers nothing to the set.
    believed = [[c.door_id, c.client, c.port] for c in opens[1:5]]
    sock.send(bus.encode(bus.DoorSet(believed, int(time.time() * 1000))))
    assert ask(sock, door(port=41399, client="198.18.0.98", door_id="af7e4")).ok  # in order after the set
    assert {(a, p) for _, a, p in nft_elements(netns)} == {(c.client, c.port) for c in opens[1:5]} | \
        {("198.18.0.98", 41399)}


def ask_next(sock: zmq.Socket[object]) -> bus.DoorResult:
    return bus.decode_as(sock.recv(), bus.DoorResult)
