"""How a stage binds and connects its bus sockets: ipc on one host, tcp+CURVE across hosts.

On one host (the default) every endpoint is an ipc socket in a directory only the
service's user and group can enter: the file system is the access control.

Across hosts, endpoints are tcp:// and every socket uses CURVE: traffic is
encrypted, each binder proves it holds its stage's secret key, and a ZAP
authenticator admits only clients whose public key is in ``curve_dir/public``.
So a host on the network that is not one of ours can neither read nor inject a
door command. Keys are made by ``knock-admin bus-keys DIR``: ``DIR/STAGE.key_secret``
for each stage (copy to its host) and ``DIR/public/STAGE.key`` for all.

Holding *a* key of ours is not enough: each bound socket admits exactly the peers
the architecture gives it (:data:`PEERS`), so the tap key of a monitoring host
cannot command the gate, nor the capture key read pending knocks. Each socket has
its own ZAP domain, named after its endpoint; a handshake with any other key is
refused, counted (:func:`refusals`, in the stage's heartbeat) and logged.

In a fleet each gateway's stages hold keys of their own (``capture@gw-a``, made by
``knock-admin bus-keys DIR --gateway gw-a``): a key admits as its role, and auth reads
the key behind every packet (ZeroMQ's User-Id, the z85 public key) so that gateway B's
capture key cannot report packets as gateway A's, and auth checks each gateway's gate
and relay by that gateway's own key.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from dynknock.bus import ROLES, Endpoints

# Which stage binds each endpoint (so a client knows whose public key to expect).
OWNER = {name: role.owner for name, role in ROLES.items()}
KEY_NAMES = ("auth", "gate", "relay", "bus", "capture", "tap")
GATEWAY_ROLES = ("capture", "gate", "relay")  # the stages that run on a fleet's gateway hosts
REPLICA_ROLES = ("auth", "bus")  # what runs on each auth replica's host: auth@NAME, bus@NAME


def gateway_key_name(role: str, gateway: str) -> str:
    """The key of a gateway stage of a fleet: `capture@gw-a`."""
    return f"{role}@{gateway}"


def key_role(name: str) -> str:
    """What a key admits as: `capture@gw-a` as capture."""
    return name.partition("@")[0]


def key_gateway(name: str) -> str:
    """The gateway a key belongs to: "" for a role's shared key (one host)."""
    return name.partition("@")[2]


# Which keys each bound socket admits: its peers in the architecture and no one else (dynknock/bus.py).
PEERS = {name: role.peers for name, role in ROLES.items()}

_refused: Counter[str] = Counter()
_refused_lock = threading.Lock()
_log = logging.getLogger("dynknock.transport")


def refusals() -> dict[str, int]:
    """Handshakes refused so far in this process, per endpoint (wrong or unknown key)."""
    with _refused_lock:
        return dict(_refused)


class _SocketPeers:
    """ZAP credentials provider for one bound socket (called in the authenticator's thread)."""

    def __init__(self, endpoint: str, admitted: dict[bytes, str], known: dict[bytes, str]) -> None:
        self.endpoint = endpoint
        self.admitted = admitted  # z85 public key -> key name
        self.known = known

    def callback(self, domain: str, key: bytes) -> bool:
        if domain == self.endpoint and key in self.admitted:
            return True
        with _refused_lock:
            _refused[self.endpoint] += 1
            count = _refused[self.endpoint]
        if count & (count - 1) == 0:  # 1, 2, 4, 8...: a flood of attempts cannot flood the log
            who = self.known.get(key, "an unknown key")
            _log.warning("Refused %s on the %s socket (%d refusals so far): it admits only %s",
                         f"the {who} key" if key in self.known else who, self.endpoint, count,
                         ", ".join(sorted(self.admitted.values())))
        return False


