"""Spoofed knocks, and a door used from another address (docs/SECURITY.md 2.5, 2.6)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dynknock import protocol as proto
from dynknock.client.session import KNOCK_PORT_HIGH, KNOCK_PORT_LOW
from dynknock.topics import Topic
from tests.e2e.attacks.world import CONTROL_PORT, PYTHON, REPO, TOOLS, WINDOW_S, World, record_figures, wait_until
from tests.lab.netlab import Host, NetLab, SshdInfo, start_sshd
from tests.lab.stack import EventLog, LabUser, Stack, door_port, prepare_workdir, write_config, write_users

pytestmark = pytest.mark.e2e

NONE_PREFIX = "dkan"  # the second lab, with no firewall


def test_knocks_from_another_source_never_complete_a_sequence(no_doors: World) -> None:
    world = no_doors
    lab = world.lab
    server, client, attacker = lab.server.ipv4, lab.client.ipv4, lab.attacker.ipv4
    p1, request = world.alice.p1(client)
    knocks = [f"{k.port}:{k.isn}" for k in request.knocks]
    unmatched_before = int(world.events.next_alive("auth")["unmatched_syns"])

    def unmatched() -> int:
        return int(world.events.next_alive("auth")["unmatched_syns"]) - unmatched_before

    with world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers:
        world.send_p1(lab.client, p1, client)
        # The right ports and ISNs, from the attacker's own address, by the client's own SYN code.
        lab.run(lab.attacker, [PYTHON, world.tool("raw_syn.py"), attacker, server, *knocks])
        # The client's address, the right ports, guessed ISNs (an off-path spoofer).
        guesses = [world.tcp_from(lab.attacker, k.port, secrets.randbits(32), src=client) for k in request.knocks]
        world.inject(lab.attacker, guesses)
        wait_until(lambda: unmatched() >= len(guesses), 6)  # auth has seen the guesses (each look: a heartbeat)
        world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=34001)])
        world.wait_statuses(answers, world.alice, bool)
        spoofed_doors = world.doors()
        # The real knocks from the real address still work afterwards.
        mark = world.events.mark()
        lab.run(lab.client, [PYTHON, world.tool("raw_syn.py"), client, server, *knocks])
        world.events.wait_for(lambda e: e.topic == Topic.AUTH_KNOCK_COMPLETE and e.fields.get("client") == client,
                              mark, 3)
        world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=34002)])
        opened = world.wait_doors(lambda d: bool(d), 3)
        world.wait_statuses(answers, world.alice, lambda s: s[-1:] == ["OPEN"])
    unmatched_after = world.events.next_alive("auth")["unmatched_syns"]
    statuses = world.alice.statuses(answers)
    record_figures("spoofed_knocks", packets_tried=6, doors_wrongly_opened=0, answers=statuses,
                   unmatched_syns_delta=unmatched_after - unmatched_before)
    assert spoofed_doors == set(), spoofed_doors
    assert statuses[:1] == ["PENDING"], statuses
    # The attacker's own-address SYNs never left the kernel filter; the guessed ISNs did and matched nothing.
    assert unmatched_after - unmatched_before == len(guesses)
    assert statuses[-1:] == ["OPEN"] and {a for a, _ in opened} == {client}, (statuses, opened)


def test_a_blind_spray_completes_connect_knocks_but_the_door_is_the_clients(no_doors: World) -> None:
    """What connect() knocks give up (docs/SECURITY.md 2.5): with no ISN to guess, an off-path spoofer who
    sends a SYN from the client's address to every knock port completes a pending request. It gains
    nothing: the door is for the client's address alone, as the P1 declared."""
    world = no_doors
    lab = world.lab
    client = lab.client.ipv4
    p1, request = world.alice.p1(client, knock_kind=proto.KnockKind.CONNECT)
    with world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers:
        mark = world.events.mark()
        world.send_p1(lab.client, p1, client)
        spray = [world.tcp_from(lab.attacker, port, secrets.randbits(32), src=client)
                 for port in range(KNOCK_PORT_LOW, KNOCK_PORT_HIGH + 1)]
        started = time.monotonic()
        sent = world.inject(lab.attacker, spray)
        complete = world.events.wait_for(lambda e: e.topic == Topic.AUTH_KNOCK_COMPLETE
                                         and e.fields.get("client") == client, mark, 10)
        took = time.monotonic() - started
        opened = world.wait_doors(lambda d: bool(d), 3)
        world.inject(lab.client, [world.udp_from(lab.client, world.alice.p2(request.request_id), sport=34003)])
        statuses = world.wait_statuses(answers, world.alice, lambda s: s[-1:] == ["OPEN"])
    record_figures("connect_knock_spray", frames=sent, seconds=round(took, 2), completed=complete is not None)
    assert sent == len(spray) == KNOCK_PORT_HIGH - KNOCK_PORT_LOW + 1
    assert complete is not None  # the request was completed by the spray...
    assert {address for address, _ in opened} == {client}, opened  # ...for the client's address only
    assert statuses[-1:] == ["OPEN"], statuses


