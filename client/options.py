"""knock-client's options, declared once: the table :data:`OPTIONS`.

Every option is one row: its flags, where its value goes, its help, the kind of value it takes
and, for the keys a ``[servers.NAME]`` stanza may hold, the kind the config file gives. From the
table follow argparse's parser and the quick parser (client/main.py), the fields of
:class:`Options`, and the config file's keys and checks (client/config.py's ServerStanza).

Each kind of value has one check (:class:`Kind`): a port is checked by :func:`_port` whether it
came from ``-p 22`` or from ``port = 22``. The command line first reads its word as the kind's
type (``int("22")``); the two readers only word their refusals differently ("'ssh' is not a
port number" on the command line, "servers.home.port = 0: must be an integer 1-65535" in a file).

knock-client imports this module on every start, so it imports almost nothing: what only
some values need (ipaddress, dynknock.keys) is imported by their checks.
"""

from __future__ import annotations

from dynknock.client.defaults import DEFAULT_CONFIG_PATH, DEFAULT_SERVICE
from dynknock.client.paths import expand_user, path_text
from dynknock.rules import CONTROL_PORT, is_port, is_service_name

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dynknock.client.wire import IPAddress


class Kind:
    """A kind of value: its one check, and how a command-line word becomes a value to check.
    (Plain classes, these two, not namedtuples: each namedtuple class costs --help ~0.2 ms.)"""

    __slots__ = ("check", "read", "unreadable", "refused")

    def __init__(self, check: Callable[[Any], Any], read: Callable[[str], Any] = str, unreadable: str = "",
                 refused: str = "{why}") -> None:
        self.check = check  # the value (the file's, or the word read) -> the value kept; ValueError(why)
        self.read = read  # the command line's word -> the value to check; ValueError: not even that
        self.unreadable = unreadable  # the command line's message when `read` fails; {word} is the word
        self.refused = refused  # the command line's message when `check` fails; {word}, {value}, {why}

    def from_word(self, word: str) -> Any:
        """The value of a command-line word, or ValueError with the message argparse prints after
        "argument -p/--port: "."""
        try:
            value = self.read(word)
        except ValueError:
            raise ValueError(self.unreadable.format(word=word)) from None
        try:
            return self.check(value)
        except ValueError as exc:
            raise ValueError(self.refused.format(word=word, value=value, why=exc)) from None


# --- the checks: each returns the value kept or raises ValueError(why), why as the config file says it ---


def _as_given(value: Any) -> Any:
    return value


def _port(value: Any) -> int:
    if not is_port(value):
        raise ValueError("must be an integer 1-65535")
    return value


def _service(value: Any) -> str:
    if not isinstance(value, str) or not is_service_name(value):
        raise ValueError("must be 1-16 characters of a-z 0-9 _ -")
    return value


def _timeout(value: float) -> float:
    if not 0 < value <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds")
    return value


