"""knock-gate: firewall rules for doors. Runs unprivileged with only CAP_NET_ADMIN.

Answers every DoorOpen/DoorClose from auth with a DoorResult. With the
``none`` backend it changes no firewall at all and says so loudly: then only
the relay's own address check stands between a door and the world.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from typing import Any

import zmq

from dynknock import bus
from dynknock.config import Config
from dynknock.stage import (
    Publisher,
    RateLimitedLog,
    StopSignal,
    common_arguments,
    load_config_or_exit,
    now_ms,
    prepare_bus,
    setup_logging,
)
from gate import core

NFT_TIMEOUT_S = 5


class NftError(RuntimeError):
    pass


class Nft:
    """Runs nft scripts; an argument list or a library call, never a shell.

    Through libnftables (the library behind the nft command) when it is there:
    a door opens in well under a millisecond instead of the ~5-10 ms of
    starting an nft process. Otherwise, `nft -f -` with the script on stdin.
    """

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._ctx: int | None = None
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError:
            path = shutil.which("nft") or "/usr/sbin/nft"
            self._argv = [path, "-f", "-"]
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
        ctx = lib.nft_ctx_new(0)  # NFT_CTX_DEFAULT
        if not ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    @property
    def via(self) -> str:
        return "libnftables" if self._lib is not None else "the nft command"

    def apply(self, script: str) -> None:
        if self._lib is not None:
            failed = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode()) != 0
            # Reading a buffer also rewinds it: read both every time, or they grow forever.
            self._lib.nft_ctx_get_output_buffer(self._ctx)
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
            if failed:
                raise NftError(error.splitlines()[0] if error else "nft failed")
            return
        try:
            done = subprocess.run(self._argv, input=script, capture_output=True, text=True,
                                  timeout=NFT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(str(exc)) from None
        if done.returncode != 0:
            raise NftError(done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}")


def settings_from(config: Config) -> core.GateSettings:
    return core.GateSettings(table=config.nft_table, door_port_low=config.door_port_low,
                             door_port_high=config.door_port_high, window_seconds=config.window_seconds,
                             control_port=config.control_port, stealth=config.stealth,
                             public_tcp_ports=config.public_tcp_ports, public_udp_ports=config.public_udp_ports)


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments("dynknock gate stage (nftables; needs CAP_NET_ADMIN)")
    parser.add_argument("--remove-table", action="store_true",
                        help="delete our nftables table and exit (uninstall; open doors close at once)")
    args = parser.parse_args(argv)
    config = load_config_or_exit(args.config, "gate")
    log = setup_logging("gate")
    settings = settings_from(config)
    nft = Nft() if config.gate_backend == "nftables" else None
    if args.remove_table:
        if nft is not None:
            nft.apply(core.remove_table(settings))
        return 0
    if nft is not None:
        try:
            nft.apply(core.ruleset(settings))
        except NftError as exc:
            print(f"knock-gate: cannot install the nftables table inet {settings.table} "
                  f"(needs CAP_NET_ADMIN; gate.backend in {config.path}): {exc}", file=sys.stderr)
            return 2
        log.info("nftables table inet %s ready (via %s): doors %d-%d%s.", settings.table, nft.via,
                 settings.door_port_low, settings.door_port_high, ", stealth" if settings.stealth else "")
    else:
        log.warning("WARNING: gate.backend = \"none\": no firewall rules. Door ports are protected only by the "
                    "relay's address check; a scan can see them. Use nftables in production.")

    context: zmq.Context[Any] = zmq.Context()
    transport = prepare_bus(config, "gate", context)
    commands = context.socket(zmq.ROUTER)
    commands.setsockopt(zmq.LINGER, 0)
    transport.bind(commands, "gate")
    events = Publisher(context, transport, "gate")
    if nft is None:
        events.publish("gate.backend.none", warning="no firewall: relay address check only")
    log_bad = RateLimitedLog(log)
    stop = StopSignal()
    while not stop.requested:
        if events.heartbeat_due():
            events.alive(backend=config.gate_backend)
        if not commands.poll(500):
            continue
        frames = commands.recv_multipart()
        if len(frames) != 2:
            log_bad("Dropped a message of %d frames", len(frames))
            continue
        identity, frame = frames
        try:
            command = bus.decode(frame)
        except bus.BadMessage as exc:
            log_bad("Dropped a bad message: %s", exc)
            events.publish("gate.message.dropped", reason=str(exc))
            continue
        if isinstance(command, bus.DoorOpen):
            result = handle_open(settings, nft, command, events, log)
        elif isinstance(command, bus.DoorClose):
            result = handle_close(settings, nft, command, events, log)
        else:
            log_bad("Dropped an unexpected %s", type(command).__name__)
            continue
        commands.send_multipart([identity, bus.encode(result)])
    events.close()
    context.destroy(0)
    return 0


def handle_open(settings: core.GateSettings, nft: Nft | None, command: bus.DoorOpen,
                events: Publisher, log: Any) -> bus.DoorResult:
    try:
        element, timeout_ms = core.validate_open(settings, command, now_ms())
        if nft is not None:
            nft.apply(core.add_element(settings, element, timeout_ms))
    except (core.Invalid, NftError) as exc:
        log.info("Refused to open port %s for %s: %s", command.port, command.client, exc)
        events.publish("gate.rule.refused", client=command.client, port=command.port, reason=str(exc))
        return bus.DoorResult(command.door_id, "gate", False, str(exc))
    events.publish("gate.rule.added", client=element.address, port=element.port, timeout_ms=timeout_ms,
                   user=command.user)
    return bus.DoorResult(command.door_id, "gate", True)


def handle_close(settings: core.GateSettings, nft: Nft | None, command: bus.DoorClose,
                 events: Publisher, log: Any) -> bus.DoorResult:
    try:
        element = core.validate_close(settings, command)
        if nft is not None:
            try:
                nft.apply(core.delete_element(settings, element))
            except NftError as exc:
                if "No such file" not in str(exc):  # already expired or never added: closed is closed
                    raise
    except (core.Invalid, NftError) as exc:
        events.publish("gate.rule.refused", client=command.client, port=command.port, reason=str(exc))
        return bus.DoorResult(command.door_id, "gate", False, str(exc))
    events.publish("gate.rule.removed", client=element.address, port=element.port)
    return bus.DoorResult(command.door_id, "gate", True)


if __name__ == "__main__":
    raise SystemExit(main())
