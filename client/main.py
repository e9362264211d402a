"""knock-client: ask a dynknock server to open a door (docs/CLIENT.md).

This module is the shell: arguments and config in, messages out, and the three
things done once the door is open (count down, --exec, --proxy). The exchange
itself is client/session.py (decisions) driven by client/knock.py (sockets);
the SYNs are client/syn.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import ipaddress
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from auth import protocol as proto
from auth.keys import KeyError_, SessionKeys, derive_master_key
from auth.protocol import IPAddress, Status
from client import proxy
from client.config import (
    DEFAULT_CONFIG,
    DEFAULT_PORT,
    DEFAULT_SERVICE,
    SERVICE_RE,
    ConfigError,
    ServerStanza,
    load_config,
    read_key_file,
    write_new_key_file,
)
from client.knock import Clock, Endpoint, Outcome, ResolveError, connect_udp, run_session
from client.session import ClientSession, Request, Timing, new_request
from client.syn import RawSynSender, SynSender

PROG = "knock-client"

EXIT_OK = 0  # door open (with --exec: the command's own status)
EXIT_ERROR = 1  # anything else, e.g. --proxy could not connect to the opened door
EXIT_USAGE = 2  # bad option, config file or key file
EXIT_NO_ANSWER = 3  # no authentic answer in time (silence is by design)
EXIT_SERVICE_NOT_ALLOWED = 4
EXIT_NO_RAW_SOCKET = 5
EXIT_UNAVAILABLE = 6
EXIT_HOST = 7  # unknown host, no route, no address of the family asked for

SKEW_S = 60  # the server's default clock window (auth/engine.py EngineConfig.skew_s)

RAW_SOCKET_ADVICE = (f"{PROG}: sending the SYN knocks needs a raw socket: run as root or grant CAP_NET_RAW "
                     "(sudo setcap cap_net_raw+ep $(readlink -f $(which python3)))")

EPILOG = f"""\
exit status:
  {EXIT_OK}  the door is open (with --exec: the command's exit status)
  {EXIT_ERROR}  other error (e.g. --proxy could not connect to the opened door)
  {EXIT_USAGE}  usage error: bad option, config file or key file
  {EXIT_NO_ANSWER}  no answer from the server in time (wrong key, clock skew, firewall, NAT, server down)
  {EXIT_SERVICE_NOT_ALLOWED}  the server does not allow this service for this user
  {EXIT_NO_RAW_SOCKET}  no raw socket to send the SYN knocks (needs root or CAP_NET_RAW)
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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs, after options, the config stanza and defaults are merged."""

    host: str
    port: int
    user: str | None
    service: str
    key_file: Path | None
    family: int | None
    timeout: float
    nat: bool
    source_ip: IPAddress | None
    quiet: bool = False
    password_stdin: bool = False
    exec_argv: tuple[str, ...] | None = None
    proxy: bool = False


@dataclass(slots=True)
class Io:
    """The outside world, so tests can swap any of it (stdout, the SYN sender, the clock)."""

    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    getpass: Callable[[str], str] = getpass.getpass
    open_syn_sender: Callable[[socket.AddressFamily], SynSender] = RawSynSender
    clock: Clock = field(default_factory=Clock)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    proxy_in_fd: int = 0
    proxy_out_fd: int = 1


# --- arguments -------------------------------------------------------------------


def _port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not in 1-65535")
    return value


def _timeout_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def _service_arg(text: str) -> str:
    if not SERVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r}: 1-16 characters of a-z 0-9 _ -")
    return text


def _ip_arg(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Knock at a dynknock server: declare three random SYN knocks in an encrypted UDP packet, "
                    "send them, and get a door (a random port, open to your address only) to the service.")
    parser.add_argument("host", nargs="?", metavar="HOST",
                        help="server name or address, or NAME of a [servers.NAME] stanza in the config file")
    parser.add_argument("-p", "--port", type=_port_arg, help=f"control UDP port (default {DEFAULT_PORT})")
    parser.add_argument("-u", "--user", help="user name (default $USER)")
    parser.add_argument("-s", "--service", type=_service_arg, help=f"service to open (default {DEFAULT_SERVICE})")
    parser.add_argument("-k", "--key-file", type=Path, metavar="PATH",
                        help="base64 key file (mode 0600) instead of a password")
    family = parser.add_mutually_exclusive_group()
    family.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 only")
    parser.add_argument("--timeout", type=_timeout_arg, default=5.0, metavar="SECONDS",
                        help="give up after this long without an answer (default 5)")
    parser.add_argument("-c", "--config", type=Path, metavar="PATH", help=f"config file (default {DEFAULT_CONFIG})")
    address = parser.add_mutually_exclusive_group()
    address.add_argument("--source-ip", type=_ip_arg, metavar="ADDR",
                         help="declare this address instead of the local one (behind NAT: your public address)")
    address.add_argument("--nat", action="store_const", const=True, default=None,
                         help='declare the address "as seen" by the server (the server must allow it for you)')
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only errors and the door line (nothing at all with --exec/--proxy)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from one line of standard input (for scripts)")
    parser.add_argument("--key-gen", type=Path, metavar="PATH",
                        help="write a new random key file (mode 0600), print its base64 for the admin, and exit")
    after = parser.add_mutually_exclusive_group()
    after.add_argument("--exec", dest="exec_command", metavar="CMD",
                       help="once the door is open run CMD, e.g. 'ssh -p {port} {host}'; exit with its status")
    after.add_argument("--proxy", action="store_true",
                       help="once the door is open, connect to it and relay stdin/stdout (ssh ProxyCommand)")
    return parser


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Merge: command line over the [servers.HOST] stanza over defaults."""
    if args.host is None:
        raise UsageError("HOST is required (or --key-gen PATH)")
    config_path = (args.config or DEFAULT_CONFIG).expanduser()
    stanzas = load_config(config_path, required=args.config is not None)
    stanza = stanzas.get(args.host, ServerStanza(name=args.host))
    if args.password_stdin and args.proxy:
        raise UsageError("--password-stdin cannot be used with --proxy: stdin carries the connection")
    exec_argv: tuple[str, ...] | None = None
    if args.exec_command is not None:
        try:
            exec_argv = tuple(shlex.split(args.exec_command))
        except ValueError as exc:
            raise UsageError(f"--exec: {exc}") from None
        if not exec_argv:
            raise UsageError("--exec: empty command")
    # --source-ip and --nat are one choice: either on the command line replaces the stanza's.
    if args.source_ip is not None or args.nat is not None:
        source_ip, nat = args.source_ip, bool(args.nat)
    else:
        source_ip, nat = stanza.source_ip, bool(stanza.nat)
    key_file = args.key_file.expanduser() if args.key_file is not None else stanza.key_file
    return Settings(
        host=stanza.host or args.host,
        port=args.port or stanza.port or DEFAULT_PORT,
        user=args.user or stanza.user or environ.get("USER") or environ.get("LOGNAME"),
        service=args.service or stanza.service or DEFAULT_SERVICE,
        key_file=key_file,
        family=args.family or stanza.family,
        timeout=args.timeout,
        nat=nat,
        source_ip=source_ip,
        quiet=args.quiet,
        password_stdin=args.password_stdin,
        exec_argv=exec_argv,
        proxy=args.proxy,
    )


# --- the run ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, Io())
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def run(argv: list[str], io: Io) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage or the help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.key_gen is not None:
            return _key_gen(args, io)
        settings = resolve_settings(args, io.environ)
    except (UsageError, ConfigError) as exc:
        _error(io, str(exc))
        return EXIT_USAGE
    return Client(settings, io).run()


def _key_gen(args: argparse.Namespace, io: Io) -> int:
    if args.host is not None:
        raise UsageError("--key-gen takes no HOST")
    path = args.key_gen.expanduser()
    encoded = write_new_key_file(path)
    print(encoded, file=io.stdout)
    print(f"New key written to {path} (mode 0600). Give the line above to the server's admin, who saves it "
          f"in a file and runs: knock-admin add NAME --key-file FILE", file=io.stderr)
    return EXIT_OK


def _error(io: Io, message: str) -> None:
    print(f"{PROG}: {message}", file=io.stderr)


class Client:
    def __init__(self, settings: Settings, io: Io) -> None:
        self.settings = settings
        self.io = io
        # With --exec or --proxy, stdout belongs to the command or the connection.
        self.out = io.stderr if settings.exec_argv is not None or settings.proxy else io.stdout

    def say(self, text: str) -> None:
        if not self.settings.quiet:
            print(text, file=self.out, flush=True)

    def run(self) -> int:
        s = self.settings
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(s.family or 0, socket.AF_UNSPEC)
        try:
            endpoint = connect_udp(s.host, s.port, family)
        except ResolveError as exc:
            _error(self.io, str(exc))
            return EXIT_HOST
        with closing(endpoint.sock):
            # Before anything is sent or asked: a client that cannot knock must not send a P1.
            try:
                syn = self.io.open_syn_sender(endpoint.family)
            except PermissionError:
                print(RAW_SOCKET_ADVICE, file=self.io.stderr)
                return EXIT_NO_RAW_SOCKET
            except OSError as exc:
                _error(self.io, f"cannot open a raw socket for the SYN knocks: {exc.strerror or exc}")
                return EXIT_ERROR
            try:
                try:
                    keys = SessionKeys.from_master(self._master_key())
                    declared = self._declared_address(endpoint)
                except (UsageError, ConfigError, KeyError_) as exc:
                    _error(self.io, str(exc))
                    return EXIT_USAGE
                answer = self._exchange(keys, endpoint, syn, declared)
            finally:
                # The raw socket is a privilege: never keep it through --exec or --proxy.
                syn.close()
            if isinstance(answer, int):
                return answer
            return self._door_open(answer, endpoint)

    # --- before the exchange ---------------------------------------------------

    def _master_key(self) -> bytes:
        s = self.settings
        if s.key_file is not None:
            return read_key_file(s.key_file)
        if s.user is None:
            raise UsageError("no user name: give -u USER (or set $USER)")
        if s.password_stdin:
            password = self.io.stdin.readline().rstrip("\r\n")
        else:
            try:
                password = self.io.getpass(f"Password for {s.user}@{s.host}: ")
            except EOFError:
                password = ""
        if not password:
            raise UsageError("empty password")
        return derive_master_key(s.user, password)

    def _declared_address(self, endpoint: Endpoint) -> IPAddress | None:
        s = self.settings
        if s.nat:
            return None
        if s.source_ip is not None:
            if s.source_ip.version != endpoint.server.version:
                raise UsageError(f"--source-ip {s.source_ip} is IPv{s.source_ip.version} but {s.host} is "
                                 f"reached over IPv{endpoint.server.version}; use -{s.source_ip.version}")
            return s.source_ip
        # The kernel's choice of source for this route: what the server sees unless NAT rewrites it.
        return ipaddress.ip_address(endpoint.local.packed)

    # --- the exchange ----------------------------------------------------------

    def _exchange(self, keys: SessionKeys, endpoint: Endpoint, syn: SynSender,
                  declared: IPAddress | None) -> proto.P3 | int:
        """Returns the P3 OPEN, or an exit status after explaining the failure."""
        s = self.settings
        request = new_request(s.service, declared)
        for round_ in (1, 2):
            self._announce(request)
            session = ClientSession(keys, request, Timing(timeout_s=s.timeout))
            try:
                outcome = run_session(session, endpoint, syn, self.io.clock)
            except OSError as exc:
                _error(self.io, f"sending to {s.host}: {exc.strerror or exc}")
                return EXIT_ERROR
            answer = outcome.answer
            if answer is None:
                self._explain_silence(outcome, endpoint, request)
                return EXIT_NO_ANSWER
            if answer.status is Status.ADDRESS_MISMATCH:
                seen = answer.seen_address
                if round_ == 1 and seen is not None:
                    self.say(f"The server sees you as {seen} (NAT?); asking again for {seen}")
                    request = new_request(s.service, seen)
                    continue
                _error(self.io, f"the server still sees you as another address ({seen}) than the one declared "
                                f"({request.address}); try --nat")
                return EXIT_NO_ANSWER
            if answer.status is Status.SERVICE_NOT_ALLOWED:
                _error(self.io, f"the server does not allow service {s.service!r} for this user")
                return EXIT_SERVICE_NOT_ALLOWED
            if answer.status is Status.UNAVAILABLE:
                _error(self.io, "the server could not open a door now (no free door port, or its firewall or "
                                "relay failed); try again later")
                return EXIT_UNAVAILABLE
            return answer
        raise AssertionError("the loop returns in its second round")

    def _announce(self, request: Request) -> None:
        # The paper's client shows the knocks; they are spent once used, so
        # showing them gives nothing away.
        for number, knock in enumerate(request.knocks, 1):
            self.say(f"Knock? ({number} - Port = {knock.port}, ISN = {knock.isn:08X})")
        self.say("Can I come in? Waiting for response.")

    def _explain_silence(self, outcome: Outcome, endpoint: Endpoint, request: Request) -> None:
        s = self.settings
        now = dt.datetime.fromtimestamp(self.io.clock.wall_ms() / 1000, dt.UTC)
        lines = [f"no answer from {s.host} ({endpoint.server}) UDP port {s.port} within {s.timeout:g} s "
                 f"({outcome.bursts} attempts)."]
        if outcome.pending:
            lines += ["  The server accepted the request but never saw all three SYN knocks: something on the way",
                      "  (a firewall, a NAT, your own) drops TCP SYNs to random ports, or they left from another",
                      "  address than the one declared."]
        else:
            lines += [
                "  The server answers nothing it cannot authenticate, by design, so silence does not say why.",
                "  Likely causes:",
                "  - wrong password, user name or key file (or the server does not know this user);",
                f"  - clock skew: the server allows ±{SKEW_S} s; your clock says {now:%Y-%m-%d %H:%M:%S} UTC;",
                f"  - a firewall dropping UDP to port {s.port} on the way;",
                "  - the server is down;",
            ]
            if request.address is None:
                lines.append("  - --nat: the server must allow requests 'as seen' for this user;")
            else:
                lines.append(f"  - NAT: you declared {request.address}; if the server sees another address, "
                             "try --nat or --source-ip ADDR.")
        if outcome.refused:
            # A dynknock server drops everything unauthenticated, so an ICMP answer means
            # whatever is there is not hiding the port as the server's firewall would.
            lines.append(f"  ({endpoint.server} answered 'port unreachable' {outcome.refused} time(s), which a "
                         f"dynknock server never does: is it running, and on port {s.port}?)")
        if sum(outcome.ignored.values()):
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.ignored.items()))
            lines.append(f"  (ignored datagrams that were not an answer to this request: {counts})")
        _error(self.io, "\n".join(lines))

    # --- after the door opened -------------------------------------------------

    def _door_open(self, answer: proto.P3, endpoint: Endpoint) -> int:
        s = self.settings
        port, window = answer.door_port, answer.window_seconds
        if (s.exec_argv is None and not s.proxy) or not s.quiet:  # -q keeps the result line unless a command takes over
            print(f"Door is open at {s.host} port {port} for {window} seconds.", file=self.out, flush=True)
        if s.exec_argv is not None:
            return self._exec(s.exec_argv, port, endpoint)
        if s.proxy:
            return self._proxy(port, endpoint)
        if not s.quiet and self.out.isatty():
            self._countdown(window)
        return EXIT_OK

    def _countdown(self, seconds: int) -> None:
        try:
            for left in range(seconds, 0, -1):
                self.out.write(f"\r{left:3d} s left to connect ")
                self.out.flush()
                self.io.clock.sleep(1)
            self.out.write("\rThe door is closed to new connections; connections made stay up.\n")
        except KeyboardInterrupt:
            self.out.write("\n")  # the door stays open all the same; interrupting only stops the count
        self.out.flush()

    def _exec(self, argv: tuple[str, ...], port: int, endpoint: Endpoint) -> int:
        # Substitution per argument after splitting: a host or port can never
        # become a second argument or shell syntax.
        values = {"{host}": self.settings.host, "{port}": str(port), "{addr}": str(endpoint.server)}
        command = [self._substitute(arg, values) for arg in argv]
        try:
            status = subprocess.run(command, check=False).returncode
        except FileNotFoundError:
            _error(self.io, f"--exec: command not found: {command[0]}")
            return 127
        except PermissionError:
            _error(self.io, f"--exec: permission denied: {command[0]}")
            return 126
        return 128 - status if status < 0 else status  # killed by a signal: the shell's convention

    @staticmethod
    def _substitute(arg: str, values: dict[str, str]) -> str:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        return arg

    def _proxy(self, port: int, endpoint: Endpoint) -> int:
        peer = endpoint.peer
        address = (peer[0], port) + peer[2:]  # keep flow info and scope id for IPv6
        conn = socket.socket(endpoint.family, socket.SOCK_STREAM)
        try:
            conn.settimeout(self.settings.timeout)
            conn.connect(address)
            conn.settimeout(None)
        except OSError as exc:
            conn.close()
            _error(self.io, f"the door opened but connecting to {self.settings.host} port {port} failed: "
                            f"{exc.strerror or exc}")
            return EXIT_ERROR
        with closing(conn):
            return proxy.pipe(conn, self.io.proxy_in_fd, self.io.proxy_out_fd)


if __name__ == "__main__":
    sys.exit(main())
