"""Replay and race (docs/SECURITY.md 2.1, 2.2): a real knock, recorded on the wire, sent again."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dynknock import protocol as proto
from dynknock.topics import Topic
from tests.e2e.attacks.world import (
    ALICE_PASSWORD,
    CLIENT,
    CONTROL_PORT,
    OPENING,
    PREFIX,
    WINDOW_S,
    Frame,
    World,
    note_payloads,
    read_pcap,
    record_exchange,
    record_figures,
    rewrite_source,
    udp_payload,
    wait_until,
    with_gaps,
)
from tests.lab.netlab import Host

pytestmark = pytest.mark.e2e


def _replay(world: World, frames: list[bytes | float], origin: Host, authenticated: int) -> dict[str, Any]:
    """Inject frames from origin and report what the server did about them, once it has refused
    (or the bound has passed) as many authentic packets as were sent."""
    client = world.lab.client.ipv4
    shed_before = world.events.next_alive("capture").get("shed", {}).get("duplicate", 0)
    mark = world.events.mark()
    world.inject(origin, frames)

    def reasons() -> Counter[str]:
        rejected = [e.fields for e in world.events.since(mark, Topic.AUTH_REQUEST_REJECTED)
                    if e.fields.get("source") == client]
        # A copy from a source capture has seen it from is shed there, unparsed and uncounted by auth.
        shed_after = world.events.next_alive("capture").get("shed", {}).get("duplicate", 0)
        return Counter(f["reason"] for f in rejected) + Counter({"capture_duplicate": shed_after - shed_before})

    # The packets go through capture and auth in order: once every authentic one is accounted for,
    # the SYNs between them have been seen too.
    seen: list[Counter[str]] = [Counter()]

    def accounted() -> bool:
        seen[0] = reasons()  # each look waits for capture's next heartbeat
        return sum(seen[0].values()) >= authenticated

    wait_until(accounted, 8)
    events = world.events.since(mark)
    return {
        "reasons": seen[0],
        "opening": [e.topic for e in events if e.topic in OPENING],
        "doors": world.doors(),
    }


def test_replay_of_a_recorded_exchange_opens_nothing(no_doors: World) -> None:
    world = no_doors
    recorded, door_port = record_exchange(world)
    kinds = Counter(f.kind for f in recorded)
    assert kinds["P1"] >= 1 and kinds["SYN"] >= 3 and kinds["P2"] >= 1 and kinds["P3"] >= 1, kinds
    note_payloads(world, world.alice, recorded)
    client = world.lab.client.ipv4
    legit = {(client, door_port)}
    sent = [f for f in recorded if f.kind in ("P1", "SYN", "P2")]
    to_replay = with_gaps(sent)
    authenticated = sum(1 for f in recorded if f.kind in ("P1", "P2"))
    attacker_mac = world.mac(world.lab.attacker)
    # From the attacker's port on the bridge: the recorded frames with the attacker's MAC
    # (so the bridge does not move the client's MAC to the attacker's port), the client's IP.
    from_attacker = with_gaps(sent, [rewrite_source(f.raw, attacker_mac, client) for f in sent])
    results: dict[str, Any] = {}
    replies_bpf = f"udp and src host {world.lab.server.ipv4}"
    for phase in ("immediate", "after_window", "after_auth_restart"):
        if phase == "after_window":
            assert world.wait_doors(lambda d: not d, WINDOW_S + 4) == set(), "the real door outlived its window"
        if phase == "after_auth_restart":
            old = world.stack.kill_stage("auth")
            world.stack.wait_alive(20)
            assert world.stack.stage_pid("auth") != old
        with world.sniff(world.lab.client, replies_bpf) as at_client, \
                world.sniff(world.lab.attacker, replies_bpf) as at_attacker:
            for origin, frames in ((world.lab.attacker, from_attacker), (world.lab.client, to_replay)):
                outcome = _replay(world, frames, origin, authenticated)
                results[f"{phase}/{origin.role}"] = outcome
                allowed = legit if phase == "immediate" else set()
                assert outcome["doors"] <= allowed, (phase, origin.role, outcome)
                assert outcome["opening"] == [], (phase, origin.role, outcome)
                # Every authentic packet was refused as a replay (P1 and P2): by capture, which saw
                # it from this source before, or by auth's nonce journal (capture forgets after
                # 5 minutes or a restart of its own); no AEAD either way. The SYNs, with no
                # request pending, never even left the kernel's filter.
                reasons = outcome["reasons"]
                assert set(reasons) <= {"replay", "capture_duplicate"}, (phase, origin.role, outcome)
                assert reasons["replay"] + reasons["capture_duplicate"] == authenticated, (phase, origin.role, outcome)
        replies = read_pcap(at_client) + read_pcap(at_attacker)
        assert replies == [], f"{phase}: the server answered a replay: {[f.kind for f in replies]}"
    record_figures("replay", frames_recorded=len(recorded), frames_replayed_per_round=len(sent),
                   rounds=len(results), packets_tried=len(sent) * len(results),
                   doors_wrongly_opened=0, p3_replies=0,
                   reasons={k: dict(v["reasons"]) for k, v in results.items()})


@contextmanager
def _client_cut_off(world: World) -> Iterator[str]:
    """Drop the client's packets to the server at the bridge, after the client's own interface
    (so a capture there still sees them): the attacker's copies arrive first. Yields the table's name."""
    table = f"{PREFIX}_race"
    rules = (f"table netdev {table} {{\n  chain cut {{\n"
             f"    type filter hook ingress device \"v-cli\" priority 0;\n"
             f"    ip daddr {world.lab.server.ipv4} drop\n  }}\n}}\n")
    world.lab.run(world.lab.bridge_ns, ["nft", "-f", "-"], input=rules)
    try:
        yield table
    finally:
        world.lab.run(world.lab.bridge_ns, ["nft", "delete", "table", "netdev", table], check=False)


def _first_burst(frames: list[Frame]) -> list[Frame]:
    """The first P1, the SYNs after it and the first P2 after those."""
    burst: list[Frame] = []
    for frame in frames:
        if frame.kind == "P1" and not burst:
            burst.append(frame)
        elif frame.kind == "SYN" and burst and len(burst) < 4:
            burst.append(frame)
        elif frame.kind == "P2" and len(burst) == 4:
            burst.append(frame)
            return burst
    return []


def test_race_from_another_address_opens_no_door(no_doors: World) -> None:
    world = no_doors
    lab = world.lab
    server, client, attacker = lab.server.ipv4, lab.client.ipv4, lab.attacker.ipv4
    bpf = f"dst host {server} and (udp port {CONTROL_PORT} or (tcp[tcpflags] & tcp-syn != 0))"
    with _client_cut_off(world) as cut:
        with world.sniff(lab.client, bpf) as path:
            password = world.scratch("password")
            password.write_text(f"{ALICE_PASSWORD}\n")
            with password.open() as stdin:
                proc = lab.popen(lab.client, [CLIENT, "-u", "alice", "--password-stdin", "--timeout", "5", server],
                                 stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_until(lambda: bool(_first_burst(read_pcap(path))), 8)
            proc.terminate()
            out, err = proc.communicate(timeout=10)
            world.outputs += [out, err]
        burst = _first_burst(read_pcap(path))
        assert burst, "the client's first burst was not captured"
        note_payloads(world, world.alice, burst)

        # Paced like a network that delays the P1 a little: capture has time to let the knocks of
        # a newly accepted request through its kernel filter (the client itself leaves only 5 ms,
        # and resends the whole burst if that was too short; a one-shot injection cannot).
        def paced(raws: list[bytes]) -> list[bytes | float]:
            return [raws[0], 0.3, *raws[1:4], 0.2, raws[4]]

        stolen = paced([rewrite_source(f.raw, world.mac(lab.attacker), attacker) for f in burst])
        replies_bpf = f"udp and src host {server}"
        with world.sniff(lab.attacker, replies_bpf) as at_attacker, world.sniff(lab.client, replies_bpf) as at_client:
            mark = world.events.mark()
            world.inject(lab.attacker, stolen)
            # Both authentic copies (P1, P2) are refused by auth, the SYNs between them seen before.
            wait_until(lambda: len([e for e in world.events.since(mark, Topic.AUTH_REQUEST_REJECTED)
                                    if e.fields.get("source") == attacker]) >= 2, 3)
            after_race = world.doors()
            race_events = world.events.since(mark)
            # The client's own packets arrive late, unchanged.
            lab.run(lab.bridge_ns, ["nft", "delete", "table", "netdev", cut])
            late = world.events.mark()
            world.inject(lab.client, paced([f.raw for f in burst]))
            doors = world.wait_doors(lambda d: any(a == client for a, _ in d), 3)
            world.wait_statuses(at_client, world.alice, lambda s: "OPEN" in s)
            late_rejections = Counter(e.fields["reason"] for e in world.events.since(late, Topic.AUTH_REQUEST_REJECTED))
    assert after_race == set(), after_race
    assert not [e for e in race_events if e.topic in (Topic.AUTH_REQUEST_RECEIVED, Topic.GATE_RULE_ADDED,
                                                      Topic.RELAY_DOOR_LISTENING)], race_events
    rejected = Counter(e.fields["reason"] for e in race_events if e.topic == Topic.AUTH_REQUEST_REJECTED)
    assert not any(a == attacker for a, _ in doors), doors
    # What reached the attacker, if anything, is no door: decrypt it with the key we hold.
    statuses = []
    for frame in read_pcap(at_attacker):
        message = world.alice.open_p3(udp_payload(frame.raw))
        statuses.append(message.status.name if isinstance(message, proto.P3) else str(message))
    assert "OPEN" not in statuses, statuses
    door = [p for a, p in doors if a == client]
    assert door, f"the client's own (late) packets got no door: {doors}"
    assert lab.tcp_probe(lab.attacker, server, door[0], timeout=1.0) == "TimeoutError"
    # The client's late P2 is answered: the copies raced from elsewhere did not burn its
    # nonce (engine invariant 3; PROTOCOL.md section 8, "active on-path attacker").
    answers = [world.alice.open_p3(udp_payload(f.raw)) for f in read_pcap(at_client)]
    opened = [a for a in answers if isinstance(a, proto.P3) and a.status is proto.Status.OPEN]
    record_figures("race", packets_tried=len(burst), doors_wrongly_opened=0, attacker_p3_statuses=statuses,
                   rejections_of_copies=dict(rejected), rejections_of_the_late_originals=dict(late_rejections),
                   client_answered=bool(opened))
    assert opened and opened[0].door_port == door[0], (
        f"the client's own P2 got no OPEN answer (answers: {answers}); server rejections of the "
        f"attacker's copies: {dict(rejected)}, of the client's late originals: {dict(late_rejections)}")
