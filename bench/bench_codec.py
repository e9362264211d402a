"""How many control packets per second the auth stage can judge (one core).

    python3 bench/bench_codec.py [--seconds 4] [--users 1000]

Cases, each given an equal share of --seconds (only the judging is timed; the
packets are made beforehand in batches):

* codec: seal + parse_header + open_packet of a P2, no engine;
* (a) valid P2s, each with a fresh nonce, through Engine.on_datagram: hint
  look-up, AEAD open, window and replay checks, nonce remembered, P3 sealed;
* (b) random junk of exactly P1 size behind a well-formed header (version 1,
  type P1) with a random hint: the cheap path, one dictionary miss;
* (b') fully random 130-byte junk: mostly refused on the version byte;
* (c) junk under a known user's current hint: a full AEAD open, bad tag;
* (d) a key-pair user's P1 (protocol v3), signed, fresh nonce: (a)'s path plus the signature check;
* (e) P1s under her keys with a bad signature, what a thief of the server's key can make: each costs
  a signature check up to hint_signatures_per_second (lifted here), then nothing;
* (e') the same with the engine's own budget: what that flood costs in the steady state;
* (f) junk under her hint, bad tag: a sniffed-hint flood against a key-pair user, as (c).

(c) and (f) are what an attacker who sniffed a hint can make the server do; (b) is what
anyone else can; (e) needs the server's key. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from figures import timed  # noqa: E402 (bench/figures.py: this script's folder is first on sys.path)

from dynknock import protocol as proto  # noqa: E402
from dynknock.auth.engine import Engine, EngineConfig, SendReply, Service  # noqa: E402
from dynknock.auth.replay import ReplayCache  # noqa: E402
from dynknock.auth.serverkey import ServerKey  # noqa: E402
from dynknock.auth.users import User  # noqa: E402
from dynknock.keys import SessionKeys, hint_epoch, user_hint  # noqa: E402

SERVER = ipaddress.ip_address("192.0.2.1")
CLIENT = ipaddress.ip_address("203.0.113.7")
BATCH = 2000


def run(seconds: float, n_users: int) -> list[tuple[str, int, float]]:
    now_ms = int(time.time() * 1000)
    users = {f"user{i}": User(f"user{i}", secrets.token_bytes(32), ("ssh",)) for i in range(n_users)}
    alice = users["user0"]
    keys = SessionKeys.from_master(alice.master_key)
    hint = user_hint(keys, hint_epoch(now_ms / 1000))
    # The per-hint caps would turn most of these packets away unchecked: lift them, since this
    # measures what one check costs, not how many a flood gets.
    config = EngineConfig({"ssh": Service("ssh", "127.0.0.1", 22)}, 40000, 40999, hint_checks_per_second=10**9,
                          bad_tags_per_source_per_second=10**9)
    engine = Engine(config, users, ReplayCache(), os.urandom, secrets.randbelow)
    rid = secrets.token_bytes(16)
    knocks = (proto.Knock(1001, 1), proto.Knock(1002, 2), proto.Knock(1003, 3))
    p1 = proto.seal(keys, proto.P1(now_ms, rid, CLIENT, "ssh", knocks), hint, os.urandom(24))
    assert engine.on_datagram(CLIENT, 5000, SERVER, p1, now_ms)  # a request for the P2s to ask about
    share = seconds / 9
    results: list[tuple[str, int, float]] = []

    def fresh_p2s() -> list[bytes]:
        return [proto.seal(keys, proto.P2(now_ms, rid), hint, os.urandom(24)) for _ in range(BATCH)]

    def codec(packet: bytes) -> object:
        sealed = proto.seal(keys, proto.P2(now_ms, rid), hint, packet[10:34])
        header = proto.parse_header(sealed)
        assert isinstance(header, proto.Header)
        return proto.open_packet(keys, header, sealed)

    def judge(packet: bytes) -> object:
        return engine.on_datagram(CLIENT, 5000, SERVER, packet, now_ms)

    first = judge(fresh_p2s()[0])
    assert isinstance(first, list) and isinstance(first[0], SendReply), first  # the valid path really replies

    results.append(("codec: seal + parse + open (P2)", *timed(fresh_p2s, codec, share)))
    before = engine.rejections.total()
    results.append(("(a) valid P2, fresh nonce, via Engine.on_datagram (P3 sealed)",
                    *timed(fresh_p2s, judge, share)))
    assert engine.rejections.total() == before, engine.rejections  # none of them was refused

    p1_len = proto.PACKET_LEN[proto.PacketType.P1]
    results.append(("(b) junk, P1 size, valid header, unknown hint",
                    *timed(lambda: [b"\x01\x01" + os.urandom(p1_len - 2) for _ in range(BATCH)], judge, share)))
    results.append(("(b') random junk, P1 size",
                    *timed(lambda: [os.urandom(p1_len) for _ in range(BATCH)], judge, share)))
    bad_tag_before = engine.rejections["bad_tag"]
    results.append(("(c) junk with a known user's hint, bad tag",
                    *timed(lambda: [b"\x01\x01" + hint + os.urandom(p1_len - 10) for _ in range(BATCH)],
                              judge, share)))
    assert engine.rejections["bad_tag"] - bad_tag_before == results[-1][1]
    results += run_pair(share, now_ms, users)
    return results


def run_pair(share: float, now_ms: int, users: dict[str, User]) -> list[tuple[str, int, float]]:
    """The key-pair user's cases (d), (e), (e'), (f), with the server's real key check (pycryptodome)."""
    from Crypto.PublicKey import ECC
    from Crypto.Signature import eddsa

    server = ServerKey(secrets.token_bytes(32))
    signer = ECC.generate(curve="ed25519")
    public = signer.public_key().export_key(format="raw")
    paula = User("paula", b"", ("ssh",), public_key=public)
    users = {**users, "paula": paula}
    keys = server.session_keys(public)
    hint = user_hint(keys, hint_epoch(now_ms / 1000))
    knocks = (proto.Knock(1001, 1), proto.Knock(1002, 2), proto.Knock(1003, 3))
    sign = eddsa.new(signer, "rfc8032").sign
    results: list[tuple[str, int, float]] = []

    def engine(signatures_per_second: int) -> Engine:
        config = EngineConfig({"ssh": Service("ssh", "127.0.0.1", 22)}, 40000, 40999, hint_checks_per_second=10**9,
                              bad_tags_per_source_per_second=10**9, hint_signatures_per_second=signatures_per_second)
        return Engine(config, users, ReplayCache(), os.urandom, secrets.randbelow, server)

    def p1s(good: bool) -> list[bytes]:
        message = proto.P1(now_ms, secrets.token_bytes(16), CLIENT, "ssh", knocks)
        return [proto.seal_pair(keys, message, hint, os.urandom(24), server.public, None,
                                sign if good else (lambda m: bytes(64))) for _ in range(BATCH // 4)]

    lifted = engine(10**9)

    def judge(packet: bytes) -> object:
        return lifted.on_datagram(CLIENT, 5000, SERVER, packet, now_ms)

    results.append(("(d) key-pair user's P1, signed, fresh nonce (signature checked)",
                    *timed(lambda: p1s(True), judge, share)))
    assert lifted.rejections.total() == 0, lifted.rejections
    results.append(("(e) her keys, bad signature (a thief of the server key), budget lifted",
                    *timed(lambda: p1s(False), judge, share)))
    assert lifted.rejections["bad_signature"] == results[-1][1]
    budgeted = engine(EngineConfig({}, 1, 2).hint_signatures_per_second)
    results.append(("(e') the same, within the engine's budget of 20 checks/s",
                    *timed(lambda: p1s(False), lambda p: budgeted.on_datagram(CLIENT, 5000, SERVER, p, now_ms),
                           share)))
    p1_len = proto.PAIR_PACKET_LEN[proto.PacketType.P1]
    results.append(("(f) junk with a key-pair user's hint, bad tag",
                    *timed(lambda: [b"\x03\x01" + hint + os.urandom(p1_len - 10) for _ in range(BATCH)], judge,
                           share)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="total time spent judging (default: %(default)s)")
    parser.add_argument("--users", type=int, default=1000, help="users in the directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.users < 1:
        parser.error("--seconds and --users must be positive")
    results = run(args.seconds, args.users)
    print(f"`python3 bench/bench_codec.py --seconds {args.seconds:g} --users {args.users}` "
          f"(Python {platform.python_version()}, {platform.machine()}, one core)\n")
    print("| case | packets | µs/packet | packets/s |")
    print("|---|---:|---:|---:|")
    for name, count, spent in results:
        print(f"| {name} | {count} | {spent / count * 1e6:.1f} | {count / spent:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
