"""A fleet: one auth host serving two gateway hosts, over tcp+CURVE between hosts.

Five namespaces on one bridge: the auth host (bus, auth: the users file and the replay
journal), gateways gw-a (the lab's server) and gw-b (capture, gate, relay, sshd each, real
nftables and libpcap), a client and an attacker. Each host runs its role's supervisord.conf
from examples/fleet/. The client knocks with protocol v2 (--bind).

1. alice knocks at each gateway and runs a command over ssh through each door: each P3
   comes from the gateway she knocked at (her socket is connected to it), the door is there;
2. the attacker replays alice's whole exchange with gw-a (P1, SYNs, P2, sniffed at gw-a) to
   gw-b, from alice's address: nothing opens at gw-b;
3. the bus link of gw-b is cut (an nft drop on its bus ports): gw-a still opens doors, gw-b
   opens nothing (fail closed); the link returns and gw-b opens doors again;
4. gw-b's capture, gate and relay are SIGKILLed in turn: gw-a goes on working; gw-b recovers
   when supervisord restarts each.

A key-pair user (protocol v3), paula, knocks at each gateway bound to it and gets in;
her unbound knock is refused by the fleet (a v3 P1 without the binding could be raced to the
other gateway).

Each gateway holds only its own bus keys (capture@gw-a ...; tests/stage/test_bus_peers_stage.py
shows that one gateway's key cannot speak for another).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

import dpkt
import pytest

from dynknock import curve25519
from dynknock.auth.admin import share_with_service_group
from dynknock.auth.serverkey import make_server_key
from dynknock.keys import PAIR_PRIVATE, write_key_file
from dynknock.transport import GATEWAY_ROLES, gateway_key_name
from tests.halab import role_keys
from tests.lab.netlab import Host, NetLab, SshdInfo, require_privileges, start_sshd
from tests.lab.stack import SERVICE_USER, VENV_BIN, LabUser, Stack, prepare_workdir, write_users

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FLEET_EXAMPLES = REPO / "examples" / "fleet"
INJECT_TOOL = Path(__file__).resolve().parent / "tools" / "inject_frames.py"
AUTH_HOST = ("authh", "198.18.0.21", "2001:db8:d::21")
GATEWAY_B = ("gwb", "198.18.0.11", "2001:db8:d::11")
PORTS = {"packets": 7301, "knock_filter": 7302, "gate": 7303, "relay": 7304, "events": 7305, "tap": 7306}
AUTH_KEYS = ("auth", "bus", "tap")  # the secret keys the auth host holds
CONTROL_PORT = 62201


def endpoints(auth: Host, gateway: Host) -> str:
    where = {"gate": gateway.ipv4, "relay": gateway.ipv4}
    return ", ".join(f'{name} = "tcp://{where.get(name, auth.ipv4)}:{port}"' for name, port in PORTS.items())


def write_host_config(path: Path, workdir: Path, host: Host, curve: Path, table: str, extra: str = "") -> None:
    path.write_text(f"""\
[server]
interface = "{host.interface}"
addresses = ["{host.ipv4}", "{host.ipv6}"]
control_port = {CONTROL_PORT}
window_seconds = 30
# alice opens ~12 doors within a window here (each step at both gateways): above the default cap of 8.
max_doors_per_user = 32
users_file = "{workdir}/users.json"
key_file = "{workdir}/server.key"
state_dir = "{workdir}/state"
run_as = "{SERVICE_USER}"
{extra}
[bus]
runtime_dir = "{workdir}/run-{host.role}"
transport = "tcp"
curve_dir = "{curve}"
tcp_endpoints = {{ {table} }}

[gate]
stealth = true
public_tcp_ports = [{PORTS["gate"]}, {PORTS["relay"]}]

