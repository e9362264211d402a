"""How a stage binds and connects its bus sockets: ipc on one host, tcp+CURVE across hosts.

On one host (the default) every endpoint is an ipc socket in a directory only the
service's user and group can enter: the file system is the access control.

Across hosts, endpoints are tcp:// and every socket uses CURVE: traffic is
encrypted, each binder proves it holds its stage's secret key, and a ZAP
authenticator admits only clients whose public key is in ``curve_dir/public``.
So a host on the network that is not one of ours can neither read nor inject a
door command. Keys are made by ``knock-admin bus-keys DIR``: ``DIR/STAGE.key_secret``
for each stage (copy to its host) and ``DIR/public/STAGE.key`` for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from dynknock.bus import Endpoints

# Which stage binds each endpoint (so a client knows whose public key to expect).
OWNER = {"packets": "auth", "knock_filter": "auth", "gate": "gate", "relay": "relay", "events": "bus", "tap": "bus"}
KEY_NAMES = ("auth", "gate", "relay", "bus", "capture", "tap")


class TransportError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Transport:
    endpoints: Endpoints
    stage: str
    curve_dir: Path | None = None  # None: ipc, the directory's permissions protect it

    def _keys(self, name: str) -> tuple[bytes, bytes | None]:
        assert self.curve_dir is not None
        path = self.curve_dir / (f"{name}.key_secret" if name == self.stage else f"public/{name}.key")
        try:
            public, secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise TransportError(f"CURVE key {path} unusable ({exc}); make keys with knock-admin bus-keys "
                                 f"(key bus.curve_dir)") from None
        return public, secret

    def bind(self, sock: zmq.Socket[Any], endpoint_name: str) -> None:
        if self.curve_dir is not None:
            public, secret = self._keys(self.stage)
            assert secret is not None
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_server = True
        sock.bind(getattr(self.endpoints, endpoint_name))

    def connect(self, sock: zmq.Socket[Any], endpoint_name: str) -> None:
        if self.curve_dir is not None:
            public, secret = self._keys(self.stage)
            assert secret is not None
            server_public, _ = self._keys(OWNER[endpoint_name])
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_serverkey = server_public
        sock.connect(getattr(self.endpoints, endpoint_name))

    def start_authenticator(self, context: zmq.Context[Any]) -> ThreadAuthenticator | None:
        """For stages that bind: admit only clients whose public keys we hold."""
        if self.curve_dir is None:
            return None
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(self.curve_dir / "public"))
        return authenticator


def make_keys(directory: Path) -> list[Path]:
    """One CURVE key pair per stage; secret files 0600, public ones collected in public/."""
    public_dir = directory / "public"
    public_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name in KEY_NAMES:
        public_file, secret_file = zmq.auth.create_certificates(directory, name)
        Path(secret_file).chmod(0o600)
        Path(public_file).replace(public_dir / f"{name}.key")
        made.append(Path(secret_file))
    return made
