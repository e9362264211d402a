"""Write the seed corpus of the decoder fuzzers (tests/fuzz/corpus/), deterministically.

    python3 tests/fuzz/make_corpus.py          # (re)write the corpus
    python3 tests/fuzz/make_corpus.py --check  # exit 1 if the files differ from what this writes

Four directories, one input per file, in the format each harness reads
(test_fuzz_decoders.py and fuzz_atheris.py share it):

    packets/     a UDP payload as it arrives at the control port (P1, P2, P3 and mutants)
    plaintexts/  byte 0 = packet type (1 P1, 2 P2, 3 P3), then a plaintext to decode
    bus/         one ZeroMQ frame of the bus (msgpack), valid messages and mutants
    frames/      byte 0 = index into LINKTYPES below, then a captured frame

The seeds are the byte-exact protocol vectors of tests/vectors/ plus, for each,
the mutations an attacker tries first (truncated, extended, bit flipped, type or
version changed, fields swapped), so that the fuzzers start from inputs that get
past the cheap checks. Files named `*.regress.bin` are inputs that once broke a
decoder; this script never deletes them.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import dpkt
import msgpack

from dynknock.protocol import CONTROL_PORT

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
VECTORS = HERE.parent / "vectors"
# frames/: byte 0 selects the link type. EN10MB, RAW, RAW (savefile value), LINUX_SLL,
# then two link types parse_frame does not handle.
LINKTYPES = (1, 12, 101, 113, 0, 105)
SERVER4, CLIENT4 = "198.18.0.1", "198.18.0.2"
SERVER6, CLIENT6 = "2001:db8:d::1", "2001:db8:d::2"


def _vectors() -> dict[str, dict[str, object]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTORS.glob("*.json"))}


def packets() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, vector in _vectors().items():
        if "packet" not in vector:
            continue
        packet = bytes.fromhex(str(vector["packet"]))
        out[name] = packet
        out[f"{name}-truncated"] = packet[:-1]
        out[f"{name}-extended"] = packet + b"\0"
        out[f"{name}-header-only"] = packet[:34]
        flipped = bytearray(packet)
        flipped[-1] ^= 0x01
        out[f"{name}-tag-flipped"] = bytes(flipped)
        flipped = bytearray(packet)
        flipped[40] ^= 0x80
        out[f"{name}-ciphertext-flipped"] = bytes(flipped)
        out[f"{name}-version-2"] = b"\x02" + packet[1:]
        out[f"{name}-type-0"] = packet[:1] + b"\x00" + packet[2:]
        out[f"{name}-type-3"] = packet[:1] + b"\x03" + packet[2:]
        out[f"{name}-hint-nonce-swapped"] = packet[:2] + packet[10:18] + packet[2:10] + packet[18:]
        if vector.get("version") == 3:  # key-pair users: the bound flag, the signature's room, v1's sizes
            out[f"{name}-bound-flag-flipped"] = packet[:1] + bytes([packet[1] ^ 0x80]) + packet[2:]
            out[f"{name}-version-1"] = b"\x01" + packet[1:]
            if vector["type"] == "P1":
                out[f"{name}-without-signature"] = packet[:-80] + packet[-16:]
                flipped = bytearray(packet)
                flipped[-17] ^= 0x01  # the signature's last byte, under the tag
                out[f"{name}-signature-flipped"] = bytes(flipped)
    out["empty"] = b""
    out["one-byte"] = b"\x01"
    return out


def plaintexts() -> dict[str, bytes]:
    kinds = {"P1": 1, "P2": 2, "P3": 3}
    out: dict[str, bytes] = {}
    for name, vector in _vectors().items():
        derived = vector.get("derived")
        if not isinstance(derived, dict) or "plaintext" not in derived:
            continue
        kind = kinds[str(vector["type"])]
        plain = bytes.fromhex(str(derived["plaintext"]))
        out[name] = bytes([kind]) + plain
        out[f"{name}-padding"] = bytes([kind]) + plain[:-1] + b"\x01"
        out[f"{name}-short"] = bytes([kind]) + plain[:-1]
        out[f"{name}-as-other-type"] = bytes([kind % 3 + 1]) + plain
        if kind == 1:
            family = bytearray(plain)
            family[24] = 9
            out[f"{name}-family-9"] = bytes([kind]) + bytes(family)
            filler = bytearray(plain)
            filler[24], filler[30] = 4, 0xFF
            out[f"{name}-ipv4-filler"] = bytes([kind]) + bytes(filler)
            service = bytearray(plain)
            service[41:57] = b"ss\0h".ljust(16, b"\0")
            out[f"{name}-service-nul"] = bytes([kind]) + bytes(service)
            duplicate = bytearray(plain)
            duplicate[63:69] = duplicate[57:63]
            out[f"{name}-duplicate-knock"] = bytes([kind]) + bytes(duplicate)
            zero = bytearray(plain)
            zero[57:59] = b"\0\0"
            out[f"{name}-knock-port-0"] = bytes([kind]) + bytes(zero)
            unknown = bytearray(plain)
            unknown[75] = 2
            out[f"{name}-knock-kind-2"] = bytes([kind]) + bytes(unknown)
            flipped = bytearray(plain)
            flipped[75] ^= 1  # SYN knocks called connect() ones (ISNs left), or the other way round
            out[f"{name}-knock-kind-flipped"] = bytes([kind]) + bytes(flipped)
        if kind == 3:
            status = bytearray(plain)
            status[24] = 9
            out[f"{name}-status-9"] = bytes([kind]) + bytes(status)
    return out


def _pack(body: object) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


def bus_frames() -> dict[str, bytes]:
    messages: dict[str, dict[str, object]] = {
        "datagram": {"k": "datagram", "source": CLIENT4, "source_port": 40000, "destination": SERVER4,
                     "payload": bytes(130)},
        "syn": {"k": "syn", "source": CLIENT4, "port": 15075, "isn": 1417943136},
        "knock-filter": {"k": "knock_filter", "pairs": [[CLIENT4, 15075], [CLIENT6, 4174]], "generation": 3},
        "hint-filter": {"k": "hint_filter", "hints": [bytes.fromhex("a1644f9ca7e2880e"), bytes(8)], "generation": 2},
        "door-open": {"k": "door_open", "door_id": "0123456789abcdef", "user": "alice", "client": CLIENT4,
                      "port": 45000, "target_host": "127.0.0.1", "target_port": 22,
                      "expires_at_ms": 1083508820000, "single_use": True},
        "door-close": {"k": "door_close", "door_id": "0123456789abcdef", "client": CLIENT4, "port": 45000},
        "door-result": {"k": "door_result", "door_id": "0123456789abcdef", "stage": "gate", "ok": False,
                        "detail": "refused"},
        "event": {"k": "event", "topic": "auth.request.rejected", "stage": "auth", "time": 1083508790.0,
                  "fields": {"reason": "bad_tag", "source": CLIENT4}},
        # A fleet: capture names its gateway; auth hands a gateway's gate the P3 to send.
        "datagram-gateway": {"k": "datagram", "source": CLIENT4, "source_port": 40000, "destination": SERVER4,
                             "payload": bytes(130), "gateway": "gw-a"},
        "reply": {"k": "reply", "source": SERVER4, "destination": CLIENT4, "port": 40000, "payload": bytes(98)},
        # Doors used (a single-use door stops counting against its user) and the set auth believes open.
        "door-used": {"k": "door_used", "door_id": "0123456789abcdef", "stage": "relay", "client": CLIENT4,
                      "port": 45000},
        "door-set": {"k": "door_set", "doors": [["0123456789abcdef", CLIENT4, 45000], ["fedcba9876543210", CLIENT6,
                                                                                     45001]],
                     "sent_ms": 1083508790000},
        "door-close-kernel": {"k": "door_close", "door_id": "0123456789abcdef", "client": CLIENT4, "port": 45000,
                              "target_host": "127.0.0.1", "target_port": 22, "sent_ms": 1083508790000},
        # A key-pair user's P1 (protocol version 3) as capture forwards it: 194 bytes.
        "datagram-v3": {"k": "datagram", "source": CLIENT4, "source_port": 40000, "destination": SERVER4,
                        "payload": bytes(194)},
    }
    out: dict[str, bytes] = {}
    for name, body in messages.items():
        frame = _pack({"v": 1, **body})
        out[name] = frame
        out[f"{name}-truncated"] = frame[:-1]
        out[f"{name}-version-true"] = _pack({"v": True, **body})
        out[f"{name}-version-2"] = _pack({"v": 2, **body})
        first_field = next(k for k in body if k != "k")
        out[f"{name}-missing-field"] = _pack({"v": 1, **{k: v for k, v in body.items() if k != first_field}})
        out[f"{name}-wrong-type"] = _pack({"v": 1, **body, first_field: [None]})
    out["not-a-map"] = _pack([1, "syn"])
    out["unknown-kind"] = _pack({"v": 1, "k": "door_opened"})
    out["int-keys"] = b"\x81\x01\x01"
    out["huge-array-header"] = b"\xdd\xff\xff\xff\xff"
    out["huge-bin-header"] = b"\xc6\xff\xff\xff\xff"
    out["empty"] = b""
    return out


def _ip4(src: str, dst: str, protocol: int, transport: bytes, more_fragments: bool = False) -> dpkt.ip.IP:
    return dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=protocol, ttl=64,
                      mf=int(more_fragments), data=transport)


def _ip6(src: str, dst: str, next_header: int, transport: bytes) -> dpkt.ip6.IP6:
    return dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                        nxt=next_header, plen=len(transport), hlim=64, data=transport)


def _udp(payload: bytes, dport: int = CONTROL_PORT) -> bytes:
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload


def _syn(flags: int = 0x02) -> bytes:
    return struct.pack("!HHIIBBHHH", 40001, 15075, 1417943136, 0, 5 << 4, flags, 64240, 0, 0)


def _ether(network: bytes, ethertype: int) -> bytes:
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ethertype) + network


def _sll(network: bytes, ethertype: int) -> bytes:
    return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x02\x00\x00", ethertype) + network


def frames() -> dict[str, bytes]:
    vectors = _vectors()
    p1 = bytes.fromhex(str(vectors["p1_ipv4"]["packet"]))
    p2 = bytes.fromhex(str(vectors["p2"]["packet"]))
    networks = {
        "p1-ipv4": (bytes(_ip4(CLIENT4, SERVER4, 17, _udp(p1))), 0x0800),
        "p2-ipv4": (bytes(_ip4(CLIENT4, SERVER4, 17, _udp(p2))), 0x0800),
        "p1-ipv6": (bytes(_ip6(CLIENT6, SERVER6, 17, _udp(p1))), 0x86DD),
        "syn-ipv4": (bytes(_ip4(CLIENT4, SERVER4, 6, _syn())), 0x0800),
        "synack-ipv4": (bytes(_ip4(CLIENT4, SERVER4, 6, _syn(0x12))), 0x0800),
        "syn-ipv6": (bytes(_ip6(CLIENT6, SERVER6, 6, _syn())), 0x86DD),
        "fragment-ipv4": (bytes(_ip4(CLIENT4, SERVER4, 17, _udp(p1), more_fragments=True)), 0x0800),
        "fragment-ipv6": (bytes(_ip6(CLIENT6, SERVER6, 44, struct.pack("!BBHI", 17, 0, 1, 7) + _udp(p1))),
                          0x86DD),
        "hop-by-hop-ipv6": (bytes(_ip6(CLIENT6, SERVER6, 0, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + _udp(p1))),
                            0x86DD),
        # Found by the fuzzer: a fragment header followed by a hop-by-hop header makes
        # dpkt's IP6 raise AttributeError (it reads frag_off from the last extension header).
        "fragment-then-hop-by-hop-ipv6": (bytes(_ip6(CLIENT6, SERVER6, 44, struct.pack("!BBHI", 0, 0, 0, 7)
                                                     + bytes([17, 0, 1, 4, 0, 0, 0, 0]) + _udp(p1))), 0x86DD),
        "wrong-port": (bytes(_ip4(CLIENT4, SERVER4, 17, _udp(p1, dport=53))), 0x0800),
        "not-for-us": (bytes(_ip4(CLIENT4, "198.18.0.9", 17, _udp(p1))), 0x0800),
        "icmp": (bytes(_ip4(CLIENT4, SERVER4, 1, b"\x08\x00\xf7\xff\x00\x00\x00\x00")), 0x0800),
    }
    out: dict[str, bytes] = {}
    for name, (network, ethertype) in networks.items():
        out[f"{name}-ether"] = bytes([0]) + _ether(network, ethertype)
        out[f"{name}-raw"] = bytes([1]) + network
        out[f"{name}-sll"] = bytes([3]) + _sll(network, ethertype)
        out[f"{name}-ether-truncated"] = bytes([0]) + _ether(network, ethertype)[:30]
    out["vlan-tagged-p1"] = bytes([0]) + _ether(struct.pack("!HH", 7, 0x0800) + networks["p1-ipv4"][0], 0x8100)
    out["arp"] = bytes([0]) + _ether(bytes(28), 0x0806)
    out["raw-version-5"] = bytes([2]) + b"\x50" + bytes(39)
    out["unknown-linktype"] = bytes([4]) + networks["p1-ipv4"][0]
    out["ipv4-ihl-too-small"] = bytes([1]) + b"\x44" + networks["syn-ipv4"][0][1:]
    out["empty-ether"] = bytes([0])
    return out


def corpus() -> dict[str, dict[str, bytes]]:
    return {"packets": packets(), "plaintexts": plaintexts(), "bus": bus_frames(), "frames": frames()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    different: list[str] = []
    for directory, inputs in corpus().items():
        target = CORPUS / directory
        target.mkdir(parents=True, exist_ok=True)
        for name, data in inputs.items():
            path = target / f"{name}.bin"
            if path.exists() and path.read_bytes() == data:
                continue
            different.append(str(path.relative_to(HERE)))
            if not check:
                path.write_bytes(data)
    if check and different:
        print("corpus differs from make_corpus.py: " + ", ".join(different), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
