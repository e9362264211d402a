"""Write the byte-exact test vectors of the wire protocol (docs/PROTOCOL.md).

    python3 tests/vectors/make_vectors.py          # (re)write tests/vectors/*.json
    python3 tests/vectors/make_vectors.py --check  # exit 1 if a file differs

Every input is fixed (master keys, nonces, hint epochs, timestamps, request
ids), so the output is the same on every machine. A vector holds its inputs
(byte strings in hex) and the expected packet in hex; tests/unit/test_protocol.py
checks each one in both directions, and checks the cryptography against an
independent construction (hashlib.scrypt, hmac HKDF, HChaCha20 written out).

Change a vector only with a protocol version bump: clients in the field were
built against these bytes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from anywhere without installing

from dynknock import keys as K  # noqa: E402
from dynknock import protocol as proto  # noqa: E402

# 2004-05-02 14:39:50 UTC, the first request in the SIG^2 paper's daemon log.
TIMESTAMP_MS = 1_083_508_790_000
MASTER_KEY = bytes(range(32))
REQUEST_ID = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
# The knocks of the paper's client screen dump.
PAPER_KNOCKS = (proto.Knock(15075, 0x54841860), proto.Knock(4174, 0xE2AA5A03), proto.Knock(44809, 0x902AC754))

KEY_VECTOR_USER = "alice"
KEY_VECTOR_PASSWORD = "correct horse battery staple"


def _nonce(tag: int) -> bytes:
    """A fixed, distinct 24-byte nonce per vector."""
    return bytes((tag + i) & 0xFF for i in range(proto.NONCE_LEN))


def _address_json(address: proto.IPAddress | None) -> dict[str, Any]:
    if address is None:
        return {"family": int(proto.AddressFamily.AS_SEEN), "address": None}
    family = proto.AddressFamily.IPV4 if address.version == 4 else proto.AddressFamily.IPV6
    return {"family": int(family), "address": str(address), "address_hex": address.packed.hex()}


def message_to_json(message: proto.Message) -> dict[str, Any]:
    out: dict[str, Any] = {"timestamp_ms": message.timestamp_ms, "request_id": message.request_id.hex()}
    if isinstance(message, proto.P1):
        out["address"] = _address_json(message.address)
        out["service"] = message.service
        out["knocks"] = [{"port": k.port, "isn": k.isn, "isn_hex": f"{k.isn:08x}"} for k in message.knocks]
        if message.knock_kind is not proto.KnockKind.SYN:  # the vectors of before it existed stay as they were
            out["knock_kind"] = message.knock_kind.name
            out["knock_kind_value"] = int(message.knock_kind)
    elif isinstance(message, proto.P3):
        out["status"] = message.status.name
        out["status_value"] = int(message.status)
        out["door_port"] = message.door_port
        out["window_seconds"] = message.window_seconds
        out["seen_address"] = _address_json(message.seen_address)
    return out


def _address_from_json(doc: dict[str, Any]) -> proto.IPAddress | None:
    return None if doc["address"] is None else ipaddress.ip_address(doc["address"])


def message_from_json(kind: str, doc: dict[str, Any]) -> proto.Message:
    """The inverse of message_to_json; the tests build their inputs with it."""
    ts, rid = int(doc["timestamp_ms"]), bytes.fromhex(doc["request_id"])
    if kind == "P1":
        k = [proto.Knock(int(x["port"]), int(x["isn"])) for x in doc["knocks"]]
        return proto.P1(ts, rid, _address_from_json(doc["address"]), str(doc["service"]), (k[0], k[1], k[2]),
                        proto.KnockKind[doc.get("knock_kind", "SYN")])
    if kind == "P2":
        return proto.P2(ts, rid)
    return proto.P3(ts, rid, proto.Status[doc["status"]], int(doc["door_port"]), int(doc["window_seconds"]),
                    _address_from_json(doc["seen_address"]))


def _session_keys_json(keys: K.SessionKeys) -> dict[str, str]:
    return {"hint": keys.hint.hex(), "client_to_server": keys.client_to_server.hex(),
            "server_to_client": keys.server_to_client.hex()}


def packet_vector(description: str, message: proto.Message, nonce_tag: int,
                  master: bytes = MASTER_KEY, server: proto.IPAddress | None = None) -> dict[str, Any]:
    """Version 1, or with `server` version 2 (the server address joins the associated data)."""
    keys = K.SessionKeys.from_master(master)
    epoch = K.hint_epoch(message.timestamp_ms / 1000)
    hint = K.user_hint(keys, epoch)
    nonce = _nonce(nonce_tag)
    kind, plaintext = proto.encode_plaintext(message)
    packet = proto.seal(keys, message, hint, nonce, server)
    assert len(packet) == proto.PACKET_LEN[kind]
    inputs: dict[str, Any] = {
        "master_key": master.hex(),
        "epoch": epoch,
        "hint": hint.hex(),
        "nonce": nonce.hex(),
        "message": message_to_json(message),
    }
    if server is not None:
        inputs["server_address"] = _address_json(server)
    return {
        "description": description,
        "type": kind.name,
        "version": proto.VERSION if server is None else proto.BOUND_VERSION,
        "inputs": inputs,
        "derived": {
            "associated_data": proto.associated_data(packet[: proto.HEADER_LEN], server).hex(),
            "session_keys": _session_keys_json(keys),
            "direction_key": "server_to_client" if kind is proto.PacketType.P3 else "client_to_server",
            "plaintext": plaintext.hex(),
            "header": packet[: proto.HEADER_LEN].hex(),
            "ciphertext": packet[proto.HEADER_LEN: -proto.TAG_LEN].hex(),
            "tag": packet[-proto.TAG_LEN:].hex(),
        },
        "packet": packet.hex(),
        "packet_len": len(packet),
    }


def key_vector() -> dict[str, Any]:
    master = K.derive_master_key(KEY_VECTOR_USER, KEY_VECTOR_PASSWORD)
    keys = K.SessionKeys.from_master(master)
    epoch = K.hint_epoch(TIMESTAMP_MS / 1000)
    return {
        "description": "derive_master_key(user, password), the HKDF session keys and the user hint of one epoch",
        "inputs": {
            "user": KEY_VECTOR_USER,
            "password": KEY_VECTOR_PASSWORD,
            "unix_seconds": TIMESTAMP_MS // 1000,
            "epoch": epoch,
        },
        "scrypt": {
            "salt": (K.SCRYPT_SALT_PREFIX + KEY_VECTOR_USER.encode()).hex(),
            "N": K.SCRYPT_N, "r": K.SCRYPT_R, "p": K.SCRYPT_P, "dklen": K.MASTER_KEY_LEN,
        },
        "master_key": master.hex(),
        "master_key_base64": K.encode_key(master),
        "session_keys": _session_keys_json(keys),
        "hint": K.user_hint(keys, epoch).hex(),
        "hint_next_epoch": K.user_hint(keys, epoch + 1).hex(),
    }


def build_vectors() -> dict[str, dict[str, Any]]:
    """File name -> vector document."""
    ts = TIMESTAMP_MS
    v4 = ipaddress.IPv4Address("203.0.113.7")
    v6 = ipaddress.IPv6Address("2001:db8::7")
    seen = ipaddress.IPv4Address("198.51.100.20")
    out: dict[str, dict[str, Any]] = {"keys.json": key_vector()}
    p1s = [
        ("p1_ipv4.json", "P1 declaring an IPv4 client address, service ssh, the paper's knocks",
         proto.P1(ts, REQUEST_ID, v4, "ssh", PAPER_KNOCKS)),
        ("p1_ipv6.json", "P1 declaring an IPv6 client address, service web",
         proto.P1(ts + 1, REQUEST_ID, v6, "web", (proto.Knock(1, 0), proto.Knock(65535, 0xFFFFFFFF),
                                                    proto.Knock(8080, 0x01020304)))),
        ("p1_as_seen.json", "P1 declaring the address 'as seen' (family 0, NAT; the user's nat flag must allow it)",
         proto.P1(ts + 2, REQUEST_ID, None, "backup_db-2", PAPER_KNOCKS)),
    ]
    for i, (name, text, message) in enumerate(p1s):
        out[name] = packet_vector(text, message, 0x10 * (i + 1))
    out["p2.json"] = packet_vector("P2 asking about the request of p1_ipv4", proto.P2(ts + 1500, REQUEST_ID), 0x40)
    p3s: list[tuple[proto.Status, int, int, proto.IPAddress | None]] = [
        (proto.Status.OPEN, 58201, 30, v4),
        (proto.Status.PENDING, 0, 0, v4),
        (proto.Status.ADDRESS_MISMATCH, 0, 0, seen),
        (proto.Status.SERVICE_NOT_ALLOWED, 0, 0, v6),
        (proto.Status.UNAVAILABLE, 0, 0, v4),
        (proto.Status.KNOCK_KIND_REFUSED, 0, 0, v4),
    ]
    for i, (status, port, window, address) in enumerate(p3s):
        p3 = proto.P3(ts + 1600, REQUEST_ID, status, port, window, address)
        out[f"p3_{status.name.lower()}.json"] = packet_vector(f"P3 {status.name}", p3, 0x80 + 0x10 * i)
    # Version 2: the same messages bound to the gateway address they are sent to (P3: sent from).
    gateway4 = ipaddress.IPv4Address("198.18.0.11")
    gateway6 = ipaddress.IPv6Address("2001:db8:d::11")
    out["v2_p1_ipv4.json"] = packet_vector("v2: P1 of p1_ipv4 bound to gateway 198.18.0.11", p1s[0][2], 0xE0,
                                           server=gateway4)
    out["v2_p1_ipv6.json"] = packet_vector("v2: P1 of p1_ipv6 bound to gateway 2001:db8:d::11", p1s[1][2], 0xE8,
                                           server=gateway6)
    out["v2_p2.json"] = packet_vector("v2: P2 of p2 bound to gateway 198.18.0.11", proto.P2(ts + 1500, REQUEST_ID),
                                      0xF0, server=gateway4)
    # Knocks sent by connect(): the kernel picks the ISN, the P1 declares ports only (knock_kind 1, ISNs 0).
    connect_knocks = tuple(proto.Knock(k.port, 0) for k in PAPER_KNOCKS)
    out["p1_connect_ipv4.json"] = packet_vector(
        "P1 of p1_ipv4 declaring connect() knocks (knock_kind 1: the server matches address and port)",
        proto.P1(ts, REQUEST_ID, v4, "ssh", (connect_knocks[0], connect_knocks[1], connect_knocks[2]),
                 proto.KnockKind.CONNECT), 0xD0)
    out["v2_p1_connect_ipv6.json"] = packet_vector(
        "v2: P1 declaring connect() knocks from an IPv6 client, bound to gateway 2001:db8:d::11",
        proto.P1(ts + 1, REQUEST_ID, v6, "ssh", (connect_knocks[0], connect_knocks[1], connect_knocks[2]),
                 proto.KnockKind.CONNECT), 0xD8, server=gateway6)
    out["v2_p3_open.json"] = packet_vector(
        "v2: P3 OPEN from gateway 198.18.0.11", proto.P3(ts + 1600, REQUEST_ID, proto.Status.OPEN, 58201, 30, v4),
        0xF8, server=gateway4)
    out.update(pair_vectors())
    return out


# --- version 3: key-pair users (docs/PROTOCOL.md §11) ----------------------------------------------

PAIR_SEED = bytes(range(0x20, 0x40))  # the user's Ed25519 seed (her key file)
SERVER_SECRET = bytes(range(0x40, 0x60))  # the server's X25519 private key (server.key_file)


def pair_keys_vector() -> dict[str, Any]:
    from dynknock import curve25519

    user_public = curve25519.ed25519_public_key(PAIR_SEED)
    server_public = curve25519.x25519_base(SERVER_SECRET)
    shared = curve25519.x25519(curve25519.ed25519_secret_scalar(PAIR_SEED), server_public)
    keys = K.pair_session_keys(shared, user_public, server_public)
    epoch = K.hint_epoch(TIMESTAMP_MS / 1000)
    return {
        "description": "a key-pair user's session keys at a server: X25519 of her seed's scalar (SHA-512(seed)[:32], "
                       "clamped) and the server's public key, equal to the server's X25519 with the Montgomery form "
                       "of her Ed25519 public key; then HKDF-SHA256 with both public keys",
        "inputs": {"user_seed": PAIR_SEED.hex(), "server_secret": SERVER_SECRET.hex(),
                   "unix_seconds": TIMESTAMP_MS // 1000, "epoch": epoch},
        "user_public": user_public.hex(),
        "user_public_line": K.key_line(K.PAIR_PUBLIC, user_public),
        "user_scalar": curve25519.ed25519_secret_scalar(PAIR_SEED).hex(),
        "user_montgomery_u": K.montgomery_u(user_public).hex(),
        "server_public": server_public.hex(),
        "server_public_line": K.key_line(K.SERVER_PUBLIC, server_public),
        "shared_secret": shared.hex(),
        "session_keys": _session_keys_json(keys),
        "hint": K.user_hint(keys, epoch).hex(),
    }


def pair_packet_vector(description: str, message: proto.Message, nonce_tag: int,
                       server: proto.IPAddress | None = None) -> dict[str, Any]:
    from dynknock import curve25519

    user_public = curve25519.ed25519_public_key(PAIR_SEED)
    server_public = curve25519.x25519_base(SERVER_SECRET)
    keys = K.pair_session_keys(curve25519.x25519(curve25519.ed25519_secret_scalar(PAIR_SEED), server_public),
                               user_public, server_public)
    epoch = K.hint_epoch(message.timestamp_ms / 1000)
    hint, nonce = K.user_hint(keys, epoch), _nonce(nonce_tag)
    signed: list[bytes] = []

    def sign(data: bytes) -> bytes:
        signed.append(data)
        return curve25519.ed25519_sign(PAIR_SEED, data)

    packet = proto.seal_pair(keys, message, hint, nonce, server_public, server,
                             sign if isinstance(message, proto.P1) else None)
    kind, plaintext = proto.encode_plaintext(message)
    inputs: dict[str, Any] = {"user_seed": PAIR_SEED.hex(), "server_secret": SERVER_SECRET.hex(), "epoch": epoch,
                              "hint": hint.hex(), "nonce": nonce.hex(), "message": message_to_json(message)}
    if server is not None:
        inputs["server_address"] = _address_json(server)
    header = packet[: proto.HEADER_LEN]
    derived: dict[str, Any] = {
        "associated_data": proto.associated_data(header, server).hex(),
        "session_keys": _session_keys_json(keys),
        "direction_key": "server_to_client" if kind is proto.PacketType.P3 else "client_to_server",
        "header": header.hex(),
    }
    if signed:
        derived["signed_message"] = signed[0].hex()
        derived["signature"] = curve25519.ed25519_sign(PAIR_SEED, signed[0]).hex()
        plaintext += curve25519.ed25519_sign(PAIR_SEED, signed[0])
    derived.update({"plaintext": plaintext.hex(), "ciphertext": packet[proto.HEADER_LEN: -proto.TAG_LEN].hex(),
                    "tag": packet[-proto.TAG_LEN:].hex()})
    assert len(packet) == proto.PAIR_PACKET_LEN[kind]
    return {"description": description, "type": kind.name, "version": proto.PAIR_VERSION,
            "bound": server is not None, "inputs": inputs, "derived": derived, "packet": packet.hex(),
            "packet_len": len(packet)}


def pair_vectors() -> dict[str, dict[str, Any]]:
    ts = TIMESTAMP_MS
    v4 = ipaddress.IPv4Address("203.0.113.7")
    v6 = ipaddress.IPv6Address("2001:db8::7")
    gateway4 = ipaddress.IPv4Address("198.18.0.11")
    gateway6 = ipaddress.IPv6Address("2001:db8:d::11")
    connect = tuple(proto.Knock(k.port, 0) for k in PAPER_KNOCKS)
    return {
        "v3_keys.json": pair_keys_vector(),
        "v3_p1_ipv4.json": pair_packet_vector(
            "v3: a key-pair user's P1 (of p1_ipv4), signed, unbound", proto.P1(ts, REQUEST_ID, v4, "ssh", PAPER_KNOCKS),
            0x30),
        "v3_p1_connect_ipv6_bound.json": pair_packet_vector(
            "v3: P1 declaring connect() knocks from an IPv6 client, signed, bound to gateway 2001:db8:d::11 "
            "(type byte 0x81)",
            proto.P1(ts + 1, REQUEST_ID, v6, "ssh", (connect[0], connect[1], connect[2]), proto.KnockKind.CONNECT),
            0x38, gateway6),
        "v3_p2.json": pair_packet_vector("v3: P2 (unsigned), unbound", proto.P2(ts + 1500, REQUEST_ID), 0x48),
        "v3_p3_open_bound.json": pair_packet_vector(
            "v3: P3 OPEN from gateway 198.18.0.11 (type byte 0x83)",
            proto.P3(ts + 1600, REQUEST_ID, proto.Status.OPEN, 58201, 30, v4), 0x58, gateway4),
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the vectors live (default: %(default)s)")
    args = parser.parse_args(argv)
    stale = []
    for name, doc in sorted(build_vectors().items()):
        path = args.dir / name
        text = render(doc)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"vectors differ from the code: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
