"""Bus keys of a fleet: each gateway's stages hold keys of their own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dynknock import bus
from dynknock.config import load
from dynknock.stage import own_key_name
from dynknock.transport import (
    GATEWAY_ROLES,
    KEY_NAMES,
    OWNER,
    Transport,
    gateway_key_name,
    key_gateway,
    key_role,
    make_keys,
)


def test_key_names_say_role_and_gateway() -> None:
    assert gateway_key_name("capture", "gw-a") == "capture@gw-a"
    assert (key_role("capture@gw-a"), key_gateway("capture@gw-a")) == ("capture", "gw-a")
    assert (key_role("capture"), key_gateway("capture")) == ("capture", "")


def test_make_keys_makes_each_gateways_own_keys(tmp_path: Path) -> None:
    made = make_keys(tmp_path / "curve", ("gw-a", "gw-b"))
    names = sorted(path.name.removesuffix(".key_secret") for path in made)
    own = [gateway_key_name(role, g) for g in ("gw-a", "gw-b") for role in GATEWAY_ROLES]
    assert names == sorted([*KEY_NAMES, *own])
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in made)
    assert sorted(p.name for p in (tmp_path / "curve" / "public").iterdir()) == sorted(f"{n}.key" for n in names)


def test_peer_names_know_every_gateways_key(tmp_path: Path) -> None:
    make_keys(tmp_path, ("gw-a",))
    transport = Transport(bus.Endpoints.in_directory(tmp_path), "auth", tmp_path)
    names = set(transport.peer_names().values())
    assert names == {*KEY_NAMES, "capture@gw-a", "gate@gw-a", "relay@gw-a"}
    assert all(len(key) == 40 for key in transport.peer_names())  # z85 of 32 bytes: ZeroMQ's User-Id


def test_a_gateway_stage_uses_its_gateways_own_key_when_its_host_has_it(tmp_path: Path) -> None:
    make_keys(tmp_path, ("gw-a",))
    path = tmp_path / "dynknock.toml"
    endpoints = ", ".join(f'{name} = "tcp://198.18.0.21:{7001 + i}"' for i, name in enumerate(OWNER))
    path.write_text(f'[server]\ninterface = "eth0"\naddresses = ["198.18.0.1"]\ngateway = "gw-a"\n'
                    f'[bus]\ntransport = "tcp"\ncurve_dir = "{tmp_path}"\ntcp_endpoints = {{ {endpoints} }}\n'
                    '[services.ssh]\ntarget = "127.0.0.1:22"\n')
    config = load(path)
    assert [own_key_name(config, stage) for stage in ("capture", "gate", "relay", "auth")] == \
        ["capture@gw-a", "gate@gw-a", "relay@gw-a", ""]
    # Another host's gateway name, whose keys are not here: the role's shared key.
    assert own_key_name(replace(config, gateway="gw-b"), "capture") == ""
