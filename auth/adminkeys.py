"""The keys knock-admin gives users (a password's scrypt key, a key file read or made, a key pair's
public key) and the server's key that key-pair users pin (`server-key`).

Apart from the users commands (admin.py), which store what these return: reading and making keys
has its own inputs and failures (terminals, key files and their modes, key lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from dynknock import keys
from dynknock.auth.adminbase import EXIT_OK, PROG, AdminError, Io, server_config, share_with_service_group
from dynknock.keys import MASTER_KEY_LEN, KeyError_, derive_master_key

DEFAULT_SERVER_KEY_NAME = "server.key"
SHORT_PASSWORD = 12  # below this, warn: a sniffed packet allows an offline guess per scrypt call


# --- secrets ------------------------------------------------------------------


def read_password(stdin: TextIO, stderr: TextIO, prompt: Callable[[str], str] = getpass.getpass) -> str:
    if stdin.isatty():
        first = prompt("Password: ")
        if prompt("Password again: ") != first:
            raise AdminError("the two passwords differ")
        password = first
    else:
        line = stdin.readline()
        if not line:
            raise AdminError("no password on standard input (expected one line)")
        password = line.rstrip("\r\n")
    if not password:
        raise AdminError("empty password")
    if len(password) < SHORT_PASSWORD:
        print(f"{PROG}: warning: a password of fewer than {SHORT_PASSWORD} characters can be guessed offline "
              "from one sniffed packet; consider --key-gen", file=stderr)
    return password


def read_key_file(path: Path) -> bytes:
    try:
        return keys.read_key_file(path)
    except KeyError_ as exc:
        raise AdminError(str(exc)) from None


def write_new_key_file(path: Path, key: bytes) -> None:
    try:
        keys.write_key_file(path, key)
    except KeyError_ as exc:
        raise AdminError(str(exc)) from None


def read_public_key(text: str) -> bytes:
    """A key-pair user's public key from her line (``dynknock-ed25519 BASE64 [comment]``, as
    ``knock-client --key-gen`` prints it) or from a file holding that line (her FILE.pub)."""
    from dynknock.auth.serverkey import check_user_public_key

    line, where = text, "--public-key"
    if not text.lstrip().startswith(keys.PAIR_PUBLIC + " "):
        path = Path(text)
        try:
            line, where = path.read_text(encoding="ascii"), str(path)
        except FileNotFoundError:
            raise AdminError(f"--public-key {text!r}: neither a {keys.PAIR_PUBLIC} line nor a file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(f"--public-key {text}: cannot read: {exc}") from None
    try:
        public, _ = keys.parse_key_line(line, keys.PAIR_PUBLIC)
        check_user_public_key(public)
    except KeyError_ as exc:
        raise AdminError(f"{where}: {exc}") from None
    return public


def server_key_file(args: argparse.Namespace) -> Path:
    """--server-key-file, else server.key beside the users file (both in /etc/dynknock by default,
    as server.key_file and server.users_file say)."""
    explicit: Path | None = args.server_key_file
    if explicit is not None:
        return explicit
    config = server_config(args)
    if config is not None:
        return config.key_file
    return Path(args.users_file).with_name(DEFAULT_SERVER_KEY_NAME)


def ensure_server_key(path: Path, io: Io) -> str:
    """The server's public line, the key made first if there is none (the first key-pair user)."""
    from dynknock.auth.serverkey import ServerKeyError, load_server_key, make_server_key

    try:
        server = load_server_key(path)
        if server is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            server = make_server_key(path)
            share_with_service_group(path)
            print(f"made the server's key {path} (knock-auth reads it when it next reloads the users file); "
                  "every key-pair user pins its public line", file=io.stdout)
    except ServerKeyError as exc:
        raise AdminError(str(exc)) from None
    return server.line(os.uname().nodename)


@dataclasses.dataclass(frozen=True)
class NewKey:
    """The key `add` or `rekey` gives a user: a master key and how it was made, or a public key."""

    master_key: bytes = b""
    kind: str = ""  # "password" or "key" (auth/users.py User.kind)
    public_key: bytes | None = None
    key_gen: Path | None = None  # a key file to write for the user


def read_new_key(args: argparse.Namespace, name: str, io: Io) -> NewKey:
    if args.public_key is not None:
        return NewKey(public_key=read_public_key(args.public_key))
    if args.key_file is not None:
        return NewKey(read_key_file(args.key_file), "key")
    if args.key_gen is not None:
        return NewKey(secrets.token_bytes(MASTER_KEY_LEN), "key", key_gen=args.key_gen)
    try:  # outside the lock: a person may take a while to type
        return NewKey(derive_master_key(name, read_password(io.stdin, io.stderr, io.prompt)), "password")
    except KeyError_ as exc:
        raise AdminError(str(exc)) from None


def cmd_server_key(args: argparse.Namespace, io: Io) -> int:
    """Print the line key-pair users pin (the key is made if there is none yet)."""
    print(ensure_server_key(server_key_file(args), io), file=io.stdout)
    return EXIT_OK
