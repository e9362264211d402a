"""The parts of the benchmark that run inside a lab namespace (bench/run.py starts them).

    ip netns exec NS /opt/dynknock/venv/bin/python bench/labworker.py COMMAND '{json arguments}'

Each command prints JSON lines on stdout ({"ready": ...} first where the caller
must wait for it, then results) and stops by itself: every loop is bounded in
count and in time. Commands:

sink       the service behind the relay, and the same service reachable directly:
           sends one banner byte on accept, drains everything with os.splice into
           /dev/null, and at EOF answers the byte count (8 bytes) and closes.
knocks     sequential knocks with the client library (client/session.py driven by
           client/knock.py), each followed by a TCP connect through the door.
spawns     the same with the real knock-client process (--proxy), for scale.
connects   connection setup (connect + banner) straight to the sink, no relay.
streams    bulk TCP streams (sendfile) through doors or straight to the sink.
scale      many clients at once, each from its own source address, in threads.
flood      raw Ethernet frames, pre-built, from an AF_PACKET socket at a set rate.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt

from dynknock import protocol as proto
from dynknock.client.crypto import session_keys
from dynknock.client.knock import Endpoint, parse_ip, run_session
from dynknock.client.session import ClientSession, Timing, new_request
from dynknock.client.syn import open_knocker
from dynknock.keys import read_key_file
from dynknock.protocol import CONTROL_PORT

BANNER = b"B"
SPLICE_CHUNK = 1 << 20


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# --- the service -------------------------------------------------------------------


def _drain(conn: socket.socket) -> int:
    """Read until EOF without copying into Python: socket -> pipe -> /dev/null."""
    total = 0
    read_end, write_end = os.pipe()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        try:
            import fcntl

            fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), SPLICE_CHUNK)
        except OSError:
            pass
        while True:
            moved = os.splice(conn.fileno(), write_end, SPLICE_CHUNK)
            if moved == 0:
                return total
            total += moved
            while moved:
                moved -= os.splice(read_end, devnull, moved)
    finally:
        for fd in (read_end, write_end, devnull):
            os.close(fd)


def _serve_one(conn: socket.socket) -> None:
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        conn.sendall(BANNER)
        total = _drain(conn)
        conn.sendall(struct.pack("!Q", total))
    except OSError:
        pass
    finally:
        conn.close()


def cmd_sink(args: dict[str, Any]) -> None:
    listeners = []
    for spec in args["listen"]:
        host, port = spec.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(1024)
        listeners.append(sock)
    deadline = time.monotonic() + float(args.get("lifetime_s", 900))
    emit(ready=True)
    while time.monotonic() < deadline:
        readable, _, _ = select.select(listeners, [], [], 1.0)
        for sock in readable:
            conn, _ = sock.accept()
            threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# --- knocking with the client library ----------------------------------------------


def _endpoint(server: str, source: str | None) -> Endpoint:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((server, CONTROL_PORT))
    local = sock.getsockname()
    return Endpoint(sock, parse_ip(server), parse_ip(local[0]), (server, CONTROL_PORT))


def client_timing(fields: dict[str, Any]) -> Timing:
    """client.session.Timing with a run's overrides (JSON): max_bursts is a count, the rest are seconds."""
    values: dict[str, Any] = {k: int(v) if k == "max_bursts" else float(v) for k, v in fields.items()}
    return Timing(**values)


def connect_banner(server: str, port: int, source: str | None, timeout: float = 5.0) -> tuple[socket.socket, float]:
    """Connect and wait for the service's first byte; returns the socket and the seconds it took."""
    start = time.perf_counter()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source is not None:
        sock.bind((source, 0))
    sock.settimeout(timeout)
    try:
        sock.connect((server, port))
        if sock.recv(1) != BANNER:
            raise OSError("no banner")
    except OSError:
        sock.close()
        raise
    return sock, time.perf_counter() - start


