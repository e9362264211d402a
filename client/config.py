"""The client config file and key files.

The config file (default ``~/.config/dynknock/client.toml``) names servers the
way fwknop's ``.fwknoprc`` does, so that ``knock-client myserver`` needs no
options::

    [servers.myserver]
    host = "gw.example.org"
    key_file = "~/.config/dynknock/myserver.key"

The keys are the option table's (client/options.py: each key's kind of value and its one check);
docs/CLIENT.md shows them all. A bad value is one line naming the key and the file, never a
traceback.

A key file holds the seed of a key pair (``dynknock-ed25519-private BASE64``, ``knock-client
--key-gen``) or the base64 of a 32-byte master key (``--key-gen --symmetric``), and is refused
when group or others could read it: it is as good as a password.
"""

from __future__ import annotations

import os
from collections import namedtuple

from dynknock import keys
from dynknock.client.options import FILE_KEYS
from dynknock.keys import MASTER_KEY_LEN, KeyError_, encode_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NamedTuple

    from dynknock.client.wire import IPAddress


class ClientConfigError(ValueError):
    """A config or key file cannot be used; the message is one line for the user."""


# A namedtuple, not a dataclass: creating a frozen slots dataclass costs knock-client ~0.5-1 ms of
# start-up each (bench/client_startup.py), a namedtuple ~0.05 ms. Its fields are the name and the
# option table's file keys (client/options.py); the class below is the type checker's view of them.
if TYPE_CHECKING:
    class ServerStanza(NamedTuple):
        """One ``[servers.NAME]`` table; None means "not set here"."""

        name: str
        host: str | None = None
        port: int | None = None
        user: str | None = None
        service: str | None = None
        key_file: str | None = None  # as client/paths.py's expand_user wrote it
        family: int | None = None  # 4 or 6
        source_ip: IPAddress | None = None
        nat: bool | None = None
        bind: bool | None = None
        server_key: str | None = None  # a key-pair user's pin of the server's key (client/pair.py)
else:
    ServerStanza = namedtuple("ServerStanza", ("name", *FILE_KEYS), defaults=(None,) * len(FILE_KEYS),
                              module=__name__)
    ServerStanza.__doc__ = """One ``[servers.NAME]`` table; None means "not set here"."""


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
        if key not in FILE_KEYS:
            raise ClientConfigError(f"{path}: servers.{name}.{key}: unknown key (known: {', '.join(FILE_KEYS)})")
        try:
            values[key] = FILE_KEYS[key].check(value)
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
