"""knock-admin on the users of auth replicas in etcd, against a real three-member cluster
(tests/etcdlab.py: namespaces, TLS with client certificates, RBAC).

`knock-admin -c CONFIG` with store.kind = "etcd" reads the users document with the admin's own etcd
identity ([store] admin_*), changes it and writes it back with a compare on its revision; a replica
following the document with its watch sees each change. Two admins at once lose nothing; a replica's
identity cannot write users; a config without the admin's identity is one clear line.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynknock.auth import admin
from dynknock.auth.etcd import EtcdStore
from dynknock.auth.users import parse_users
from tests.etcdlab import Credentials, EtcdLab

pytestmark = pytest.mark.stage


@pytest.fixture(scope="module")
def lab() -> Iterator[EtcdLab]:
    # The whole module runs in the clients' namespace (threads started here are born in it).
    with EtcdLab() as built, built.client_netns():
        yield built


def write_config(path: Path, lab: EtcdLab, admin_creds: Credentials | None) -> Path:
    replica = lab.replica
    admin_lines = "" if admin_creds is None else (
        f'admin_cert = "{admin_creds.cert}"\nadmin_key = "{admin_creds.key}"\n'
        f'admin_user = "{admin_creds.user}"\nadmin_password_file = "{admin_creds.password_file}"\n')
    path.write_text(f"""\
[server]
interface = "eth0"
addresses = ["198.18.231.10"]
replica = "auth-a"
key_file = "{path.parent / 'server.key'}"

[store]
kind = "etcd"
endpoints = {list(lab.endpoints)!r}
ca = "{lab.ca}"
cert = "{replica.cert}"
key = "{replica.key}"
user = "{replica.user}"
password_file = "{replica.password_file}"
prefix = "{lab.prefix}"
{admin_lines}
[services.ssh]
target = "127.0.0.1:22"
""".replace("'", '"'))
    return path


def knock_admin(config: Path, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(["-c", str(config), *argv], admin.Io(io.StringIO(stdin), out, err))
    return code, out.getvalue(), err.getvalue()


def replica_view(lab: EtcdLab) -> dict[str, object]:
    store = EtcdStore(list(lab.endpoints), lab.ca, lab.replica.cert, lab.replica.key, lab.replica.user,
                      lab.replica.password_file, lab.prefix)
    try:
        text, _ = store.load_users()
    finally:
        store.close()
    return dict(parse_users(text, "etcd")) if text else {}


def test_changes_made_by_knock_admin_reach_a_replicas_watch(lab: EtcdLab, tmp_path: Path) -> None:
    config = write_config(tmp_path / "dynknock.toml", lab, lab.admin)
    seen: list[tuple[str, int]] = []
    stop = threading.Event()
    watcher = EtcdStore(list(lab.endpoints), lab.ca, lab.replica.cert, lab.replica.key, lab.replica.user,
                        lab.replica.password_file, lab.prefix)
    watcher.watch_users(lambda text, revision: seen.append((text, revision)), stop)
    try:
        code, out, err = knock_admin(config, "add", "alice", "--services", "ssh", stdin="a long enough password\n")
        assert code == 0, err
        assert "to etcd /dynknock/users" in out
        started = time.monotonic()
        while time.monotonic() - started < 10 and not any('"alice"' in text for text, _ in seen):
            time.sleep(0.02)
        assert any('"alice"' in text for text, _ in seen), seen
        print(f"\nknock-admin add to the replica's watch: {time.monotonic() - started:.3f} s")
        code, out, _ = knock_admin(config, "list")
        assert code == 0 and out.splitlines()[1].split()[:2] == ["alice", "password"]
        assert knock_admin(config, "remove", "alice")[0] == 0
        started = time.monotonic()
        while time.monotonic() - started < 10 and '"alice"' in seen[-1][0]:
            time.sleep(0.02)
        assert '"alice"' not in seen[-1][0]  # a revoked user is revoked at the replica within seconds
    finally:
        stop.set()
        watcher.close()


def test_two_admins_at_once_lose_nothing(lab: EtcdLab, tmp_path: Path) -> None:
    config = write_config(tmp_path / "dynknock.toml", lab, lab.admin)
    codes: list[int] = []
    errors: list[str] = []

    def add(name: str) -> None:
        for i in range(5):
            code, _, err = knock_admin(config, "add", f"{name}{i}", "--key-gen", str(tmp_path / f"{name}{i}.key"))
            codes.append(code)
            if err:
                errors.append(err)

    admins = [threading.Thread(target=add, args=(name,)) for name in ("p", "q", "r")]
    for thread in admins:
        thread.start()
    for thread in admins:
        thread.join(60)
    assert codes == [0] * 15, errors
    users = replica_view(lab)
    assert {f"{n}{i}" for n in "pqr" for i in range(5)} <= set(users)
    for name in (f"{n}{i}" for n in "pqr" for i in range(5)):
        assert knock_admin(config, "remove", name)[0] == 0


def test_a_replicas_identity_cannot_write_users(lab: EtcdLab, tmp_path: Path) -> None:
    config = write_config(tmp_path / "dynknock.toml", lab, lab.replica)  # admin_* = the replica's own files
    code, _, err = knock_admin(config, "add", "mallory", stdin="a long enough password\n")
    assert code == 2 and err.count("\n") == 1 and "denied" in err.lower(), err
    assert "mallory" not in replica_view(lab)


def test_a_config_without_the_admins_identity_says_so(lab: EtcdLab, tmp_path: Path) -> None:
    config = write_config(tmp_path / "dynknock.toml", lab, None)
    code, _, err = knock_admin(config, "list")
    assert code == 2 and "store.admin_cert is required" in err and str(config) in err