def knock_and_connect(key_file: Path, server: str, service: str, timing: Timing, source: str | None = None,
                      keep: bool = False, use_door: bool = True, bind: bool = False) -> dict[str, Any]:
    """One knock as knock-client does it after start-up (key file read, sockets, exchange), then the door.

    Times are from the start: the key file read (no KDF with a key file) to P3 OPEN,
    and to the first successful TCP connect through the door (banner received). `use_door` False: the
    door is left unused (a hog holding doors), ok once P3 OPEN came. `bind`: protocol v2, as
    `knock-client --bind` (a fleet, auth replicas).
    """
    t0 = time.perf_counter()
    result: dict[str, Any] = {"ok": False}
    endpoint = None
    syn = None
    try:
        # As knock-client does (client/crypto.py): dynknock.keys' pycryptodome HKDF would add its import,
        # ~35 ms, to the first knock of every worker process, which knock-client never pays.
        keys = session_keys(read_key_file(key_file))
        endpoint = _endpoint(server, source)
        syn = open_knocker(socket.AF_INET)  # as knock-client: raw SYNs as root, connect() knocks otherwise
        request = new_request(service, endpoint.local, syn.kind)
        session = ClientSession(keys, request, timing, server=endpoint.server if bind else None)
        outcome = run_session(session, endpoint, syn)
        t_p3 = time.perf_counter()
        result.update(p3_ms=(t_p3 - t0) * 1000, bursts=outcome.bursts, pending=outcome.pending)
        answer = outcome.answer
        if answer is None or answer.status is not proto.Status.OPEN:
            result["error"] = "no answer" if answer is None else answer.status.name
            return result
        result["door"] = answer.door_port
        if not use_door:
            result.update(ok=True, door_ms=(t_p3 - t0) * 1000)
            return result
        conn, setup_s = connect_banner(server, answer.door_port, source)
        t_door = time.perf_counter()
        result.update(ok=True, door_ms=(t_door - t0) * 1000, connect_ms=setup_s * 1000)
        if keep:
            result["socket"] = conn
        else:
            conn.close()
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if syn is not None:
            syn.close()
        if endpoint is not None:
            endpoint.sock.close()
    return result


def cmd_knocks(args: dict[str, Any]) -> None:
    """Sequential knocks; key files are used round-robin (one request per user and address at a time)."""
    keys = [Path(p) for p in args["key_files"]]
    timing = client_timing(args.get("timing", {}))
    deadline = time.monotonic() + float(args.get("max_seconds", 120))
    pause = float(args.get("pause_s", 0.0))
    for i in range(int(args["count"])):
        if time.monotonic() > deadline:
            emit(stopped="deadline", done=i)
            break
        started = time.time()
        result = knock_and_connect(keys[i % len(keys)], args["server"], args.get("service", "bench"), timing,
                                   use_door=bool(args.get("use_door", True)), bind=bool(args.get("bind", False)))
        emit(i=i, t_start=started, t_end=time.time(), **result)
        if pause:
            time.sleep(pause)
    emit(end=True)


