"""The replicated-auth lab: three etcd members (tests/etcdlab.py: TLS, client certificates,
RBAC, on their own bridge), two auth replicas with a second interface on that bridge, two gateways, a
client and an attacker (dynknock/lab/netlab.py), each role running examples/ha's supervisord file
with a config written here in the shape of examples/ha's.

    with ha_lab(users=[LabUser("alice", password="...")]) as world: ...

Used by tests/e2e/test_ha.py and bench/ha.py. store_kind "local": auth-a alone, with the users file
and its own journal (a fleet's one auth host), for comparison; auth-b is not started. Everything is
torn down on exit (DYNKNOCK_KEEP_LAB=1 keeps the work directory, with every stack's logs).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dynknock.auth.etcd import EtcdStore
from dynknock.auth.users import User, users_text
from dynknock.keys import derive_master_key
from tests.etcdlab import EtcdLab, netns
from tests.lab.netlab import Host, NetLab, SshdInfo, require_privileges, start_sshd
from tests.lab.stack import SERVICE_USER, VENV_BIN, LabUser, Stack, prepare_workdir, write_users

REPO = Path(__file__).resolve().parents[1]
HA = REPO / "examples" / "ha"
REPLICA_HOSTS = {"auth-a": ("autha", "198.18.0.21", "2001:db8:d::21", "198.18.231.21"),
                 "auth-b": ("authb", "198.18.0.22", "2001:db8:d::22", "198.18.231.22")}
GATEWAY_B = ("gwb", "198.18.0.11", "2001:db8:d::11")
PORTS = {"packets": 7001, "knock_filter": 7002, "gate": 7003, "relay": 7004, "events": 7005, "tap": 7006}
ADMIN = str(VENV_BIN / "knock-admin")


def service_tables(services: dict[str, str] | None) -> str:
    return "".join(f'\n[services.{name}]\ntarget = "{target}"\n'
                   for name, target in (services or {"ssh": "127.0.0.1:22"}).items())


@dataclass
class World:
    lab: NetLab
    etcd: EtcdLab
    workdir: Path
    replicas: dict[str, Host]
    gateways: dict[str, Host]
    configs: dict[str, Path]
    stacks: dict[str, Stack]
    sshd: dict[str, SshdInfo]
    store_kind: str = "etcd"
    gaps: list[float] = field(default_factory=list)


def _own(path: Path, mode: int) -> None:
    service = pwd.getpwnam(SERVICE_USER)
    os.chown(path, 0, service.pw_gid)
    path.chmod(mode)


def replica_config(world_dir: Path, name: str, host: Host, gateways: dict[str, Host], etcd: EtcdLab,
                   curve: Path, store_kind: str = "etcd", services: dict[str, str] | None = None) -> Path:
    files = world_dir / f"etcd-{name}"
    files.mkdir()
    _own(files, 0o750)
    for label, source in (("ca.crt", etcd.ca), ("client.crt", etcd.replica.cert), ("client.key", etcd.replica.key),
                          ("password", etcd.replica.password_file)):
        shutil.copy(source, files / label)
        _own(files / label, 0o640)
    own = {k: f"tcp://{host.ipv4}:{port}" for k, port in PORTS.items() if k not in ("gate", "relay")}
    own |= {"gate": f"tcp://{gateways['gw-a'].ipv4}:{PORTS['gate']}",
            "relay": f"tcp://{gateways['gw-a'].ipv4}:{PORTS['relay']}"}
    endpoints = ", ".join(f'{k} = "{v}"' for k, v in own.items())
    members = ", ".join(f'"{url}"' for url in etcd.endpoints)
    gateway_tables = "".join(f"""
[gateways.{gw}]
addresses = ["{h.ipv4}", "{h.ipv6}"]
gate = "tcp://{h.ipv4}:{PORTS['gate']}"
relay = "tcp://{h.ipv4}:{PORTS['relay']}"
""" for gw, h in gateways.items())
    path = world_dir / f"{name}.toml"
    path.write_text(f"""\
