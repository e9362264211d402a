"""The client config file ([servers.NAME] stanzas) and key files."""

from __future__ import annotations

import base64
import ipaddress
import os
import stat
from pathlib import Path

import pytest

from dynknock.client.config import ClientConfigError, ServerStanza, load_config, read_key_file, write_new_key_file

GOOD = """
[servers.home]
host = "gw.example.org"
port = 4444
user = "alice"
service = "ssh-alt"
key_file = "~/keys/home.key"
family = "6"
nat = false
source_ip = "2001:db8::7"

[servers.work]
family = 4
nat = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return path


def test_good_stanzas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    stanzas = load_config(write(tmp_path, GOOD), required=True)
    assert stanzas["home"] == ServerStanza(
        name="home", host="gw.example.org", port=4444, user="alice", service="ssh-alt",
        key_file=str(tmp_path / "keys/home.key"), family=6, nat=False,
        source_ip=ipaddress.IPv6Address("2001:db8::7"))
    # Unset keys stay None so the command line and the defaults can fill them.
    assert stanzas["work"] == ServerStanza(name="work", family=4, nat=True)


def test_missing_default_file_is_fine_but_a_named_one_is_not(tmp_path: Path) -> None:
    assert load_config(tmp_path / "nope.toml", required=False) == {}
    with pytest.raises(ClientConfigError, match="nope.toml: config file not found"):
        load_config(tmp_path / "nope.toml", required=True)


@pytest.mark.parametrize(("line", "key", "why"), [
    ("port = 70000", "port", "1-65535"),
    ("port = \"22\"", "port", "1-65535"),
    ("port = true", "port", "1-65535"),
    ("family = \"5\"", "family", '"4" or "6"'),
    ("family = true", "family", '"4" or "6"'),
    ("nat = \"yes\"", "nat", "true or false"),
    ("bind = 1", "bind", "true or false"),
    ("source_ip = \"10.0.0.300\"", "source_ip", "not an IP address"),
    ("source_ip = 17", "source_ip", "must be an IP address"),
    ("service = \"SSH\"", "service", "a-z 0-9"),
    ("service = \"a-very-long-service-name\"", "service", "a-z 0-9"),
    ("user = \"al ice\"", "user", "without spaces"),
    ("host = \"\"", "host", "host name"),
    ("key_file = 3", "key_file", "path"),
])
def test_bad_value_is_one_line_naming_key_and_file(tmp_path: Path, line: str, key: str, why: str) -> None:
    path = write(tmp_path, f"[servers.s]\n{line}\n")
    with pytest.raises(ClientConfigError) as info:
        load_config(path, required=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: servers.s.{key} = ")
    assert why in message


def test_unknown_key_is_refused_so_typos_do_not_pass_silently(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.s]\nsource-ip = \"1.2.3.4\"\n")
    with pytest.raises(ClientConfigError, match=r"servers\.s\.source-ip: unknown key"):
        load_config(path, required=True)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="unknown table or key 'server'"):
        load_config(write(tmp_path, "[server.s]\nport = 1\n"), required=True)


def test_nat_and_source_ip_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="nat = true and source_ip"):
        load_config(write(tmp_path, "[servers.s]\nnat = true\nsource_ip = \"1.2.3.4\"\n"), required=True)


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[servers.s\nport = 1\n")
    with pytest.raises(ClientConfigError, match="not valid TOML"):
        load_config(path, required=True)


def test_stanza_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="servers.s must be a table"):
        load_config(write(tmp_path, "[servers]\ns = 3\n"), required=True)


# --- key files ---------------------------------------------------------------------


def test_key_gen_writes_0600_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "k.key"
    encoded = write_new_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(base64.b64decode(encoded)) == 32
    assert read_key_file(path) == ("", base64.b64decode(encoded))
    assert write_new_key_file(tmp_path / "other.key") != encoded  # random, not a constant


def test_key_gen_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    encoded = write_new_key_file(path)
    with pytest.raises(ClientConfigError, match="refusing to overwrite"):
        write_new_key_file(path)
    assert path.read_text().strip() == encoded


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.key"
    write_new_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(ClientConfigError) as info:
        read_key_file(path)
    assert f"mode {mode:04o}" in str(info.value) and f"chmod 600 {path}" in str(info.value)


@pytest.mark.parametrize(("content", "why"), [("not base64!!", "not valid base64"),
                                              (base64.b64encode(b"short").decode(), "must be 32 bytes")])
def test_bad_key_file_content(tmp_path: Path, content: str, why: str) -> None:
    path = tmp_path / "k.key"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(ClientConfigError, match=why):
        read_key_file(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="key file not found"):
        read_key_file(tmp_path / "none.key")


def test_key_file_must_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="not a regular file"):
        read_key_file(tmp_path)
