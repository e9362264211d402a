"""The metrics token: who may scrape (dynknock/metrics.py), read as scripts on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynknock.config import ConfigError, parse
from dynknock.metrics import MIN_TOKEN_CHARS, TokenError, authorised, load_token, token_path

TOKEN = "k" * 43


@pytest.mark.parametrize("header,ok", [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),  # the scheme is case-insensitive (RFC 7235)
    (f"Bearer  {TOKEN} ", True),
    (None, False),
    ("", False),
    ("Bearer ", False),
    (f"Bearer {TOKEN[:-1]}", False),
    (f"Bearer {TOKEN}k", False),
    (f"Basic {TOKEN}", False),
    (TOKEN, False),
    ("Bearer \u00e9" + TOKEN, False),  # non-ASCII must not raise (compare_digest on str would)
])
def test_authorised(header: str | None, ok: bool) -> None:
    assert authorised(header, TOKEN) is ok


def test_default_token_is_made_once_0640_and_kept(tmp_path: Path) -> None:
    path, create = token_path("", tmp_path)
    assert (path, create) == (tmp_path / "metrics.token", True)
    first = load_token(path, create)
    assert len(first) >= MIN_TOKEN_CHARS and path.stat().st_mode & 0o777 == 0o640
    assert load_token(path, create) == first


def test_two_defaults_made_in_different_places_differ(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert load_token(tmp_path / "a" / "t", True) != load_token(tmp_path / "b" / "t", True)


def test_a_configured_token_file_is_never_made(tmp_path: Path) -> None:
    path, create = token_path(str(tmp_path / "mine"), tmp_path)
    assert not create
    with pytest.raises(TokenError, match=f"metrics.token_file {path}: not found"):
        load_token(path, create)
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o650, 0o740, 0o666])
def test_too_open_modes_are_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    os.chmod(path, mode)
    with pytest.raises(TokenError, match=f"mode {mode:04o} is too open"):
        load_token(path, False)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440])
def test_private_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, mode)
    assert load_token(path, False) == TOKEN


@pytest.mark.parametrize("content", ["", "short", "two words of a token that is long"])
def test_a_token_must_be_one_long_word(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    os.chmod(path, 0o600)
    with pytest.raises(TokenError, match="one word"):
        load_token(path, False)


def test_a_directory_is_refused_and_a_link_only_as_the_default(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text(TOKEN)
    os.chmod(target, 0o600)
    (tmp_path / "link").symlink_to(target)
    assert load_token(tmp_path / "link", False) == TOKEN  # an admin's file may live elsewhere
    with pytest.raises(TokenError, match="metrics.token_file"):
        load_token(tmp_path / "link", True)  # ours, in our directory: a link there is someone's trick
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(TokenError, match="not a regular file"):
        load_token(tmp_path / "dir", False)


MINIMAL = {"server": {"interface": "lo", "addresses": ["127.0.0.1"]}, "services": {"ssh": {"target": "127.0.0.1:22"}}}


def test_config_token_file_defaults_to_empty_and_must_be_absolute() -> None:
    assert parse(MINIMAL, "t.toml").metrics_token_file == ""
    config = parse({**MINIMAL, "metrics": {"token_file": "/etc/dynknock/metrics.token"}}, "t.toml")
    assert config.metrics_token_file == "/etc/dynknock/metrics.token"
    with pytest.raises(ConfigError, match="metrics.token_file"):
        parse({**MINIMAL, "metrics": {"token_file": "metrics.token"}}, "t.toml")
