"""The users file and the hint directory.

The users file is JSON, one per server, mode 0600 (or 0640 to the service
group) and refused otherwise, because it holds every symmetric user's master key:

    {"version": 1, "users": {"alice": {"key": "<base64 32 bytes>", "kind": "password",
        "services": ["ssh"], "sources": ["198.18.0.0/15"],
        "expires": "2027-01-01T00:00:00+00:00", "nat": false},
      "paula": {"public_key": "<base64 32 bytes>", "services": ["ssh"]}}}

A user has either a `key` (her master key: from a password, `kind` "password", or a key
file, "key"; entries made before `kind` existed have none) or a `public_key` (a key-pair
user, protocol version 3: the server holds nothing that lets anyone sign as her).

`sources` (optional) limits the addresses a user may ask a door for; `expires`
(optional) ends the account; `nat` allows a request declared "as seen" (the
client does not know its public address).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynknock.keys import (
    SessionKeys,
    decode_key,
    encode_key,
    hint_epoch,
    normalise_user_name,
    secret_file_problem,
    user_hint,
)
from dynknock.protocol import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UsersFileError(ValueError):
    """The users file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    master_key: bytes = field(repr=False)  # b"" for a key-pair user
    services: tuple[str, ...]
    sources: tuple[IPNetwork, ...] = ()
    expires: dt.datetime | None = None
    nat: bool = False
    public_key: bytes | None = None  # a key-pair user's Ed25519 public key
    kind: str = ""  # how a symmetric key was made: "password", "key", or "" (not recorded)

    @property
    def kind_shown(self) -> str:
        """What `knock-admin list` says of her key."""
        return "key pair" if self.public_key is not None else self.kind or "symmetric"

    def allows_source(self, address: IPAddress) -> bool:
        return not self.sources or any(address in net for net in self.sources)

    def expired(self, now_s: float) -> bool:
        return self.expires is not None and now_s >= self.expires.timestamp()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"public_key": encode_key(self.public_key)} if self.public_key is not None else \
            {"key": encode_key(self.master_key), **({"kind": self.kind} if self.kind else {})}
        out["services"] = list(self.services)
        if self.sources:
            out["sources"] = [str(n) for n in self.sources]
        if self.expires is not None:
            out["expires"] = self.expires.isoformat()
        if self.nat:
            out["nat"] = True
        return out


def check_secret_file_mode(path: Path) -> None:
    """Refuse a users file any other user could read or anyone but us could write."""
    problem = secret_file_problem(path.stat(), path, group_may_read=True)
    if problem:
        raise UsersFileError(f"{path}: {problem}")


def _parse_user(path: Path | str, name: str, entry: Any) -> User:
    where = f"{path}: user {name!r}"
    if not isinstance(entry, dict):
        raise UsersFileError(f"{where}: must be an object")
    unknown = set(entry) - {"key", "kind", "public_key", "services", "sources", "expires", "nat"}
    if unknown:
        raise UsersFileError(f"{where}: unknown field(s) {sorted(unknown)}")
    if ("key" in entry) == ("public_key" in entry):
        raise UsersFileError(f"{where}: needs a key or a public_key, and not both")
    field_name = "key" if "key" in entry else "public_key"
    try:
        key = decode_key(str(entry[field_name]))
    except ValueError as exc:
        raise UsersFileError(f"{where}: {field_name}: {exc}") from None
    kind = entry.get("kind", "")
    if kind not in ("", "password", "key") or (kind and field_name != "key"):
        raise UsersFileError(f"{where}: kind must be \"password\" or \"key\", with a key")
    services = entry.get("services", [])
    if not isinstance(services, list) or not all(isinstance(s, str) and s for s in services):
        raise UsersFileError(f"{where}: services must be a list of names")
    try:
        sources = tuple(ipaddress.ip_network(s) for s in entry.get("sources", []))
    except (ValueError, TypeError) as exc:
        raise UsersFileError(f"{where}: sources: {exc}") from None
    expires = None
    if entry.get("expires") is not None:
        try:
            expires = dt.datetime.fromisoformat(str(entry["expires"]))
        except ValueError:
            raise UsersFileError(f"{where}: expires must be an ISO 8601 date") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.UTC)
    nat = entry.get("nat", False)
    if not isinstance(nat, bool):
        raise UsersFileError(f"{where}: nat must be true or false")
    if field_name == "public_key":
        return User(normalise_user_name(name), b"", tuple(services), sources, expires, nat, public_key=key)
    return User(normalise_user_name(name), key, tuple(services), sources, expires, nat, kind=kind)