def _foreign_connects(lab: NetLab, attempts: dict[str, tuple[Host, str, int]]) -> dict[str, str]:
    """Connect and read, all at once (a door's window is short): 'timeout' (dropped), 'reset', 'eof',
    'refused', or the first bytes received (tests/e2e/tools/foreign_connect.py)."""
    procs = {name: lab.popen(host, [PYTHON, str(TOOLS / "foreign_connect.py"), address, str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (host, address, port) in attempts.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=20)
        results[name] = out.strip() or f"probe failed: {err.strip()}"
    return results


def test_open_door_refuses_every_other_address_nftables(world: World) -> None:
    lab = world.lab
    mark = world.events.mark()
    port = world.open_door("alice")
    results = _foreign_connects(lab, {
        "attacker_ipv4": (lab.attacker, lab.server.ipv4, port),
        "attacker_ipv6": (lab.attacker, lab.server.ipv6, port),
        "client_ipv6_for_an_ipv4_door": (lab.client, lab.server.ipv6, port),
    })
    relay_events = [e.fields for e in world.events.since(mark, "relay.connection.")]
    record_figures("door_other_address_nftables", attempts=results, doors_wrongly_opened=0)
    assert set(results.values()) == {"timeout"}, results  # dropped silently, not even a RST
    assert relay_events == [], relay_events  # nothing reached the relay, let alone sshd
    assert lab.tcp_probe(lab.client, lab.server.ipv4, port) == "connected"  # the door was not used up


def _sshd_listening(log: str) -> int:
    return log.count("Server listening on")


def test_open_door_refuses_every_other_address_none_backend(world: World) -> None:
    """Without nftables only the relay's address check stands: the attacker reaches the listener,
    is reset before a byte of the service, and sshd never hears of it."""
    workdir = world.workdir / "none-backend"
    with NetLab(NONE_PREFIX) as lab:
        prepare_workdir(workdir)
        write_config(workdir / "dynknock.toml", workdir, lab, backend="none", window_seconds=WINDOW_S)
        write_users(workdir / "users.json", [LabUser("alice", key=world.alice.master)])
        sshd = start_sshd_verbose(lab, workdir)
        stack = Stack(lab, workdir, REPO / "supervisord.conf")
        events = EventLog(stack.endpoints.tap)
        try:
            stack.start()
            events.next_alive("relay", 10)
            pids = world.pids(stack)
            done = world.knock(user="alice", lab=lab)
            assert done.returncode == 0, done.stderr
            port = door_port(done.stdout + done.stderr)
            sshd_lines_before = sshd.log_file.read_text(errors="replace").count("Connection from")
            mark = events.mark()
            results = _foreign_connects(lab, {
                "attacker_ipv4": (lab.attacker, lab.server.ipv4, port),
                "attacker_ipv6": (lab.attacker, lab.server.ipv6, port),
            })
            refused = events.wait_for(lambda e: e.topic == Topic.RELAY_CONNECTION_REFUSED, mark, 3)
            # One refusal per attempt: the relay has dealt with both.
            wait_until(lambda: len(events.since(mark, Topic.RELAY_CONNECTION_REFUSED)) >= len(results), 3)
            refused_events = [e.fields for e in events.since(mark, Topic.RELAY_CONNECTION_REFUSED)]
            accepted_events = [e.fields for e in events.since(mark, Topic.RELAY_CONNECTION_ACCEPTED)]
            sshd_lines_after = sshd.log_file.read_text(errors="replace").count("Connection from")
            # The authorised client still gets through, and sshd does log that one.
            ssh = sshd.ssh_argv(lab.server.ipv4, port) + ["echo", "via-none-backend"]
            via = lab.run(lab.client, ssh, check=False, timeout=30)
            sshd_lines_final = sshd.log_file.read_text(errors="replace").count("Connection from")
            assert world.pids(stack) == pids
        finally:
            stack.stop()
            events.close()
    record_figures("door_other_address_none_backend", attempts=results,
                   relay_refused_events=len(refused_events), sshd_connections_from_attacker=(
                       sshd_lines_after - sshd_lines_before), doors_wrongly_opened=0)
    assert all(r in ("reset", "eof") for r in results.values()), results
    assert refused is not None and {e["peer"] for e in refused_events} == {lab.attacker.ipv4, lab.attacker.ipv6}, \
        refused_events
    assert accepted_events == [], accepted_events
    assert sshd_lines_after == sshd_lines_before, "sshd saw the attacker's connection"
    assert via.returncode == 0 and via.stdout.strip() == "via-none-backend", via.stderr
    assert sshd_lines_final == sshd_lines_after + 1


def start_sshd_verbose(lab: NetLab, workdir: os.PathLike[str]) -> SshdInfo:
    """The lab's sshd with LogLevel VERBOSE, so that it logs every connection it accepts
    ("Connection from ..."); returns once it listens again after re-reading its config."""
    sshd = start_sshd(lab, lab.server, Path(workdir) / "ssh")
    listening = _sshd_listening(sshd.log_file.read_text(errors="replace"))
    with sshd.config.open("a") as config:
        config.write("LogLevel VERBOSE\n")
    os.kill(sshd.pid, signal.SIGHUP)  # sshd re-executes itself with the new config
    # It says "Server listening on ..." once per ListenAddress (two) each time it starts.
    assert wait_until(lambda: _sshd_listening(sshd.log_file.read_text(errors="replace")) >= listening + 2, 10), \
        sshd.log_file.read_text(errors="replace")
    return sshd