[services.ssh]
target = "127.0.0.1:22"
""")


def status(lab: NetLab, auth: Host, config: Path) -> str:
    return lab.run(auth, ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--init-groups",
                          str(VENV_BIN / "knock-admin"), "status", "-c", str(config), "--seconds", "2.5"],
                   check=False, timeout=30).stdout


def wait_up(lab: NetLab, auth: Host, config: Path, gateways: tuple[str, ...], timeout_s: float = 40) -> str:
    """Until auth and every stage of each gateway named send heartbeats (seen by the one tap)."""
    text = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = status(lab, auth, config)
        if "auth up" in text and all(f"gateway {g}: capture up  gate up  relay up" in text for g in gateways):
            return text
    raise AssertionError(f"fleet not up after {timeout_s} s:\n{text}")


def knock(lab: NetLab, sshd: SshdInfo, gateway: Host, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """alice knocks at `gateway` (v2, bound to its address) and runs a command over ssh through the door."""
    ssh = " ".join(shlex.quote(a) for a in sshd.ssh_argv("{host}"))
    return lab.run(lab.client, [str(VENV_BIN / "knock-client"), "-u", "alice", "--password-stdin", "--bind",
                                "--timeout", str(timeout), "-4",
                                "--exec", f"{ssh} -p {{port}} ip -4 -o addr show dev eth0", gateway.ipv4],
                   input="alice-pw\n", check=False, timeout=60)


def assert_opens(lab: NetLab, sshd: SshdInfo, gateway: Host) -> None:
    done = knock(lab, sshd, gateway)
    assert done.returncode == 0, done.stderr
    # The command ran on that gateway's sshd: its eth0 holds the gateway's address.
    assert f"inet {gateway.ipv4}/" in done.stdout, done.stdout


def doors_at(text: str, gateway: str) -> int:
    return sum(1 for line in text.splitlines() if line.rstrip().endswith(f"at {gateway}"))


def refusals(text: str) -> int:
    """Rejections for a spent nonce or a tag that fails (a copy bound to another gateway), per auth's heartbeat."""
    return sum(int(n) for n in re.findall(r"\b(?:replay|bad_tag) (\d+)", text))


def cut(lab: NetLab, gateway: Host, on: bool) -> None:
    """Drop (or stop dropping) every packet of gw-b's bus: to the auth host's ports, to its gate and relay."""
    if on:
        script = (f"add table inet dkfcut\n"
                  f"add chain inet dkfcut out {{ type filter hook output priority -300; }}\n"
                  f"add chain inet dkfcut in {{ type filter hook input priority -300; }}\n"
                  f"add rule inet dkfcut out ip daddr {AUTH_HOST[1]} tcp dport 7300-7310 drop\n"
                  f"add rule inet dkfcut in ip saddr {AUTH_HOST[1]} tcp dport 7300-7310 drop\n")
    else:
        script = "delete table inet dkfcut\n"
    lab.run(gateway, ["nft", "-f", "-"], input=script)


def retarget(frames: Path, to: Host, attacker_mac: str, to_mac: str) -> list[str]:
    """alice's frames to gw-a, as the attacker sends them to gw-b: same bytes above IP, new IP destination."""
    out = []
    with open(frames, "rb") as f:
        for _, raw in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(raw)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            ip.dst = bytes(int(x) for x in to.ipv4.split("."))
            ip.sum = 0
            ip.data.sum = 0  # dpkt recomputes the IP and the TCP/UDP checksums on bytes()
            eth.src, eth.dst = bytes.fromhex(attacker_mac.replace(":", "")), bytes.fromhex(to_mac.replace(":", ""))
            out.append(bytes(eth).hex())
    return out


def mac_of(lab: NetLab, host: Host) -> str:
    text = lab.run(host, ["ip", "-o", "link", "show", "dev", host.interface]).stdout
    found = re.search(r"link/ether ([0-9a-f:]{17})", text)
    assert found, text
    return found.group(1)


