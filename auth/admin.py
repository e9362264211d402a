"""knock-admin: manage the users file of a dynknock server.

    knock-admin add alice --services ssh,web --source 198.51.100.0/24
    knock-admin add bob --key-gen bob.key        # random key, give bob.key to bob
    knock-admin add paula --public-key 'dynknock-ed25519 ...'   # a key pair: the server keeps only her public key
    knock-admin server-key                        # the line key-pair users pin (made at the first such user)
    knock-admin rekey bob --public-key bob.pub    # move a user to another key (her doors close)
    knock-admin remove alice
    knock-admin list
    knock-admin set-services bob ssh
    knock-admin status                            # stages alive (and why one is down), doors, rejections
    knock-admin doctor                            # check the server's setup; says what to fix

The file (auth/users.py) holds every symmetric user's 32-byte master key (never a
password) and every key-pair user's public key; it is rewritten atomically with mode 0600, and knock-auth reloads it
when it changes, closing the doors of a user removed, given a new key or a
service taken away. Changes take an exclusive lock on ``<file>.lock`` so that two
admins at once cannot lose each other's changes (a lost revocation would bring
a removed user back).

The command line and the users commands are here; what they share is in auth/adminbase.py, the keys
in auth/adminkeys.py, status, doctor and bus-keys in auth/adminserver.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from dynknock import keys
from dynknock.auth.adminbase import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    AdminError,
    Io,
    checked_user_name,
    parse_expires,
    parse_services,
    parse_source,
    server_config,
    share_with_service_group,
)
from dynknock.auth.adminkeys import (
    DEFAULT_SERVER_KEY_NAME,
    NewKey,
    cmd_server_key,
    ensure_server_key,
    read_new_key,
    server_key_file,
    write_new_key_file,
)
from dynknock.auth.adminserver import cmd_bus_keys, cmd_doctor, cmd_status
from dynknock.auth.users import User, UsersFileError, load_users, save_users

# What the console script, the tests and the labs import from here.
__all__ = ["Io", "default_users_file", "main", "share_with_service_group"]

DEFAULT_USERS_FILE = Path("/etc/dynknock/users.json")
USERS_ENV = "DYNKNOCK_USERS"

EPILOG = f"""\
password:
  Without --public-key, --key-file or --key-gen, `add` asks for the password twice (no echo)
  and stores scrypt(name, password), the key the client derives from the same
  two. If standard input is not a terminal, the password is instead read from
  its first line (the line end is not part of it), for scripts:
      printf '%s\\n' "$PASSWORD" | {PROG} add alice

users file:
  --users-file, else ${USERS_ENV}, else {DEFAULT_USERS_FILE}. It is created by the
  first `add`. It must be mode 0600 (or 0640): it holds every user's key.

exit status:
  {EXIT_OK}  done
  {EXIT_FAILURE}  the users file or key file could not be written
  {EXIT_USAGE}  bad input (the one-line message says which)
