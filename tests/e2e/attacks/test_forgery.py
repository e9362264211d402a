"""Forgery and fuzzing of the control port, and every TCP flag byte (docs/SECURITY.md 2.3, 2.4)."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import time
from collections import Counter
from typing import Any

import dpkt
import pytest

from dynknock import protocol as proto
from dynknock.client.session import new_request
from dynknock.topics import Topic
from tests.e2e.attacks.world import (
    CONTROL_PORT,
    DOOR_LOW,
    REPO,
    TH_ACK,
    TH_SYN,
    World,
    read_pcap,
    record_figures,
)

pytestmark = pytest.mark.e2e


def _passes_kernel_filter(payload: bytes) -> bool:
    """Capture's kernel filter: the (version, type, size) of a packet some client sends, of any version
    (a version 1 P2 with one bit of its version byte flipped is a version 3 P2 of the same size)."""
    return len(payload) >= 2 and (payload[0], payload[1], len(payload)) in proto.CLIENT_PACKETS


def _reordered(packet: bytes) -> list[bytes]:
    h, ct, tag = packet[:34], packet[34:-16], packet[-16:]
    version_type, hint, nonce = h[:2], h[2:10], h[10:34]
    return [
        version_type + nonce[:8] + hint + nonce[8:] + ct + tag,  # hint and nonce swapped
        version_type + hint + nonce[12:] + nonce[:12] + ct + tag,  # nonce halves swapped
        version_type + hint + nonce + tag + ct,  # tag before ciphertext
        version_type + hint + nonce + ct[16:] + ct[:16] + tag,  # ciphertext blocks rotated
        version_type + hint + nonce + ct[::-1] + tag,  # ciphertext reversed
        h[1:2] + h[0:1] + hint + nonce + ct + tag,  # version and type swapped
        version_type + hint[::-1] + nonce + ct + tag,  # hint reversed
    ]


def _forgeries(world: World) -> dict[str, list[bytes]]:
    p1, _ = world.alice.p1(world.lab.attacker.ipv4)
    p2 = world.alice.p2(secrets.token_bytes(16))
    vector = bytes.fromhex(json.loads((REPO / "tests/vectors/p1_ipv4.json").read_text())["packet"])
    groups: dict[str, list[bytes]] = {"bitflip": [], "truncated": [], "extended": [], "reordered": []}
    for valid in (p1, p2, vector):
        for bit in range(len(valid) * 8):
            flipped = bytearray(valid)
            flipped[bit // 8] ^= 1 << (bit % 8)
            groups["bitflip"].append(bytes(flipped))
        groups["truncated"] += [valid[:n] for n in range(len(valid))]
        groups["extended"] += [valid + os.urandom(n) for n in range(1, 301 - len(valid))]
        groups["reordered"] += [r for r in _reordered(valid) if r != valid]
    groups["random"] = [os.urandom(size) for size in range(301) for _ in range(2)]
    groups["right_sized_random"] = ([b"\x01\x01" + os.urandom(128) for _ in range(100)]
                                    + [b"\x01\x02" + os.urandom(80) for _ in range(100)])
    # Under a real user's current hint: forces the server through a full AEAD check each.
    groups["known_hint_forged"] = ([b"\x01\x01" + world.alice.hint() + os.urandom(120) for _ in range(100)]
                                   + [b"\x01\x02" + world.alice.hint() + os.urandom(72) for _ in range(100)])
    return groups


def _hostile_key_holder(world: World) -> list[tuple[bytes, str]]:
    """Authentic packets with contents the codec must refuse (only a key holder can send these)."""
    alice, client = world.alice, world.lab.attacker.ipv4
    request = new_request("ssh", ipaddress.ip_address(client))
    plain = bytearray(proto.encode_plaintext(proto.P1(time.time_ns() // 1_000_000, secrets.token_bytes(16),
                                                      ipaddress.ip_address(client), "ssh", request.knocks))[1])
    cases: list[tuple[bytes, str]] = []
    padding = bytearray(plain)
    padding[79] = 1
    cases.append((bytes(padding), "bad_padding"))
    family = bytearray(plain)
    family[24] = 9
    cases.append((bytes(family), "bad_field"))
    service = bytearray(plain)
    service[41:57] = b"SSH".ljust(16, b"\0")
    cases.append((bytes(service), "bad_field"))
    duplicate = bytearray(plain)
    duplicate[63:69] = duplicate[57:63]
    cases.append((bytes(duplicate), "bad_field"))
    zero_port = bytearray(plain)
    zero_port[57:59] = b"\0\0"
    cases.append((bytes(zero_port), "bad_field"))
    return [(alice.seal_raw_plaintext(proto.PacketType.P1, p), reason) for p, reason in cases]


def test_forged_and_fuzzed_control_packets_open_nothing_and_crash_nothing(no_doors: World) -> None:
    world = no_doors
    lab = world.lab
    groups = _forgeries(world)
    hostile = _hostile_key_holder(world)
    held = {world.alice.hint(time.time() + d) for d in (-60, 0, 60)} | {world.bob.hint(time.time() + d)
                                                                          for d in (-60, 0, 60)}
    payloads = [p for group in groups.values() for p in group]
    expected: Counter[str] = Counter()
    under_live_hints = 0
    for payload in payloads:
        if _passes_kernel_filter(payload):
            if payload[2:10] in held:
                under_live_hints += 1
            else:
                expected["unknown_user"] += 1
    # Every forgery under a live hint is accounted for, but not one tag check each: capture sheds what
    # exceeds its budgets per (hint, source) and per hint, and auth checks at most a few bad tags per
    # (source, hint) a second and sets the rest aside unchecked.
    live_hint_outcomes = ("bad_tag", "hint_over_budget", "shed")
    expected["live_hint"] = under_live_hints
    for _, reason in hostile:
        expected[reason] += 1
    pids = world.pids()
    before = world.rejections()
    capture_before = world.events.next_alive("capture")
    mark = world.events.mark()
    frames: list[bytes | float] = []
    for index, payload in enumerate(payloads):
        frames.append(world.udp_from(lab.attacker, payload))
        if index % 500 == 499:
            frames.append(0.02)  # a breath for capture's ring, so the counts are exact
    # The hostile key holder, from its own address, once the budgets the flood used have refilled.
    hostile_frames: list[bytes | float] = [world.udp_from(lab.client, p) for p, _ in hostile]
    from_server = f"ip src host {lab.server.ipv4} or ip6 src host {lab.server.ipv6} and not icmp6"

    def shed(alive: dict[str, Any]) -> int:
        return sum(v for v in alive.get("shed", {}).values() if isinstance(v, int))

    with world.sniff(lab.attacker, from_server) as replies:
        sent = world.inject(lab.attacker, frames)
        time.sleep(1.5)  # the budgets refill with time: this wait is what the hostile packets need, no handshake
        sent += world.inject(lab.client, hostile_frames)
        deadline = time.monotonic() + 10
        while True:
            after = world.rejections()
            capture_after = world.events.next_alive("capture")
            delta = Counter({k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)})
            # capture drops a datagram whose hint is no current user's before parsing it, and
            # counts it there (unknown_hints); auth counts the unknown users it still sees.
            in_capture = capture_after.get("unknown_hints", 0) - capture_before.get("unknown_hints", 0)
            delta["unknown_user"] += in_capture
            delta["shed"] = shed(capture_after) - shed(capture_before)
            outcomes = {k: delta.pop(k, 0) for k in live_hint_outcomes}
            delta["live_hint"] = sum(outcomes.values())
            delta = +delta
            if delta == expected or time.monotonic() > deadline:
                break
    assert sent == len(payloads) + len(hostile)
    # The tags auth still checked were a handful a second, not one per forgery.
    assert outcomes["bad_tag"] <= 100, outcomes
    assert world.pids() == pids, "a stage restarted"
    assert world.doors() == set()
    opening = [e.topic for e in world.events.since(mark)
               if e.topic in (Topic.AUTH_REQUEST_RECEIVED, Topic.GATE_RULE_ADDED)]
    assert opening == []
    assert read_pcap(replies) == [], "the server answered a forgery"
    record_figures("forgery", packets_tried=sent, by_group={k: len(v) for k, v in groups.items()},
                   hostile_key_holder=len(hostile), passed_kernel_filter=sum(expected.values()) - len(hostile),
                   rejections_delta=dict(delta), live_hint_outcomes=outcomes,
                   unknown_user_dropped_by_capture=in_capture,
                   doors_wrongly_opened=0, crashes=0)
    # Every packet the kernel let through was counted under its reason (by capture or auth); nothing else moved.
    assert delta == expected, f"rejection counters moved by {dict(delta)}, expected {dict(expected)}"


def test_every_tcp_flag_combination_opens_nothing(no_doors: World) -> None:
    world = no_doors
    lab = world.lab
    client = lab.client.ipv4
    pids = world.pids()
    unmatched_before = world.events.next_alive("auth")["unmatched_syns"]
    # (a) From the attacker: every flag byte to the control port, a door port, sshd's port, port 1.
    scan = [world.tcp_from(lab.attacker, port, secrets.randbits(32), flags)
            for port in (CONTROL_PORT, DOOR_LOW + 7, 22, 1) for flags in range(256)]
    # (b) From the client, at its own pending knocks with their exact ISNs: every flag byte
    # that is not "SYN without ACK" must not count as a knock.
    p1, request = world.alice.p1(client)
    not_knocks = [world.tcp_from(lab.client, k.port, k.isn, flags) for k in request.knocks
                  for flags in range(256) if flags & (TH_SYN | TH_ACK) != TH_SYN]
    replies_bpf = f"ip src host {lab.server.ipv4} and not (udp src port {CONTROL_PORT})"
    with world.sniff(lab.attacker, f"ip src host {lab.server.ipv4}") as at_attacker, \
            world.sniff(lab.client, f"udp src port {CONTROL_PORT}") as answers, \
            world.sniff(lab.client, replies_bpf) as other_replies:
        world.inject(lab.attacker, scan)
        world.send_p1(lab.client, p1, client)
        world.inject(lab.client, [*not_knocks, 0.3,
                                  world.udp_from(lab.client, world.alice.p2(request.request_id), sport=33333)])
        # The P2's answer comes after every segment sent before it was seen.
        world.wait_statuses(answers, world.alice, bool)
        doors_after_fuzz = world.doors()
        # The knocks proper, with odd but valid flag bytes (SYN set, ACK clear): the request completes.
        odd = (TH_SYN | dpkt.tcp.TH_FIN, TH_SYN | dpkt.tcp.TH_URG | dpkt.tcp.TH_PUSH, TH_SYN | 0xC0)
        knocks = [world.tcp_from(lab.client, k.port, k.isn, f) for k, f in zip(request.knocks, odd, strict=True)]
        world.inject(lab.client, [*knocks, 0.2,
                                  world.udp_from(lab.client, world.alice.p2(request.request_id), sport=33334)])
        opened = world.wait_doors(lambda d: bool(d), 3)
        world.wait_statuses(answers, world.alice, lambda s: s[-1:] == ["OPEN"])
    statuses = world.alice.statuses(answers)
    assert world.pids() == pids
    assert read_pcap(at_attacker) == [], "the server answered the attacker's scan"
    assert read_pcap(other_replies) == [], "the server answered a non-knock segment"
    assert doors_after_fuzz == set(), doors_after_fuzz
    assert statuses[:1] == ["PENDING"], statuses  # the request was there, no flag combination counted
    assert statuses[-1:] == ["OPEN"] and {a for a, _ in opened} == {client}, (statuses, opened)
    unmatched_after = world.events.next_alive("auth")["unmatched_syns"]
    record_figures("tcp_flags", packets_tried=len(scan) + len(not_knocks), doors_wrongly_opened=0, crashes=0,
                   unmatched_syns_delta=unmatched_after - unmatched_before, answers=statuses)
