"""The server configuration: the example parses, and every bad value is one line naming file and key.

Each bad case is written to a real TOML file and loaded, so the message is
checked exactly as an operator would see it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dynknock import bus
from dynknock import config as cfg
from dynknock.config import Config, ConfigError, ServiceConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dynknock.toml"
MINIMAL: dict[str, Any] = {
    "server": {"interface": "eth0", "addresses": ["198.18.0.1"]},
    "services": {"ssh": {"target": "127.0.0.1:22"}},
}


def to_toml(document: dict[str, Any]) -> str:
    """Enough of a TOML writer for these tests: tables of scalars and lists, one level of sub-tables."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines: list[str] = []
    for section, body in document.items():
        if not isinstance(body, dict):
            lines.insert(0, f"{section} = {value(body)}")
            continue
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k)} = {value(v)}" for k, v in scalars.items()]
        for name, sub in body.items():
            if isinstance(sub, dict):
                lines.append(f"[{section}.{json.dumps(name)}]")
                lines += [f"{json.dumps(k)} = {value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "dynknock.toml"
    path.write_text(to_toml(document), encoding="utf-8")
    return path


def with_value(section: str, key: str, v: Any) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL)
    document.setdefault(section, {})[key] = v
    return document


def error_of(tmp_path: Path, document: dict[str, Any]) -> tuple[str, Path]:
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as raised:
        cfg.load(path)
    message = str(raised.value)
    assert "\n" not in message, "one line"
    assert message.startswith(f"{path}: ")
    return message, path


# --- good files -------------------------------------------------------------------------------


def test_example_parses() -> None:
    config = cfg.load(EXAMPLE)
    assert config.path == str(EXAMPLE)
    assert config.interface == "eth0"
    assert config.addresses == ("198.18.0.1",)
    assert config.control_port == 62201
    assert (config.door_port_low, config.door_port_high) == (63000, 65535)
    assert config.window_seconds == 30 and config.single_use is True
    assert config.clock_skew_seconds == 60 and config.knock_timeout_seconds == 10
    assert config.users_file == Path("/etc/dynknock/users.json")
    assert config.state_dir == Path("/var/lib/dynknock")
    assert config.run_as == "dynknock"
    assert config.runtime_dir == Path("/run/dynknock")
    assert config.gate_backend == "nftables" and config.stealth is True
    assert config.public_tcp_ports == () and config.public_udp_ports == ()
    assert config.nft_table == "dynknock"
    assert config.metrics_listen == "127.0.0.1:9877"
    assert config.services == {"ssh": ServiceConfig("ssh", "127.0.0.1", 22, "kernel")}


def test_example_states_every_default() -> None:
    """The example shows each key with its default, so the two must agree."""
    assert cfg.load(EXAMPLE) == cfg.parse(copy.deepcopy(MINIMAL), str(EXAMPLE))


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in cfg.KEYS.values():
        assert f"[{key.section}]" in text and f"\n{key.name} = " in text, f"{key.section}.{key.name}"


def test_full_file(tmp_path: Path) -> None:
    document = {
        "server": {"interface": "ens3", "addresses": ["198.18.0.1", "2001:DB8::1"], "control_port": 5000,
                   "door_ports": "50000-50015", "window_seconds": 3600, "single_use": False,
                   "clock_skew_seconds": 5, "knock_timeout_seconds": 120, "users_file": "/srv/users.json",
                   "state_dir": "/srv/state", "run_as": "knock"},
        "bus": {"runtime_dir": "/tmp/dk"},
        "gate": {"backend": "none", "stealth": False, "public_tcp_ports": [80, 443], "public_udp_ports": [53],
                 "table": "dk_1"},
        "metrics": {"listen": "[::1]:9100"},
        "services": {"ssh": {"target": "127.0.0.1:2222"}, "web-2": {"target": "[::1]:8080"},
                     "db_x": {"target": "::1:5432"}},
    }
    config = cfg.load(write(tmp_path, document))
    assert config.addresses == ("198.18.0.1", "2001:db8::1")  # canonical form: capture compares strings
    assert (config.control_port, config.door_port_low, config.door_port_high) == (5000, 50000, 50015)
    assert config.window_seconds == 3600 and config.single_use is False
    assert config.runtime_dir == Path("/tmp/dk") and config.gate_backend == "none" and config.stealth is False
    assert config.public_tcp_ports == (80, 443) and config.public_udp_ports == (53,)
    assert config.nft_table == "dk_1" and config.metrics_listen == "[::1]:9100"
    assert config.services == {"ssh": ServiceConfig("ssh", "127.0.0.1", 2222),
                               "web-2": ServiceConfig("web-2", "::1", 8080),
                               "db_x": ServiceConfig("db_x", "::1", 5432)}


