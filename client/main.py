"""knock-client: ask a dynknock server to open a door (docs/CLIENT.md).

This module is what the ``knock-client`` command imports first, so it imports almost
nothing: the options, the exit statuses and the messages about them. ssh's
ProxyCommand starts knock-client for every connection, and ``--help`` or a usage
error must not wait for the code that knocks. Once the options parse, client/app.py
(the run: config, key, the exchange, --exec and --proxy) is imported and run.
bench/client_startup.py measures the start-up, module by module.

argparse parses the options, except on the commonest command lines (one option per word,
each at most once, every value well-formed: what ssh's ProxyCommand runs), which
:func:`quick_parse` reads without importing argparse (~5 ms with re and gettext). It
gives up on anything else, and argparse then parses the same words: help, usage
errors and their messages are always argparse's. tests/unit/test_client_args.py checks
that both give the same options wherever quick_parse answers.
"""

from __future__ import annotations

import sys

from dynknock.client.defaults import DEFAULT_CONFIG_PATH, DEFAULT_SERVICE
from dynknock.client.paths import path_text
from dynknock.rules import CONTROL_PORT, is_port, is_service_name

# typing.TYPE_CHECKING without importing typing (a few ms); mypy treats the name alike.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import TypeVar

    from dynknock.client.app import Io
    from dynknock.protocol import IPAddress

    T = TypeVar("T")

PROG = "knock-client"

EXIT_OK = 0  # door open (with --exec: the command's own status)
EXIT_ERROR = 1  # anything else, e.g. --proxy could not connect to the opened door
EXIT_USAGE = 2  # bad option, config file or key file
EXIT_NO_ANSWER = 3  # no authentic answer in time (silence is by design)
EXIT_SERVICE_NOT_ALLOWED = 4
EXIT_NO_KNOCK = 5  # the knocks cannot be sent (local firewall, no route), or the server refuses their kind
EXIT_UNAVAILABLE = 6
EXIT_HOST = 7  # unknown host, no route, no address of the family asked for

SKEW_S = 60  # the server's default clock window (server.clock_skew_seconds, dynknock/config.py)

EPILOG = f"""\
exit status:
  {EXIT_OK}  the door is open (with --exec: the command's exit status)
  {EXIT_ERROR}  other error (e.g. --proxy could not connect to the opened door)
  {EXIT_USAGE}  usage error: bad option, config file or key file
  {EXIT_NO_ANSWER}  no answer from the server in time (wrong key, clock skew, firewall, NAT, server down)
  {EXIT_SERVICE_NOT_ALLOWED}  the server does not allow this service for this user
  {EXIT_NO_KNOCK}  the knocks could not be sent (this machine's firewall, no route), or the server takes
     only SYN knocks with chosen sequence numbers, which need root or CAP_NET_RAW
  {EXIT_UNAVAILABLE}  the server could not open a door now; try again later
  {EXIT_HOST}  unknown host, or no route to it (e.g. no IPv6 route with -6)

--exec substitutes {{host}} (the host as given), {{port}} (the door port) and {{addr}}
(the address knocked at: use it when HOST has both IPv4 and IPv6 addresses)
in each argument; no shell is involved.

ssh: in ~/.ssh/config
  Host myserver
      ProxyCommand {PROG} --proxy -k ~/.config/dynknock/myserver.key %h
"""


class UsageError(ValueError):
    pass


class Options:
    """The command line, parsed: argparse fills these slots (``parse_args(namespace=Options())``
    sets every one, defaults included), or quick_parse does with the same values."""

    __slots__ = ("host", "port", "user", "service", "key_file", "family", "timeout", "config", "source_ip", "nat",
                 "quiet", "password_stdin", "key_gen", "symmetric", "server_key", "exec_command", "proxy", "bind")

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
    quiet: bool
    password_stdin: bool
    key_gen: str | None
    symmetric: bool
    server_key: str | None
    exec_command: str | None
    proxy: bool
    bind: bool

    def values(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__ if hasattr(self, name)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and self.values() == other.values()

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{name}={value!r}" for name, value in self.values().items()) + ")"


# --- arguments -------------------------------------------------------------------
#
# Each option's value check is written once: it returns the value, or raises ValueError with
# the message argparse prints after "argument -p/--port: ". quick_parse leaves whatever a check
# refuses to argparse, which runs the same check (build_parser's ``checked``) and explains.


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not is_port(value):
        raise ValueError(f"{value} is not in 1-65535")
    return value


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise ValueError("must be more than 0 and at most 3600 seconds")
    return value


def _service(text: str) -> str:
    if not is_service_name(text):
        raise ValueError(f"{text!r}: 1-16 characters of a-z 0-9 _ -")
    return text


