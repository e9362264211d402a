"""The run of knock-client, once its options have parsed (client/main.py).

The shell: the config and the key in, messages out, and the three things done once
the door is open (count down, --exec, --proxy). The exchange itself is
client/session.py (decisions) driven by client/knock.py (sockets); the SYNs are
client/syn.py, the packet cryptography client/crypto.py.

Start-up is part of what a user waits for (ssh starts knock-client for every
connection), so what only some runs need is imported where it is used: subprocess
(--exec), threading (--proxy: imported while the server opens the door), getpass,
datetime (the explanation of a silence), pathlib (--key-gen).
"""

from __future__ import annotations

import _socket  # not socket: see client/knock.py
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping

from dynknock.client import crypto, wire
from dynknock.client.config import (
    ClientConfigError,
    ServerStanza,
    load_config,
    read_key_file,
    write_new_key_file,
    write_new_pair_file,
)
from dynknock.client.defaults import DEFAULT_CONFIG_PATH, DEFAULT_SERVICE
from dynknock.client.knock import Clock, Endpoint, Outcome, ResolveError, connect_udp, run_session
from dynknock.client.main import (
    EXIT_ERROR,
    EXIT_HOST,
    EXIT_NO_ANSWER,
    EXIT_NO_KNOCK,
    EXIT_OK,
    EXIT_SERVICE_NOT_ALLOWED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROG,
    SKEW_S,
    Options,
    UsageError,
)
from dynknock.client.paths import expand_user
from dynknock.client.session import ClientSession, Request, Timing, new_request
from dynknock.client.syn import KnockError, open_knocker
from dynknock.client.wire import KnockKind, Status
from dynknock.keys import KeyError_, SessionKeys
from dynknock.rules import CONTROL_PORT

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy treats the name alike
if TYPE_CHECKING:
    from typing import NamedTuple, TextIO

    from dynknock.client.pair import PairSeal
    from dynknock.client.syn import SynSender
    from dynknock.client.wire import IPAddress
else:  # typing.NamedTuple without typing's start-up (client/lean.py)
    from dynknock.client.lean import NamedTuple


def _getpass(prompt: str) -> str:
    import getpass  # only a password run asks, and key-file runs are the common case

    return getpass.getpass(prompt)


# A NamedTuple, not a dataclass: creating a frozen slots dataclass costs knock-client ~0.5-1 ms of
# start-up each (bench/client_startup.py), a NamedTuple ~0.05 ms.
class Settings(NamedTuple):
    """Everything a run needs, after options, the config stanza and defaults are merged."""

    host: str
    port: int
    user: str | None
    service: str
    key_file: str | None  # as client/paths.py's expand_user wrote it
    family: int | None
    timeout: float
    nat: bool
    source_ip: IPAddress | None
    quiet: bool = False
    password_stdin: bool = False
    exec_argv: tuple[str, ...] | None = None
    proxy: bool = False
    bind: bool = False  # protocol v2: packets bound to the server address (issue 14, a fleet)
    server_key: str | None = None  # a key-pair user's --server-key line, or the stanza's


class Io:
    """The outside world, so tests can swap any of it (stdout, the SYN sender, the clock).
    A plain class for start-up's sake, as Settings; None means the real thing."""

    __slots__ = ("stdin", "stdout", "stderr", "getpass", "open_syn_sender", "clock", "environ", "proxy_in_fd",
                 "proxy_out_fd")

    def __init__(self, *, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 getpass: Callable[[str], str] = _getpass,
                 open_syn_sender: Callable[[int], SynSender] = open_knocker,
                 clock: Clock | None = None, environ: Mapping[str, str] | None = None,
                 proxy_in_fd: int = 0, proxy_out_fd: int = 1) -> None:
        self.stdin: TextIO = sys.stdin if stdin is None else stdin
        self.stdout: TextIO = sys.stdout if stdout is None else stdout
        self.stderr: TextIO = sys.stderr if stderr is None else stderr
        self.getpass = getpass
        self.open_syn_sender = open_syn_sender
        self.clock = Clock() if clock is None else clock
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.proxy_in_fd = proxy_in_fd
        self.proxy_out_fd = proxy_out_fd