"""


# --- the users file -----------------------------------------------------------


@contextmanager
def _locked(users_file: Path, *, create: bool = False) -> Iterator[None]:
    """Serialise read-modify-write cycles of the users file between admins."""
    if not create and not users_file.exists():
        _load(users_file)  # raises the users file's own "not found" message
    lock_path = users_file.with_name(users_file.name + ".lock")
    try:
        if create:
            users_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AdminError(f"{lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(users_file: Path, *, missing_ok: bool = False) -> dict[str, User]:
    if missing_ok and not users_file.exists():
        return {}
    try:
        return {u.name: u for u in load_users(users_file).values()}
    except UsersFileError as exc:
        raise AdminError(str(exc)) from None


def _refuse_existing(users: dict[str, User], name: str, users_file: Path | str) -> None:
    if name in users:
        raise AdminError(f"user {name!r} already exists in {users_file}; remove it first")


def _get(users: dict[str, User], name: str, users_file: Path | str) -> User:
    user = users.get(name)
    if user is None:
        raise AdminError(f"no user {name!r} in {users_file}")
    return user


class FileUsers:
    """The users file of one server (or of a fleet's auth host): read-modify-write under its lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def load(self, *, missing_ok: bool = False) -> dict[str, User]:
        return _load(self.path, missing_ok=missing_ok)

    def edit(self, change: Callable[[dict[str, User]], None], *, create: bool = False) -> None:
        with _locked(self.path, create=create):
            users = _load(self.path, missing_ok=create)
            is_new_file = not self.path.exists()
            change(users)
            save_users(self.path, users.values())
            if is_new_file:
                share_with_service_group(self.path)


class StoreUsers:
    """The users document of auth replicas in etcd: read, change, compare-and-swap on its
    revision; another admin's write meanwhile (a conflict) means read again and redo the change."""

    ATTEMPTS = 5

    def __init__(self, config_path: Path, prefix: str, store: Any) -> None:
        self.store = store
        self.where = f"etcd {prefix}/users ({config_path})"

    def _read(self) -> tuple[dict[str, User], int]:
        from dynknock.auth.users import parse_users

        text, revision = self._call(self.store.load_users)
        return (parse_users(text, self.where) if text else {}), revision

    def load(self, *, missing_ok: bool = False) -> dict[str, User]:
        users, _ = self._read()
        return users

    def edit(self, change: Callable[[dict[str, User]], None], *, create: bool = False) -> None:
        from dynknock.auth.etcd import StoreError
        from dynknock.auth.users import users_text

        for _ in range(self.ATTEMPTS):
            users, revision = self._read()
            change(users)
            try:
                self.store.put_users(users_text(users.values()), revision)
                return
            except StoreError as exc:
                if exc.kind != "conflict":
                    raise AdminError(f"{self.where}: {exc}") from None
        raise AdminError(f"{self.where}: changed by others {self.ATTEMPTS} times in a row; try again")

    def _call(self, call: Callable[[], Any]) -> Any:
        from dynknock.auth.etcd import StoreError

        try:
            return call()
        except StoreError as exc:
            raise AdminError(f"{self.where}: {exc}") from None


UsersBackend = FileUsers | StoreUsers


def users_backend(args: argparse.Namespace) -> UsersBackend:
    """-c CONFIG with store.kind = "etcd": the replicas' users in etcd, with knock-admin's own etcd identity
    ([store] admin_*); otherwise the users file (--users-file, $DYNKNOCK_USERS, the config's users_file)."""
    config = server_config(args)
    if config is None:
        return FileUsers(args.users_file)
    if config.store_kind != "etcd":
        return FileUsers(args.users_file if args.users_file_given else config.users_file)
    from dynknock.auth.etcd import EtcdStore, StoreError

    missing = [name for name in ("admin_cert", "admin_key", "admin_password_file")
               if not getattr(config, f"store_{name}")]
    if missing:
        raise AdminError(f"{config.path}: store.{missing[0]} is required for knock-admin with store.kind = \"etcd\" "
                         "(the admin's own etcd identity: role admin)")
    try:
        store = EtcdStore(list(config.store_endpoints), Path(config.store_ca), Path(config.store_admin_cert),
                          Path(config.store_admin_key), config.store_admin_user, Path(config.store_admin_password_file),
                          config.store_prefix, config.store_attempt_timeout_s, config.store_deadline_s)
    except StoreError as exc:
        raise AdminError(f"{config.path}: {exc}") from None
    return StoreUsers(Path(config.path), config.store_prefix, store)


# --- commands -----------------------------------------------------------------


def _with_key(user: User, key: NewKey) -> User:
    return dataclasses.replace(user, master_key=key.master_key, kind=key.kind, public_key=key.public_key)


def _put_with_key(users: dict[str, User], user: User, key: NewKey) -> None:
    users[user.name] = _with_key(user, key)


def _edit_with_key(backend: UsersBackend, key: NewKey, change: Callable[[dict[str, User]], None], *,
                   create: bool = False) -> Path | None:
    """Write the user's new key file (if one is to be made), then change the users; the key file goes again
    if they are not saved after all (a key for a user never added is only a liability). `change` may run
    more than once (the store redoes it after another admin's write): it only changes `users`."""
    created: Path | None = None
    if key.key_gen is not None:
        write_new_key_file(key.key_gen, key.master_key)
        created = key.key_gen
    try:
        backend.edit(change, create=create)
    except BaseException:
        if created is not None:
            created.unlink(missing_ok=True)
        raise
    return created


def _tell_about_key(name: str, key: NewKey, created: Path | None, server_line: str, io: Io) -> None:
    if created is not None:
        print(f"key written to {created} (mode 0600): give it to {name} for `knock-client --key-file`",
              file=io.stdout)
    if key.public_key is not None:
        print(f"{name} holds a key pair: the server keeps only her public key ({keys.fingerprint(key.public_key)}). "
              f"Give {name} the server's line, for her first knock (knock-client --server-key 'LINE'):\n"
              f"{server_line}", file=io.stdout)


def cmd_add(args: argparse.Namespace, io: Io) -> int:
    name = checked_user_name(args.name)
    services = parse_services(args.services)
    sources = tuple(parse_source(s) for s in args.source)
    expires = parse_expires(args.expires, io.now()) if args.expires is not None else None
    backend = users_backend(args)
    _refuse_existing(backend.load(missing_ok=True), name, backend.where)  # before asking for a password
    key = read_new_key(args, name, io)
    # The server key first: a users file naming a key-pair user and no server key would be refused.
    server_line = ensure_server_key(server_key_file(args), io) if key.public_key is not None else ""

    def add(users: dict[str, User]) -> None:
        _refuse_existing(users, name, backend.where)  # again: another admin may have been quicker
        _put_with_key(users, User(name, b"", services, sources, expires, args.nat), key)

    created = _edit_with_key(backend, key, add, create=True)
    print(f"added {name!r} (services {','.join(services)}) to {backend.where}", file=io.stdout)
    _tell_about_key(name, key, created, server_line, io)
    return EXIT_OK


def cmd_rekey(args: argparse.Namespace, io: Io) -> int:
    """Give a user another key, of any kind (e.g. move her to a key pair), keeping everything else.
    knock-auth closes the doors and drops the requests made with the old key when it reloads."""
    name = checked_user_name(args.name)
    backend = users_backend(args)
    _get(backend.load(), name, backend.where)
    key = read_new_key(args, name, io)
    server_line = ensure_server_key(server_key_file(args), io) if key.public_key is not None else ""
    kinds: list[str] = []

    def rekey(users: dict[str, User]) -> None:
        _put_with_key(users, _get(users, name, backend.where), key)
        kinds.append(users[name].kind_shown)

    created = _edit_with_key(backend, key, rekey)
    print(f"{name!r} now has a new key ({kinds[-1]}); knock-auth closes the doors of the old one "
          f"when it reloads {backend.where} (within a few seconds)", file=io.stdout)
    _tell_about_key(name, key, created, server_line, io)
    return EXIT_OK


def cmd_remove(args: argparse.Namespace, io: Io) -> int:
    name = checked_user_name(args.name)
    backend = users_backend(args)

    def remove(users: dict[str, User]) -> None:
        _get(users, name, backend.where)
        del users[name]

    backend.edit(remove)
    # knock-auth reloads the file within a few seconds and closes the doors this user holds.
    print(f"removed {name!r} from {backend.where}; knock-auth closes their open doors when it reloads it "
          f"(within a few seconds)", file=io.stdout)
    return EXIT_OK


def cmd_set_services(args: argparse.Namespace, io: Io) -> int:
    name = checked_user_name(args.name)
    services = parse_services(args.services)
    backend = users_backend(args)

    def set_services(users: dict[str, User]) -> None:
        users[name] = dataclasses.replace(_get(users, name, backend.where), services=services)

    backend.edit(set_services)
    print(f"{name!r} may now use {','.join(services)}", file=io.stdout)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, io: Io) -> int:
    backend = users_backend(args)
    users = backend.load()
    if not users:
        print(f"no users in {backend.where}", file=io.stdout)
        return EXIT_OK
    now_s = io.now().timestamp()
    rows = [("NAME", "KIND", "SERVICES", "SOURCES", "EXPIRES", "NAT")]
    for user in sorted(users.values(), key=lambda u: u.name):
        expires = "-" if user.expires is None else user.expires.isoformat()
        if user.expired(now_s):
            expires += " (expired)"
        sources = ",".join(str(n) for n in user.sources) or "any"
        rows.append((user.name, user.kind_shown, ",".join(user.services) or "-", sources, expires,
                     "yes" if user.nat else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=io.stdout)
    return EXIT_OK


# --- the shell ----------------------------------------------------------------


def default_users_file() -> Path:
    return Path(os.environ.get(USERS_ENV) or DEFAULT_USERS_FILE)


def _key_options(command: argparse.ArgumentParser) -> None:
    key = command.add_mutually_exclusive_group()
    key.add_argument("--public-key", metavar="LINE|FILE",
                     help="a key pair: the user's public line (knock-client --key-gen prints it) or her FILE.pub; "
                          "the server keeps nothing that can sign as her")
    key.add_argument("--key-file", type=Path, metavar="PATH", help="store the key in this base64 key file")
    key.add_argument("--key-gen", type=Path, metavar="PATH",
                     help="draw a random key, write it to PATH (mode 0600, must not exist) for the user, store it")


def _gateway_argument(text: str) -> str:
    from dynknock.config import gateway_name

    try:
        return gateway_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"gateway name {text!r}: {exc}") from None


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    """The parser and its subcommands; a new subcommand sets ``handler`` like these."""
    parser = argparse.ArgumentParser(prog=PROG, description="Manage the users of a dynknock server.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users-file", type=Path, default=None, metavar="PATH",
                        help=f"the users file (default: ${USERS_ENV} or {DEFAULT_USERS_FILE})")
    parser.add_argument("-c", "--config", dest="users_config", default=None, metavar="PATH",
                        help="a server config: its users_file and key_file; with store.kind = \"etcd\" (auth "
                             "replicas) the users in etcd, as knock-admin's own etcd identity ([store] admin_*)")
    parser.add_argument("--server-key-file", type=Path, default=None, metavar="PATH",
                        help=f"the server's key for key-pair users (default: {DEFAULT_SERVER_KEY_NAME} beside the "
                             "users file, as server.key_file)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="add a user", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--services", default="ssh", metavar="LIST",
                     help="comma-separated services the user may open (default: %(default)s)")
    add.add_argument("--source", action="append", default=[], metavar="CIDR",
                     help="allow requests only from this network (repeatable; default: anywhere)")
    add.add_argument("--expires", metavar="ISO-DATE", help="the account ends then (UTC unless an offset is given)")
    add.add_argument("--nat", action="store_true",
                     help="allow requests that declare the client address 'as seen' (client behind NAT)")
    _key_options(add)
    add.set_defaults(handler=cmd_add)

    rekey = commands.add_parser("rekey", help="give a user another key (password, key file or key pair), keeping "
                                "her services and limits; the old key's doors close", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    rekey.add_argument("name", metavar="NAME")
    _key_options(rekey)
    rekey.set_defaults(handler=cmd_rekey)

    server_key = commands.add_parser("server-key", help="print the server's public key line, which key-pair users "
                                     "pin (made if there is none yet)")
    server_key.set_defaults(handler=cmd_server_key)

    remove = commands.add_parser("remove", help="remove a user and close their open doors "
                                 "(other users are left untouched)")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(handler=cmd_remove)

    lst = commands.add_parser("list", help="list users: name, kind of key, services, sources, expiry, nat "
                              "(never keys)")
    lst.set_defaults(handler=cmd_list)

    set_services = commands.add_parser("set-services", help="replace the services a user may open")
    set_services.add_argument("name", metavar="NAME")
    set_services.add_argument("services", metavar="LIST", help="comma-separated, e.g. ssh,web")
    set_services.set_defaults(handler=cmd_set_services)

    status = commands.add_parser("status", help="stages alive, doors open, recent rejections (from the bus)")
    status.add_argument("-c", "--config", help="server config (default: $DYNKNOCK_CONFIG or "
                                               "/etc/dynknock/dynknock.toml)")
    status.add_argument("--seconds", type=float, default=2.5, help="how long to listen (default: %(default)s)")
    status.add_argument("--supervisord-conf", type=Path, default=Path("/etc/dynknock/supervisord.conf"),
                        metavar="PATH", help="asked (as root) why a stage is down (default: %(default)s)")
    status.set_defaults(handler=cmd_status)

    doctor = commands.add_parser("doctor", help="check this server's setup (config, interface, nftables, users "
                                 "file, directories, services, supervisord) and say what to fix")
    doctor.add_argument("-c", "--config", help="server config (default: $DYNKNOCK_CONFIG or "
                                               "/etc/dynknock/dynknock.toml)")
    doctor.add_argument("--supervisord-conf", type=Path, default=Path("/etc/dynknock/supervisord.conf"),
                        metavar="PATH", help="supervisord to ask about its programs (default: %(default)s)")
    doctor.set_defaults(handler=cmd_doctor)

    keys = commands.add_parser("bus-keys", help="make CURVE keys for a bus over tcp (stages on several hosts)")
    keys.add_argument("directory", type=Path, metavar="DIR", help="new or empty directory (bus.curve_dir)")
    keys.add_argument("--gateway", action="append", default=[], type=_gateway_argument, metavar="NAME",
                      help="a fleet: also keys of its own for this gateway's capture, gate and relay "
                           "(capture@NAME...; repeat for each gateway)")
    keys.add_argument("--replica", action="append", default=[], type=_gateway_argument, metavar="NAME",
                      help="auth replicas (examples/ha): also keys of its own for this replica's auth and knock-bus "
                           "(auth@NAME, bus@NAME; repeat for each replica)")
    keys.set_defaults(handler=cmd_bus_keys)
    return parser, commands


def main(argv: list[str] | None = None, io: Io | None = None) -> int:
    io = io or Io(sys.stdin, sys.stdout, sys.stderr)
    parser, _ = build_parser()
    try:
        with redirect_stdout(io.stdout), redirect_stderr(io.stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.users_file_given = args.users_file is not None
    if args.users_file is None:
        args.users_file = default_users_file()
    try:
        code: int = args.handler(args, io)
        return code
    except AdminError as exc:
        print(f"{PROG}: error: {exc}", file=io.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or args.users_file}: {exc.strerror}", file=io.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=io.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