def _ip_address(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError("must be an IP address")
    import ipaddress  # only when an address is given; the knock imports it anyway

    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError("must be a host name or address")
    return value


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError("must be a user name without spaces")
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


def _true_or_false(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _server_key(value: Any) -> str:
    from dynknock import keys  # only a stanza that pins a server's key needs the key-line parser

    if not isinstance(value, str) or not value.startswith(keys.SERVER_PUBLIC + " "):
        raise ValueError(f"must be the server's line: {keys.SERVER_PUBLIC} BASE64 (knock-admin server-key)")
    try:
        keys.parse_key_line(value, keys.SERVER_PUBLIC)
    except keys.KeyError_ as exc:
        raise ValueError(str(exc)) from None
    return value


TEXT = Kind(_as_given)
PATH = Kind(path_text)  # a file name, kept as pathlib prints it (client/paths.py)
PORT = Kind(_port, int, "{word!r} is not a port number", "{value} is not in 1-65535")
SERVICE = Kind(_service, refused="{word!r}: 1-16 characters of a-z 0-9 _ -")
TIMEOUT = Kind(_timeout, float, "{word!r} is not a number of seconds")
IP_ADDRESS = Kind(_ip_address)
# Only in the config file: the command line takes any HOST, user and --server-key word as it is.
HOST = Kind(_host)
USER = Kind(_user)
KEY_FILE = Kind(_key_file)
FAMILY = Kind(_family)
TRUE_OR_FALSE = Kind(_true_or_false)
SERVER_KEY = Kind(_server_key)


class Option:
    """One row of the table: a flag (or HOST) and what becomes of it."""

    __slots__ = ("flags", "dest", "help", "kind", "const", "default", "metavar", "group", "file")

    def __init__(self, flags: tuple[str, ...], dest: str, help: str, kind: Kind | None = None, *,
                 const: object = True, default: object = None, metavar: str | None = None, group: str = "",
                 file: Kind | None = None) -> None:
        self.flags = flags  # () for HOST, the one positional argument
        self.dest = dest  # the Options field (and, with `file`, the stanza key)
        self.help = help
        self.kind = kind  # the value the flag takes; None for a switch, which stores `const`
        self.const = const
        self.default = default
        self.metavar = metavar
        self.group = group  # options of one group exclude each other
        self.file = file  # also the key `dest` of a [servers.NAME] stanza, a value of this kind


OPTIONS: tuple[Option, ...] = (
    Option((), "host", "server name or address, or NAME of a [servers.NAME] stanza in the config file",
           TEXT, metavar="HOST", file=HOST),
    Option(("-p", "--port"), "port", f"control UDP port (default {CONTROL_PORT})", PORT, file=PORT),
    Option(("-u", "--user"), "user", "user name (default $USER)", TEXT, file=USER),
    Option(("-s", "--service"), "service", f"service to open (default {DEFAULT_SERVICE})", SERVICE, file=SERVICE),
    Option(("-k", "--key-file"), "key_file", "base64 key file (mode 0600) instead of a password", PATH,
           metavar="PATH", file=KEY_FILE),
    Option(("-4",), "family", "IPv4 only", const=4, group="family", file=FAMILY),
    Option(("-6",), "family", "IPv6 only", const=6, group="family", file=FAMILY),
    Option(("--timeout",), "timeout", "give up after this long without an answer (default 5)", TIMEOUT,
           default=5.0, metavar="SECONDS"),
    Option(("-c", "--config"), "config", f"config file (default {DEFAULT_CONFIG_PATH})", PATH, metavar="PATH"),
    Option(("--source-ip",), "source_ip",
           "declare this address instead of the local one (behind NAT: your public address)", IP_ADDRESS,
           metavar="ADDR", group="address", file=IP_ADDRESS),
    Option(("--nat",), "nat", 'declare the address "as seen" by the server (the server must allow it for you)',
           group="address", file=TRUE_OR_FALSE),
    Option(("--bind",), "bind",
           "protocol version 2: bind each packet to the server address (a fleet of gateways requires it; the "
           "server must see that address, not one behind a NAT of its own)", default=False, file=TRUE_OR_FALSE),
    Option(("-q", "--quiet"), "quiet", "print only errors and the door line (nothing at all with --exec/--proxy)",
           default=False),
    Option(("--password-stdin",), "password_stdin", "read the password from one line of standard input (for scripts)",
           default=False),
    Option(("--key-gen",), "key_gen",
           "write a new key pair (PATH mode 0600, PATH.pub), print the public line for the admin "
           "(knock-admin add NAME --public-key LINE), and exit", PATH, metavar="PATH"),
    Option(("--symmetric",), "symmetric",
           "with --key-gen: a symmetric key file instead (print its base64; the server then holds the key itself)",
           default=False),
    Option(("--server-key",), "server_key",
           "key pairs: the server's public key line from its admin (knock-admin server-key); pinned in "
           "~/.config/dynknock/known_servers at first use", TEXT, metavar="LINE", file=SERVER_KEY),
    Option(("--exec",), "exec_command",
           "once the door is open run CMD, e.g. 'ssh -p {port} {host}'; exit with its status", TEXT, metavar="CMD",
           group="after"),
    Option(("--proxy",), "proxy", "once the door is open, connect to it and relay stdin/stdout (ssh ProxyCommand)",
           default=False, group="after"),
)

FIELDS: tuple[str, ...] = tuple(dict.fromkeys(option.dest for option in OPTIONS))
DEFAULTS: dict[str, object] = {option.dest: option.default for option in OPTIONS}
# The keys of a [servers.NAME] stanza and the kind of each value.
FILE_KEYS: dict[str, Kind] = {option.dest: option.file for option in OPTIONS if option.file is not None}


class Options:
    """The command line, parsed: argparse fills these fields (``parse_args(namespace=Options())``
    sets every one, defaults included), or the quick parser does with the same values. The fields
    are the table's; the annotations tell the type checker their types
    (tests/unit/test_client_args.py holds the two alike)."""

    __slots__ = FIELDS

    host: str | None
    port: int | None
    user: str | None
    service: str | None
    key_file: str | None  # as client/paths.py's path_text wrote it
    family: int | None
    timeout: float
    config: str | None
    source_ip: IPAddress | None
    nat: bool | None
    bind: bool
    quiet: bool
    password_stdin: bool
    key_gen: str | None
    symmetric: bool
    server_key: str | None
    exec_command: str | None
    proxy: bool

    def values(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FIELDS if hasattr(self, name)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and self.values() == other.values()

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{name}={value!r}" for name, value in self.values().items()) + ")"