def resolve_settings(args: Options, environ: Mapping[str, str]) -> Settings:
    """Merge: command line over the [servers.HOST] stanza over defaults."""
    if args.host is None:
        raise UsageError("HOST is required (or --key-gen PATH)")
    config_path = expand_user(args.config or DEFAULT_CONFIG_PATH)
    stanzas = load_config(config_path, required=args.config is not None)
    stanza = stanzas.get(args.host, ServerStanza(name=args.host))
    if args.password_stdin and args.proxy:
        raise UsageError("--password-stdin cannot be used with --proxy: stdin carries the connection")
    exec_argv: tuple[str, ...] | None = None
    if args.exec_command is not None:
        import shlex

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
    key_file = expand_user(args.key_file) if args.key_file is not None else stanza.key_file
    return Settings(
        host=stanza.host or args.host,
        port=args.port or stanza.port or CONTROL_PORT,
        user=args.user or stanza.user or environ.get("USER") or environ.get("LOGNAME"),
        service=args.service or stanza.service or DEFAULT_SERVICE,
        key_file=key_file,
        family=args.family or stanza.family,
        timeout=args.timeout,
        nat=nat,
        source_ip=source_ip,
        quiet=args.quiet,
        password_stdin=args.password_stdin,
        bind=args.bind or bool(stanza.bind),  # --bind, or the stanza's bind = true
        server_key=args.server_key or stanza.server_key,
        exec_argv=exec_argv,
        proxy=args.proxy,
    )


def execute(args: Options, io: Io) -> int:
    """Everything after the options parsed: --key-gen, or the knock."""
    try:
        if args.key_gen is not None:
            return _key_gen(args.key_gen, args, io)
        settings = resolve_settings(args, io.environ)
    except (UsageError, ClientConfigError) as exc:
        _error(io, str(exc))
        return EXIT_USAGE
    return Client(settings, io).run()


def _key_gen(key_gen: str, args: Options, io: Io) -> int:
    if args.host is not None:
        raise UsageError("--key-gen takes no HOST")
    from pathlib import Path  # for mkdir(parents=True); only --key-gen writes a file

    path = Path(expand_user(key_gen))
    if args.symmetric:
        encoded = write_new_key_file(path)
        print(encoded, file=io.stdout)
        print(f"New key written to {path} (mode 0600). Give the line above to the server's admin, who saves it "
              f"in a file and runs: knock-admin add NAME --key-file FILE", file=io.stderr)
        return EXIT_OK
    import socket  # gethostname, for the comment of the public line (as ssh-keygen writes user@host)

    from dynknock.client import pair

    user = io.environ.get("USER") or io.environ.get("LOGNAME") or "user"
    seed = write_new_pair_file(path)
    line = pair.public_line(seed, f"{user}@{socket.gethostname()}")
    public_path = Path(f"{path}.pub")
    try:
        public_path.write_text(line + "\n", encoding="ascii")
    except OSError as exc:
        raise ClientConfigError(f"{public_path}: {exc.strerror}") from None
    print(line, file=io.stdout)
    print(f"New key pair: private key in {path} (mode 0600; it never leaves this machine), public line above and "
          f"in {public_path}. Give the public line to the server's admin, who runs:\n"
          f"  knock-admin add NAME --public-key '{line}'\n"
          f"and gives you the server's line for your first knock: knock-client --server-key 'LINE' ... "
          f"(or server_key in the stanza)", file=io.stderr)
    return EXIT_OK


def _error(io: Io, message: str) -> None:
    print(f"{PROG}: {message}", file=io.stderr)


