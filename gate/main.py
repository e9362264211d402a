"""knock-gate: firewall rules for doors. Runs unprivileged with only CAP_NET_ADMIN.

Answers every DoorOpen/DoorClose from auth with a DoorResult. With the
``none`` backend it changes no firewall at all and says so loudly: then only
the relay's own address check stands between a door and the world.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import zmq

from dynknock import bus, replies
from dynknock.config import Config
from dynknock.gate import core
from dynknock.stage import Publisher, Shell, common_arguments, load_config_or_exit, now_ms, setup_logging
from dynknock.topics import Topic
from dynknock.transport import gateway_key_name

NFT_TIMEOUT_S = 5
NFT_CTX_OUTPUT_JSON = 1 << 4  # libnftables' output flag for JSON


class NftError(RuntimeError):
    """nft's own error line; `rule` is the line of our input it points at, if it named one."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


def _nft_error(text: str, fallback: str) -> NftError:
    """nft's error output: "Error: ..." (maybe prefixed by a place), then the input line, then carets."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return NftError(fallback)
    rule = lines[1].strip() if len(lines) > 1 and not set(lines[1].strip()) <= {"^", "~"} else ""
    return NftError(lines[0].strip(), rule)


class Nft:
    """Runs nft scripts; an argument list or a library call, never a shell.

    Through libnftables (the library behind the nft command) when it is there:
    a door then costs no process start, about a tenth of the time (docs/BENCHMARKS.md).
    Otherwise, `nft -f -` with the script on stdin.
    """

    def __init__(self, dry_run: bool = False) -> None:
        """`dry_run`: the kernel checks every transaction whole and commits none (`nft -c`)."""
        self._lib: ctypes.CDLL | None = None
        self._ctx: int | None = None
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            path = shutil.which("nft") or "/usr/sbin/nft"
            self._argv = [path, *(["-c"] if dry_run else []), "-f", "-"]
            return
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if dry_run:
            lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
            lib.nft_ctx_set_dry_run(ctx, True)
        self._lib, self._ctx = lib, ctx

    @property
    def via(self) -> str:
        return "libnftables" if self._lib is not None else "the nft command"

    def list_json(self, what: str) -> object:
        """`nft -j list WHAT` (e.g. "table inet dynknock"): the kernel's view, as nft's JSON."""
        if self._lib is not None:
            flags = self._lib.nft_ctx_output_get_flags(self._ctx)
            self._lib.nft_ctx_output_set_flags(self._ctx, flags | NFT_CTX_OUTPUT_JSON)
            try:
                failed = self._lib.nft_run_cmd_from_buffer(self._ctx, f"list {what}".encode()) != 0
                output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
                error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            finally:
                self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            if failed:
                raise _nft_error(error, "nft list failed")
        else:
            try:
                done = subprocess.run([self._argv[0], "-j", "list", *what.split()], capture_output=True, text=True,
                                      timeout=NFT_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NftError(f"cannot run {self._argv[0]}: {exc}") from None
            if done.returncode != 0:
                raise _nft_error(done.stderr, f"exit {done.returncode}")
            output = done.stdout
        try:
            return json.loads(output)
        except ValueError:
            raise NftError("nft's JSON listing did not parse") from None

    def apply(self, script: str) -> None:
        if self._lib is not None:
            failed = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0
            # Reading a buffer also rewinds it: read both every time, or they grow forever.
            self._lib.nft_ctx_get_output_buffer(self._ctx)
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
            if failed:
                raise _nft_error(error, "nft failed")
            return
        try:
            done = subprocess.run(self._argv, input=script, capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT_S, check=False)
        except OSError as exc:
            raise NftError(f"cannot run {self._argv[0]}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise NftError(f"{self._argv[0]} did not answer within {NFT_TIMEOUT_S} s") from None
        if done.returncode != 0:
            raise _nft_error(done.stderr, f"exit {done.returncode}")


def settings_from(config: Config) -> core.GateSettings:
    kernel_targets = frozenset((str(ipaddress.ip_address(s.host)), s.port) for s in config.services.values()
                               if s.forward == "kernel")
    return core.GateSettings(table=config.nft_table, door_port_low=config.door_port_low,
                             door_port_high=config.door_port_high, window_seconds=config.window_seconds,
                             stealth=config.stealth,
                             public_tcp_ports=config.public_tcp_ports, public_udp_ports=config.public_udp_ports,
                             kernel_targets=kernel_targets, relay_port=config.relay_port)


class KernelSettings:
    """The two sysctls kernel doors need, in this network namespace.

    route_localnet lets a packet from the interface be routed to 127.0.0.0/8, which a
    DNAT to 127.0.0.1:22 needs; the guard chain of our table drops whatever comes from
    outside addressed there, so only a door's DNAT gets through. The value found is kept
    in state_dir and put back when the table is removed. nf_conntrack_acct makes
    conntrack count bytes, for the door connections' figures.
    """

    def __init__(self, config: Config) -> None:
        self.interface = config.interface
        self.saved = config.state_dir / f"gate-route_localnet.{config.interface}"
        self.path = Path(f"/proc/sys/net/ipv4/conf/{config.interface}/route_localnet")

    def needed(self, settings: core.GateSettings) -> bool:
        return any(ipaddress.ip_address(host).is_loopback for host, _ in settings.kernel_targets)

    def enable(self) -> None:
        before = self.path.read_text().strip()
        if not self.saved.exists():
            self.saved.write_text(before + "\n")
        self.path.write_text("1\n")

    def restore(self) -> None:
        if self.saved.exists():
            self.path.write_text(self.saved.read_text())
            self.saved.unlink()

    @staticmethod
    def count_bytes() -> None:
        Path("/proc/sys/net/netfilter/nf_conntrack_acct").write_text("1\n")


class ConntrackWatch:
    """Reads `conntrack -E` about kernel doors' connections in a thread, hands them to the loop.

    The thread only parses and asks conntrack for counters; everything it finds goes over
    an inproc PAIR to the main loop, which alone publishes (a zmq socket is not thread-safe).
    """

    def __init__(self, context: zmq.Context[Any], conntrack: str, log: Any) -> None:
        self.conntrack = conntrack
        self.log = log
        self.inbox: zmq.Socket[Any] = context.socket(zmq.PAIR)
        self.inbox.bind("inproc://conntrack-watch")
        self._outbox: zmq.Socket[Any] = context.socket(zmq.PAIR)
        self._outbox.connect("inproc://conntrack-watch")
        self.process = subprocess.Popen(core.conntrack_watch_argv(conntrack), stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._read, name="conntrack-watch", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        reported: set[int] = set()
        for line in self.process.stdout:
            seen = core.parse_conntrack_event(line)
            if seen is None:
                continue
            if seen.kind == "closed":
                counters = self._counters(seen)
                if counters is None:
                    continue  # reported when the entry goes, with its counters
                seen = dataclasses.replace(seen, bytes_in=counters[0], bytes_out=counters[1])
                reported.add(seen.conntrack_id)
            elif seen.kind == "gone":
                if seen.conntrack_id in reported:
                    reported.discard(seen.conntrack_id)
                    continue
                seen = dataclasses.replace(seen, kind="closed")
            self._outbox.send_json(dataclasses.asdict(seen))  # in-process only; still no pickles

    def _counters(self, seen: core.ConnectionSeen) -> tuple[int, int] | None:
        try:
            done = subprocess.run(core.conntrack_get_argv(self.conntrack, seen), capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return core.parse_counters(done.stdout)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.inbox.close(0)
        self._outbox.close(0)


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments("dynknock gate stage (nftables; needs CAP_NET_ADMIN)")
    parser.add_argument("--remove-table", action="store_true",
                        help="delete our nftables table and exit (uninstall; open doors close at once)")
    parser.add_argument("--print-ruleset", action="store_true",
                        help="print the nft script that installs our table for this config, and exit "
                             "(check it with: nft -c -f FILE)")
    parser.add_argument("--check", action="store_true",
                        help="check that the kernel takes our table (nothing is changed), say why not, and exit "
                             "(knock-admin doctor runs it)")
    args = parser.parse_args(argv)
    config = load_config_or_exit(args.config, "gate")
    log = setup_logging("gate")
    settings = settings_from(config)
    if args.print_ruleset:
        print(core.ruleset(settings), end="")
        return 0
    if args.check:
        return check(config, settings)
    nft = Nft() if config.gate_backend == "nftables" else None
    kernel = KernelSettings(config)
    if args.remove_table:
        if nft is not None:
            nft.apply(core.remove_table(settings))
            kernel.restore()
        return 0
    if nft is not None:
        try:
            nft.apply(core.ruleset(settings))
            if settings.kernel_targets:
                kernel.count_bytes()
                if kernel.needed(settings):
                    kernel.enable()
        except (NftError, OSError) as exc:  # nft's refusal, or the sysctls of kernel doors
            print(f"knock-gate: {why_not_installed(config, settings, exc)}", file=sys.stderr)
            return 2
        log.info("nftables table inet %s ready (via %s): doors %d-%d%s%s.", settings.table, nft.via,
                 settings.door_port_low, settings.door_port_high, ", stealth" if settings.stealth else "",
                 f", kernel forwarding to {', '.join(f'{h}:{p}' for h, p in sorted(settings.kernel_targets))}"
                 if settings.kernel_targets else "")
    else:
        log.warning("WARNING: gate.backend = \"none\": no firewall rules. Door ports are protected only by the "
                    "relay's address check; a scan can see them. Use nftables in production.")

    return GateShell(config, log, settings, nft).run()


def why_not_installed(config: Config, settings: core.GateSettings, error: NftError | OSError) -> str:
    """The one line that says why our table cannot be installed, and the likely cause."""
    if isinstance(error, NftError):
        where = f" in `{error.rule}`" if error.rule else ""
        said, cause = f"nft said \"{error}\"{where}", core.explain_nft_error(str(error))
    else:
        said, cause = str(error), core.explain_os_error(error)
    return f"cannot install the nftables table inet {settings.table}: {said}; {cause} (gate.backend in {config.path})"


def check(config: Config, settings: core.GateSettings) -> int:
    """`--check`: the kernel's dry run of our ruleset and the sysctls kernel doors need; nothing changes."""
    if config.gate_backend != "nftables":
        print(f'knock-gate: gate.backend = "none" in {config.path}: no firewall rules to check')
        return 0
    try:
        Nft(dry_run=True).apply(core.ruleset(settings))
        kernel = KernelSettings(config)
        # (nf_conntrack_acct appears once the ruleset's ct rules load conntrack: not before a dry run.)
        if kernel.needed(settings) and not kernel.path.exists():
            raise FileNotFoundError(2, "No such file or directory", str(kernel.path))
    except (NftError, OSError) as exc:
        print(f"knock-gate: {why_not_installed(config, settings, exc)}", file=sys.stderr)
        return 2
    print(f"knock-gate: the kernel takes table inet {settings.table}")
    return 0


