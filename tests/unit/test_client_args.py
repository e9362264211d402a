"""Command-line parsing and the merge of options, config stanza and defaults."""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from dynknock import curve25519
from dynknock.client.app import Io, Settings, resolve_settings
from dynknock.client.main import (
    EXIT_HOST,
    EXIT_NO_KNOCK,
    EXIT_OK,
    EXIT_USAGE,
    Options,
    UsageError,
    build_parser,
    quick_parse,
    run,
)
from dynknock.client.syn import SynSender
from dynknock.protocol import CONTROL_PORT

ENV = {"USER": "alice"}


def parse(argv: list[str]) -> Options:
    return build_parser().parse_args(argv, namespace=Options())


def settings(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    return resolve_settings(parse(argv), ENV if environ is None else environ)


def no_config(tmp_path: Path) -> list[str]:
    return ["-c", str(tmp_path / "client.toml")]


@pytest.fixture
def empty_config(tmp_path: Path) -> list[str]:
    (tmp_path / "client.toml").write_text("")
    return no_config(tmp_path)


def test_defaults(empty_config: list[str]) -> None:
    s = settings(["gw.example.org", *empty_config])
    assert s == Settings(host="gw.example.org", port=CONTROL_PORT, user="alice", service="ssh", key_file=None,
                         family=None, timeout=5.0, nat=False, source_ip=None)


def test_user_falls_back_to_logname_then_none(empty_config: list[str]) -> None:
    assert settings(["h", *empty_config], {"LOGNAME": "bob"}).user == "bob"
    assert settings(["h", *empty_config], {}).user is None


def test_all_options(empty_config: list[str], tmp_path: Path) -> None:
    s = settings(["h", *empty_config, "-p", "1001", "-u", "bob", "-s", "web", "-k", "~/x.key", "-6",
                  "--timeout", "2.5", "--source-ip", "10.0.0.3", "-q", "--exec", "ssh -p {port} '{host}'"])
    assert (s.port, s.user, s.service, s.family, s.timeout) == (1001, "bob", "web", 6, 2.5)
    assert s.key_file == str(Path("~/x.key").expanduser())  # kept as pathlib prints it (client/paths.py)
    assert s.source_ip == ipaddress.IPv4Address("10.0.0.3") and not s.nat
    assert s.quiet and s.exec_argv == ("ssh", "-p", "{port}", "{host}")
    assert settings(["h", *empty_config, "--nat", "--proxy"]).nat is True


@pytest.mark.parametrize("argv", [
    ["-4", "-6"],
    ["--nat", "--source-ip", "1.2.3.4"],
    ["--exec", "true", "--proxy"],
    ["-p", "0"],
    ["-p", "65536"],
    ["-p", "ssh"],
    ["--source-ip", "1.2.3"],
    ["--timeout", "0"],
    ["--timeout", "soon"],
    ["-s", "Bad Service"],
    ["--bogus"],
])
def test_usage_errors_exit_2(argv: list[str], empty_config: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["h", *empty_config, *argv], Io(environ=ENV)) == EXIT_USAGE
    assert "usage: knock-client" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "why"), [
    ([], "HOST is required"),
    (["h", "--password-stdin", "--proxy"], "stdin carries the connection"),
    (["h", "--exec", "ssh 'unbalanced"], "--exec: No closing quotation"),
    (["h", "--exec", ""], "--exec: empty command"),
])
def test_semantic_usage_errors(argv: list[str], why: str, empty_config: list[str]) -> None:
    err = io.StringIO()
    assert run([*argv, *empty_config], Io(stdout=io.StringIO(), stderr=err, environ=ENV)) == EXIT_USAGE
    assert err.getvalue().startswith("knock-client: ") and why in err.getvalue()
    assert err.getvalue().count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["-p", "0"], "argument -p/--port: 0 is not in 1-65535"),
    (["-p", "ssh"], "argument -p/--port: 'ssh' is not a port number"),
    (["--timeout", "0"], "argument --timeout: must be more than 0 and at most 3600 seconds"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
    (["-s", "Bad Service"], "argument -s/--service: 'Bad Service': 1-16 characters of a-z 0-9 _ -"),
    (["-s", "ssh\n"], "argument -s/--service: 'ssh\\n': 1-16 characters of a-z 0-9 _ -"),
    (["--source-ip", "1.2.3"], "argument --source-ip: '1.2.3' is not an IP address"),
])
def test_a_bad_value_is_named_with_why(argv: list[str], message: str, empty_config: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["h", *empty_config, *argv], Io(environ=ENV)) == EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1] == f"knock-client: error: {message}"


def test_help_names_the_control_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"], Io()) == EXIT_OK
    assert f"control UDP port (default {CONTROL_PORT})" in " ".join(capsys.readouterr().out.split())