class Client:
    def __init__(self, settings: Settings, io: Io) -> None:
        self.settings = settings
        self.io = io
        # With --exec or --proxy, stdout belongs to the command or the connection.
        self.out = io.stderr if settings.exec_argv is not None or settings.proxy else io.stdout
        self.pair_user = False  # a key-pair key file (client/pair.py), once _keys has read it

    def say(self, text: str) -> None:
        if not self.settings.quiet:
            print(text, file=self.out, flush=True)

    def run(self) -> int:
        s = self.settings
        family = {4: _socket.AF_INET, 6: _socket.AF_INET6}.get(s.family or 0, _socket.AF_UNSPEC)
        try:
            endpoint = connect_udp(s.host, s.port, family)
        except ResolveError as exc:
            _error(self.io, str(exc))
            return EXIT_HOST
        try:
            return self._knock(endpoint)
        finally:
            endpoint.sock.close()

    def _knock(self, endpoint: Endpoint) -> int:
        # Before anything is sent or asked: a raw socket for the paper's SYN knocks if this process
        # may have one, else connect() knocks, which any user may send.
        try:
            syn = self.io.open_syn_sender(endpoint.family)
        except OSError as exc:
            _error(self.io, f"cannot open a socket for the knocks: {exc.strerror or exc}")
            return EXIT_NO_KNOCK
        try:
            try:
                keys, pair_seal = self._keys()
                declared = self._declared_address(endpoint)
            except (UsageError, ClientConfigError, KeyError_) as exc:
                _error(self.io, str(exc))
                return EXIT_USAGE
            answer = self._exchange(keys, endpoint, syn, declared, pair_seal)
        finally:
            # A raw socket is a privilege: never keep it through --exec or --proxy.
            syn.close()
        if isinstance(answer, int):
            return answer
        return self._door_open(answer, endpoint)

    # --- before the exchange ---------------------------------------------------

    def _keys(self) -> tuple[SessionKeys, PairSeal | None]:
        """The session keys, and what a key-pair user's packets need besides (client/pair.py)."""
        s = self.settings
        if s.key_file is None:
            return crypto.session_keys(self._master_key()), None
        kind, key = read_key_file(s.key_file)
        if not kind:
            if s.server_key is not None:
                raise UsageError(f"--server-key is for key pairs, and {s.key_file} is a symmetric key file")
            return crypto.session_keys(key), None
        from dynknock.client import pair  # only key-pair runs load the curves

        self.pair_user = True

        name = pair.server_name(s.host, s.port, CONTROL_PORT)
        server_key, message = pair.pinned_server_key(name, s.server_key, expand_user(pair.DEFAULT_KNOWN_SERVERS))
        if message:
            self.say(message)
        return pair.session_keys(key, server_key), pair.PairSeal(key, server_key)

    def _master_key(self) -> bytes:
        s = self.settings
        if s.user is None:
            raise UsageError("no user name: give -u USER (or set $USER)")
        crypto.preload_scrypt()  # while the password is typed (or read): after it, scrypt alone is left
        if s.password_stdin:
            password = self.io.stdin.readline().rstrip("\r\n")
        else:
            try:
                password = self.io.getpass(f"Password for {s.user}@{s.host}: ")
            except EOFError:
                password = ""
        if not password:
            raise UsageError("empty password")
        return crypto.derive_master_key(s.user, password)

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
                  declared: IPAddress | None, pair_seal: PairSeal | None = None) -> wire.P3 | int:
        """Returns the P3 OPEN, or an exit status after explaining the failure."""
        s = self.settings
        request = new_request(s.service, declared, syn.kind)
        for round_ in (1, 2):
            self._announce(request)
            session = ClientSession(keys, request, Timing(timeout_s=s.timeout),
                                    server=endpoint.server if s.bind else None, pair=pair_seal)
            try:
                outcome = run_session(session, endpoint, syn, self.io.clock, idle=self._prepare_door)
            except KnockError as exc:  # a P1 may be out, but without its knocks it opens nothing
                _error(self.io, str(exc))
                return EXIT_NO_KNOCK
            except OSError as exc:
                _error(self.io, f"sending to {s.host}: {exc.strerror or exc}")
                return EXIT_ERROR
            answer = outcome.answer
            if answer is None:
                self._explain_silence(outcome, endpoint, request)
                return EXIT_NO_ANSWER
            if answer.status is Status.ADDRESS_MISMATCH:
                seen = answer.seen_address
                if pair_seal is not None:
                    # Whoever stole the server's key could forge this answer: a key-pair user's client never
                    # signs a request for an address only an answer named (it could be the thief's).
                    _error(self.io, f"the server sees you as {seen}, not {request.address} (NAT?); declare that "
                                    f"address with --source-ip {seen} if it is yours, or use --nat")
                    return EXIT_NO_ANSWER
                if round_ == 1 and seen is not None:
                    self.say(f"The server sees you as {seen} (NAT?); asking again for {seen}")
                    request = new_request(s.service, seen, syn.kind)
                    continue
                _error(self.io, f"the server still sees you as another address ({seen}) than the one declared "
                                f"({request.address}); try --nat")
                return EXIT_NO_ANSWER
            if answer.status is Status.SERVICE_NOT_ALLOWED:
                _error(self.io, f"the server does not allow service {s.service!r} for this user")
                return EXIT_SERVICE_NOT_ALLOWED
            if answer.status is Status.KNOCK_KIND_REFUSED:
                _error(self.io, f"{s.host} takes only the paper's SYN knocks, with chosen sequence numbers, which "
                                "need a raw socket (root or CAP_NET_RAW); its admin may allow this client's "
                                "connect() knocks with server.connect_knocks = true")
                return EXIT_NO_KNOCK
            if answer.status is Status.UNAVAILABLE:
                _error(self.io, "the server could not open a door now (no free door port, or its firewall or "
                                "relay failed); try again later")
                return EXIT_UNAVAILABLE
            return answer
        raise AssertionError("the loop returns in its second round")

    def _prepare_door(self) -> None:
        """Run while the server works on the first burst: what is needed once the door opens."""
        if self.settings.proxy:
            from dynknock.client import proxy  # noqa: F401 - threading: only --proxy needs it, and not before the door

    def _announce(self, request: Request) -> None:
        # The paper's client shows the knocks; they are spent once used, so
        # showing them gives nothing away.
        for number, knock in enumerate(request.knocks, 1):
            isn = "by connect()" if request.knock_kind is KnockKind.CONNECT else f"{knock.isn:08X}"
            self.say(f"Knock? ({number} - Port = {knock.port}, ISN = {isn})")
        self.say("Can I come in? Waiting for response.")

    def _explain_silence(self, outcome: Outcome, endpoint: Endpoint, request: Request) -> None:
        s = self.settings
        import datetime as dt

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
                *(["  - a key pair: the server key pinned in ~/.config/dynknock/known_servers is not the server's "
                   "(a new server key?);"] if self.pair_user else []),
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

    def _door_open(self, answer: wire.P3, endpoint: Endpoint) -> int:
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
        import subprocess

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
        conn = _socket.socket(endpoint.family, _socket.SOCK_STREAM)
        try:
            conn.settimeout(self.settings.timeout)
            conn.connect(address)
            conn.settimeout(None)
        except OSError as exc:
            conn.close()
            _error(self.io, f"the door opened but connecting to {self.settings.host} port {port} failed: "
                            f"{exc.strerror or exc}")
            return EXIT_ERROR
        from dynknock.client import proxy  # threading: only --proxy needs it (loaded already: _prepare_door)

        try:
            return proxy.pipe(conn, self.io.proxy_in_fd, self.io.proxy_out_fd)
        finally:
            conn.close()

