"""The client config file and key files.

The config file (default ``~/.config/dynknock/client.toml``) names servers the
way fwknop's ``.fwknoprc`` does, so that ``knock-client myserver`` needs no
options::

    [servers.myserver]
    host = "gw.example.org"
    key_file = "~/.config/dynknock/myserver.key"

Every key is declared once in :data:`KEYS` (type, check, help); docs/CLIENT.md shows them all. A bad value is
one line naming the key and the file, never a traceback.

A key file holds the seed of a key pair (``dynknock-ed25519-private BASE64``, ``knock-client
--key-gen``) or the base64 of a 32-byte master key (``--key-gen --symmetric``), and is refused
when group or others could read it: it is as good as a password.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from dynknock import keys
from dynknock.client.defaults import DEFAULT_SERVICE
from dynknock.client.paths import expand_user
from dynknock.keys import MASTER_KEY_LEN, KeyError_, encode_key
from dynknock.protocol import CONTROL_PORT, is_port, is_service_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NamedTuple

    from dynknock.protocol import IPAddress
else:  # typing.NamedTuple without typing's start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple


class ClientConfigError(ValueError):
    """A config or key file cannot be used; the message is one line for the user."""


# A NamedTuple, not a dataclass: creating a frozen slots dataclass costs knock-client ~0.5-1 ms of
# start-up each (bench/client_startup.py), a NamedTuple ~0.05 ms.
class ServerStanza(NamedTuple):
    """One ``[servers.NAME]`` table; None means "not set here"."""

    name: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    service: str | None = None
    key_file: str | None = None  # as client/paths.py's expand_user wrote it
    family: int | None = None  # 4 or 6
    nat: bool | None = None
    source_ip: IPAddress | None = None
    bind: bool | None = None
    server_key: str | None = None  # a key-pair user's pin of the server's key (client/pair.py)


# --- value checks: each returns the parsed value or raises ValueError(why) ---


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError("must be a host name or address")
    return value


def _port(value: Any) -> int:
    if not is_port(value):
        raise ValueError("must be an integer 1-65535")
    return value


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("must be a user name without spaces")
    return value


def _service(value: Any) -> str:
    if not isinstance(value, str) or not is_service_name(value):
        raise ValueError("must be 1-16 characters of a-z 0-9 _ -")
    return value


def _key_file(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a path")
    return expand_user(value)


def _family(value: Any) -> int:
    # TOML users write both family = "6" and family = 6; accept both, nothing else.
    if isinstance(value, bool) or str(value) not in ("4", "6"):
        raise ValueError('must be "4" or "6"')
    return int(str(value))


def _nat(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


_bind = _nat  # true or false, nothing else


def _server_key(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(keys.SERVER_PUBLIC + " "):
        raise ValueError(f"must be the server's line: {keys.SERVER_PUBLIC} BASE64 (knock-admin server-key)")
    try:
        keys.parse_key_line(value, keys.SERVER_PUBLIC)
    except KeyError_ as exc:
        raise ValueError(str(exc)) from None
    return value


def _source_ip(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError("must be an IP address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


KEYS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "host": (_host, "the server's name or address (default: the stanza name)"),
    "port": (_port, f"control UDP port (default {CONTROL_PORT})"),
    "user": (_user, "user name (default $USER)"),
    "service": (_service, f"service to open (default {DEFAULT_SERVICE})"),
    "key_file": (_key_file, "base64 key file instead of a password"),
    "family": (_family, '"4" or "6": IPv4 or IPv6 only'),
    "nat": (_nat, 'declare the address "as seen" by the server'),
    "source_ip": (_source_ip, "declare this address instead of the local one"),
    "bind": (_bind, "protocol v2: bind each packet to the server address (a fleet of gateways)"),
    "server_key": (_server_key, "key pairs: the server's public key line, pinned at first use"),
}


def load_config(path: str | Path, *, required: bool) -> dict[str, ServerStanza]:
    """Parse the config file. A missing default file is no error; a missing
    file named with -c is, since the user clearly expected it."""
    try:
        with open(path, "rb") as handle:
            # Imported only when there is a file to parse: most runs (ssh's ProxyCommand
            # with -k) have none, and tomllib costs a few ms of start-up.
            import tomllib

            try:
                document = tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:
                raise ClientConfigError(f"{path}: not valid TOML: {exc}") from None
    except FileNotFoundError:
        if required:
            raise ClientConfigError(f"{path}: config file not found") from None
        return {}
    except OSError as exc:
        raise ClientConfigError(f"{path}: {exc.strerror}") from None
    unknown = set(document) - {"servers"}
    if unknown:
        raise ClientConfigError(f"{path}: unknown table or key {sorted(unknown)[0]!r} (only [servers.NAME])")
    servers = document.get("servers", {})
    if not isinstance(servers, dict):
        raise ClientConfigError(f"{path}: servers must be tables [servers.NAME]")
    return {name: _stanza(path, name, body) for name, body in servers.items()}


def _stanza(path: str | Path, name: str, body: Any) -> ServerStanza:
    if not isinstance(body, dict):
        raise ClientConfigError(f"{path}: servers.{name} must be a table")
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key not in KEYS:
            raise ClientConfigError(f"{path}: servers.{name}.{key}: unknown key (known: {', '.join(KEYS)})")
        check, _ = KEYS[key]
        try:
            values[key] = check(value)
        except ValueError as exc:
            raise ClientConfigError(f"{path}: servers.{name}.{key} = {value!r}: {exc}") from None
    if values.get("nat") and "source_ip" in values:
        raise ClientConfigError(f"{path}: servers.{name}: nat = true and source_ip exclude each other")
    return ServerStanza(name=name, **values)


# --- key files -----------------------------------------------------------------


def read_key_file(path: str | Path) -> tuple[str, bytes]:
    """The key file's kind and key: ("", master key) or (keys.PAIR_PRIVATE, Ed25519 seed)."""
    try:
        return keys.parse_key_file(path, keys.read_key_text(path))
    except KeyError_ as exc:
        raise ClientConfigError(str(exc)) from None


def write_new_key_file(path: Path) -> str:
    """Create ``path`` (mode 0600, never overwriting) with a new random key; return its base64."""
    key = os.urandom(MASTER_KEY_LEN)  # = secrets.token_bytes, without importing random
    try:
        keys.write_key_file(path, key)
    except KeyError_ as exc:
        raise ClientConfigError(str(exc)) from None
    return encode_key(key)


def write_new_pair_file(path: Path) -> bytes:
    """Create ``path`` (mode 0600, never overwriting) with a new Ed25519 seed; return the seed."""
    seed = os.urandom(keys.PAIR_KEY_LEN)
    try:
        keys.write_key_file(path, seed, keys.PAIR_PRIVATE)
    except KeyError_ as exc:
        raise ClientConfigError(str(exc)) from None
    return seed