def test_fleet_of_two_gateways_served_by_one_auth_host() -> None:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-fleet-"))
    with NetLab("dkf", extra_hosts=[AUTH_HOST, GATEWAY_B]) as lab:
        prepare_workdir(workdir)
        auth, gw_a, gw_b = lab.host(AUTH_HOST[0]), lab.server, lab.host(GATEWAY_B[0])
        for host in (auth, gw_a, gw_b):
            run_dir = workdir / f"run-{host.role}"
            run_dir.mkdir(mode=0o750)
            service = pwd.getpwnam(SERVICE_USER)
            os.chown(run_dir, service.pw_uid, service.pw_gid)
        all_keys = workdir / "curve-all"
        made = subprocess.run([str(VENV_BIN / "knock-admin"), "bus-keys", str(all_keys), "--gateway", "gw-a",
                               "--gateway", "gw-b"], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        auth_curve = role_keys(all_keys, workdir / "curve-auth", AUTH_KEYS)
        # Each gateway holds only its own keys (capture@gw-a, gate@gw-a, relay@gw-a): auth tells them apart.
        gateway_curve = {name: role_keys(all_keys, workdir / f"curve-{name}",
                                         tuple(gateway_key_name(role, name) for role in GATEWAY_ROLES))
                         for name in ("gw-a", "gw-b")}
        auth_config = workdir / "auth.toml"
        write_host_config(auth_config, workdir, auth, auth_curve, endpoints(auth, gw_a), extra=f"""
[gateways.gw-a]
addresses = ["{gw_a.ipv4}", "{gw_a.ipv6}"]
gate = "tcp://{gw_a.ipv4}:{PORTS['gate']}"
relay = "tcp://{gw_a.ipv4}:{PORTS['relay']}"

[gateways.gw-b]
addresses = ["{gw_b.ipv4}", "{gw_b.ipv6}"]
gate = "tcp://{gw_b.ipv4}:{PORTS['gate']}"
relay = "tcp://{gw_b.ipv4}:{PORTS['relay']}"
""")  # (tables after [server]'s keys: TOML allows [bus] after them)
        configs = {}
        for name, host in (("gw-a", gw_a), ("gw-b", gw_b)):
            configs[name] = workdir / f"{name}.toml"
            write_host_config(configs[name], workdir, host, gateway_curve[name], endpoints(auth, host),
                              extra=f'gateway = "{name}"')
        # paula holds a key pair: the auth host keeps her public key and its own server key (server.key_file).
        paula_seed = bytes(range(64, 96))
        server_key = make_server_key(workdir / "server.key")
        share_with_service_group(workdir / "server.key")
        paula_key = workdir / "paula.key"
        write_key_file(paula_key, paula_seed, PAIR_PRIVATE)
        write_users(workdir / "users.json", [LabUser("alice", password="alice-pw"),
                                             LabUser("paula", public_key=curve25519.ed25519_public_key(paula_seed))])
        sshd = {name: start_sshd(lab, host, workdir / f"ssh-{name}") for name, host in (("gw-a", gw_a), ("gw-b", gw_b))}
        stacks = [Stack(lab, workdir, FLEET_EXAMPLES / "auth-host.supervisord.conf", host=auth,
                        config_path=auth_config, name="auth"),
                  Stack(lab, workdir, FLEET_EXAMPLES / "gateway.supervisord.conf", host=gw_a,
                        config_path=configs["gw-a"], name="gw-a"),
                  Stack(lab, workdir, FLEET_EXAMPLES / "gateway.supervisord.conf", host=gw_b,
                        config_path=configs["gw-b"], name="gw-b")]
        try:
            for stack in stacks:
                stack.start(wait=False)
            wait_up(lab, auth, auth_config, ("gw-a", "gw-b"))

            # 1. A door at each gateway, through which ssh reaches that gateway's sshd; the
            #    attacker sniffs alice's exchange with gw-a meanwhile (at gw-a: the bridge would not show it).
            frames = workdir / "gw-a.pcap"
            bpf = (f"src host {lab.client.ipv4} and dst host {gw_a.ipv4} and "
                   f"(udp dst port {CONTROL_PORT} or (tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn))")
            with lab.sniff(gw_a, bpf, frames):
                try:
                    assert_opens(lab, sshd["gw-a"], gw_a)
                except AssertionError as exc:  # the one tap's view of the fleet says where it stopped
                    raise AssertionError(f"{exc}\n{status(lab, auth, auth_config)}") from None
            assert_opens(lab, sshd["gw-b"], gw_b)
            # paula (a key pair, v3 bound to each gateway) opens at both; her unbound knock opens nothing.
            home = workdir / "paula-home"
            for gateway in (gw_a, gw_b):
                ssh = " ".join(shlex.quote(a) for a in sshd["gw-a" if gateway is gw_a else "gw-b"].ssh_argv("{host}"))
                done = lab.run(lab.client, ["env", f"HOME={home}", str(VENV_BIN / "knock-client"), "-k", str(paula_key),
                                            "--server-key", server_key.line(), "--bind", "-4", "--exec",
                                            f"{ssh} -p {{port}} ip -4 -o addr show dev eth0", gateway.ipv4],
                               check=False, timeout=60)
                assert done.returncode == 0 and f"inet {gateway.ipv4}/" in done.stdout, done.stderr
            unbound = lab.run(lab.client, ["env", f"HOME={home}", str(VENV_BIN / "knock-client"), "-k",
                                           str(paula_key), "--timeout", "2", "-4", gw_a.ipv4], check=False, timeout=30)
            assert unbound.returncode == 3, unbound.stderr  # no answer: the fleet takes v3 only bound
            after_knocks = status(lab, auth, auth_config)
            # Each door was used by its ssh at once: a used single-use door no longer counts (auth.door.used).
            assert doors_at(after_knocks, "gw-a") == 0 and doors_at(after_knocks, "gw-b") == 0, after_knocks

            # 2. The replay of gw-a's exchange at gw-b, from alice's own address: refused (the nonces are
            #    spent; a copy that got there first would fail the tag, tests/unit/test_engine_fleet.py).
            before = refusals(after_knocks)
            replay = retarget(frames, gw_b, mac_of(lab, lab.attacker), mac_of(lab, gw_b))
            kinds = [dpkt.ethernet.Ethernet(bytes.fromhex(f)).data.data.__class__.__name__ for f in replay]
            assert kinds.count("UDP") >= 2 and kinds.count("TCP") >= 3, kinds  # P1, P2 and the three knocks
            script = workdir / "replay.frames"
            script.write_text("\n".join(replay) + "\n")
            sent = lab.run(lab.attacker, [str(VENV_BIN / "python"), str(INJECT_TOOL), lab.attacker.interface,
                                          str(script)])
            assert int(sent.stdout.strip()) == len(replay)
            # A bounded poll until auth's heartbeat counts the copies (then any door they could open is decided).
            deadline = time.monotonic() + 15
            after_replay = status(lab, auth, auth_config)
            while refusals(after_replay) < before + 2 and time.monotonic() < deadline:
                after_replay = status(lab, auth, auth_config)
            assert doors_at(after_replay, "gw-b") == 0, after_replay  # a door the replay opened would count
            assert refusals(after_replay) >= before + 2, after_replay  # at least the P1 and the P2 copies
            elements = lab.run(gw_b, ["nft", "list", "table", "inet", "dynknock"]).stdout
            assert elements.count(lab.client.ipv4) <= 1, elements  # the element of step 1's door, at most

            # 3. gw-b loses its link to auth: it opens nothing; gw-a is not disturbed; the link returns.
            cut(lab, gw_b, True)
            try:
                assert_opens(lab, sshd["gw-a"], gw_a)
                refused = knock(lab, sshd["gw-b"], gw_b, timeout=3.0)
                assert refused.returncode != 0, refused.stdout
            finally:
                cut(lab, gw_b, False)
            wait_up(lab, auth, auth_config, ("gw-a", "gw-b"), timeout_s=60)
            assert_opens(lab, sshd["gw-b"], gw_b)

            # 4. Each stage of gw-b killed in turn: gw-a goes on; gw-b works again once supervisord
            #    restarted it.
            for stage in GATEWAY_ROLES:
                stacks[2].kill_stage(stage)
                assert_opens(lab, sshd["gw-a"], gw_a)
                wait_up(lab, auth, auth_config, ("gw-a", "gw-b"), timeout_s=60)
                deadline = time.monotonic() + 30
                while True:  # auth learns of the new stage's connection within a heartbeat or so
                    done = knock(lab, sshd["gw-b"], gw_b)
                    if done.returncode == 0 or time.monotonic() > deadline:
                        break
                assert done.returncode == 0 and f"inet {gw_b.ipv4}/" in done.stdout, (stage, done.stderr)
        finally:
            for stack in reversed(stacks):
                stack.stop()