def test_help_documents_exit_codes_and_ssh(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"], Io()) == EXIT_OK
    text = capsys.readouterr().out
    for line in ["0  the door is open", "3  no answer", "4  the server does not allow",
                 "5  the knocks could not be sent", "6  the server could not open", "7  unknown host",
                 "ProxyCommand knock-client --proxy -k"]:
        assert line in text


# --- config stanzas merged with the command line ------------------------------------


STANZA = """
[servers.home]
host = "127.0.0.1"
port = 4444
user = "carol"
service = "git"
family = "4"
nat = true
key_file = "/etc/home.key"
"""


def test_stanza_fills_in_and_command_line_overrides(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text(STANZA)
    cfg = no_config(tmp_path)
    s = settings(["home", *cfg])
    assert (s.host, s.port, s.user, s.service, s.family, s.nat, s.key_file) == (
        "127.0.0.1", 4444, "carol", "git", 4, True, "/etc/home.key")
    s = settings(["home", *cfg, "-p", "5555", "-u", "dave", "-s", "ssh", "-6", "--source-ip", "::1", "-k", "/k"])
    assert (s.port, s.user, s.service, s.family, s.key_file) == (5555, "dave", "ssh", 6, "/k")
    # --source-ip on the command line replaces the stanza's nat = true, not adds to it.
    assert s.source_ip == ipaddress.IPv6Address("::1") and s.nat is False
    # A HOST that names no stanza is a host.
    assert settings(["elsewhere", *cfg]).host == "elsewhere"


def test_bad_config_value_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text("[servers.home]\nport = 0\n")
    err = io.StringIO()
    assert run(["home", "-c", str(path)], Io(stderr=err, environ=ENV)) == EXIT_USAGE
    assert err.getvalue() == f"knock-client: {path}: servers.home.port = 0: must be an integer 1-65535\n"


def test_default_config_path_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config/dynknock").mkdir(parents=True)
    (tmp_path / ".config/dynknock/client.toml").write_text(STANZA)
    assert resolve_settings(parse(["home"]), ENV).port == 4444


def test_missing_named_config_file(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="config file not found"):
        settings(["h", *no_config(tmp_path)])


def test_usage_error_type() -> None:
    with pytest.raises(UsageError):
        resolve_settings(parse([]), ENV)


# --- --key-gen, and failures before anything is sent --------------------------------


def test_key_gen_makes_a_key_pair_and_prints_its_public_line(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "new.key"
    assert run(["--key-gen", str(path)], Io(stdout=out, stderr=err, environ={"USER": "alice"})) == EXIT_OK
    line = out.getvalue().strip()
    kind, public, comment = line.split(" ", 2)
    assert (kind, len(base64.b64decode(public)), comment.startswith("alice@")) == ("dynknock-ed25519", 32, True)
    private = path.read_text().split()
    assert private[0] == "dynknock-ed25519-private" and len(base64.b64decode(private[1])) == 32
    assert curve25519.ed25519_public_key(base64.b64decode(private[1])) == base64.b64decode(public)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(f"{path}.pub").read_text() == line + "\n"  # as ssh-keygen leaves FILE.pub
    assert f"knock-admin add NAME --public-key '{line}'" in err.getvalue()
    # A second run must not overwrite the key.
    assert run(["--key-gen", str(path)], Io(stdout=io.StringIO(), stderr=err)) == EXIT_USAGE
    assert path.read_text().split()[1] == private[1]


def test_key_gen_symmetric_prints_base64_and_writes_0600(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "new.key"
    assert run(["--key-gen", str(path), "--symmetric"], Io(stdout=out, stderr=err)) == EXIT_OK
    encoded = out.getvalue().strip()
    assert len(base64.b64decode(encoded)) == 32
    assert path.read_text().strip() == encoded
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "knock-admin add NAME --key-file" in err.getvalue()
    assert run(["--key-gen", str(path), "--symmetric"], Io(stdout=io.StringIO(), stderr=err)) == EXIT_USAGE
    assert path.read_text().strip() == encoded


def test_unknown_host_exits_7(empty_config: list[str]) -> None:
    err = io.StringIO()
    assert run(["no-such-host.invalid", *empty_config], Io(stderr=err, environ=ENV)) == EXIT_HOST
    assert "cannot resolve 'no-such-host.invalid'" in err.getvalue()


def test_ipv6_asked_for_an_ipv4_only_host_exits_7(empty_config: list[str]) -> None:
    err = io.StringIO()
    assert run(["127.0.0.1", "-6", *empty_config], Io(stderr=err, environ=ENV)) == EXIT_HOST
    assert "IPv6 address" in err.getvalue()


def test_no_socket_for_the_knocks_exits_5_before_sending_anything(empty_config: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)  # loopback delivers within the sender's sendto: no need to wait

        def refuse(family: int) -> SynSender:
            raise OSError(24, "Too many open files")

        err = io.StringIO()
        asked: list[str] = []

        def getpass(prompt: str) -> str:
            asked.append(prompt)
            return "pw"

        io_ = Io(stdout=io.StringIO(), stderr=err, environ=ENV, open_syn_sender=refuse, getpass=getpass)
        argv = ["127.0.0.1", "-p", str(server.getsockname()[1]), *empty_config]
        assert run(argv, io_) == EXIT_NO_KNOCK
        assert err.getvalue() == "knock-client: cannot open a socket for the knocks: Too many open files\n"
        assert asked == []  # not even the password was asked for
        with pytest.raises(BlockingIOError):
            server.recv(2048)  # and no P1 left


# --- quick_parse: argparse's answer, or none --------------------------------------------------

WORDS = ["gw", "h2", "", "-", "--", "-q", "--quiet", "--proxy", "--password-stdin", "--nat", "-4", "-6", "-p", "--port",
         "-u", "--user", "-s", "--service", "-k", "--key-file", "--timeout", "-c", "--config", "--source-ip",
         "--key-gen", "--exec", "-h", "--help", "--prox", "--port=22", "-k/x", "-qk", "22", "0", "70000", "-5",
         "2.5", "nan", "0", "3601", "ssh", "SSH", "ssh\n", "a" * 17, "a b", "~/k.key", "./a//b/", "198.18.0.1",
         "::1", "1.2.3", "ssh -p {port} {host}", "é"]


def _argparse(argv: list[str]) -> object:
    """argparse's options for argv, or the exit status it gave."""
    import contextlib

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return parse(argv)
    except SystemExit as exc:
        return exc.code


@hypothesis_settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=8))
@example(["--proxy", "-q", "-k", "~/.config/dynknock/myserver.key", "gw"])
@example(["-k", "k", "gw", "extra"])
@example(["-4", "-6", "gw"])
@example(["gw", "--exec", "ssh", "--proxy"])
@example(["--source-ip", "::1", "--nat", "gw"])
@example(["-s", "ssh\n", "gw"])
def test_quick_parse_gives_argparse_options_or_nothing(argv: list[str]) -> None:
    quick = quick_parse(argv)
    slow = _argparse(argv)
    if quick is not None:
        assert quick == slow, argv


@pytest.mark.parametrize("argv", [
    ["--proxy", "-k", "~/.config/dynknock/myserver.key", "myserver"],
    ["--proxy", "-q", "--timeout", "5", "-s", "bench", "-k", "/tmp/u1.key", "198.18.0.1"],
    ["gw.example.org", "-u", "alice", "--exec", "ssh -p {port} {host}"],
    ["-p", str(CONTROL_PORT), "-4", "--nat", "gw"],
    ["--key-gen", "~/new.key"],
    ["--key-gen", "~/new.key", "--symmetric"],
    ["--server-key", "dynknock-x25519 AAAA", "-k", "~/k", "gw"],
])
def test_quick_parse_answers_the_common_command_lines(argv: list[str]) -> None:
    assert quick_parse(argv) is not None
    assert quick_parse(argv) == _argparse(argv)


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["--prox", "gw"], ["-p", "0", "gw"], ["gw", "h2"], []])
def test_quick_parse_leaves_help_errors_and_abbreviations_to_argparse(argv: list[str]) -> None:
    assert quick_parse(argv) is None or argv == []