@dataclasses.dataclass(slots=True)
class Step:
    """One door command of a batch: its nft text, or why it was refused, and what it concerns."""

    opener: core.Opener
    command: bus.DoorOpen | bus.DoorClose
    script: str = ""
    refused: str = ""
    element: core.DoorElement | None = None
    timeout_ms: int = 0


class GateShell(Shell):
    """Answers auth's door commands on its ROUTER; for a fleet's gateway, sends the P3s auth hands it.

    A gateway serving auth replicas ([replicas.NAME]) takes commands from each replica's auth key alone
    (transport.py), and keeps apart the doors of each (core.Openers): a replica's DoorSet and DoorClose
    concern its own doors, its DoorUsed reports go to it, and its death takes no door of the others.
    """

    DROPPED = Topic.GATE_MESSAGE_DROPPED

    def __init__(self, config: Config, log: logging.Logger, settings: core.GateSettings, nft: Nft | None) -> None:
        super().__init__("gate", config, log)
        self.settings = settings
        self.nft = nft
        self.commands = self.socket(zmq.ROUTER, bind="gate")
        self.watch(self.commands, self.serve_batch)
        # What the heartbeat says of the backlog (since the last heartbeat): the most commands one turn found
        # waiting, and the oldest command's age when it was read (from auth's sent_ms).
        self.batch_max = 0
        self.command_age_max_ms = 0
        self.reconciled = 0  # door elements emptied because auth no longer knew them (since the start)
        if nft is None:
            self.events.publish(Topic.GATE_BACKEND_NONE, warning="no firewall: relay address check only")
        self.conntrack: ConntrackWatch | None = None
        conntrack = shutil.which("conntrack") or "/usr/sbin/conntrack"
        if nft is not None and settings.kernel_targets:
            try:
                self.conntrack = ConntrackWatch(self.context, conntrack, log)
            except OSError as exc:
                log.warning("No door connection events or byte counts: cannot run %s (%s); install conntrack",
                            conntrack, exc)
            else:
                self.watch(self.conntrack.inbox, self.on_connection)
        self.doors: dict[tuple[str, int], bus.DoorOpen] = {}  # kernel doors open now, to name their connections
        # Which auth opened each door. With replicas, an auth is the name of its CURVE key (auth@NAME), read from
        # each frame's User-Id; with one auth it is "" and every door is its own.
        self.replicated = bool(config.replicas)
        self.key_names = self.transport.peer_names() if self.replicated else {}  # z85 public key -> name
        self.openers = core.Openers(frozenset(gateway_key_name("auth", name) for name in config.replicas),
                                    settings.window_seconds * 1000 + core.TIMEOUT_SLACK_MS)
        # Each replica's connection now (its ROUTER identity changes when it reconnects or restarts): a DoorUsed
        # goes to the replica that opened the door, on whichever connection it has.
        self.routes: dict[str, bytes] = {}
        self.foreign_refused = 0  # commands refused because the door is another replica's (since the start)
        # A fleet's gateway sends the P3s auth hands it (bus.Reply) from its control port; bound at the first
        # one, so that on one host (auth sends, and holds the port) the gate never binds it.
        self.reply_from: dict[str, socket.socket] | None = None

    def figures(self) -> dict[str, Any]:
        figures = {"backend": self.config.gate_backend, "kernel_doors": len(self.doors),
                   "conntrack_watch": self.conntrack is not None and self.conntrack.process.poll() is None,
                   "backlog": self.batch_max, "command_age_ms": self.command_age_max_ms,
                   "reconciled": self.reconciled}
        now = now_ms()
        self.openers.forget_expired(now)
        figures["doors_by_opener"] = self.openers.counts(now)
        if self.replicated:
            figures["foreign_refused"] = self.foreign_refused
        self.batch_max = self.command_age_max_ms = 0
        return figures

    def opener_of(self, identity: bytes, frame: zmq.Frame) -> core.Opener:
        """Who sent a frame: with replicas, the name of the key behind its connection (ZeroMQ's User-Id of the
        CURVE peer, which only a holder of that secret key can be); with one auth, the one auth ("")."""
        if not self.replicated:
            return core.Opener("", identity)
        try:
            key = str(frame.get("User-Id"))
        except zmq.ZMQError:  # no CURVE peer behind it: cannot be with replicas (tcp+CURVE), but never guess
            key = "?"
        name = self.key_names.get(key, key)
        self.routes[name] = identity
        return core.Opener(name, identity)

    def route(self, opener: core.Opener) -> bytes:
        """The connection to reach the auth that opened a door by: a replica's current one; the one auth's own."""
        return self.routes.get(opener.name, opener.identity) if opener.name else opener.identity

    def on_connection(self) -> None:
        assert self.conntrack is not None
        fields = self.conntrack.inbox.recv_json()
        assert isinstance(fields, dict)  # our own thread sent it
        seen = core.ConnectionSeen(**fields)
        report_connection(seen, self.doors, self.events)
        door = self.doors.get((seen.client, seen.door_port))
        owned = self.openers.owner((seen.client, seen.door_port), now_ms())
        if seen.kind == "used" and door is not None and door.single_use and owned is not None:
            # Tell the auth that opened it: a used single-use door stops counting against its user's cap.
            self.commands.send_multipart([self.route(owned.opener),
                                          bus.encode(bus.DoorUsed(door.door_id, "gate", seen.client,
                                                                  seen.door_port))])

    def serve_batch(self) -> None:
        """Every command waiting on the ROUTER (up to BATCH), door commands applied in one nft transaction.

        A turn that finds several commands commits them together: one transaction costs about what one
        command does, so a burst of doors is one commit. Each command is validated alone and answered
        alone, in the order it came; if the whole transaction fails (rare: no step is written to fail),
        each is applied alone to find which one did. A DoorSet applies what came before it first, so
        that it judges the doors as auth did when it sent it.
        """
        steps: list[Step] = []
        # Doors this batch opens, by opener: a second replica's open of the same (client, port) in the same
        # batch is refused as it would be in the next one.
        pending: dict[core.DoorKey, str] = {}
        for _ in range(self.BATCH):
            try:
                frames = self.commands.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) != 2:
                self.log_bad("Dropped a message of %d frames", len(frames))
                continue
            opener = self.opener_of(frames[0].bytes, frames[1])
            command = self.decode(frames[1].bytes)
            if command is None:
                continue
            sent_ms = getattr(command, "sent_ms", 0)
            if sent_ms:
                self.command_age_max_ms = max(self.command_age_max_ms, now_ms() - sent_ms)
            if isinstance(command, bus.DoorOpen | bus.DoorClose):
                steps.append(self.plan(opener, command, pending))
            elif isinstance(command, bus.DoorSet):
                self.carry_out(steps)
                steps = []
                pending.clear()
                self.reconcile(command, opener)
            elif isinstance(command, bus.Reply):
                self.send_reply(command)
            else:
                self.unexpected(command)
        self.batch_max = max(self.batch_max, len(steps))
        self.carry_out(steps)

    def plan(self, opener: core.Opener, command: bus.DoorOpen | bus.DoorClose,
             pending: dict[core.DoorKey, str]) -> Step:
        """Validate a door command again (the gate trusts nothing it is told) and write its nft text. A command
        about another replica's door is refused: each replica opens and closes its own (core.Openers)."""
        step = Step(opener, command)
        now = now_ms()
        try:
            if isinstance(command, bus.DoorOpen):
                step.element, step.timeout_ms = core.validate_open(self.settings, command, now)
                try:
                    self.check_opener(step.element, opener, now, pending)
                except core.Invalid as exc:
                    # Replicas draw door ports apart: auth moves this door to another port, and the
                    # DoorClose of its move is refused here in turn, so the other replica's door stays.
                    raise core.Invalid(f"{core.ADDRESS_IN_USE}: {exc}") from None
                pending[(step.element.address, step.element.port)] = opener.name
                step.script = core.add_element(self.settings, step.element, step.timeout_ms)
            else:
                step.element = core.validate_close(self.settings, command)
                try:
                    self.check_opener(step.element, opener, now, pending)
                except core.Invalid as exc:
                    # A replica closes its own doors only (a revoked user's doors are closed by the replicas
                    # that opened them; one that is down leaves them to their kernel timeouts).
                    self.log_bad("Refused to close port %d for %s from %s: %s", command.port, command.client,
                                 opener.name, exc)
                    raise
                known = self.doors.get((command.client, command.port))
                target = (command.target_host, command.target_port) if command.target_host else \
                    (known.target_host, known.target_port) if known is not None else None
                step.script = core.close_element(self.settings, step.element, target)
        except core.Invalid as exc:
            step.refused = str(exc)
        return step

    def check_opener(self, element: core.DoorElement, opener: core.Opener, now: int,
                     pending: dict[core.DoorKey, str]) -> None:
        """Invalid if the door of `element` is another replica's (opened before, or earlier in this batch)."""
        key = (element.address, element.port)
        refusal = self.openers.refusal(key, opener.name, now)
        other = pending.get(key, opener.name)
        if not refusal and other != opener.name:
            refusal = f"the door is {other}'s, not {opener.name}'s"
        if refusal:
            self.foreign_refused += 1
            raise core.Invalid(refusal)

    def carry_out(self, steps: list[Step]) -> None:
        """Apply the steps' nft text in one transaction (each alone if that fails), then answer each."""
        if self.nft is not None:
            script = "".join(step.script for step in steps if not step.refused)
            try:
                if script:
                    self.nft.apply(script)
            except NftError:
                for step in steps:
                    if not step.refused and step.script:
                        try:
                            self.nft.apply(step.script)
                        except NftError as exc:
                            step.refused = str(exc)
        for step in steps:
            self.commands.send_multipart([step.opener.identity, bus.encode(self.answer(step))])  # to its sender

    def answer(self, step: Step) -> bus.DoorResult:
        command, element = step.command, step.element
        if step.refused:
            if isinstance(command, bus.DoorOpen):
                self.log.info("Refused to open port %s for %s: %s", command.port, command.client, step.refused)
            self.events.publish(Topic.GATE_RULE_REFUSED, client=command.client, port=command.port,
                                reason=step.refused)
            return bus.DoorResult(command.door_id, "gate", False, step.refused)
        assert element is not None
        key = (command.client, command.port)
        if isinstance(command, bus.DoorOpen):
            self.openers.opened((element.address, element.port), step.opener, command.door_id,
                                command.expires_at_ms + core.TIMEOUT_SLACK_MS)
            if command.kernel:
                forget_expired(self.doors)
                self.doors[key] = command
            self.events.publish(Topic.GATE_RULE_ADDED, client=element.address, port=element.port,
                                timeout_ms=step.timeout_ms, user=command.user,
                                forward="kernel" if element.target is not None else "relay")
        else:
            self.doors.pop(key, None)
            self.openers.closed((element.address, element.port))
            self.events.publish(Topic.GATE_RULE_REMOVED, client=element.address, port=element.port)
        return bus.DoorResult(command.door_id, "gate", True)

    def reconcile(self, believed: bus.DoorSet, opener: core.Opener) -> None:
        """Empty every door element of this auth's (with one auth: every one) whose (client, port) it no longer
        believes open; add nothing. Another replica's doors are left alone (core.Openers)."""
        if self.nft is None:
            return
        try:
            listed = {(str(ipaddress.ip_address(client)), int(port)): str(door_id)
                      for door_id, client, port in believed.doors}
        except (TypeError, ValueError):
            self.log_bad("Dropped a door set with a bad entry")
            return
        try:
            held = core.held_elements(self.nft.list_json(f"table inet {self.settings.table}"))
            held_keys = {(e.address, e.port) for e in held}
            keep = set(listed) | self.openers.on_door_set(opener, listed, held_keys, now_ms())
            scripts = core.reconcile(self.settings, held, keep)
            if not scripts:
                return
            try:
                self.nft.apply("".join(scripts))
            except NftError:
                for script in scripts:  # each alone: one that raced a kernel timeout must not keep the others
                    try:
                        self.nft.apply(script)
                    except NftError:
                        pass
        except NftError as exc:
            self.log_bad("Cannot compare the firewall with auth's doors: %s", exc)
            return
        stale = held_keys - keep
        self.reconciled += len(stale)
        who = opener.name or "auth"
        for address, port in sorted(stale):
            self.doors.pop((address, port), None)
            self.openers.closed((address, port))
            self.events.publish(Topic.GATE_RULE_REMOVED, client=address, port=port, why=f"{who} does not know it")
        self.log.warning("Emptied %d door(s) %s no longer knows (a backlog, or a restart): %s", len(stale), who,
                         ", ".join(f"{a} port {p}" for a, p in sorted(stale)[:5]) + (" ..." if len(stale) > 5 else ""))

    def send_reply(self, reply: bus.Reply) -> None:
        config = self.config
        if self.reply_from is None:
            try:
                self.reply_from = replies.reply_sockets(config.addresses, config.control_port)
            except OSError as exc:
                self.log_bad("Cannot send P3 from the control port %d (server.addresses, server.control_port "
                             "in %s): %s", config.control_port, config.path, exc)
                return
        failed = replies.send_reply(self.reply_from, reply.source, reply.destination, reply.port, reply.payload)
        if failed:
            self.log_bad("%s", failed)

    def closing(self) -> None:
        if self.conntrack is not None:
            self.conntrack.close()


def forget_expired(doors: dict[tuple[str, int], bus.DoorOpen]) -> None:
    """Doors past their window (their connections may go on: a minute's grace names them)."""
    now = now_ms()
    for key in [k for k, door in doors.items() if door.expires_at_ms + 60_000 < now]:
        del doors[key]


def report_connection(seen: core.ConnectionSeen, doors: dict[tuple[str, int], bus.DoorOpen],
                      events: Publisher) -> None:
    door = doors.get((str(seen.client), seen.door_port))
    names = {"user": door.user, "door_id": door.door_id, "target": f"{door.target_host}:{door.target_port}"} \
        if door is not None else {}
    if seen.kind == "used":
        events.publish(Topic.GATE_CONNECTION_OPENED, client=seen.client, port=seen.door_port,
                       client_port=seen.client_port, **names)
    else:
        events.publish(Topic.GATE_CONNECTION_CLOSED, client=seen.client, port=seen.door_port,
                       client_port=seen.client_port, bytes_in=seen.bytes_in, bytes_out=seen.bytes_out,
                       counted="ip packets", **names)


if __name__ == "__main__":
    raise SystemExit(main())