def _ip(text: str) -> IPAddress:
    import ipaddress  # only when the option is given; the knock imports it anyway

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (see _Formatter)."""
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80
    return size.columns or 80


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Formatter(argparse.RawDescriptionHelpFormatter):
        """argparse's formatter at the width argparse would choose. argparse makes one per
        add_argument() and, given no width, imports shutil for it: ~2 ms of every start."""

        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                     width: int | None = None) -> None:
            super().__init__(prog, indent_increment, max_help_position,
                             _terminal_columns() - 2 if width is None else width)

    def checked(check: Callable[[str], T]) -> Callable[[str], T]:
        """argparse's type function for a value check: argparse prints an ArgumentTypeError's own
        message (for a ValueError it would print "invalid _port value")."""

        def convert(text: str) -> T:
            try:
                return check(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return convert

    parser = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=_Formatter,
        description="Knock at a dynknock server: declare three random SYN knocks in an encrypted UDP packet, "
                    "send them, and get a door (a random port, open to your address only) to the service.")
    parser.add_argument("host", nargs="?", metavar="HOST",
                        help="server name or address, or NAME of a [servers.NAME] stanza in the config file")
    parser.add_argument("-p", "--port", type=checked(_port), help=f"control UDP port (default {CONTROL_PORT})")
    parser.add_argument("-u", "--user", help="user name (default $USER)")
    parser.add_argument("-s", "--service", type=checked(_service), help=f"service to open (default {DEFAULT_SERVICE})")
    parser.add_argument("-k", "--key-file", type=path_text, metavar="PATH",
                        help="base64 key file (mode 0600) instead of a password")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    parser.add_argument("--timeout", type=checked(_timeout), default=5.0, metavar="SECONDS",
                        help="give up after this long without an answer (default 5)")
    parser.add_argument("-c", "--config", type=path_text, metavar="PATH",
                        help=f"config file (default {DEFAULT_CONFIG_PATH})")
    address = parser.add_mutually_exclusive_group()
    address.add_argument("--source-ip", type=checked(_ip), metavar="ADDR",
                         help="declare this address instead of the local one (behind NAT: your public address)")
    address.add_argument("--nat", action="store_const", const=True, default=None,
                         help='declare the address "as seen" by the server (the server must allow it for you)')
    parser.add_argument("--bind", action="store_true",
                        help="protocol version 2: bind each packet to the server address (a fleet of gateways "
                             "requires it; the server must see that address, not one behind a NAT of its own)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only errors and the door line (nothing at all with --exec/--proxy)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from one line of standard input (for scripts)")
    parser.add_argument("--key-gen", type=path_text, metavar="PATH",
                        help="write a new key pair (PATH mode 0600, PATH.pub), print the public line for the "
                             "admin (knock-admin add NAME --public-key LINE), and exit")
    parser.add_argument("--symmetric", action="store_true",
                        help="with --key-gen: a symmetric key file instead (print its base64; the server then "
                             "holds the key itself)")
    parser.add_argument("--server-key", metavar="LINE",
                        help="key pairs: the server's public key line from its admin (knock-admin server-key); "
                             "pinned in ~/.config/dynknock/known_servers at first use")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--exec", dest="exec_command", metavar="CMD",
                       help="once the door is open run CMD, e.g. 'ssh -p {port} {host}'; exit with its status")
    after.add_argument("--proxy", action="store_true",
                       help="once the door is open, connect to it and relay stdin/stdout (ssh ProxyCommand)")
    return parser


# --- the run ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


# quick_parse: option word -> (slot, value) for the switches, (slot, value check) for the
# options taking the next word. The mutually exclusive groups, each member by its slot and value.
_SWITCHES: dict[str, tuple[str, object]] = {
    "-q": ("quiet", True), "--quiet": ("quiet", True), "--proxy": ("proxy", True),
    "--bind": ("bind", True), "--symmetric": ("symmetric", True),
    "--password-stdin": ("password_stdin", True), "--nat": ("nat", True), "-4": ("family", 4), "-6": ("family", 6)}
_VALUED: dict[str, tuple[str, Callable[[str], object]]] = {
    "-p": ("port", _port), "--port": ("port", _port), "-u": ("user", str), "--user": ("user", str),
    "-s": ("service", _service), "--service": ("service", _service),
    "-k": ("key_file", path_text), "--key-file": ("key_file", path_text), "--timeout": ("timeout", _timeout),
    "-c": ("config", path_text), "--config": ("config", path_text), "--source-ip": ("source_ip", _ip),
    "--key-gen": ("key_gen", path_text), "--exec": ("exec_command", str), "--server-key": ("server_key", str)}
_EXCLUSIVE = (("-4", "-6"), ("--source-ip", "--nat"), ("--exec", "--proxy"))
_DEFAULTS: dict[str, object] = {name: None for name in Options.__slots__} | {
    "timeout": 5.0, "quiet": False, "password_stdin": False, "proxy": False, "bind": False, "symmetric": False}


def quick_parse(argv: list[str]) -> Options | None:
    """The options argparse would give for ``argv``, or None where argparse must decide.

    Answers only for words argparse reads one way: every option spelled in full and given at
    most once (no abbreviations, ``--opt=value``, ``-kPATH``, ``--``), its value the next word,
    well-formed and not starting with "-", at most one HOST, no two options of a mutually
    exclusive group, no -h."""
    values = dict(_DEFAULTS)
    seen: set[str] = set()
    host_seen = False
    words = iter(argv)
    for word in words:
        if word in seen:
            return None
        if word in _SWITCHES:
            slot, value = _SWITCHES[word]
        elif word in _VALUED:
            slot, check = _VALUED[word]
            text = next(words, "-")
            if text.startswith("-"):
                return None
            try:
                value = check(text)
            except ValueError:  # argparse refuses it too, and says why
                return None
        elif word.startswith("-") or host_seen:
            return None
        else:
            slot, value, host_seen = "host", word, True
        seen.add(word)
        values[slot] = value
    if any(a in seen and b in seen for a, b in _EXCLUSIVE):
        return None
    options = Options()
    for slot, value in values.items():
        setattr(options, slot, value)
    return options


def parse_options(argv: list[str]) -> Options:
    """quick_parse, else argparse (which exits on --help and usage errors, as always)."""
    options = quick_parse(argv)
    if options is None:
        options = build_parser().parse_args(argv, namespace=Options())
    return options


def run(argv: list[str], io: Io | None = None) -> int:
    try:
        args = parse_options(argv)
    except SystemExit as exc:  # argparse already printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    from dynknock.client import app  # the knocking code, once there is something to knock with

    return app.execute(args, app.Io() if io is None else io)


if __name__ == "__main__":
    sys.exit(main())