[server]
interface = "{host.interface}"
addresses = ["{host.ipv4}"]
replica = "{name}"
users_file = "{world_dir}/users.json"
key_file = "{world_dir}/server.key"
state_dir = "{world_dir}/state-{name}"
run_as = "{SERVICE_USER}"
max_doors_per_user = 64
max_doors_total = 5000

[store]
kind = "{store_kind}"
endpoints = [{members}]
ca = "{files / 'ca.crt'}"
cert = "{files / 'client.crt'}"
key = "{files / 'client.key'}"
user = "{etcd.replica.user}"
password_file = "{files / 'password'}"
prefix = "{etcd.prefix}"

[bus]
runtime_dir = "{world_dir}/run-{name}"
transport = "tcp"
curve_dir = "{curve}"
tcp_endpoints = {{ {endpoints} }}
{gateway_tables}{service_tables(services)}""")
    return path


def gateway_config(world_dir: Path, name: str, host: Host, replicas: dict[str, Host], curve: Path,
                   services: dict[str, str] | None = None) -> Path:
    tables = "".join(f"""
[replicas.{r}]
packets = "tcp://{h.ipv4}:{PORTS['packets']}"
knock_filter = "tcp://{h.ipv4}:{PORTS['knock_filter']}"
events = "tcp://{h.ipv4}:{PORTS['events']}"
""" for r, h in replicas.items())
    path = world_dir / f"{name}.toml"
    path.write_text(f"""\
[server]
interface = "{host.interface}"
addresses = ["{host.ipv4}", "{host.ipv6}"]
gateway = "{name}"
users_file = "{world_dir}/users.json"
state_dir = "{world_dir}/state-{name}"
run_as = "{SERVICE_USER}"

[bus]
runtime_dir = "{world_dir}/run-{name}"
transport = "tcp"
curve_dir = "{curve}"
tcp_endpoints = {{ gate = "tcp://{host.ipv4}:{PORTS['gate']}", relay = "tcp://{host.ipv4}:{PORTS['relay']}" }}
failover_after_s = 1.5
{tables}
[gate]
stealth = true
public_tcp_ports = [{PORTS['gate']}, {PORTS['relay']}]
{service_tables(services)}""")
    return path


def role_keys(all_keys: Path, out: Path, secrets: tuple[str, ...]) -> Path:
    """A host's curve_dir: its role's secret keys and every public key, nothing else (dynknock's)."""
    out.mkdir()
    shutil.copytree(all_keys / "public", out / "public")
    for name in secrets:
        shutil.copy2(all_keys / f"{name}.key_secret", out / f"{name}.key_secret")
    service = pwd.getpwnam(SERVICE_USER)
    for path in [out, *out.rglob("*")]:
        os.chown(path, service.pw_uid, service.pw_gid)
    return out


def status(world: World, replica: str) -> str:
    lab = world.lab
    return lab.run(world.replicas[replica], ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}",
                                             "--init-groups", ADMIN, "status", "-c", str(world.configs[replica]),
                                             "--seconds", "2.5"], check=False, timeout=30).stdout


def replicas_seen(status_text: str, gateway: str) -> dict[str, str]:
    """Each replica's state as `gateway`'s capture sees it, from knock-admin status."""
    found = re.search(rf"replicas as gateway {gateway}'s capture sees them: (.*)", status_text)
    words = found.group(1).split() if found else []
    return dict(zip(words[::2], words[1::2], strict=True))


def put_users(world: World, users: list[LabUser]) -> None:
    """The users, as knock-admin would leave them: in etcd as the admin (one document), or the users file."""
    records = [User(u.name, u.key or derive_master_key(u.name, u.password), u.services) for u in users]
    if world.store_kind == "local":
        write_users(world.workdir / "users.json", users)
        return
    etcd = world.etcd
    with netns(etcd.client_ns):
        store = EtcdStore(list(etcd.endpoints), etcd.ca, etcd.admin.cert, etcd.admin.key, etcd.admin.user,
                          etcd.admin.password_file, etcd.prefix)
        try:
            _, revision = store.load_users()
            store.put_users(users_text(records), revision)
        finally:
            store.close()


