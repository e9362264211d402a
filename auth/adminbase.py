"""What knock-admin's modules share: its name and exit statuses, AdminError, the checks of what an
admin types, the streams a command uses (Io), the server config -c names, and a new file's read access
for the service group.

Apart from admin.py, which imports the command modules (adminkeys.py, adminserver.py): they import
these from here, never from admin.py. `python -m dynknock.auth.admin` runs admin.py as __main__, and
an AdminError defined there would not be the one the commands raise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import getpass
import grp
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from dynknock.auth.users import IPNetwork
from dynknock.keys import KeyError_, normalise_user_name
from dynknock.protocol import SERVICE_NAME_LEN, is_service_name

if TYPE_CHECKING:
    from dynknock.config import Config

PROG = "knock-admin"

EXIT_OK = 0
EXIT_FAILURE = 1  # the file could not be written (permissions, disk)
EXIT_USAGE = 2  # bad input: option, name, CIDR, date, key file, password, or an unusable users file


class AdminError(Exception):
    """Bad input: printed as one line, exit status 2."""


# --- input checks -------------------------------------------------------------


def checked_user_name(text: str) -> str:
    try:
        return normalise_user_name(text)
    except KeyError_ as exc:
        raise AdminError(str(exc)) from None


def parse_services(text: str) -> tuple[str, ...]:
    names = [s.strip() for s in text.split(",")]
    if not text.strip() or not all(is_service_name(n) for n in names):
        raise AdminError(f"services {text!r}: a comma-separated list of names of 1-{SERVICE_NAME_LEN} "
                         "characters [a-z0-9_-], e.g. ssh,web")
    return tuple(dict.fromkeys(names))  # without duplicates, in the order given


def parse_source(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise AdminError(f"--source {text!r}: not an address or CIDR network, e.g. 198.51.100.0/24") from None
        raise AdminError(f"--source {text!r}: host bits set; did you mean {loose}?") from None


def parse_expires(text: str, now: dt.datetime) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"--expires {text!r}: not an ISO 8601 date, e.g. 2027-01-31 or "
                         "2027-01-31T18:00:00+01:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # as auth/users.py reads it
    if when <= now:
        raise AdminError(f"--expires {text!r}: is in the past")
    return when


# --- what a command works with -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Io:
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    prompt: Callable[[str], str] = getpass.getpass
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


SERVICE_GROUP = "dynknock"


def share_with_service_group(path: Path) -> None:
    """A new users file: root:dynknock 0640, so knock-auth (user dynknock) can read it and no one else."""
    try:
        gid = grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return  # no service group on this machine (tests, a client host): keep 0600
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
        os.chmod(path, 0o640)


def server_config(args: argparse.Namespace) -> Config | None:
    """The server config -c names (read once), or None."""
    if args.users_config is None:
        return None
    cached: Config | None = getattr(args, "loaded_config", None)
    if cached is None:
        from dynknock.config import ConfigError, load

        try:
            cached = load(Path(args.users_config))
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        args.loaded_config = cached
    return cached
