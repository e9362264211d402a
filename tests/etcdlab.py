"""A three-member etcd cluster in network namespaces, for the tests of auth/etcd.py.

    with EtcdLab() as lab, lab.client_netns():
        store = EtcdStore(lab.endpoints, lab.ca, lab.replica.cert, lab.replica.key,
                          lab.replica.user, lab.replica.password_file)

Layout (TAG: four random hex digits, so two labs never share a name):

    dketTAG-br    bridge br0, one port per host (p-e1, p-e2, p-e3, p-cli); no address, no route out
    dketTAG-e1    etcd member e1   198.18.231.1/24   client port :2379, peer port :2380
    dketTAG-e2    etcd member e2   198.18.231.2/24
    dketTAG-e3    etcd member e3   198.18.231.3/24
    dketTAG-cli   the clients      198.18.231.10/24  (the test enters it: client_netns())

Nothing is added to the root namespace: no namespace has a route anywhere but its /24, so no
packet of the lab can leave it. Addresses are from 198.18.0.0/15 (RFC 2544) only.

Security as production needs it:

* two CAs, made with openssl in a temporary directory: the peer CA signs the members' raft
  certificates (`--peer-client-cert-auth`), the client CA signs the members' client-port
  certificates and every client's (`--client-cert-auth`); so no client certificate can join as
  a peer, and no peer certificate is a client;
* RBAC on (`auth enable`): etcd's JSON gateway never takes a certificate's CommonName as the
  user, so each role has a password: user "auth-replica" (role auth-replica: readwrite
  `<prefix>/nonces/`, read `<prefix>/users`), user "admin" (role admin: readwrite
  `<prefix>/users`, read `<prefix>/nonces/`), and "root" for the setup. Client certificates
  carry no CommonName (the gateway answers 400 to one that does, with auth on);
* `--pre-vote`, periodic auto-compaction, `--snapshot-count=10000`, progress notifications
  every 2 s (`--experimental-watch-progress-notify-interval`).

Processes: only the etcd members this lab starts, each signalled by its own PID. Everything is
torn down in close() (members killed, namespaces deleted, the directory removed), also when the
start fails half-way.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

NETWORK = "198.18.231"  # /24, inside 198.18.0.0/15
CLIENT_ADDRESS = f"{NETWORK}.10"
CLIENT_PORT = 2379
PEER_PORT = 2380
MEMBERS = 3
PROGRESS_NOTIFY_S = 2
_CLONE_NEWNET = 0x40000000
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


class LabError(RuntimeError):
    """The lab could not be built or driven; the message says which step and what it printed."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one etcd client holds: a certificate and key (no CommonName), a user and its password."""

    user: str
    cert: Path
    key: Path
    password_file: Path


@dataclass(slots=True)
class Member:
    name: str  # e1, e2, e3
    namespace: str
    address: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://{self.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.address}:{PEER_PORT}"


