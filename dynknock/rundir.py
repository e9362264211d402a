"""Root-run prelude of every program in supervisord.conf: make the bus directory, cap descriptors, exec.

    python -m dynknock.rundir --nofile 4096 -- /usr/bin/setpriv --reuid=dynknock ... knock-auth

Why it exists: the stages check ``bus.runtime_dir`` (0750, owned by ``server.run_as``) only
after dropping root, so they cannot create it in /run themselves, and /run is empty after
every boot. supervisord starts its programs side by side, so the directory must exist before
*each* stage's exec, not after some first program ran: every program goes through this.
Under systemd, ``RuntimeDirectory=dynknock`` makes a fresh root-owned /run/dynknock at each
start; this hands it over to run_as. A directory that another user owns is left alone, and
the stage refuses it with its usual one line.

``--nofile N`` sets the stage's descriptor limit (soft and hard), so that one stage that
leaks or is flooded with connections cannot take the descriptors of the others; supervisord's
``minfds`` is the ceiling.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import stat
import sys
from pathlib import Path

from dynknock.config import ConfigError, config_path, load


class RundirError(RuntimeError):
    pass


def ensure_owned_dir(path: Path, uid: int, gid: int) -> str:
    """Make `path` a 0750 directory of uid:gid if it is missing or root's; say what was done."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o750)
        done = "created"
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise RundirError(f"{path} exists and is not a directory") from None
        if st.st_uid == uid:
            return "kept"  # run_as's own: its mode is the stage's to judge
        if st.st_uid != 0:
            raise RundirError(f"{path} is owned by uid {st.st_uid}, neither root nor the service user") from None
        done = "taken over"  # root's (systemd's RuntimeDirectory=, or an admin's mkdir): ours to give
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, 0o750)
    return done


def set_nofile(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < limit:
        # Only a process with CAP_SYS_RESOURCE may raise its hard limit; keep what there is.
        print(f"dynknock.rundir: descriptor limit {hard} is below the {limit} asked for "
              f"(raise supervisord's minfds or the unit's LimitNOFILE)", file=sys.stderr)
        limit = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def prepare(config_arg: str | None) -> None:
    """Create the bus directory when running as root with an ipc bus; errors are the stage's to report."""
    if os.geteuid() != 0:
        return
    try:
        config = load(config_path(config_arg))
    except ConfigError:
        return  # the stage loads the same file and refuses it with one clear line
    if config.bus_transport != "ipc":
        return
    try:
        entry = pwd.getpwnam(config.run_as)
    except KeyError:
        return  # the stage says "server.run_as user ... does not exist"
    try:
        ensure_owned_dir(config.runtime_dir, entry.pw_uid, entry.pw_gid)
    except (RundirError, OSError) as exc:
        print(f"dynknock.rundir: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynknock.rundir", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nofile", type=int, help="descriptor limit (soft and hard) of the command")
    parser.add_argument("-c", "--config", help="dynknock.toml (default: $DYNKNOCK_CONFIG, else /etc/dynknock)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...] to exec")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    prepare(args.config)
    if args.nofile:
        set_nofile(args.nofile)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"dynknock.rundir: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    raise SystemExit(main())
