"""knock-client: ask a dynknock server to open a door (docs/CLIENT.md).

This module is what the ``knock-client`` command imports first, so it imports almost
nothing: the options (declared once, in client/options.py's table, from which both parsers
below follow), the exit statuses and the messages about them. ssh's
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

from dynknock.client.options import DEFAULTS, OPTIONS, Kind
from dynknock.client.options import Options as Options  # re-exported: the run and the tests take it from here

# typing.TYPE_CHECKING without importing typing (a few ms); mypy treats the name alike.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from dynknock.client.app import Io

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
    """argparse's parser of the option table (client/options.py), in the table's order."""
    import argparse

    class _Formatter(argparse.RawDescriptionHelpFormatter):
        """argparse's formatter at the width argparse would choose. argparse makes one per
        add_argument() and, given no width, imports shutil for it: ~2 ms of every start."""

        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                     width: int | None = None) -> None:
            super().__init__(prog, indent_increment, max_help_position,
                             _terminal_columns() - 2 if width is None else width)

    def read_as(kind: Kind) -> Callable[[str], object]:
        """argparse's type function for a kind: argparse prints an ArgumentTypeError's own
        message (for a ValueError it would print "invalid convert value")."""

        def convert(word: str) -> object:
            try:
                return kind.from_word(word)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return convert

    parser = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=_Formatter,
        description="Knock at a dynknock server: declare three random SYN knocks in an encrypted UDP packet, "
                    "send them, and get a door (a random port, open to your address only) to the service.")
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for option in OPTIONS:
        adder: argparse._ActionsContainer = parser
        if option.group:
            if option.group not in groups:
                groups[option.group] = parser.add_mutually_exclusive_group()
            adder = groups[option.group]
        if not option.flags:
            assert option.kind is not None  # the positional HOST takes its word
            adder.add_argument(option.dest, nargs="?", type=read_as(option.kind), metavar=option.metavar,
                               help=option.help)
        elif option.kind is None:
            adder.add_argument(*option.flags, dest=option.dest, action="store_const", const=option.const,
                               default=option.default, help=option.help)
        else:
            adder.add_argument(*option.flags, dest=option.dest, type=read_as(option.kind), default=option.default,
                               metavar=option.metavar, help=option.help)
    return parser


# --- the run ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


# quick_parse's view of the table: option word -> (field, value) for the switches, (field, kind) for
# the options taking the next word; and the group and row of each option in an exclusive group.
_SWITCHES: dict[str, tuple[str, object]] = {
    flag: (option.dest, option.const) for option in OPTIONS if option.kind is None for flag in option.flags}
_VALUED: dict[str, tuple[str, Kind]] = {
    flag: (option.dest, option.kind) for option in OPTIONS if option.kind is not None for flag in option.flags}
_EXCLUSIVE: dict[str, tuple[str, int]] = {
    flag: (option.group, row) for row, option in enumerate(OPTIONS) if option.group for flag in option.flags}
_POSITIONAL = next(option for option in OPTIONS if not option.flags)  # HOST, taken as it is


def quick_parse(argv: list[str]) -> Options | None:
    """The options argparse would give for ``argv``, or None where argparse must decide.

    Answers only for words argparse reads one way: every option spelled in full and given at
    most once (no abbreviations, ``--opt=value``, ``-kPATH``, ``--``), its value the next word,
    well-formed and not starting with "-", at most one HOST, no two options of a mutually
    exclusive group, no -h."""
    values = dict(DEFAULTS)
    seen: set[str] = set()
    chosen: dict[str, int] = {}  # exclusive group -> the row of the option given
    host_seen = False
    words = iter(argv)
    for word in words:
        if word in seen:
            return None
        if word in _SWITCHES:
            field, value = _SWITCHES[word]
        elif word in _VALUED:
            field, kind = _VALUED[word]
            text = next(words, "-")
            if text.startswith("-"):
                return None
            try:
                value = kind.from_word(text)
            except ValueError:  # argparse refuses it too, and says why
                return None
        elif word.startswith("-") or host_seen:
            return None
        else:
            field, value, host_seen = _POSITIONAL.dest, word, True
        if word in _EXCLUSIVE:
            group, row = _EXCLUSIVE[word]
            if chosen.setdefault(group, row) != row:
                return None
        seen.add(word)
        values[field] = value
    options = Options()
    for field, value in values.items():
        setattr(options, field, value)
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
