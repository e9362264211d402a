"""knock-admin, run in-process on a users file in tmp_path (and once as a real process)."""

from __future__ import annotations

import base64
import datetime as dt
import grp
import io
import ipaddress
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dynknock import curve25519
from dynknock.auth import admin
from dynknock.auth.engine import Engine, EngineConfig
from dynknock.auth.serverkey import load_server_key
from dynknock.auth.users import load_users
from dynknock.keys import derive_master_key

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PASSWORD = "correct horse battery staple"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(users_file: Path | None, *argv: str, stdin: str = "", tty: bool = False,
        prompt: Callable[[str], str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    std_in = Tty(stdin) if tty else io.StringIO(stdin)

    def no_prompt(_: str) -> str:
        raise AssertionError("must not prompt without a terminal")

    env = admin.Io(std_in, out, err, prompt or no_prompt, lambda: NOW)
    args = (["--users-file", str(users_file)] if users_file is not None else []) + list(argv)
    code = admin.main(args, env)
    return code, out.getvalue(), err.getvalue()


def entries(users_file: Path) -> dict[str, dict[str, object]]:
    users: dict[str, dict[str, object]] = json.loads(users_file.read_text())["users"]
    return users


def fail(users_file: Path | None, *argv: str, stdin: str = PASSWORD + "\n") -> str:
    """Run, expect exit 2 with exactly one line on stderr, and return it."""
    code, out, err = run(users_file, *argv, stdin=stdin)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("knock-admin: error: "), err
    return err


def assert_new_file_mode(users_file: Path) -> None:
    """A users file knock-admin creates: root:dynknock 0640 where that group exists (auth reads it), else 0600."""
    mode = stat.S_IMODE(users_file.stat().st_mode)
    try:
        gid = grp.getgrnam("dynknock").gr_gid
    except KeyError:
        assert mode == 0o600
        return
    if os.geteuid() == 0:
        assert mode == 0o640 and users_file.stat().st_gid == gid
    else:
        assert mode == 0o600


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "etc" / "dynknock" / "users.json"


def test_add_with_password_on_stdin_creates_the_file(users_file: Path) -> None:
    code, out, err = run(users_file, "add", "alice", stdin=PASSWORD + "\n")
    assert code == 0, err
    assert "added 'alice'" in out and err == ""
    assert_new_file_mode(users_file)
    users = load_users(users_file)
    assert users["alice"].master_key == derive_master_key("alice", PASSWORD)
    assert users["alice"].services == ("ssh",)  # the default
    assert users["alice"].sources == () and users["alice"].expires is None and users["alice"].nat is False
    assert PASSWORD not in users_file.read_text()


def test_password_line_keeps_inner_and_trailing_spaces_but_not_the_line_end(users_file: Path) -> None:
    assert run(users_file, "add", "alice", stdin="  pass word with spaces \r\n")[0] == 0
    assert load_users(users_file)["alice"].master_key == derive_master_key("alice", "  pass word with spaces ")


def test_add_with_all_options(users_file: Path) -> None:
    code, _, err = run(users_file, "add", "bob", "--services", "ssh, web,ssh", "--source", "198.51.100.0/24",
                       "--source", "2001:db8::/32", "--expires", "2027-01-31", "--nat", stdin=PASSWORD + "\n")
    assert code == 0, err
    bob = load_users(users_file)["bob"]
    assert bob.services == ("ssh", "web")
    assert bob.sources == (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert bob.expires == dt.datetime(2027, 1, 31, tzinfo=dt.UTC)
    assert bob.nat is True


def test_interactive_password_is_asked_twice(users_file: Path) -> None:
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return PASSWORD

    code, _, err = run(users_file, "add", "alice", tty=True, prompt=prompt)
    assert code == 0, err
    assert len(asked) == 2
    assert load_users(users_file)["alice"].master_key == derive_master_key("alice", PASSWORD)


def test_interactive_passwords_that_differ(users_file: Path) -> None:
    answers = iter(["one password", "another one"])
    code, _, err = run(users_file, "add", "alice", tty=True, prompt=lambda _: next(answers))
    assert code == 2 and err == "knock-admin: error: the two passwords differ\n"
    assert not users_file.exists()


def test_short_password_is_warned_about(users_file: Path) -> None:
    code, _, err = run(users_file, "add", "alice", stdin="short\n")
    assert code == 0 and "warning" in err and "--key-gen" in err


def test_key_gen_writes_a_private_key_file_and_stores_the_key(users_file: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "carol.key"
    code, out, err = run(users_file, "add", "carol", "--key-gen", str(key_path))
    assert code == 0, err
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    text = key_path.read_text()
    assert text.endswith("\n") and len(base64.b64decode(text.strip(), validate=True)) == 32
    assert load_users(users_file)["carol"].master_key == base64.b64decode(text.strip())
    assert text.strip() not in out + err  # the key goes to the file only
    # Never overwrite a key file: it may be the only copy of a registered key.
    err = fail(users_file, "add", "dave", "--key-gen", str(key_path))
    assert "already exists" in err
    assert key_path.read_text() == text and "dave" not in entries(users_file)


def test_key_file_is_read(users_file: Path, tmp_path: Path) -> None:
    key = bytes(range(32))
    key_path = tmp_path / "erin.key"
    key_path.write_text(base64.b64encode(key).decode() + "\n")
    key_path.chmod(0o600)
    assert run(users_file, "add", "erin", "--key-file", str(key_path))[0] == 0
    assert load_users(users_file)["erin"].master_key == key


def test_key_file_problems(users_file: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "k.key"
    assert "not found" in fail(users_file, "add", "erin", "--key-file", str(key_path))
    key_path.write_text(base64.b64encode(bytes(32)).decode())
    key_path.chmod(0o644)
    assert "chmod 600" in fail(users_file, "add", "erin", "--key-file", str(key_path))
    key_path.chmod(0o600)
    key_path.write_text("not base64!")
    assert "base64" in fail(users_file, "add", "erin", "--key-file", str(key_path))
    key_path.write_text(base64.b64encode(bytes(16)).decode())
    assert "32 bytes" in fail(users_file, "add", "erin", "--key-file", str(key_path))
    assert not users_file.exists()
    code, _, err = run(users_file, "add", "erin", "--key-file", str(key_path), "--key-gen", str(tmp_path / "x"))
    assert code == 2 and "not allowed with" in err  # argparse: one or the other


def _three_users(users_file: Path, tmp_path: Path) -> None:
    assert run(users_file, "add", "alice", "--services", "ssh,web", "--nat", stdin=PASSWORD + "\n")[0] == 0
    assert run(users_file, "add", "bob", "--key-gen", str(tmp_path / "bob.key"), "--source", "10.0.0.0/8")[0] == 0
    assert run(users_file, "add", "carol", "--expires", "2030-06-01T12:00:00+02:00", "--source", "2001:db8::/48",
               stdin="another password\n")[0] == 0


def test_remove_touches_no_other_entry(users_file: Path, tmp_path: Path) -> None:
    _three_users(users_file, tmp_path)
    before = users_file.read_text()
    code, out, _ = run(users_file, "remove", "bob")
    assert code == 0 and "removed 'bob'" in out
    after = users_file.read_text()
    # Byte for byte: the new file is the old one with bob's block cut out.
    assert after == before[:before.index('    "bob": {')] + before[before.index('    "carol": {'):]
    old, new = json.loads(before)["users"], entries(users_file)
    assert set(new) == {"alice", "carol"}
    for name in new:
        assert json.dumps(new[name]).encode() == json.dumps(old[name]).encode()
    assert_new_file_mode(users_file)  # the mode the file was created with is kept


def test_set_services_touches_no_other_entry(users_file: Path, tmp_path: Path) -> None:
    _three_users(users_file, tmp_path)
    old = entries(users_file)
    code, out, _ = run(users_file, "set-services", "carol", "web,backup-db")
    assert code == 0 and "web,backup-db" in out
    new = entries(users_file)
    assert new["carol"]["services"] == ["web", "backup-db"]
    assert {k: v for k, v in new["carol"].items() if k != "services"} == \
        {k: v for k, v in old["carol"].items() if k != "services"}
    for name in ("alice", "bob"):
        assert json.dumps(new[name]).encode() == json.dumps(old[name]).encode()


def test_list_shows_everything_but_keys(users_file: Path, tmp_path: Path) -> None:
    _three_users(users_file, tmp_path)
    code, out, _ = run(users_file, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SERVICES", "SOURCES", "EXPIRES", "NAT"]
    assert lines[1].split() == ["alice", "password", "ssh,web", "any", "-", "yes"]
    assert lines[2].split() == ["bob", "key", "ssh", "10.0.0.0/8", "-", "no"]
    assert lines[3].split() == ["carol", "password", "ssh", "2001:db8::/48", "2030-06-01T12:00:00+02:00", "no"]
    for user in load_users(users_file).values():
        key = base64.b64encode(user.master_key).decode()
        assert key not in out and key[:12] not in out and user.master_key.hex()[:16] not in out


def test_list_marks_expired_users(users_file: Path) -> None:
    run(users_file, "add", "old", "--expires", "2026-06-01", stdin=PASSWORD + "\n")
    out, err = io.StringIO(), io.StringIO()
    later = admin.Io(io.StringIO(), out, err, now=lambda: dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    assert admin.main(["--users-file", str(users_file), "list"], later) == 0
    assert "2026-06-01T00:00:00+00:00 (expired)" in out.getvalue()


def test_list_of_an_empty_file(users_file: Path, tmp_path: Path) -> None:
    _three_users(users_file, tmp_path)
    for name in ("alice", "bob", "carol"):
        run(users_file, "remove", name)
    code, out, _ = run(users_file, "list")
    assert code == 0 and out.startswith("no users")


def test_users_file_from_environment(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNKNOCK_USERS", str(users_file))
    assert run(None, "add", "alice", stdin=PASSWORD + "\n")[0] == 0
    assert "alice" in load_users(users_file)
    assert admin.default_users_file() == users_file
    monkeypatch.delenv("DYNKNOCK_USERS")
    assert admin.default_users_file() == Path("/etc/dynknock/users.json")


def test_a_group_readable_file_stays_group_readable(users_file: Path, tmp_path: Path) -> None:
    """knock-auth may read the file through its group; narrowing it to 0600 would stop its reloads."""
    _three_users(users_file, tmp_path)
    users_file.chmod(0o640)
    assert run(users_file, "remove", "bob")[0] == 0
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o640
    users_file.chmod(0o644)  # too open: refused, and left alone
    assert "too open" in fail(users_file, "remove", "alice")
    assert "alice" in entries(users_file)


@pytest.mark.parametrize(("argv", "message"), [
    (["add", "bad name"], "invalid user name"),
    (["add", "x" * 65], "invalid user name"),
    (["add", "alice", "--services", "SSH"], "services 'SSH'"),
    (["add", "alice", "--services", ""], "services ''"),
    (["add", "alice", "--services", "ssh,,web"], "services"),
    (["add", "alice", "--services", "a" * 17], "services"),
    (["add", "alice", "--source", "10.0.0.1/8"], "did you mean 10.0.0.0/8?"),
    (["add", "alice", "--source", "nowhere"], "not an address or CIDR"),
    (["add", "alice", "--expires", "next tuesday"], "not an ISO 8601 date"),
    (["add", "alice", "--expires", "2020-01-01"], "in the past"),
])
def test_bad_input_is_one_line_and_exit_2(users_file: Path, argv: list[str], message: str) -> None:
    assert message in fail(users_file, *argv)
    assert not users_file.exists()  # nothing was written


def test_missing_or_empty_password(users_file: Path) -> None:
    assert "no password" in fail(users_file, "add", "alice", stdin="")
    assert "empty password" in fail(users_file, "add", "alice", stdin="\n")


def test_errors_about_users(users_file: Path, tmp_path: Path) -> None:
    assert "users file not found" in fail(users_file, "remove", "alice")
    assert "users file not found" in fail(users_file, "list")
    assert "users file not found" in fail(users_file, "set-services", "alice", "ssh")
    assert not users_file.parent.exists()  # a failed command creates nothing
    _three_users(users_file, tmp_path)
    before = users_file.read_bytes()
    assert "already exists" in fail(users_file, "add", "alice")
    assert "no user 'zoe'" in fail(users_file, "remove", "zoe")
    assert "no user 'zoe'" in fail(users_file, "set-services", "zoe", "ssh")
    assert "services" in fail(users_file, "set-services", "alice", "Web")
    assert users_file.read_bytes() == before


def test_broken_users_file(users_file: Path) -> None:
    users_file.parent.mkdir(parents=True)
    users_file.write_text("{not json")
    users_file.chmod(0o600)
    assert str(users_file) in fail(users_file, "list")
    assert str(users_file) in fail(users_file, "add", "alice")
    assert users_file.read_text() == "{not json"


def test_a_failed_write_is_exit_1_and_leaves_no_key_file(users_file: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _three_users(users_file, tmp_path)
    before = users_file.read_bytes()

    def disk_full(path: Path, users: object) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(admin, "save_users", disk_full)
    code, _, err = run(users_file, "remove", "bob")
    assert code == 1 and err == f"knock-admin: error: {users_file}: No space left on device\n"
    key_path = tmp_path / "dave.key"
    code, _, err = run(users_file, "add", "dave", "--key-gen", str(key_path))
    assert code == 1 and "No space left" in err
    assert not key_path.exists()  # a key for a user never added would only be a liability
    assert users_file.read_bytes() == before


def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main([]) == 2  # a command is required
    assert admin.main(["frobnicate"]) == 2
    assert admin.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "not a terminal" in text and "first line" in text  # how scripts pass the password
    assert admin.main(["add", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--services", "--source", "--expires", "--nat", "--key-file", "--key-gen", "standard input"):
        assert option in text


def test_as_a_real_process_with_a_piped_password(users_file: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DYNKNOCK_USERS": str(users_file)}
    result = subprocess.run([sys.executable, "-m", "dynknock.auth.admin", "add", "alice", "--services", "ssh,web"],
                            input=PASSWORD + "\n", capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert load_users(users_file)["alice"].master_key == derive_master_key("alice", PASSWORD)
    result = subprocess.run([sys.executable, "-m", "dynknock.auth.admin", "remove", "nobody"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert result.returncode == 2 and result.stderr == f"knock-admin: error: no user 'nobody' in {users_file}\n"


# --- key-pair users (protocol version 3) ----------------------------------------------------------

SEED = bytes(range(32))


def public_line(seed: bytes = SEED) -> str:
    return f"dynknock-ed25519 {base64.b64encode(curve25519.ed25519_public_key(seed)).decode()} paula@laptop"


def test_add_with_a_public_key_keeps_only_it_and_makes_the_server_key(users_file: Path, tmp_path: Path) -> None:
    code, out, _ = run(users_file, "add", "paula", "--public-key", public_line())
    assert code == 0
    entry = entries(users_file)["paula"]
    assert entry == {"public_key": base64.b64encode(curve25519.ed25519_public_key(SEED)).decode(),
                     "services": ["ssh"]}
    server_key = users_file.with_name("server.key")
    assert stat.S_IMODE(server_key.stat().st_mode) in (0o600, 0o640)
    # The line to give her: the server key's public half, which she pins.
    line = out.strip().splitlines()[-1]
    assert line.startswith("dynknock-x25519 ")
    assert run(users_file, "server-key") == (0, line + "\n", "")
    server = load_server_key(server_key)
    assert server is not None and server.line(os.uname().nodename) == line
    # The engine's view: her keys are the ones her client derives from her seed and that line.
    user = load_users(users_file)["paula"]
    assert user.public_key == curve25519.ed25519_public_key(SEED) and user.master_key == b""
    code, out, _ = run(users_file, "list")
    assert out.splitlines()[1].split()[:2] == ["paula", "key"] and "pair" in out.splitlines()[1]


def test_add_reads_the_public_key_from_her_pub_file(users_file: Path, tmp_path: Path) -> None:
    pub = tmp_path / "paula.key.pub"
    pub.write_text(public_line() + "\n")
    assert run(users_file, "add", "paula", "--public-key", str(pub))[0] == 0
    assert load_users(users_file)["paula"].public_key == curve25519.ed25519_public_key(SEED)


@pytest.mark.parametrize(("given", "why"), [
    ("dynknock-ed25519 AAAA", "32 bytes"),
    ("dynknock-x25519 " + base64.b64encode(bytes(32)).decode(), "neither"),
    # The neutral point (y = 1) and a point of order 8: each verifies forged signatures.
    ("dynknock-ed25519 " + base64.b64encode((1).to_bytes(32, "little")).decode(), "small order"),
    ("dynknock-ed25519 " + base64.b64encode(bytes.fromhex(
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")).decode(), "small order"),
    ("dynknock-ed25519 " + base64.b64encode(b"\xff" * 31 + b"\x7f").decode(), "no point"),
    ("no-such-file.pub", "neither"),
])
def test_add_refuses_an_unusable_public_key(users_file: Path, given: str, why: str) -> None:
    assert why in fail(users_file, "add", "paula", "--public-key", given)
    assert not users_file.exists() and not users_file.with_name("server.key").exists()


def test_a_private_key_is_refused_where_a_key_file_is_expected(users_file: Path, tmp_path: Path) -> None:
    private = tmp_path / "paula.key"
    private.write_text(f"dynknock-ed25519-private {base64.b64encode(SEED).decode()}\n")
    private.chmod(0o600)
    assert "register her public key line instead" in fail(users_file, "add", "paula", "--key-file", str(private))


def test_rekey_moves_a_password_user_to_a_key_pair_and_back(users_file: Path, tmp_path: Path) -> None:
    _three_users(users_file, tmp_path)
    before = entries(users_file)
    code, out, _ = run(users_file, "rekey", "alice", "--public-key", public_line())
    assert code == 0 and "dynknock-x25519 " in out
    after = entries(users_file)
    assert after["alice"] == {"public_key": base64.b64encode(curve25519.ed25519_public_key(SEED)).decode(),
                              "services": ["ssh", "web"], "nat": True}
    assert after["bob"] == before["bob"] and after["carol"] == before["carol"]
    assert run(users_file, "rekey", "alice", stdin=PASSWORD + "\n")[0] == 0
    assert entries(users_file)["alice"] == before["alice"]
    assert "no user 'dora'" in fail(users_file, "rekey", "dora", "--public-key", public_line())


def test_the_users_file_with_a_key_pair_user_needs_the_server_key(users_file: Path) -> None:
    """auth/engine.py refuses a users file with key-pair users and no server key (knock-auth keeps the
    previous file then, and says why)."""
    assert run(users_file, "add", "paula", "--public-key", public_line())[0] == 0
    from dynknock.auth.replay import ReplayCache
    from dynknock.auth.users import UsersFileError

    with pytest.raises(UsersFileError, match="server.key_file"):
        Engine(EngineConfig({}, 1, 2), load_users(users_file), ReplayCache(None, 0), os.urandom, lambda n: 0)