def test_config_is_frozen(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, MINIMAL))
    assert isinstance(config, Config)
    with pytest.raises(AttributeError):
        config.control_port = 1  # type: ignore[misc]


@pytest.mark.parametrize("low,high", [(1, 16), (40000, 40015), (65520, 65535)])
def test_smallest_door_ranges(tmp_path: Path, low: int, high: int) -> None:
    document = with_value("server", "door_ports", f"{low}-{high}")
    document["server"]["control_port"] = 62201 if not low <= 62201 <= high else 1000
    config = cfg.load(write(tmp_path, document))
    assert (config.door_port_low, config.door_port_high) == (low, high)


@pytest.mark.parametrize("port", [39999, 50000])
def test_control_port_just_outside_the_door_range(tmp_path: Path, port: int) -> None:
    assert cfg.load(write(tmp_path, with_value("server", "control_port", port))).control_port == port


# --- bad values: ConfigError naming the file and section.key ----------------------------------------

BAD_VALUES: list[tuple[str, str, Any]] = [
    ("server", "control_port", 0),
    ("server", "control_port", 70000),
    ("server", "control_port", 65536),
    ("server", "control_port", -1),
    ("server", "control_port", "x"),
    ("server", "control_port", "62201"),
    ("server", "control_port", True),
    ("server", "control_port", 62201.0),
    ("server", "control_port", [62201]),
    ("server", "door_ports", "50000-40000"),
    ("server", "door_ports", "1-5"),
    ("server", "door_ports", "40000-40014"),
    ("server", "door_ports", "abc"),
    ("server", "door_ports", "a-b"),
    ("server", "door_ports", "40000"),
    ("server", "door_ports", "0-100"),
    ("server", "door_ports", "60000-70000"),
    ("server", "door_ports", ""),
    ("server", "door_ports", 40000),
    ("server", "door_ports", [40000, 49999]),
    ("server", "window_seconds", 0),
    ("server", "window_seconds", -5),
    ("server", "window_seconds", 3601),
    ("server", "window_seconds", "30"),
    ("server", "window_seconds", True),
    ("server", "single_use", 1),
    ("server", "single_use", "yes"),
    ("server", "clock_skew_seconds", 4),
    ("server", "clock_skew_seconds", 601),
    ("server", "knock_timeout_seconds", 0),
    ("server", "knock_timeout_seconds", 121),
    ("server", "users_file", "users.json"),
    ("server", "users_file", ""),
    ("server", "users_file", 5),
    ("server", "state_dir", "var/lib"),
    ("server", "run_as", ""),
    ("server", "run_as", 0),
    ("server", "interface", ""),
    ("server", "interface", 1),
    ("server", "addresses", []),
    ("server", "addresses", ["not-ip"]),
    ("server", "addresses", ["198.18.0.1", "not-ip"]),
    ("server", "addresses", "198.18.0.1"),
    ("server", "addresses", ["198.18.0.0/24"]),
    ("server", "addresses", [3232235777]),  # an integer is not an address string
    ("server", "addresses", ["fe80::1%eth0"]),  # capture compares (and filters) unscoped addresses
    ("bus", "runtime_dir", "run/dynknock"),
    ("bus", "runtime_dir", ""),
    ("gate", "backend", "iptables"),
    ("gate", "backend", "NFTABLES"),
    ("gate", "backend", ""),
    ("gate", "backend", True),
    ("gate", "stealth", "true"),
    ("gate", "public_tcp_ports", [0]),
    ("gate", "public_tcp_ports", [80, 70000]),
    ("gate", "public_tcp_ports", "80"),
    ("gate", "public_udp_ports", [True]),
    ("gate", "table", "dyn-knock"),
    ("gate", "table", "dyn knock"),
    ("gate", "table", "t;flush"),
    ("gate", "table", ""),
    ("gate", "table", "t" * 33),
    ("metrics", "listen", "9877"),
    ("metrics", "listen", "localhost:9877"),
    ("metrics", "listen", "127.0.0.1:0"),
    ("metrics", "listen", "127.0.0.1:x"),
    ("metrics", "listen", 9877),
]


