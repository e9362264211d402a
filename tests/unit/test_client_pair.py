"""knock-client's side of key pairs: pinning the server's key (known_servers) and the run that uses it."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from dynknock import curve25519
from dynknock.auth.serverkey import ServerKey
from dynknock.client import pair
from dynknock.client.app import Io
from dynknock.client.config import ClientConfigError
from dynknock.client.main import EXIT_OK, EXIT_USAGE, run

SERVER = ServerKey(bytes(range(32)))
OTHER = ServerKey(bytes(range(1, 33)))


def test_a_line_given_once_is_pinned_then_used_alone(tmp_path: Path) -> None:
    known = str(tmp_path / "dir" / "known_servers")
    key, message = pair.pinned_server_key("gw", SERVER.line("gw"), known)
    assert key == SERVER.public and "Pinned the server key of gw" in message
    assert Path(known).read_text() == f"gw {SERVER.line()}\n"
    assert pair.pinned_server_key("gw", None, known) == (SERVER.public, "")
    assert pair.pinned_server_key("gw", SERVER.line(), known) == (SERVER.public, "")  # the same line: quiet


def test_a_changed_server_key_is_an_error_never_a_silent_replacement(tmp_path: Path) -> None:
    known = str(tmp_path / "known_servers")
    pair.pinned_server_key("gw", SERVER.line(), known)
    with pytest.raises(ClientConfigError, match=r"not the one pinned \(line 1 of .*known_servers: SHA256:"):
        pair.pinned_server_key("gw", OTHER.line(), known)
    assert Path(known).read_text() == f"gw {SERVER.line()}\n"  # unchanged


def test_no_pin_and_no_line_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="knock-admin server-key"):
        pair.pinned_server_key("gw", None, str(tmp_path / "known_servers"))


def test_pins_are_per_server_name_and_port(tmp_path: Path) -> None:
    known = str(tmp_path / "known_servers")
    pair.pinned_server_key("gw", SERVER.line(), known)
    pair.pinned_server_key(pair.server_name("gw", 7000, 62201), OTHER.line(), known)
    assert pair.pinned_server_key("[gw]:7000", None, known) == (OTHER.public, "")
    assert pair.pinned_server_key("gw", None, known) == (SERVER.public, "")


@pytest.mark.parametrize("text", ["gw dynknock-x25519\n", "gw dynknock-ed25519 " + "A" * 43 + "=\n",
                                  "gw dynknock-x25519 !!!\n"])
def test_a_damaged_known_servers_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    known = tmp_path / "known_servers"
    known.write_text("# comment\n\n" + text)
    with pytest.raises(ClientConfigError, match="line 3"):
        pair.pinned_server_key("gw", None, str(known))


def test_a_bad_given_line_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="dynknock-x25519"):
        pair.pinned_server_key("gw", "dynknock-ed25519 " + base64.b64encode(bytes(32)).decode(), str(tmp_path / "k"))


def test_the_run_refuses_a_server_key_with_a_symmetric_key_file(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text(base64.b64encode(bytes(32)).decode() + "\n")
    key.chmod(0o600)
    (tmp_path / "c.toml").write_text("")
    err = io.StringIO()
    code = run(["-k", str(key), "--server-key", SERVER.line(), "-c", str(tmp_path / "c.toml"), "127.0.0.1"],
               Io(stderr=err, environ={"USER": "u", "HOME": str(tmp_path)}))
    assert code == EXIT_USAGE and "--server-key is for key pairs" in err.getvalue()


def test_key_gen_output_registers_and_knocks_with_the_same_keys(tmp_path: Path) -> None:
    """The public line --key-gen prints is what the server derives her keys from."""
    out = io.StringIO()
    path = tmp_path / "paula.key"
    assert run(["--key-gen", str(path)], Io(stdout=out, stderr=io.StringIO(), environ={"USER": "paula"})) == EXIT_OK
    seed = base64.b64decode(path.read_text().split()[1])
    public = base64.b64decode(out.getvalue().split()[1])
    assert curve25519.ed25519_public_key(seed) == public
    assert pair.session_keys(seed, SERVER.public) == SERVER.session_keys(public)
