"""The server's configuration: one TOML file, parsed once into frozen dataclasses.

Path: ``--config``, else ``$DYNKNOCK_CONFIG``, else /etc/dynknock/dynknock.toml.
Every key is declared once below (name, type, default, help); a wrong value is a
one-line :class:`ConfigError` naming the key and the file. The commented
example is examples/dynknock.toml.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/dynknock/dynknock.toml")


class ConfigError(ValueError):
    pass


FORWARD_MODES = ("auto", "kernel", "relay")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    host: str
    port: int
    # "kernel": nftables forwards a door's connection (DNAT), no byte crosses user space;
    # "relay": the relay stage accepts it and pumps the bytes. Resolved from
    # services.NAME.forward ("auto": kernel when the target is on this host and the
    # gate has nftables) when the config is read.
    forward: str = "relay"

    def door_path(self, client_version: int) -> str:
        """How a door of this service for a client of this IP version is forwarded.

        NAT cannot change the address family, so a kernel service whose target is IPv4
        (127.0.0.1:22, say) still serves IPv6 clients through the relay.
        """
        if self.forward == "kernel" and ipaddress.ip_address(self.host).version == client_version:
            return "kernel"
        return "relay"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway host of a fleet, as the auth host sees it ([gateways.NAME])."""

    name: str
    addresses: tuple[str, ...]  # its server addresses: a packet to one of them was sent to this gateway
    gate: str  # tcp://HOST:PORT its gate binds
    relay: str = ""  # tcp://HOST:PORT its relay binds; "": no relay there (relay doors fail closed)


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    interface: str
    addresses: tuple[str, ...]
    control_port: int
    door_port_low: int
    door_port_high: int
    window_seconds: int
    single_use: bool
    clock_skew_seconds: int
    knock_timeout_seconds: int
    max_doors_per_user: int
    max_doors_total: int
    users_file: Path
    state_dir: Path
    run_as: str
    runtime_dir: Path
    bus_transport: str
    curve_dir: Path
    tcp_endpoints: dict[str, str]
    gate_backend: str
    stealth: bool
    public_tcp_ports: tuple[int, ...]
    public_udp_ports: tuple[int, ...]
    nft_table: str
    metrics_listen: str
    metrics_token_file: str  # "" = <runtime_dir>/metrics.token, made by knock-tap --metrics
    services: dict[str, ServiceConfig]
    # The name of this host's gateway (server.gateway, default the host name): capture tags what
    # it sees with it, so auth commands this gateway's gate and relay and labels its events.
    gateway: str = "local"
    # The auth host of a fleet ([gateways.NAME]); empty: one host, one implicit gateway, as before.
    gateways: dict[str, GatewayConfig] = field(default_factory=dict)
    # A fleet refuses protocol version 1 (a v1 request is not bound to a gateway) unless this is true.
    fleet_accepts_v1: bool = False

    @property
    def fleet(self) -> bool:
        return bool(self.gateways)


def _port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError("must be a port number 1-65535")
    return v


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return v
    return check


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("must be a non-empty string")
    return v


def _optional_path(v: Any) -> str:
    if v == "":
        return ""
    return str(_path(v))


def _path(v: Any) -> Path:
    path = Path(_str(v))
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    return path