@contextmanager
def ha_lab(prefix: str = "dkh", *, store_kind: str = "etcd", users: list[LabUser] | None = None,
           services: dict[str, str] | None = None, sshd: bool = True) -> Iterator[World]:
    require_privileges()
    workdir = Path(tempfile.mkdtemp(prefix="dynknock-ha-"))
    extra = [(h[0], h[1], h[2]) for h in REPLICA_HOSTS.values()] + [GATEWAY_B]
    with NetLab(prefix, extra_hosts=extra) as lab, EtcdLab() as etcd:
        stacks: dict[str, Stack] = {}
        try:
            prepare_workdir(workdir)
            replicas = {name: lab.host(h[0]) for name, h in REPLICA_HOSTS.items()}
            gateways = {"gw-a": lab.server, "gw-b": lab.host(GATEWAY_B[0])}
            for name, h in REPLICA_HOSTS.items():
                etcd.attach(replicas[name].ns, f"p-{h[0]}", h[3])
            service = pwd.getpwnam(SERVICE_USER)
            for name in [*replicas, *gateways]:
                for sub, mode in ((f"run-{name}", 0o750), (f"state-{name}", 0o700)):
                    (workdir / sub).mkdir(mode=mode)
                    os.chown(workdir / sub, service.pw_uid, service.pw_gid)
            all_keys = workdir / "curve-all"
            made = subprocess.run([ADMIN, "bus-keys", str(all_keys), *[a for g in gateways for a in ("--gateway", g)],
                                   *[a for r in replicas for a in ("--replica", r)]],
                                  capture_output=True, text=True, check=False)
            if made.returncode != 0:
                raise RuntimeError(f"knock-admin bus-keys: {made.stderr.strip()}")
            configs: dict[str, Path] = {}
            for name, host in replicas.items():
                curve = role_keys(all_keys, workdir / f"curve-{name}", (f"auth@{name}", f"bus@{name}", "tap"))
                configs[name] = replica_config(workdir, name, host, gateways, etcd, curve, store_kind, services)
            for name, host in gateways.items():
                curve = role_keys(all_keys, workdir / f"curve-{name}",
                                  (f"capture@{name}", f"gate@{name}", f"relay@{name}"))
                configs[name] = gateway_config(workdir, name, host, replicas, curve, services)
            # The admin's config: a replica's, plus the admin's own etcd identity (examples/ha/admin.toml).
            admin_config = workdir / "admin.toml"
            admin_config.write_text(configs["auth-a"].read_text().replace("[store]\n", f"""[store]
admin_cert = "{etcd.admin.cert}"
admin_key = "{etcd.admin.key}"
admin_user = "{etcd.admin.user}"
admin_password_file = "{etcd.admin.password_file}"
""", 1))
            configs["admin"] = admin_config
            daemons = {name: start_sshd(lab, host, workdir / f"ssh-{name}") for name, host in gateways.items()} \
                if sshd else {}
            for name, host in replicas.items():
                if store_kind == "local" and name != "auth-a":
                    continue  # one auth host, as a fleet's
                stacks[name] = Stack(lab, workdir, HA / "auth-replica.supervisord.conf", host=host,
                                     config_path=configs[name], name=name)
            for name, host in gateways.items():
                stacks[name] = Stack(lab, workdir, HA / "gateway.supervisord.conf", host=host,
                                     config_path=configs[name], name=name)
            world = World(lab, etcd, workdir, replicas, gateways, configs, stacks, daemons, store_kind)
            put_users(world, users or [])
            for stack in stacks.values():
                stack.start(wait=False)
            deadline = time.monotonic() + 60
            text = ""
            while time.monotonic() < deadline:
                text = status(world, "auth-a")
                if "auth up" in text and all(f"gateway {g}: capture up  gate up  relay up" in text for g in gateways):
                    break
            else:
                raise RuntimeError(f"the HA lab is not up after 60 s:\n{text}")
            yield world
        finally:
            for stack in stacks.values():
                stack.stop()
            if not os.environ.get("DYNKNOCK_KEEP_LAB"):
                shutil.rmtree(workdir, ignore_errors=True)
