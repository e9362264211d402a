"""The engine serving a fleet: each request belongs to the gateway its P1 came to.

Its knocks, its P2s, its door and its P3 are all at that gateway; version 2 packets are bound
to the gateway address they were sent to, so a copy sniffed at one gateway opens nothing at
another even when it arrives there first; a fleet refuses version 1 (not bound) by config.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from dynknock import protocol as proto
from dynknock.auth.engine import CloseDoor, EngineConfig, GatewayRefused, Notify, OpenDoor, SendReply
from dynknock.config import GatewayConfig
from dynknock.keys import hint_epoch, user_hint
from dynknock.protocol import PacketType, Status
from tests.unit.engine_support import (
    ALICE,
    CONFIG,
    KNOCKS,
    NOW,
    RID,
    RID_B,
    Client,
    fresh_nonce,
    make_engine,
    of,
    one,
    rejected,
    topics,
)

GW_A = ipaddress.ip_address("198.18.0.1")
GW_B = ipaddress.ip_address("198.18.0.11")
FLEET = dataclasses.replace(CONFIG, versions=(proto.BOUND_VERSION,))


def bound(client: Client, message: proto.Message, server: proto.IPAddress) -> bytes:
    hint = user_hint(client.keys, hint_epoch(message.timestamp_ms / 1000))
    return proto.seal(client.keys, message, hint, fresh_nonce(), server)


def p1(client: Client, server: proto.IPAddress, rid: bytes = RID) -> bytes:
    return bound(client, proto.P1(NOW, rid, client.address, "ssh", KNOCKS), server)


def read_v2(client: Client, reply: SendReply) -> proto.P3:
    header = proto.parse_header(reply.payload, (PacketType.P3,))
    assert isinstance(header, proto.Header) and header.version == proto.BOUND_VERSION
    message = proto.open_packet(client.keys, header, reply.payload, reply.source)
    assert isinstance(message, proto.P3)
    return message


def knock_at(engine: object, client: Client, gateway: str) -> list[object]:
    actions: list[object] = []
    for k in KNOCKS:
        actions += engine.on_syn(client.address, k.port, k.isn, NOW, gateway)  # type: ignore[attr-defined]
    return actions


def test_a_request_opens_its_door_and_answers_at_the_gateway_it_came_to() -> None:
    engine, alice = make_engine(config=FLEET), Client(ALICE)
    assert "auth.request.received" in topics(engine.on_datagram(alice.address, alice.port, GW_B, p1(alice, GW_B),
                                                                NOW, "gw-b"))
    door = one(knock_at(engine, alice, "gw-b"), OpenDoor)  # type: ignore[arg-type]
    assert door.gateway == "gw-b"
    engine.on_door_result(door.door_id, "gate", True, "", NOW)
    opened = engine.on_door_result(door.door_id, "relay", True, "", NOW)
    assert "auth.door.opened" in topics(opened)
    assert [e.fields.get("gateway") for e in of(opened, Notify)] == ["gw-b"]
    p2 = bound(alice, proto.P2(NOW, RID), GW_B)
    reply = one(engine.on_datagram(alice.address, alice.port, GW_B, p2, NOW, "gw-b"), SendReply)
    assert (reply.gateway, reply.source) == ("gw-b", GW_B)
    p3 = read_v2(alice, reply)
    assert p3.status is Status.OPEN and p3.door_port == door.port
    assert engine.open_doors()[0]["gateway"] == "gw-b"
    # Its door closes where it is.
    closes = of(engine.replace_users({}), CloseDoor)
    assert [c.gateway for c in closes] == ["gw-b"]


def test_a_v2_copy_sent_to_another_gateway_first_fails_the_tag_and_the_original_still_opens() -> None:
    engine, alice = make_engine(config=FLEET), Client(ALICE)
    packet = p1(alice, GW_A)
    # The race: the sniffed copy (spoofing alice's address) reaches gateway B before the original reaches A.
    assert rejected(engine.on_datagram(alice.address, alice.port, GW_B, packet, NOW, "gw-b")) == ["bad_tag"]
    assert "auth.request.received" in topics(engine.on_datagram(alice.address, alice.port, GW_A, packet, NOW,
                                                                "gw-a"))
    # Copies after the original: refused by the shared replay journal.
    assert rejected(engine.on_datagram(alice.address, alice.port, GW_B, packet, NOW, "gw-b")) == ["replay"]


def test_knocks_and_p2_seen_at_another_gateway_do_not_count() -> None:
    engine, alice = make_engine(config=FLEET), Client(ALICE)
    engine.on_datagram(alice.address, alice.port, GW_A, p1(alice, GW_A), NOW, "gw-a")
    assert not of(knock_at(engine, alice, "gw-b"), OpenDoor)  # type: ignore[arg-type]
    assert engine.unmatched_syns == 3
    p2 = bound(alice, proto.P2(NOW, RID), GW_B)  # a P2 of alice's own, but sent to the other gateway
    assert rejected(engine.on_datagram(alice.address, alice.port, GW_B, p2, NOW, "gw-b")) == ["wrong_gateway"]
    door = one(knock_at(engine, alice, "gw-a"), OpenDoor)  # type: ignore[arg-type]
    assert door.gateway == "gw-a"


def test_a_fleet_refuses_version_1_unless_configured() -> None:
    engine, alice = make_engine(config=FLEET), Client(ALICE)
    assert rejected(engine.on_datagram(alice.address, alice.port, GW_A, alice.p1(), NOW, "gw-a")) == ["bad_version"]
    lenient = make_engine(config=dataclasses.replace(CONFIG, versions=proto.VERSIONS))
    assert "auth.request.received" in topics(lenient.on_datagram(alice.address, alice.port, GW_A, alice.p1(), NOW,
                                                                 "gw-a"))


def test_losing_one_gateways_relay_fails_only_that_gateways_relay_doors() -> None:
    engine = make_engine(config=FLEET)
    alice, bob_like = Client(ALICE), Client(ALICE, address=ipaddress.ip_address("203.0.113.8"))
    doors = {}
    for client, server, name, rid in ((alice, GW_A, "gw-a", RID), (bob_like, GW_B, "gw-b", RID_B)):
        engine.on_datagram(client.address, client.port, server, p1(client, server, rid), NOW, name)
        door = one(knock_at(engine, client, name), OpenDoor)  # type: ignore[arg-type]
        engine.on_door_result(door.door_id, "gate", True, "", NOW)
        engine.on_door_result(door.door_id, "relay", True, "", NOW)
        doors[name] = door
    lost = engine.on_door_stage_lost("relay", NOW + 1, "gw-a")
    assert [c.door_id for c in of(lost, CloseDoor)] == [doors["gw-a"].door_id]
    assert [c.gateway for c in of(lost, CloseDoor)] == ["gw-a"]


def test_one_host_is_unchanged_version_1_and_2_both_open() -> None:
    engine, alice = make_engine(config=EngineConfig(CONFIG.services, 40000, 40009)), Client(ALICE)
    server = ipaddress.ip_address("192.0.2.1")
    assert "auth.request.received" in topics(engine.on_datagram(alice.address, alice.port, server,
                                                                p1(alice, server), NOW))
    door = one(knock_at(engine, alice, ""), OpenDoor)  # type: ignore[arg-type]
    assert door.gateway == ""


# --- which gateway a packet from capture counts for (auth/fleet.py, engine invariant 15) ---------

KEY_A, KEY_B = "capture-key-of-gw-a", "capture-key-of-gw-b"
GATEWAYS = dataclasses.replace(
    FLEET, gateways={"gw-a": GatewayConfig("gw-a", (str(GW_A),), "tcp://198.18.0.1:7003"),
                     "gw-b": GatewayConfig("gw-b", (str(GW_B),), "tcp://198.18.0.11:7003")},
    capture_keys={KEY_A: "gw-a", KEY_B: "gw-b"}, path="/etc/dynknock/auth.toml")


def test_a_packet_counts_only_for_the_gateway_whose_capture_key_pushed_it_and_whose_address_it_was_sent_to() -> None:
    engine, alice = make_engine(config=GATEWAYS), Client(ALICE)
    source = str(alice.address)
    refused = [
        one(engine.on_captured_datagram(source, alice.port, str(GW_A), p1(alice, GW_A), NOW, "gw-c", KEY_A),
            GatewayRefused),
        one(engine.on_captured_datagram(source, alice.port, str(GW_A), p1(alice, GW_A), NOW, "gw-a", KEY_B),
            GatewayRefused),
        one(engine.on_captured_datagram(source, alice.port, str(GW_B), p1(alice, GW_B), NOW, "gw-a", KEY_A),
            GatewayRefused),
        one(engine.on_captured_syn(source, KNOCKS[0].port, KNOCKS[0].isn, NOW, "gw-b", "a stranger's key"),
            GatewayRefused),
        one(engine.on_captured_other(KEY_A), GatewayRefused),
    ]
    assert [r.reason for r in refused] == ["unknown_gateway", "other_gateways_key", "not_its_address",
                                           "other_gateways_key", "unknown_gateway"]
    assert "/etc/dynknock/auth.toml" in refused[0].detail and str(GW_B) in refused[2].detail
    assert engine.gateway_refusals == {"unknown_gateway": 2, "other_gateways_key": 2, "not_its_address": 1}
    assert engine.open_doors() == [] and engine.opening(NOW) == (0, 0)
    # The same P1, from gw-a's capture and sent to gw-a's address, is taken; its knocks there open its door.
    taken = engine.on_captured_datagram(source, alice.port, str(GW_A), p1(alice, GW_A), NOW, "gw-a", KEY_A)
    assert "auth.request.received" in topics(taken)
    actions = [a for k in KNOCKS for a in engine.on_captured_syn(source, k.port, k.isn, NOW, "gw-a", KEY_A)]
    assert one(actions, OpenDoor).gateway == "gw-a"


def test_one_host_takes_every_packet_whatever_gateway_capture_names() -> None:
    engine, alice = make_engine(), Client(ALICE)
    taken = engine.on_captured_datagram(str(alice.address), alice.port, "198.18.0.1", alice.p1(), NOW, "any", "")
    assert "auth.request.received" in topics(taken)
    assert engine.on_captured_other("") == [] and engine.gateway_refusals == {}
    with pytest.raises(ValueError):
        engine.on_captured_syn("not an address", 1, 1, NOW)