def load_users(path: Path, *, check_mode: bool = True) -> dict[str, User]:
    try:
        if check_mode:
            check_secret_file_mode(path)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsersFileError(f"{path}: users file not found (create it with knock-admin add)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: {exc}") from None
    return parse_users(text, path)


def parse_users(text: str, path: Path | str) -> dict[str, User]:
    """The users of a users document (a file's text, or the replicated store's: auth/etcd.py); `path`
    names where it came from in every error."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsersFileError(f"{path}: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != 1:
        raise UsersFileError(f"{path}: expected {{\"version\": 1, \"users\": {{...}}}}")
    users = document.get("users", {})
    if not isinstance(users, dict):
        raise UsersFileError(f"{path}: users must be an object")
    return {name: _parse_user(path, name, entry) for name, entry in users.items()}


def users_text(users: Iterable[User]) -> str:
    """The users document, as the file and the replicated store hold it."""
    document = {"version": 1, "users": {u.name: u.to_json() for u in sorted(users, key=lambda u: u.name)}}
    return json.dumps(document, indent=2) + "\n"


def save_users(path: Path, users: Iterable[User]) -> None:
    """Atomically replace the users file, keeping its owner, group and a 0640 mode; else mode 0600.

    Keeping 0640 matters: knock-auth runs unprivileged and may read the file through
    its group; a file silently narrowed to 0600 would fail to reload, and the
    daemon would keep the old users, revoked ones included.
    """
    text = users_text(users)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=".users.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, stat.S_IMODE(old.st_mode) & 0o640 if old is not None else 0o600)
        if old is not None:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(slots=True)
class _Entry:
    user: User
    keys: SessionKeys


class UserDirectory:
    """Maps the rotating 8-byte hint of the current epochs to a user in O(1).

    Holds the hints of every epoch a packet within the clock-skew window can
    carry, and rolls the table forward as time passes: a few HMACs per user per
    minute instead of a decryption per user per packet.
    """

    def __init__(self, users: dict[str, User], skew_s: float,
                 pair_keys: Callable[[bytes], SessionKeys] | None = None) -> None:
        """`pair_keys`: a key-pair user's session keys from her public key (the server's X25519, see
        auth/serverkey.py); needed if any user has one."""
        self._skew_s = skew_s

        def keys(user: User) -> SessionKeys:
            if user.public_key is None:
                return SessionKeys.from_master(user.master_key)
            if pair_keys is None:
                raise UsersFileError(f"user {user.name!r} has a key pair, and the server has no key of its own")
            return pair_keys(user.public_key)

        self._entries = {name: _Entry(u, keys(u)) for name, u in users.items()}
        self._by_hint: dict[bytes, _Entry] = {}
        self._epochs: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> tuple[User, SessionKeys] | None:
        entry = self._entries.get(name)
        return (entry.user, entry.keys) if entry else None

    def _wanted_epochs(self, now_s: float) -> set[int]:
        return set(range(hint_epoch(now_s - self._skew_s), hint_epoch(now_s + self._skew_s) + 1))

    def _roll(self, now_s: float) -> None:
        wanted = self._wanted_epochs(now_s)
        if wanted == self._epochs:
            return
        by_hint: dict[bytes, _Entry] = {}
        for entry in self._entries.values():
            for epoch in wanted:
                # A collision of two users' 64-bit hints is astronomically rare; the
                # second user would still be found next epoch. Keep the first.
                by_hint.setdefault(user_hint(entry.keys, epoch), entry)
        self._by_hint, self._epochs = by_hint, wanted

    def hints(self, now_s: float) -> frozenset[bytes]:
        """Every hint find() accepts at now_s."""
        self._roll(now_s)
        return frozenset(self._by_hint)

    def find(self, hint: bytes, now_s: float) -> tuple[User, SessionKeys] | None:
        self._roll(now_s)
        entry = self._by_hint.get(hint)
        return (entry.user, entry.keys) if entry else None