@pytest.mark.parametrize("section,key,value", BAD_VALUES, ids=lambda v: repr(v))
def test_bad_value_names_file_and_key(tmp_path: Path, section: str, key: str, value: Any) -> None:
    message, path = error_of(tmp_path, with_value(section, key, value))
    assert f"{section}.{key}" in message
    assert str(path) in message


def test_bad_value_message_shows_the_value(tmp_path: Path) -> None:
    message, _ = error_of(tmp_path, with_value("server", "control_port", 70000))
    assert "server.control_port = 70000" in message and "1-65535" in message


def test_missing_interface(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    del document["server"]["interface"]
    message, _ = error_of(tmp_path, document)
    assert "server.interface is required" in message


def test_missing_addresses(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    del document["server"]["addresses"]
    message, _ = error_of(tmp_path, document)
    assert "server.addresses is required" in message


def test_missing_server_section(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    del document["server"]
    message, _ = error_of(tmp_path, document)
    assert "server.interface is required" in message


def test_unknown_section(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    document["firewall"] = {"backend": "nftables"}
    message, _ = error_of(tmp_path, document)
    assert "unknown section [firewall]" in message


@pytest.mark.parametrize("section,key", [("server", "control-port"), ("server", "port"), ("gate", "stealthy"),
                                         ("bus", "interface"), ("metrics", "port")])
def test_unknown_key(tmp_path: Path, section: str, key: str) -> None:
    message, _ = error_of(tmp_path, with_value(section, key, 1))
    assert f"unknown key {section}.{key}" in message


@pytest.mark.parametrize("section", ["server", "gate", "bus"])
def test_section_that_is_not_a_table(tmp_path: Path, section: str) -> None:
    document = copy.deepcopy(MINIMAL)
    if section == "server":
        del document["server"]
    document[section] = 5
    message, _ = error_of(tmp_path, document)
    assert f"[{section}]" in message or f"{section}." in message


def test_services_missing(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    del document["services"]
    message, _ = error_of(tmp_path, document)
    assert "[services.NAME]" in message and "target" in message


def test_services_empty(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    document["services"] = {}
    message, _ = error_of(tmp_path, document)
    assert "[services.NAME]" in message


@pytest.mark.parametrize("target", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:ssh",
                                    "localhost:22", ":22", "127.0.0.1/8:22", "[::1]", 22])
def test_service_bad_target(tmp_path: Path, target: Any) -> None:
    document = copy.deepcopy(MINIMAL)
    document["services"]["ssh"] = {"target": target}
    message, _ = error_of(tmp_path, document)
    assert "services.ssh.target" in message


@pytest.mark.parametrize("entry", [{}, {"target": "127.0.0.1:22", "port": 22}, {"host": "127.0.0.1"}])
def test_service_must_have_exactly_a_target(tmp_path: Path, entry: dict[str, Any]) -> None:
    document = copy.deepcopy(MINIMAL)
    document["services"]["ssh"] = entry
    message, _ = error_of(tmp_path, document)
    assert "services.ssh" in message and "target" in message


def test_service_that_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "dynknock.toml"
    path.write_text('[server]\ninterface = "eth0"\naddresses = ["198.18.0.1"]\n[services]\nssh = "127.0.0.1:22"\n')
    with pytest.raises(ConfigError, match=r"services.ssh takes target \(required\) and forward"):
        cfg.load(path)


@pytest.mark.parametrize("name", ["SSH", "s s", "ssh!", "a" * 17, "", "ssh.x", "é"])
def test_service_bad_name(tmp_path: Path, name: str) -> None:
    document = copy.deepcopy(MINIMAL)
    document["services"] = {name: {"target": "127.0.0.1:22"}}
    message, _ = error_of(tmp_path, document)
    assert f"services.{name}" in message and "name must be" in message


@pytest.mark.parametrize("name", ["a", "a" * 16, "ssh-2", "web_1", "0"])
def test_service_good_names(tmp_path: Path, name: str) -> None:
    document = copy.deepcopy(MINIMAL)
    document["services"] = {name: {"target": "127.0.0.1:22"}}
    assert list(cfg.load(write(tmp_path, document)).services) == [name]


@pytest.mark.parametrize("control_port,door_ports", [(45000, "40000-49999"), (40000, "40000-49999"),
                                                     (49999, "40000-49999"), (62201, "60000-65535")])
def test_control_port_inside_door_range(tmp_path: Path, control_port: int, door_ports: str) -> None:
    document = with_value("server", "control_port", control_port)
    document["server"]["door_ports"] = door_ports
    message, _ = error_of(tmp_path, document)
    assert "server.control_port" in message and "server.door_ports" in message


# --- the file itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['[server\ninterface = "eth0"\n', 'interface = \n', "[server]\nx = 'a\n",
                                  '[server]\ninterface = "a"\ninterface = "b"\n', "\x00"])
def test_toml_syntax_error_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        cfg.load(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "\n" not in str(raised.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="config file not found") as raised:
        cfg.load(path)
    assert str(path) in str(raised.value)


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\ninterface = "\xe9th0"\n')
    with pytest.raises(ConfigError) as raised:
        cfg.load(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_a_directory_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        cfg.load(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path}: ")


def test_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DYNKNOCK_CONFIG", raising=False)
    assert cfg.config_path() == cfg.DEFAULT_PATH
    assert cfg.config_path("/x.toml") == Path("/x.toml")
    monkeypatch.setenv("DYNKNOCK_CONFIG", "/env.toml")
    assert cfg.config_path() == Path("/env.toml")
    assert cfg.config_path("/cli.toml") == Path("/cli.toml")


def test_every_key_has_help_and_a_checked_default() -> None:
    for key in cfg.KEYS.values():
        assert key.help, f"{key.section}.{key.name}"
        if key.default is not None:
            key.check(key.default)  # defaults pass their own check


# --- how a service's doors are forwarded ------------------------------------------------------------

def _service_config(tmp_path: Path, target: str, forward: str | None = None, backend: str = "nftables") -> Config:
    path = tmp_path / "dynknock.toml"
    line = f'forward = "{forward}"\n' if forward else ""
    path.write_text(f'[server]\ninterface = "eth0"\naddresses = ["198.18.0.1", "2001:db8::1"]\n'
                    f'[gate]\nbackend = "{backend}"\n[services.ssh]\ntarget = "{target}"\n{line}')
    return cfg.load(path)


@pytest.mark.parametrize("target,backend,expected", [
    ("127.0.0.1:22", "nftables", "kernel"),
    ("127.0.0.53:2222", "nftables", "kernel"),
    ("198.18.0.1:22", "nftables", "kernel"),
    ("[2001:db8::1]:22", "nftables", "kernel"),
    ("[::1]:22", "nftables", "relay"),  # Linux cannot NAT to ::1 from outside
    ("198.18.0.9:22", "nftables", "relay"),  # another host
    ("127.0.0.1:22", "none", "relay"),
])
def test_auto_forwarding(tmp_path: Path, target: str, backend: str, expected: str) -> None:
    assert _service_config(tmp_path, target, backend=backend).services["ssh"].forward == expected


def test_forward_relay_is_always_allowed(tmp_path: Path) -> None:
    assert _service_config(tmp_path, "127.0.0.1:22", "relay").services["ssh"].forward == "relay"


@pytest.mark.parametrize("target,backend,message", [
    ("127.0.0.1:22", "none", "needs gate.backend"),
    ("[::1]:22", "nftables", "IPv6 loopback target cannot be reached by NAT"),
    ("198.18.0.9:22", "nftables", "the target must be on this host"),
])
def test_forward_kernel_refused_where_it_cannot_work(tmp_path: Path, target: str, backend: str,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=rf"services.ssh.forward = \"kernel\".*{message}"):
        _service_config(tmp_path, target, "kernel", backend)


def test_forward_value_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dynknock.toml: services.ssh.forward = 'fast': must be one of auto"):
        _service_config(tmp_path, "127.0.0.1:22", "fast")


# --- a fleet: several gateway hosts, one auth host -----------------------------------

TCP_BUS = {"transport": "tcp", "tcp_endpoints": {name: f"tcp://198.18.0.9:{7100 + i}"
                                                 for i, name in enumerate(bus.ENDPOINT_NAMES)}}


def fleet_document(gateways: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL)
    document["bus"] = copy.deepcopy(TCP_BUS)
    document["gateways"] = gateways
    return document


def test_one_host_is_one_implicit_gateway_named_after_the_host(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, MINIMAL))
    assert not config.fleet and config.gateways == {}
    assert config.gateway and config.gateway == cfg._default_gateway()
    assert cfg.load(write(tmp_path, with_value("server", "gateway", "edge-1.a"))).gateway == "edge-1.a"


def test_gateways_of_a_fleet(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, fleet_document({
        "gw-a": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.1:7103", "relay": "tcp://198.18.0.1:7104"},
        "gw-b": {"addresses": ["198.18.0.11", "2001:db8:d::11"], "gate": "tcp://198.18.0.11:7103"}})))
    assert config.fleet and not config.fleet_accepts_v1
    assert config.gateways["gw-a"] == cfg.GatewayConfig("gw-a", ("198.18.0.1",), "tcp://198.18.0.1:7103",
                                                        "tcp://198.18.0.1:7104")
    assert config.gateways["gw-b"].relay == "" and config.gateways["gw-b"].addresses[1] == "2001:db8:d::11"


@pytest.mark.parametrize("gateways,words", [
    ({"gw-a": {"addresses": ["198.18.0.1"]}}, "gateways.gw-a takes addresses and gate"),
    ({"gw-a": {"addresses": ["198.18.0.1"], "gate": "ipc:///x"}}, "gateways.gw-a.gate = 'ipc:///x'"),
    ({"gw-a": {"addresses": ["nope"], "gate": "tcp://198.18.0.1:7103"}}, "gateways.gw-a.addresses"),
    ({"gw-a": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.1:7103", "ssh": 1}}, "takes addresses"),
    ({"GW": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.1:7103"}}, "gateways.GW: name"),
    ({"a": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.1:7103"},
      "b": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.2:7103"}}, "is also gateway a's"),
])
def test_bad_gateway_names_the_key(tmp_path: Path, gateways: dict[str, Any], words: str) -> None:
    message, _ = error_of(tmp_path, fleet_document(gateways))
    assert words in message


def test_a_fleet_needs_the_tcp_bus(tmp_path: Path) -> None:
    document = fleet_document({"gw-a": {"addresses": ["198.18.0.1"], "gate": "tcp://198.18.0.1:7103"}})
    del document["bus"]
    message, _ = error_of(tmp_path, document)
    assert "needs bus.transport" in message


def test_fleet_examples_parse() -> None:
    examples = EXAMPLE.parent / "fleet"
    auth_host = cfg.load(examples / "auth-host.toml")
    assert auth_host.fleet and set(auth_host.gateways) == {"gw-a", "gw-b"}
    gateway = cfg.load(examples / "gateway.toml")
    assert not gateway.fleet and gateway.gateway == "gw-a"
    assert gateway.addresses == auth_host.gateways["gw-a"].addresses


# --- auth replicas on etcd ----------------------------------------------------------------

REPLICAS = {name: {"packets": f"tcp://{ip}:7001", "knock_filter": f"tcp://{ip}:7002", "events": f"tcp://{ip}:7005"}
            for name, ip in (("auth-a", "198.18.0.21"), ("auth-b", "198.18.0.22"))}


def gateway_of_replicas(endpoints: dict[str, str]) -> dict[str, Any]:
    document = copy.deepcopy(MINIMAL)
    document["bus"] = {"transport": "tcp", "tcp_endpoints": endpoints}
    document["replicas"] = copy.deepcopy(REPLICAS)
    return document


def test_a_gateway_serving_replicas_names_only_its_gate_and_relay(tmp_path: Path) -> None:
    config = cfg.load(write(tmp_path, gateway_of_replicas({"gate": "tcp://198.18.0.1:7003",
                                                           "relay": "tcp://198.18.0.1:7004"})))
    assert config.replicated and set(config.replicas) == {"auth-a", "auth-b"}
    assert config.replicas["auth-b"] == cfg.ReplicaConfig("auth-b", "tcp://198.18.0.22:7001",
                                                          "tcp://198.18.0.22:7002", "tcp://198.18.0.22:7005")
    message, _ = error_of(tmp_path, gateway_of_replicas({"gate": "tcp://198.18.0.1:7003"}))
    assert "bus.tcp_endpoints must name relay too" in message


def test_without_replicas_every_endpoint_is_named(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    document["bus"] = {"transport": "tcp", "tcp_endpoints": {"gate": "tcp://198.18.0.1:7003",
                                                             "relay": "tcp://198.18.0.1:7004"}}
    message, _ = error_of(tmp_path, document)
    assert "bus.tcp_endpoints must name events, knock_filter, packets, tap too" in message


@pytest.mark.parametrize("replicas,words", [
    ({"a": {"packets": "tcp://198.18.0.21:7001"}}, "replicas.a takes packets, knock_filter and events"),
    ({"a": {"packets": "ipc:///x", "knock_filter": "tcp://1.2.3.4:1", "events": "tcp://1.2.3.4:2"}},
     "replicas.a.packets = 'ipc:///x'"),
    ({"A": REPLICAS["auth-a"]}, "replicas.A: name"),
])
def test_bad_replicas_name_the_key(tmp_path: Path, replicas: dict[str, Any], words: str) -> None:
    document = gateway_of_replicas({"gate": "tcp://198.18.0.1:7003", "relay": "tcp://198.18.0.1:7004"})
    document["replicas"] = replicas
    message, _ = error_of(tmp_path, document)
    assert words in message


def test_an_etcd_store_needs_its_endpoints_and_files(tmp_path: Path) -> None:
    document = copy.deepcopy(MINIMAL)
    document["store"] = {"kind": "etcd"}
    message, _ = error_of(tmp_path, document)
    assert "store.endpoints is required with store.kind = \"etcd\"" in message
    document["store"]["endpoints"] = ["http://198.18.0.31:2379"]
    message, _ = error_of(tmp_path, document)
    assert "store.endpoints" in message and "TLS only" in message


def test_ha_examples_parse() -> None:
    examples = EXAMPLE.parent / "ha"
    replica = cfg.load(examples / "auth-replica.toml")
    assert replica.store_kind == "etcd" and replica.replica == "auth-a" and replica.fleet
    gateway = cfg.load(examples / "gateway.toml")
    assert set(gateway.replicas) == {"auth-a", "auth-b"} and gateway.failover_after_s == 1.5
    assert gateway.addresses == replica.gateways["gw-a"].addresses