class TransportError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Transport:
    endpoints: Endpoints
    stage: str
    curve_dir: Path | None = None  # None: ipc, the directory's permissions protect it
    key_name: str = ""  # our own key, if not the stage's: a fleet gateway's `capture@gw-a`
    # An auth replica's host: its auth and knock-bus bind with their own keys (auth@NAME, bus@NAME),
    # so a stage there connecting to them (auth to events, knock-admin status to tap) expects those.
    replica: str = ""

    @property
    def own_key(self) -> str:
        return self.key_name or self.stage

    def _keys(self, name: str) -> tuple[bytes, bytes | None]:
        assert self.curve_dir is not None
        path = self.curve_dir / (f"{name}.key_secret" if name == self.own_key else f"public/{name}.key")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise TransportError(f"CURVE key {path} unusable ({exc}); make keys with knock-admin bus-keys "
                                 f"(key bus.curve_dir)") from None
        return public, secret

    def bind(self, sock: zmq.Socket[Any], endpoint_name: str) -> None:
        if self.curve_dir is not None:
            if OWNER[endpoint_name] != self.stage:
                raise TransportError(f"the {self.stage} stage cannot bind the {endpoint_name} endpoint")
            public, secret = self._keys(self.own_key)
            assert secret is not None
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_server = True
            # The authenticator judges each socket by its own peers (start_authenticator).
            sock.zap_domain = endpoint_name.encode()
        sock.bind(getattr(self.endpoints, endpoint_name))

    def connect(self, sock: zmq.Socket[Any], endpoint_name: str) -> None:
        if not getattr(self.endpoints, endpoint_name):
            raise TransportError(f"no {endpoint_name} endpoint here (bus.tcp_endpoints; a gateway serving auth "
                                 f"replicas reaches theirs through [replicas.NAME])")
        if self.curve_dir is not None:
            public, secret = self._keys(self.own_key)
            assert secret is not None
            owner = OWNER[endpoint_name]
            if self.replica and owner in REPLICA_ROLES:
                owner = gateway_key_name(owner, self.replica)
            server_public, _ = self._keys(owner)
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_public
        sock.connect(getattr(self.endpoints, endpoint_name))

    def connect_url(self, sock: zmq.Socket[Any], url: str, owner: str) -> None:
        """Connect to an endpoint not in our table (a fleet's auth reaches each gateway's gate and
        relay by its own url), expecting the key named `owner` (`gate@gw-a`) to answer."""
        if self.curve_dir is not None:
            public, secret = self._keys(self.own_key)
            assert secret is not None
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = self._keys(owner)[0]
        sock.connect(url)

    def peer_names(self) -> dict[str, str]:
        """Every key we know, z85 public key (ZeroMQ's User-Id of a CURVE peer) -> its name: the
        roles' keys and each gateway's own keys found in curve_dir/public."""
        assert self.curve_dir is not None
        names = [name for name in KEY_NAMES if name != self.own_key]
        names += sorted(path.name.removesuffix(".key") for path in (self.curve_dir / "public").glob("*@*.key")
                        if key_role(path.name) in GATEWAY_ROLES + REPLICA_ROLES)
        known = {self._keys(name)[0].decode("ascii"): name for name in names if name != self.own_key}
        known[self._keys(self.own_key)[0].decode("ascii")] = self.own_key
        return known

    def start_authenticator(self, context: zmq.Context[Any], fleet: bool = False,
                            replicas: tuple[str, ...] = ()) -> ThreadAuthenticator | None:
        """For stages that bind: each socket of ours admits only the keys of its own peers (a
        gateway's own key as its role). `fleet`: a gateway stage only by its gateway's own key,
        never by the role's shared one, which would not say which gateway it speaks for.
        `replicas` (a gateway serving auth replicas): auth only by the key of one of these
        replicas (auth@NAME), never by the shared auth key or another replica's."""
        if self.curve_dir is None:
            return None
        known = {key.encode("ascii"): name for key, name in self.peer_names().items()}
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        for endpoint, owner in OWNER.items():
            if owner != self.stage:
                continue
            admitted = {key: name for key, name in known.items() if key_role(name) in PEERS[endpoint]
                        and not (fleet and name in GATEWAY_ROLES)
                        and not (replicas and key_role(name) == "auth"
                                 and name not in {gateway_key_name("auth", r) for r in replicas})}
            authenticator.configure_curve_callback(domain=endpoint,
                                                   credentials_provider=_SocketPeers(endpoint, admitted, known))
        return authenticator


def make_keys(directory: Path, gateways: tuple[str, ...] = (), replicas: tuple[str, ...] = ()) -> list[Path]:
    """One CURVE key pair per stage, per gateway stage of each fleet gateway named, and per replica stage
    (auth@NAME, bus@NAME) of each auth replica named; secret files 0600, public ones collected in public/."""
    public_dir = directory / "public"
    public_dir.mkdir(parents=True, exist_ok=True)
    made = []
    names = [*KEY_NAMES, *(gateway_key_name(role, g) for g in gateways for role in GATEWAY_ROLES),
             *(gateway_key_name(role, r) for r in replicas for role in REPLICA_ROLES)]
    for name in names:
        public_file, secret_file = zmq.auth.create_certificates(directory, name)
        Path(secret_file).chmod(0o600)
        Path(public_file).replace(public_dir / f"{name}.key")
        made.append(Path(secret_file))
    return made