def cmd_spawns(args: dict[str, Any]) -> None:
    """knock-client --proxy as a process: start to the banner byte on its stdout."""
    import subprocess

    deadline = time.monotonic() + float(args.get("max_seconds", 120))
    for i in range(int(args["count"])):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        proc = subprocess.Popen([args["client"], "--proxy", "-q", "-k", args["key_file"], "--timeout", "5",
                                 "-s", args.get("service", "bench"), args["server"]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        first = os.read(proc.stdout.fileno(), 1) if ready else b""
        elapsed = (time.perf_counter() - t0) * 1000
        proc.stdin.close()  # EOF: the proxy ends, the sink answers its count and closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        emit(i=i, ok=first == BANNER, door_ms=elapsed, error=err.strip()[-200:] if first != BANNER else "")
    emit(end=True)


def cmd_connects(args: dict[str, Any]) -> None:
    for i in range(int(args["count"])):
        try:
            conn, setup_s = connect_banner(args["server"], int(args["port"]), None)
            conn.close()
            emit(i=i, ok=True, connect_ms=setup_s * 1000)
        except OSError as exc:
            emit(i=i, ok=False, error=str(exc))
    emit(end=True)


# --- bulk streams --------------------------------------------------------------------


def _stream(conn: socket.socket, payload_fd: int, payload_len: int, seconds: float, out: dict[str, Any],
            start_at: float) -> None:
    try:
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        while time.monotonic() < start_at:
            time.sleep(0.001)
        t0 = time.perf_counter()
        end = time.monotonic() + seconds
        sent = 0
        while time.monotonic() < end:
            sent += os.sendfile(conn.fileno(), payload_fd, 0, payload_len)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(30)
        answer = b""
        while len(answer) < 8:
            chunk = conn.recv(8 - len(answer))
            if not chunk:
                break
            answer += chunk
        elapsed = time.perf_counter() - t0
        received = struct.unpack("!Q", answer)[0] if len(answer) == 8 else 0
        out.update(ok=len(answer) == 8, sent=sent, received=received, seconds=elapsed)
    except OSError as exc:
        out.update(ok=False, error=str(exc))
    finally:
        conn.close()


def cmd_streams(args: dict[str, Any]) -> None:
    """N bulk streams at once, either through N doors (knocked first) or straight to the sink."""
    count, seconds = int(args["streams"]), float(args["seconds"])
    server = args["server"]
    conns: list[socket.socket] = []
    setups: list[float] = []
    failures = 0
    deadline = time.monotonic() + float(args.get("max_setup_s", 120))
    if args["mode"] == "relay":
        timing = client_timing(args.get("timing", {}))
        keys = [Path(p) for p in args["key_files"]]
        i = 0
        while len(conns) < count and time.monotonic() < deadline and failures < 10:
            result = knock_and_connect(keys[i % len(keys)], server, args.get("service", "bench"), timing, keep=True)
            i += 1
            if result["ok"]:
                conns.append(result["socket"])
                setups.append(result["connect_ms"])
            else:
                failures += 1
    else:
        while len(conns) < count and time.monotonic() < deadline and failures < 10:
            try:
                conn, setup_s = connect_banner(server, int(args["port"]), None)
                conns.append(conn)
                setups.append(setup_s * 1000)
            except OSError:
                failures += 1
    payload = Path(args["payload"])
    fd = os.open(payload, os.O_RDONLY)
    size = payload.stat().st_size
    results: list[dict[str, Any]] = [{} for _ in conns]
    start_at = time.monotonic() + 0.2
    threads = [threading.Thread(target=_stream, args=(c, fd, size, seconds, r, start_at), daemon=True)
               for c, r in zip(conns, results, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    os.close(fd)
    ok = [r for r in results if r.get("ok")]
    emit(mode=args["mode"], streams=len(conns), wanted=count, setup_failures=failures, ok=len(ok),
         received=sum(r["received"] for r in ok),
         seconds=max((r["seconds"] for r in ok), default=0.0),
         per_stream_bps=[r["received"] * 8 / r["seconds"] for r in ok if r["seconds"] > 0],
         setup_ms=setups, errors=[r.get("error") for r in results if not r.get("ok")][:5])


# --- many clients -------------------------------------------------------------------------


def cmd_scale(args: dict[str, Any]) -> None:
    """One thread per client; client i starts at start_at + offset_i (wall clock, shared by processes)."""
    clients: list[tuple[str, str]] = [(source, key_file) for source, key_file in args["clients"]]
    timing = client_timing(args.get("timing", {}))
    start_wall = float(args["start_wall"])
    spread = float(args["spread_s"])
    results: list[dict[str, Any]] = [{} for _ in clients]
    offsets = [spread * i / max(1, len(clients)) for i in range(len(clients))]
    random.Random(args.get("seed", 1)).shuffle(offsets)

    def one(index: int) -> None:
        source, key_file = clients[index]
        delay = start_wall + offsets[index] - time.time()
        if delay > 0:
            time.sleep(delay)
        result = knock_and_connect(Path(key_file), args["server"], args.get("service", "bench"), timing,
                                   source=source, bind=bool(args.get("bind", False)))
        result["source"] = source
        result["started"] = time.time()
        results[index] = result

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(clients))]
    for t in threads:
        t.start()
    hard_end = time.monotonic() + spread + timing.timeout_s * 2 + 30
    for t in threads:
        t.join(max(0.0, hard_end - time.monotonic()))
    for r in results:
        emit(**r)
    emit(end=True)


# --- the flood -------------------------------------------------------------------------------


def udp(sport: int, dport: int, payload: bytes) -> Any:
    """A dpkt UDP datagram; its length is ours to set (dpkt fills in the checksum, not ulen)."""
    return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)


def eth_ipv4(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, transport: Any, ident: int = 0) -> bytes:
    """An Ethernet frame of one IPv4 packet around a dpkt UDP or TCP segment; dpkt fills in the
    lengths and the checksums (IP, UDP, TCP)."""
    number = dpkt.ip.IP_PROTO_TCP if isinstance(transport, dpkt.tcp.TCP) else dpkt.ip.IP_PROTO_UDP
    packet = dpkt.ip.IP(src=src, dst=dst, id=ident, ttl=64, p=number, data=transport)
    return bytes(dpkt.ethernet.Ethernet(dst=dst_mac, src=src_mac, type=dpkt.ethernet.ETH_TYPE_IP, data=packet))


def build_frames(kind: str, count: int, dst_mac: bytes, src_mac: bytes, src_ip: str, dst_ip: str,
                 control_port: int, seed: int, hints: list[bytes] | None = None,
                 packets: list[bytes] | None = None) -> list[bytes]:
    """Pre-built Ethernet frames, so the send loop does nothing but send.

    "hint": right-sized P1/P2 junk under a user's live hint (sniffed from one of its packets),
    each from a random spoofed source of the lab's /24, so no per-source limit helps;
    "replay": the exact payloads of a captured exchange (`packets`), over and over.
    """
    rng = random.Random(seed)
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    frames = []
    p1_len = proto.PACKET_LEN[proto.PacketType.P1]
    p2_len = proto.PACKET_LEN[proto.PacketType.P2]
    for i in range(count):
        sport = rng.randrange(1024, 65536)
        if kind in ("hint", "replay"):
            if kind == "hint":
                assert hints
                kind_byte, size = (proto.PacketType.P1, p1_len) if i % 2 else (proto.PacketType.P2, p2_len)
                payload = bytes([proto.VERSION, kind_byte.value]) + hints[i % len(hints)] + rng.randbytes(size - 10)
                source = src[:3] + bytes([rng.randrange(100, 250)])
            else:
                assert packets
                payload, source = packets[i % len(packets)], src
            frames.append(eth_ipv4(dst_mac, src_mac, source, dst, udp(sport, control_port, payload), i & 0xFFFF))
            continue
        if kind == "syn":
            dport = rng.randrange(1, 65536)
            tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=rng.getrandbits(32), flags=dpkt.tcp.TH_SYN, win=64240)
            frames.append(eth_ipv4(dst_mac, src_mac, src, dst, tcp, i & 0xFFFF))
            continue
        if kind == "sized":  # passes the kernel filter: P1 size, version 1, type P1, random hint
            payload = bytes([proto.VERSION, proto.PacketType.P1.value]) + rng.randbytes(p1_len - 2)
        else:  # random bytes, random size
            payload = rng.randbytes(rng.randrange(1, 200))
        frames.append(eth_ipv4(dst_mac, src_mac, src, dst, udp(sport, control_port, payload), i & 0xFFFF))
    return frames


