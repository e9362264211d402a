"""knock-admin's commands about the server rather than its users: status (the bus and supervisord),
doctor (auth/doctor.py) and bus-keys (CURVE keys for a bus over tcp).

Apart from admin.py: they share nothing with the users file or store but the command line.
"""

from __future__ import annotations

import argparse

from dynknock.auth.adminbase import EXIT_FAILURE, EXIT_OK, AdminError, Io


def cmd_status(args: argparse.Namespace, io: Io) -> int:
    from dynknock import status
    from dynknock.config import ConfigError, config_path, load
    from dynknock.reasons import ProgramState, Supervisor, SupervisorUnreachable
    from dynknock.stage import transport_for

    try:
        config = load(config_path(args.config))
    except ConfigError as exc:
        raise AdminError(str(exc)) from None
    summary = status.collect(transport_for(config, "tap"), args.seconds)
    programs: list[ProgramState] | None = None
    note = ""
    try:
        programs = Supervisor.from_conf(args.supervisord_conf).programs()
    except SupervisorUnreachable as exc:
        note = str(exc)
    print(status.render(summary, int(io.now().timestamp() * 1000), programs, note), file=io.stdout)
    return EXIT_OK if "auth" in summary.alive else EXIT_FAILURE


def cmd_doctor(args: argparse.Namespace, io: Io) -> int:
    from dynknock.auth import doctor
    from dynknock.config import config_path

    findings = doctor.examine(config_path(args.config), args.supervisord_conf)
    print(doctor.render(findings), file=io.stdout)
    return EXIT_FAILURE if any(f.level == doctor.PROBLEM for f in findings) else EXIT_OK

def cmd_bus_keys(args: argparse.Namespace, io: Io) -> int:
    from dynknock.transport import make_keys

    if args.directory.exists() and any(args.directory.iterdir()):
        raise AdminError(f"{args.directory} is not empty; refusing to overwrite keys")
    for secret in make_keys(args.directory, tuple(args.gateway), tuple(args.replica)):
        role, _, owner = secret.name.removesuffix(".key_secret").partition("@")
        where = (f"replica {owner}'s {role}" if owner in args.replica else f"gateway {owner}'s {role}") if owner \
            else f"stage {role}"
        print(f"made {secret} (copy to the host of {where})", file=io.stdout)
    print(f"public keys of all stages: {args.directory / 'public'} (copy to every host)", file=io.stdout)
    return EXIT_OK