def _run(argv: list[str], what: str, *, timeout: float = 30.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LabError(f"{what}: {' '.join(argv[:6])} ... exited {done.returncode}: {said[-1] if said else ''}")
    return done.stdout


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace `name` until the block ends.

    setns() moves the calling thread only; threads it starts inside the block are born in the
    namespace and keep it (so EtcdStore's watch thread, started inside, talks from there too).
    Sockets keep the namespace they were made in.
    """
    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _libc_setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _libc_setns(saved)
    finally:
        os.close(saved)


class EtcdLab:
    """Builds the cluster on __enter__ (or start()), tears it all down on __exit__ (or close())."""

    def __init__(self, prefix: str = "/dynknock", tag: str | None = None, *, rbac: bool = True) -> None:
        """rbac=False: the cluster starts with auth off and no user (to try examples/ha/rbac.sh)."""
        self.prefix = prefix
        self.rbac = rbac
        self.tag = tag or secrets.token_hex(2)
        self.ns = f"dket{self.tag}"
        self.bridge_ns = f"{self.ns}-br"
        self.client_ns = f"{self.ns}-cli"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.ns}-"))
        self.pki = self.dir / "pki"
        self.members = [
            Member(f"e{i}", f"{self.ns}-e{i}", f"{NETWORK}.{i}", self.dir / f"data-e{i}", self.dir / f"e{i}.log")
            for i in range(1, MEMBERS + 1)
        ]
        self.endpoints = [m.client_url for m in self.members]
        self.ca = self.pki / "client-ca.crt"  # what clients trust: the CA of the members' client-port certificates
        self.replica = self._credentials("auth-replica")
        self.admin = self._credentials("admin")
        self.root = self._credentials("root")
        # A client certificate from a CA that etcd does not trust (with the replica's password).
        self.rogue = Credentials("auth-replica", self.pki / "rogue.crt", self.pki / "rogue.key",
                                 self.pki / "auth-replica.password")
        self._namespaces: list[str] = []

    def _credentials(self, user: str) -> Credentials:
        return Credentials(user, self.pki / f"{user}.crt", self.pki / f"{user}.key", self.pki / f"{user}.password")

    # --- life cycle -----------------------------------------------------------------------------

    def __enter__(self) -> EtcdLab:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError(f"the etcd lab needs root (network namespaces); running as uid {os.geteuid()}")
        for tool in ("ip", "openssl", "etcd", "etcdctl"):
            if shutil.which(tool) is None:
                raise LabError(f"the etcd lab needs `{tool}` in PATH (Debian: etcd-server, etcd-client, openssl)")
        try:
            self._make_pki()
            self._make_network()
            for member in self.members:
                self._spawn(member, "new")
            for member in self.members:
                self.wait_ready(member)
            if self.rbac:
                self._enable_rbac()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill our members (by PID), delete our namespaces and the directory. Never raises."""
        for member in self.members:
            with contextlib.suppress(Exception):
                self.stop_member(member)
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        self._namespaces.clear()
        if not os.environ.get("DKET_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- PKI ------------------------------------------------------------------------------------

    def _key(self, name: str) -> Path:
        key = self.pki / f"{name}.key"
        _run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], f"key {name}")
        key.chmod(0o600)
        return key

    def _ca(self, name: str) -> None:
        key = self._key(name)
        _run(["openssl", "req", "-x509", "-new", "-key", str(key), "-subj", f"/O=dynknock lab/CN={name}",
              "-days", "30", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(self.pki / f"{name}.crt")], f"CA {name}")

    def _cert(self, ca: str, name: str, usage: str, *, cn: str = "", ip: str = "") -> None:
        key = self._key(name)
        csr, ext = self.pki / f"{name}.csr", self.pki / f"{name}.ext"
        subject = "/O=dynknock lab" + (f"/CN={cn}" if cn else "")
        _run(["openssl", "req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr)], f"request {name}")
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage={usage}\n" + (f"subjectAltName=IP:{ip}\n" if ip else ""))
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.pki / f"{ca}.crt"),
              "-CAkey", str(self.pki / f"{ca}.key"), "-CAcreateserial", "-days", "30", "-sha256",
              "-extfile", str(ext), "-out", str(self.pki / f"{name}.crt")], f"certificate {name}")
        csr.unlink()
        ext.unlink()

    def _make_pki(self) -> None:
        self.pki.mkdir(mode=0o700)
        for ca in ("peer-ca", "client-ca", "rogue-ca"):
            self._ca(ca)
        for m in self.members:
            self._cert("peer-ca", f"{m.name}-peer", "serverAuth,clientAuth", cn=m.name, ip=m.address)
            # The client port's certificate: no CommonName, because the JSON gateway dials its own
            # member with it, and a CN there would be taken as a user.
            self._cert("client-ca", f"{m.name}-server", "serverAuth,clientAuth", ip=m.address)
        for user in ("auth-replica", "admin", "root"):
            self._cert("client-ca", user, "clientAuth")
            password = self.pki / f"{user}.password"
            password.write_text(secrets.token_urlsafe(24) + "\n")
            password.chmod(0o600)
        self._cert("rogue-ca", "rogue", "clientAuth")

    # --- network --------------------------------------------------------------------------------

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name], f"namespace {name}")
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"], f"lo in {name}")

    def _plug(self, name: str, port: str, address: str) -> None:
        """A namespace `name` with eth0 (address/24) on the bridge's port `port`."""
        self._add_namespace(name)
        _run(["ip", "link", "add", "eth0", "netns", name, "type", "veth", "peer", "name", port,
              "netns", self.bridge_ns], f"veth {name}")
        _run(["ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up"], f"bridge port {port}")
        _run(["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"], f"address {address}")
        _run(["ip", "-n", name, "link", "set", "eth0", "up"], f"eth0 in {name}")

    def _make_network(self) -> None:
        self._add_namespace(self.bridge_ns)
        _run(["ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge"], "bridge")
        _run(["ip", "-n", self.bridge_ns, "link", "set", "br0", "up"], "bridge up")
        for m in self.members:
            self._plug(m.namespace, f"p-{m.name}", m.address)
        self._plug(self.client_ns, "p-cli", CLIENT_ADDRESS)

    def attach(self, namespace: str, port: str, address: str) -> None:
        """Give an existing namespace (a host of another lab, e.g. an auth replica of tests/e2e/test_ha.py)
        an interface eth-etcd on this lab's bridge, address/24, so that it reaches the members. The
        veth goes when either namespace is deleted."""
        _run(["ip", "link", "add", "eth-etcd", "netns", namespace, "type", "veth", "peer", "name", port,
              "netns", self.bridge_ns], f"veth {namespace}")
        _run(["ip", "-n", self.bridge_ns, "link", "set", port, "master", "br0", "up"], f"bridge port {port}")
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth-etcd"], f"address {address}")
        _run(["ip", "-n", namespace, "link", "set", "eth-etcd", "up"], f"eth-etcd in {namespace}")

    def cut(self, member: Member | int) -> None:
        """Black-hole a member: its bridge port goes down (no RST, peers and clients time out)."""
        m = self._member(member)
        _run(["ip", "-n", self.bridge_ns, "link", "set", f"p-{m.name}", "down"], f"cut {m.name}")

    def restore(self, member: Member | int) -> None:
        m = self._member(member)
        _run(["ip", "-n", self.bridge_ns, "link", "set", f"p-{m.name}", "up"], f"restore {m.name}")

    @contextlib.contextmanager
    def client_netns(self) -> Iterator[None]:
        """The calling thread (and the threads it starts) in the clients' namespace."""
        with netns(self.client_ns):
            yield

    # --- members --------------------------------------------------------------------------------

    def _member(self, member: Member | int) -> Member:
        return member if isinstance(member, Member) else self.members[member]

    def _argv(self, m: Member, state: str) -> list[str]:
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        pki = self.pki
        return [
            "ip", "netns", "exec", m.namespace, "etcd",
            "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", f"{self.ns}-cluster",
            "--client-cert-auth", "--trusted-ca-file", str(pki / "client-ca.crt"),
            "--cert-file", str(pki / f"{m.name}-server.crt"), "--key-file", str(pki / f"{m.name}-server.key"),
            "--peer-client-cert-auth", "--peer-trusted-ca-file", str(pki / "peer-ca.crt"),
            "--peer-cert-file", str(pki / f"{m.name}-peer.crt"), "--peer-key-file", str(pki / f"{m.name}-peer.key"),
            "--auth-token", "simple",
            "--pre-vote=true",
            "--auto-compaction-mode=periodic", "--auto-compaction-retention=5m",
            "--snapshot-count=10000",
            f"--experimental-watch-progress-notify-interval={PROGRESS_NOTIFY_S}s",
            "--logger", "zap", "--log-outputs", str(m.log),
        ]

    def _spawn(self, m: Member, state: str) -> None:
        if m.process is not None and m.process.poll() is None:
            raise LabError(f"{m.name} is running already (pid {m.process.pid})")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "GOMAXPROCS": "2"}  # no ETCD_* from our environment
        with open(self.dir / f"{m.name}.out", "ab") as out:
            # `ip netns exec` execs etcd: the PID we hold is etcd's own.
            m.process = subprocess.Popen(self._argv(m, state), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop_member(self, member: Member | int, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop one member by its PID (SIGKILL by default) and reap it."""
        m = self._member(member)
        process, m.process = m.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT_S)

    def start_member(self, member: Member | int, *, wait: bool = True) -> None:
        """Start a stopped member again on its data directory; wait until it serves with a leader."""
        m = self._member(member)
        self._spawn(m, "existing")
        if wait:
            self.wait_ready(m)

    def running(self, member: Member | int) -> bool:
        process = self._member(member).process
        return process is not None and process.poll() is None

    def wait_ready(self, member: Member | int, *, timeout: float = _START_TIMEOUT_S) -> float:
        """Wait until `member` answers /health "true" (it has a leader and a quorum read passes);
        returns the seconds waited. LabError with the end of its log if it does not in time."""
        m = self._member(member)
        started = time.monotonic()
        last = "no answer"
        for _ in range(int(timeout / 0.1) + 1):
            if m.process is None or m.process.poll() is not None:
                raise LabError(f"{m.name} exited ({self._tail(m)})")
            try:
                status, body = self.request(m, "GET", "/health", timeout=1.0)
                if status == 200 and json.loads(body).get("health") == "true":
                    return time.monotonic() - started
                last = f"HTTP {status} {body[:120]!r}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > timeout:
                break
            time.sleep(0.1)
        raise LabError(f"{m.name} not ready after {timeout:.0f} s ({last}; log: {self._tail(m)})")

    def _tail(self, m: Member) -> str:
        try:
            lines = m.log.read_text(errors="replace").splitlines()[-3:]
        except OSError:
            lines = []
        return " | ".join(line[:300] for line in lines) or "no log"

    def status(self, member: Member | int) -> dict[str, Any]:
        """The member's /v3/maintenance/status (no auth needed): member id, leader, raft term ..."""
        status, body = self.request(self._member(member), "POST", "/v3/maintenance/status", b"{}", timeout=1.0)
        if status != 200:
            raise LabError(f"status of {self._member(member).name}: HTTP {status} {body[:200]!r}")
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise LabError(f"status: not an object: {body[:200]!r}")
        return answer

    def leader(self) -> int | None:
        """Index of the member that leads now (asked of the running members), None if none does."""
        ids: dict[str, int] = {}
        leader = ""
        for i, m in enumerate(self.members):
            if not self.running(m):
                continue
            try:
                answer = self.status(m)
            except (OSError, http.client.HTTPException, ValueError, LabError):
                continue
            ids[str(answer.get("header", {}).get("member_id", ""))] = i
            leader = str(answer.get("leader", "")) or leader
        return ids.get(leader)

    def request(self, m: Member, method: str, path: str, body: bytes | None = None, *,
                creds: Credentials | None = None, token: str = "", timeout: float = 2.0) -> tuple[int, bytes]:
        """One HTTPS request to a member from the clients' namespace, with `creds`' certificate
        (root's by default) and `token` if any. For the lab's own checks and for the tests' raw
        requests; the code under test has its own client."""
        creds = creds or self.root
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(creds.cert), str(creds.key))
        headers = {"Content-Type": "application/json"} if body else {}
        if token:
            headers["Authorization"] = token
        with self.client_netns():
            conn = http.client.HTTPSConnection(m.address, CLIENT_PORT, context=context, timeout=timeout)
            try:
                conn.request(method, path, body, headers)
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

    def login(self, m: Member, creds: Credentials) -> str:
        """A token for `creds` (/v3/auth/authenticate on member `m`)."""
        body = json.dumps({"name": creds.user, "password": creds.password_file.read_text().strip()}).encode()
        status, answer = self.request(m, "POST", "/v3/auth/authenticate", body, creds=creds)
        token = json.loads(answer).get("token") if status == 200 else None
        if not isinstance(token, str):
            raise LabError(f"login of {creds.user}: HTTP {status} {answer[:200]!r}")
        return token

    # --- RBAC -----------------------------------------------------------------------------------

    def etcdctl(self, *args: str, creds: Credentials | None = None, login: bool = True) -> str:
        """etcdctl (v3 API, gRPC) from the clients' namespace, as `creds` (root by default)."""
        creds = creds or self.root
        argv = ["ip", "netns", "exec", self.client_ns, "etcdctl", "--endpoints", ",".join(self.endpoints),
                "--cacert", str(self.ca), "--cert", str(creds.cert), "--key", str(creds.key),
                "--command-timeout", "5s"]
        if login:
            argv += ["--user", f"{creds.user}:{creds.password_file.read_text().strip()}"]
        return _run(argv + list(args), f"etcdctl {' '.join(args[:3])}")

    def _enable_rbac(self) -> None:
        nonces, users = f"{self.prefix}/nonces/", f"{self.prefix}/users"

        def ctl(*args: str) -> None:
            self.etcdctl(*args, login=False)  # auth is not on yet: no login needed

        for creds in (self.root, self.replica, self.admin):
            ctl("user", "add", creds.user, "--interactive=false",
                f"--new-user-password={creds.password_file.read_text().strip()}")
        ctl("user", "grant-role", "root", "root")
        ctl("role", "add", "auth-replica")
        ctl("role", "grant-permission", "auth-replica", "readwrite", nonces, "--prefix=true")
        ctl("role", "grant-permission", "auth-replica", "read", users)
        ctl("role", "add", "admin")
        ctl("role", "grant-permission", "admin", "readwrite", users)
        ctl("role", "grant-permission", "admin", "read", nonces, "--prefix=true")
        ctl("user", "grant-role", self.replica.user, "auth-replica")
        ctl("user", "grant-role", self.admin.user, "admin")
        ctl("auth", "enable")