def cmd_flood(args: dict[str, Any]) -> None:
    """Send pre-built frames at `rate` per second for `seconds`, at most `max_packets`."""
    ifname = args.get("interface", "eth0")
    src_mac = bytes.fromhex(Path(f"/sys/class/net/{ifname}/address").read_text().strip().replace(":", ""))
    dst_mac = bytes.fromhex(args["dst_mac"].replace(":", ""))
    frames = build_frames(args["kind"], 4096, dst_mac, src_mac, args["src_ip"], args["dst_ip"],
                          int(args.get("control_port", CONTROL_PORT)), int(args.get("seed", 0)),
                          [bytes.fromhex(h) for h in args.get("hints", [])],
                          [bytes.fromhex(p) for p in args.get("packets", [])])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    rate = float(args["rate"])
    seconds = float(args["seconds"])
    max_packets = int(args.get("max_packets", rate * seconds * 1.1))
    start_wall = float(args.get("start_wall", 0))
    emit(ready=True, frames=len(frames))
    while time.time() < start_wall:
        time.sleep(0.001)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.append(1))
    send = sock.send
    sent = errors = 0
    batch = 256
    n = len(frames)
    wall_start = time.time()
    t0 = time.perf_counter()
    end = t0 + seconds
    while sent < max_packets and not stopping:
        now = time.perf_counter()
        if now >= end:
            break
        ahead = sent / rate - (now - t0)
        if ahead > 0.0005:
            time.sleep(ahead)
        base = sent % n
        for frame in frames[base:base + batch]:
            try:
                send(frame)
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                errors += 1
        sent += min(batch, n - base)
    elapsed = time.perf_counter() - t0
    sock.close()
    emit(kind=args["kind"], sent=sent - errors, errors=errors, seconds=elapsed, wall_start=wall_start,
         wall_end=wall_start + elapsed)


