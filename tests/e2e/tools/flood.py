"""flood.py IFACE SRC_MAC DST_MAC SRC_IP DST_IP CONTROL_PORT SECONDS MAX_PACKETS

One process, as fast as it can: junk UDP to the control port (random bytes of
random sizes 0..300, and junk of exactly P1/P2 size with a well-formed version
and type, which the kernel filter passes) interleaved with a SYN scan of every
port 1..65535 (segments from client/syn.py), round after round. Stops after
SECONDS or MAX_PACKETS, whichever comes first; prints "ready" once its frames are
built, then what it sent as JSON. Run in the attacker's namespace by
tests/e2e/attacks/test_starvation.py.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import sys
import time

import dpkt
import pcap

from dynknock.client.syn import build_syn

JUNK_FRAMES = 4096


def frame(ether: tuple[bytes, bytes], src: bytes, dst: bytes, protocol: int, payload: object) -> bytes:
    """An Ethernet + IPv4 frame; dpkt fills in lengths and the IP checksum (and UDP's, for a UDP payload)."""
    ip = dpkt.ip.IP(src=src, dst=dst, p=protocol, ttl=64, id=random.getrandbits(16), data=payload)
    return bytes(dpkt.ethernet.Ethernet(src=ether[0], dst=ether[1], type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def udp(sport: int, dport: int, data: bytes) -> object:
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)  # dpkt leaves ulen to us


def junk_payload(i: int) -> bytes:
    kind = i % 4
    if kind == 0:
        return os.urandom(random.randrange(0, 301))
    if kind == 1:
        return b"\x01\x01" + os.urandom(128)  # P1's size, version and type
    if kind == 2:
        return b"\x01\x02" + os.urandom(80)  # P2's
    return os.urandom(130)


def main(argv: list[str]) -> int:
    iface, src_mac, dst_mac, src_ip, dst_ip = argv[:5]
    port, seconds, max_packets = int(argv[5]), float(argv[6]), int(argv[7])
    if seconds > 15 or max_packets > 5_000_000:
        raise SystemExit("the flood is bounded: at most 15 s and 5,000,000 packets")
    src, dst = ipaddress.IPv4Address(src_ip), ipaddress.IPv4Address(dst_ip)
    ether = (bytes.fromhex(src_mac.replace(":", "")), bytes.fromhex(dst_mac.replace(":", "")))
    junk = [frame(ether, src.packed, dst.packed, dpkt.ip.IP_PROTO_UDP,
                  udp(random.randrange(1024, 65536), port, junk_payload(i)))
            for i in range(JUNK_FRAMES)]
    syns = [frame(ether, src.packed, dst.packed, dpkt.ip.IP_PROTO_TCP,
                  build_syn(src, dst, random.randrange(32768, 61000), p, random.getrandbits(32)))
            for p in range(1, 65536)]
    handle = pcap.pcap(name=iface, promisc=False, immediate=True, timeout_ms=10)
    send = handle.sendpacket
    print("ready", flush=True)
    udp_sent = syn_sent = errors = 0
    i = 0
    start = time.monotonic()
    deadline = start + seconds
    while udp_sent + syn_sent < max_packets and time.monotonic() < deadline:
        for _ in range(256):
            try:
                send(junk[i % JUNK_FRAMES])
                udp_sent += 1
                send(syns[i % 65535])
                syn_sent += 1
            except OSError:
                errors += 1
            i += 1
    elapsed = time.monotonic() - start
    print(json.dumps({"udp_sent": udp_sent, "syn_sent": syn_sent, "errors": errors, "seconds": elapsed,
                      "syn_scan_rounds": syn_sent / 65535}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