def _addresses(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError("must be a non-empty list of IP addresses")
    # ip_address() takes an int too, and keeps an IPv6 %scope that capture's filter and compare cannot use.
    if not all(isinstance(a, str) and "%" not in a for a in v):
        raise ValueError("must be IP address strings, without a %scope")
    return tuple(str(ipaddress.ip_address(a)) for a in v)


def _ports(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise ValueError("must be a list of ports")
    return tuple(_port(p) for p in v)


def _gateway_name(v: Any) -> str:
    if v == "":
        return _default_gateway()
    name = _str(v)
    if len(name) > 63 or not all(c in "abcdefghijklmnopqrstuvwxyz0123456789_.-" for c in name):
        raise ValueError("must be 1-63 of a-z 0-9 _ . -")
    return name


def gateway_name(text: str) -> str:
    """A gateway name as [gateways.NAME] and server.gateway take it; ValueError says why not."""
    return _gateway_name(text or "-")


def _default_gateway() -> str:
    host = socket.gethostname().split(".")[0].lower()
    return host if host and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in host) else "local"


def _port_range(v: Any) -> tuple[int, int]:
    text = _str(v)
    low_text, sep, high_text = text.partition("-")
    if not sep:
        raise ValueError('must look like "40000-49999"')
    low, high = _port(int(low_text)), _port(int(high_text))
    if high - low < 15:
        raise ValueError("must hold at least 16 ports (a random door port must be hard to guess)")
    return low, high


def _backend(v: Any) -> str:
    if v not in ("nftables", "none"):
        raise ValueError('must be "nftables" or "none"')
    return str(v)


def _table(v: Any) -> str:
    name = _str(v)
    if not name.replace("_", "").isalnum() or len(name) > 32:
        raise ValueError("must be letters, digits and _ (at most 32)")
    return name


def _listen(v: Any) -> str:
    text = _str(v)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError('must look like "127.0.0.1:9877"')
    ipaddress.ip_address(host.strip("[]"))
    _port(int(port))
    return text


ENDPOINT_NAMES = ("packets", "knock_filter", "gate", "relay", "events", "tap")


def _transport(v: Any) -> str:
    if v not in ("ipc", "tcp"):
        raise ValueError('must be "ipc" or "tcp"')
    return str(v)


def _tcp_endpoints(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError("must be a table of endpoint = \"tcp://HOST:PORT\"")
    if v and set(v) != set(ENDPOINT_NAMES):
        raise ValueError(f"must name exactly {', '.join(ENDPOINT_NAMES)}")
    for name, url in v.items():
        if not isinstance(url, str) or not url.startswith("tcp://") or ":" not in url[6:]:
            raise ValueError(f"{name} must look like \"tcp://198.18.0.1:7001\"")
    return {str(k): str(val) for k, val in v.items()}


# (section, key) -> (parser, default, help). Default None means required.
SCHEMA: dict[tuple[str, str], tuple[Callable[[Any], Any], Any, str]] = {
    ("server", "interface"): (_str, None, "interface capture listens on"),
    ("server", "addresses"): (_addresses, None, "server addresses knocks and P1/P2 are sent to"),
    ("server", "control_port"): (_port, 62201, "UDP port of P1/P2 (nothing listens on it)"),
    # Above Linux's default ephemeral range (net.ipv4.ip_local_port_range 32768-60999), so no
    # outbound connection of this host takes a door port, and above control_port 62201.
    ("server", "door_ports"): (_port_range, "63000-65535", "range door ports are drawn from"),
    ("server", "window_seconds"): (_int_range(1, 3600), 30, "how long a door stays open"),
    ("server", "single_use"): (_bool, True, "a door accepts one connection, as in the paper"),
    ("server", "clock_skew_seconds"): (_int_range(5, 600), 60, "accepted client clock error"),
    ("server", "knock_timeout_seconds"): (_int_range(1, 120), 10, "time from P1 to the last knock"),
    ("server", "max_doors_per_user"): (_int_range(1, 10_000), 8, "doors one user may hold at once"),
    ("server", "max_doors_total"): (_int_range(1, 65_535), 1000, "doors all users together may hold at once"),
    ("server", "users_file"): (_path, "/etc/dynknock/users.json", "users and their keys (mode 0600)"),
    ("server", "state_dir"): (_path, "/var/lib/dynknock", "replay journal"),
    ("server", "run_as"): (_str, "dynknock", "unprivileged user of the stages"),
    ("server", "gateway"): (_gateway_name, "", "name of this host's gateway (default: the host name)"),
    ("server", "fleet_accepts_v1"): (_bool, False, "auth host of a fleet: also accept protocol version 1 "
                                     "(not bound to a gateway: a copy sniffed at one gateway may open at another)"),
    ("bus", "runtime_dir"): (_path, "/run/dynknock", "directory of the ipc sockets (0750)"),
    ("bus", "transport"): (_transport, "ipc", '"ipc" (one host) or "tcp" (stages on several hosts, CURVE)'),
    ("bus", "curve_dir"): (_path, "/etc/dynknock/curve", "tcp only: CURVE keys (knock-admin bus-keys)"),
    ("bus", "tcp_endpoints"): (_tcp_endpoints, {}, "tcp only: tcp://HOST:PORT of each endpoint"),
    ("gate", "backend"): (_backend, "nftables", '"nftables", or "none" (relay checks only: weaker)'),
    ("gate", "stealth"): (_bool, True, "drop every unsolicited inbound packet but public ports"),
    ("gate", "public_tcp_ports"): (_ports, [], "TCP ports that stay reachable with stealth"),
    ("gate", "public_udp_ports"): (_ports, [], "UDP ports that stay reachable with stealth"),
    ("gate", "table"): (_table, "dynknock", "name of our own nftables table (inet family)"),
    ("metrics", "listen"): (_listen, "127.0.0.1:9877", "Prometheus endpoint of knock-tap --metrics"),
    ("metrics", "token_file"): (_optional_path, "", "bearer token a scrape must send (0640 at most); "
                                "empty: <bus.runtime_dir>/metrics.token, made if missing"),
}


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_overlap(low: int, high: int, proc_file: Path = EPHEMERAL_RANGE_FILE) -> tuple[int, int] | None:
    """The kernel's ephemeral port range if the door range overlaps it, else None.

    Any outbound connection of this host may take a port of that range, and a door
    then fails to bind (auth moves it to another port, but each costs a round trip).
    """
    try:
        eph_low, eph_high = (int(x) for x in proc_file.read_text().split())
    except (OSError, ValueError):
        return None
    return (eph_low, eph_high) if low <= eph_high and eph_low <= high else None


def config_path(cli_value: str | None = None) -> Path:
    return Path(cli_value or os.environ.get("DYNKNOCK_CONFIG") or DEFAULT_PATH)


def load(path: Path) -> Config:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (see examples/dynknock.toml)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse(document, str(path))


def parse(document: dict[str, Any], path: str) -> Config:
    values: dict[tuple[str, str], Any] = {}
    known_sections = {s for s, _ in SCHEMA} | {"services", "gateways"}
    for section in document:
        if section not in known_sections:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if section not in ("services", "gateways"):
            if not isinstance(document[section], dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            for key in document[section]:
                if (section, key) not in SCHEMA:
                    raise ConfigError(f"{path}: unknown key {section}.{key}")
    for (section, key), (parser, default, _help) in SCHEMA.items():
        raw = document.get(section, {}).get(key, default)
        if raw is None:
            raise ConfigError(f"{path}: {section}.{key} is required ({_help})")
        try:
            values[(section, key)] = parser(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: {section}.{key} = {raw!r}: {exc}") from None
    services = _services(document.get("services", {}), path, values[("gate", "backend")],
                         values[("server", "addresses")])
    low, high = values[("server", "door_ports")]
    control = values[("server", "control_port")]
    if low <= control <= high:
        raise ConfigError(f"{path}: server.control_port {control} lies inside server.door_ports")
    if values[("bus", "transport")] == "tcp" and not values[("bus", "tcp_endpoints")]:
        raise ConfigError(f"{path}: bus.tcp_endpoints is required with bus.transport = \"tcp\"")
    gateways = _gateways(document.get("gateways", {}), path)
    if gateways and values[("bus", "transport")] != "tcp":
        raise ConfigError(f"{path}: [gateways.NAME] (a fleet) needs bus.transport = \"tcp\"")
    return Config(
        path=path,
        interface=values[("server", "interface")],
        addresses=values[("server", "addresses")],
        control_port=control,
        door_port_low=low,
        door_port_high=high,
        window_seconds=values[("server", "window_seconds")],
        single_use=values[("server", "single_use")],
        clock_skew_seconds=values[("server", "clock_skew_seconds")],
        knock_timeout_seconds=values[("server", "knock_timeout_seconds")],
        max_doors_per_user=values[("server", "max_doors_per_user")],
        max_doors_total=values[("server", "max_doors_total")],
        users_file=values[("server", "users_file")],
        state_dir=values[("server", "state_dir")],
        run_as=values[("server", "run_as")],
        runtime_dir=values[("bus", "runtime_dir")],
        bus_transport=values[("bus", "transport")],
        curve_dir=values[("bus", "curve_dir")],
        tcp_endpoints=values[("bus", "tcp_endpoints")],
        gate_backend=values[("gate", "backend")],
        stealth=values[("gate", "stealth")],
        public_tcp_ports=values[("gate", "public_tcp_ports")],
        public_udp_ports=values[("gate", "public_udp_ports")],
        nft_table=values[("gate", "table")],
        metrics_listen=values[("metrics", "listen")],
        metrics_token_file=values[("metrics", "token_file")],
        services=services,
        gateway=values[("server", "gateway")],
        gateways=gateways,
        fleet_accepts_v1=values[("server", "fleet_accepts_v1")],
    )


def _gateways(raw: Any, path: str) -> dict[str, GatewayConfig]:
    """[gateways.NAME] tables (auth host of a fleet): addresses, gate, relay (optional)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [gateways] must be tables [gateways.NAME]")
    gateways: dict[str, GatewayConfig] = {}
    owner: dict[str, str] = {}
    for name, entry in raw.items():
        where = f"{path}: gateways.{name}"
        try:
            gateway_name(name)
            if not name:
                raise ValueError("must not be empty")
        except ValueError as exc:
            raise ConfigError(f"{where}: name {exc}") from None
        if not isinstance(entry, dict) or not {"addresses", "gate"} <= set(entry) \
                or not set(entry) <= {"addresses", "gate", "relay"}:
            raise ConfigError(f"{where} takes addresses and gate (required) and relay")
        try:
            addresses = _addresses(entry["addresses"])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.addresses = {entry['addresses']!r}: {exc}") from None
        for address in addresses:
            if address in owner:
                raise ConfigError(f"{where}.addresses: {address} is also gateway {owner[address]}'s")
            owner[address] = name
        urls = {}
        for key in ("gate", "relay"):
            url = entry.get(key, "")
            if not isinstance(url, str) or (url or key == "gate") and not (
                    url.startswith("tcp://") and ":" in url[6:]):
                raise ConfigError(f"{where}.{key} = {url!r}: must look like \"tcp://198.18.0.11:7003\"")
            urls[key] = url
        gateways[name] = GatewayConfig(name, addresses, urls["gate"], urls["relay"])
    return gateways


def _services(raw: Any, path: str, backend: str = "nftables", addresses: tuple[str, ...] = ()
              ) -> dict[str, ServiceConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: [services.NAME] with target = \"127.0.0.1:22\" is required")
    services: dict[str, ServiceConfig] = {}
    for name, entry in raw.items():
        key = f"services.{name}.target"
        if not (1 <= len(name) <= 16 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in name)):
            raise ConfigError(f"{path}: services.{name}: name must be 1-16 of a-z 0-9 _ -")
        if not isinstance(entry, dict) or "target" not in entry or not set(entry) <= {"target", "forward"}:
            raise ConfigError(f"{path}: services.{name} takes target (required) and forward (auto, kernel, relay)")
        host, sep, port = str(entry["target"]).rpartition(":")
        try:
            target = ipaddress.ip_address(host.strip("[]"))
            service = ServiceConfig(name, host.strip("[]"), _port(int(port)))
        except ValueError as exc:
            raise ConfigError(f"{path}: {key} = {entry['target']!r}: must be ADDRESS:PORT ({exc})") from None
        if not sep:
            raise ConfigError(f"{path}: {key}: must be ADDRESS:PORT")
        services[name] = replace(service, forward=_forward(entry.get("forward", "auto"), target, backend, addresses,
                                                           f"{path}: services.{name}.forward"))
    return services


def _forward(mode: Any, target: ipaddress.IPv4Address | ipaddress.IPv6Address, backend: str,
             addresses: tuple[str, ...], where: str) -> str:
    if mode not in FORWARD_MODES:
        raise ConfigError(f"{where} = {mode!r}: must be one of {', '.join(FORWARD_MODES)}")
    on_this_host = (target.version == 4 and target.is_loopback) or str(target) in addresses
    if mode == "relay" or (mode == "auto" and not (on_this_host and backend == "nftables")):
        return "relay"
    if backend != "nftables":
        raise ConfigError(f"{where} = \"kernel\" needs gate.backend = \"nftables\"")
    if target.version == 6 and target.is_loopback:
        # Linux never routes a packet from outside to ::1 (there is no route_localnet for IPv6).
        raise ConfigError(f"{where} = \"kernel\": an IPv6 loopback target cannot be reached by NAT; use "
                          f"\"relay\" or a target on another local address")
    if not on_this_host:
        raise ConfigError(f"{where} = \"kernel\": the target must be on this host (127.0.0.0/8 or one of "
                          f"server.addresses); use \"relay\" for other hosts")
    return "kernel"