def test_a_fleet_stanza_binds_its_packets(tmp_path: Path) -> None:
    """bind = true in a stanza (a fleet's gateway) is --bind, so ssh's ProxyCommand needs no option."""
    (tmp_path / "client.toml").write_text('[servers.gw-a]\nhost = "198.18.0.1"\nbind = true\n\n[servers.home]\n')
    cfg = no_config(tmp_path)
    assert settings(["gw-a", *cfg]).bind is True
    assert settings(["home", *cfg]).bind is False
    assert settings(["home", *cfg, "--bind"]).bind is True


# --- the option table (client/options.py) and what follows from it ------------------------------


def test_the_type_checkers_views_name_the_tables_fields() -> None:
    """Options and ServerStanza take their fields from the table at run time; their annotations,
    which only the type checker reads, must name the same fields in the same order."""
    import ast

    from dynknock.client import config, options

    assert tuple(Options.__annotations__) == options.FIELDS == Options.__slots__
    tree = ast.parse(Path(config.__file__).read_text())
    stanza = next(node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == "ServerStanza")
    declared = tuple(node.target.id for node in stanza.body
                     if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name))
    assert declared == config.ServerStanza._fields == ("name", *options.FILE_KEYS)


def test_a_port_is_checked_by_one_function_from_either_side(tmp_path: Path) -> None:
    from dynknock.client import options
    from dynknock.client.config import ClientConfigError, load_config

    port = next(option for option in options.OPTIONS if option.dest == "port")
    assert port.kind is port.file is options.PORT
    assert options.PORT.from_word("22") == 22
    (tmp_path / "c.toml").write_text("[servers.s]\nport = 22\n")
    assert load_config(tmp_path / "c.toml", required=True)["s"].port == 22
    with pytest.raises(ValueError, match="0 is not in 1-65535"):
        options.PORT.from_word("0")
    (tmp_path / "c.toml").write_text("[servers.s]\nport = 0\n")
    with pytest.raises(ClientConfigError, match="must be an integer 1-65535"):
        load_config(tmp_path / "c.toml", required=True)