# --- nftables, as the gate drives it ---------------------------------------------------------


def cmd_nft(args: dict[str, Any]) -> None:
    """Door elements added in a table of our own, through the gate's own Nft class and through
    one `nft -f -` process per door, and a batch in one call."""
    import subprocess

    from dynknock.gate import core
    from dynknock.gate.main import Nft

    settings = core.GateSettings(table=args.get("table", "dkbench"), door_port_low=40000, door_port_high=49999,
                                 window_seconds=30, stealth=False)
    count, batch = int(args["count"]), int(args["batch"])
    nft = Nft()

    def element(i: int) -> core.DoorElement:
        return core.DoorElement("ronce4", f"198.19.{i // 250}.{i % 250 + 1}", 40000 + i % 10000)

    def run_process(script: str) -> None:
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)

    nft.apply(core.ruleset(settings))
    try:
        timings: dict[str, list[float]] = {"gate": [], "process": []}
        for i in range(count):
            for how, apply in (("gate", nft.apply), ("process", run_process)):
                offset = 0 if how == "gate" else 5000
                start = time.perf_counter()
                apply(core.add_element(settings, element(i + offset), 30_000))
                timings[how].append(time.perf_counter() - start)
        script = "".join(core.add_element(settings, element(20_000 + i), 30_000) for i in range(batch))
        start = time.perf_counter()
        nft.apply(script)
        batch_s = time.perf_counter() - start
    finally:
        nft.apply(core.remove_table(settings))
    emit(via=getattr(nft, "via", "?"), gate=timings["gate"], process=timings["process"], batch=batch,
         batch_s=batch_s)


COMMANDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "sink": cmd_sink, "knocks": cmd_knocks, "spawns": cmd_spawns, "connects": cmd_connects,
    "streams": cmd_streams, "scale": cmd_scale, "flood": cmd_flood, "nft": cmd_nft,
}


def main() -> int:
    command, raw = sys.argv[1], sys.argv[2]
    args = json.loads(base64.b64decode(raw)) if not raw.startswith("{") else json.loads(raw)
    COMMANDS[command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
