"""The server's configuration: one TOML file, parsed once into frozen dataclasses.

Path: ``--config``, else ``$DYNKNOCK_CONFIG``, else /etc/dynknock/dynknock.toml.
Every key is declared once below (name, type, default, help); a wrong value is a
one-line :class:`ConfigError` naming the key and the file. The commented
example is examples/dynknock.toml.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from dynknock.bus import ENDPOINT_NAMES
from dynknock.protocol import CONTROL_PORT, SERVICE_NAME_LEN, is_port, is_service_name

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


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway host of a fleet, as the auth host sees it ([gateways.NAME])."""

    name: str
    addresses: tuple[str, ...]  # its server addresses: a packet to one of them was sent to this gateway
    gate: str  # tcp://HOST:PORT its gate binds
    relay: str = ""  # tcp://HOST:PORT its relay binds; "": no relay there (relay doors fail closed)


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """One auth replica, as a gateway's capture and gate see it ([replicas.NAME]): where it
    binds its packets, knock_filter and events endpoints. Its bus keys are auth@NAME and bus@NAME."""

    name: str
    packets: str  # tcp://HOST:PORT
    knock_filter: str
    events: str


# --- checks of single values: each returns the value as Config holds it, or raises ValueError saying why ------


def _port(v: Any) -> int:
    if not is_port(v):
        raise ValueError("must be a port number 1-65535")
    assert isinstance(v, int)
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


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be {' or '.join(json.dumps(c) for c in choices)}")
        return str(v)
    return check


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


def _replica_name(v: Any) -> str:
    """server.replica: a name as a gateway's, or "" (not a replica)."""
    return "" if v == "" else _gateway_name(v)


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


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return float(v)
    return check


def _https_urls(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(u, str) and u.startswith("https://") for u in v):
        raise ValueError('must be a list of "https://HOST:2379" (etcd members, TLS only)')
    return tuple(v)


def _store_prefix(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or v.endswith("/") or any(c.isspace() for c in v):
        raise ValueError('must be a key prefix like "/dynknock" (a leading slash, no trailing one)')
    return v


def _is_tcp_url(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("tcp://") and ":" in v[6:]


def _tcp_endpoints(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError("must be a table of endpoint = \"tcp://HOST:PORT\"")
    if v and not set(v) <= set(ENDPOINT_NAMES):
        raise ValueError(f"names {sorted(set(v) - set(ENDPOINT_NAMES))[0]!r}: only {', '.join(ENDPOINT_NAMES)}")
    for name, url in v.items():
        if not _is_tcp_url(url):
            raise ValueError(f"{name} must look like \"tcp://198.18.0.1:7001\"")
    return {str(k): str(val) for k, val in v.items()}


# --- the keys of the file ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the file: where it stands, how its value is checked, its default and its help."""

    section: str
    name: str
    check: Callable[[Any], Any]
    default: Any  # as written in the file (the check makes it the field's value); None: required
    help: str


def _key(section: str, name: str, check: Callable[[Any], Any], default: Any, help: str) -> Any:
    """A Config field read from key `section.name` of the file: the one place that declares it."""
    return field(metadata={"key": Key(section, name, check, default, help)})


@dataclass(frozen=True, slots=True)
class Config:
    """The server's configuration. Each field read from a key of the file is declared here once, with
    its key, check, default and help (`_key`); :data:`KEYS` and :func:`parse` derive the rest."""

    path: str
    interface: str = _key("server", "interface", _str, None, "interface capture listens on")
    addresses: tuple[str, ...] = _key("server", "addresses", _addresses, None,
                                      "server addresses knocks and P1/P2 are sent to")
    control_port: int = _key("server", "control_port", _port, CONTROL_PORT,
                             "UDP port of P1/P2 (nothing listens on it)")
    # Below 1024, so that no ordinary local user can take it: every relayed door leads there.
    relay_port: int = _key("server", "relay_port", _int_range(1, 1023), 1022,
                           "the relay's one TCP listener, where nftables redirects relayed doors "
                           "(a privileged port: the relay holds CAP_NET_BIND_SERVICE)")
    # Above Linux's default ephemeral range (net.ipv4.ip_local_port_range 32768-60999), so no
    # outbound connection of this host takes a door port, and above control_port 62201.
    door_ports: tuple[int, int] = _key("server", "door_ports", _port_range, "63000-65535",
                                       "range door ports are drawn from")
    window_seconds: int = _key("server", "window_seconds", _int_range(1, 3600), 30, "how long a door stays open")
    single_use: bool = _key("server", "single_use", _bool, True, "a door accepts one connection, as in the paper")
    clock_skew_seconds: int = _key("server", "clock_skew_seconds", _int_range(5, 600), 60,
                                   "accepted client clock error")
    knock_timeout_seconds: int = _key("server", "knock_timeout_seconds", _int_range(1, 120), 10,
                                      "time from P1 to the last knock")
    max_doors_per_user: int = _key("server", "max_doors_per_user", _int_range(1, 10_000), 8,
                                   "doors one user may hold at once that are not used yet (a single-use "
                                   "door stops counting when its connection comes)")
    max_doors_total: int = _key("server", "max_doors_total", _int_range(1, 65_535), 1000,
                                "doors all users together may hold at once, used single-use doors not counted")
    doors_per_minute: int = _key("server", "doors_per_minute", _int_range(1, 100_000), 300,
                                 "doors one user may open a minute (a bucket of as many, refilled over the "
                                 "minute): bounds the work a key holder can cause")
    connect_knocks: bool = _key("server", "connect_knocks", _bool, True,
                                "accept knocks sent by ordinary connect() (a client without raw sockets; "
                                "matched by address and port, docs/SECURITY.md)")
    users_file: Path = _key("server", "users_file", _path, "/etc/dynknock/users.json",
                            "users and their keys (mode 0600)")
    state_dir: Path = _key("server", "state_dir", _path, "/var/lib/dynknock", "replay journal")
    key_file: Path = _key("server", "key_file", _path, "/etc/dynknock/server.key",
                          "the server's own X25519 key, for key-pair users (knock-admin server-key makes it; "
                          "none: no key-pair user)")
    run_as: str = _key("server", "run_as", _str, "dynknock", "unprivileged user of the stages")
    # The name of this host's gateway: capture tags what it sees with it, so auth commands this
    # gateway's gate and relay and labels its events.
    gateway: str = _key("server", "gateway", _gateway_name, "",
                        "name of this host's gateway (default: the host name)")
    # A fleet refuses protocol version 1 (a v1 request is not bound to a gateway) unless this is true.
    fleet_accepts_v1: bool = _key("server", "fleet_accepts_v1", _bool, False,
                                  "auth host of a fleet: also accept protocol version 1 (not bound to a "
                                  "gateway: a copy sniffed at one gateway may open at another)")
    # An auth replica: its name, so its bus keys are auth@NAME and bus@NAME and what it tells
    # the gateways (its knock and hint filters) is told apart from the other replicas'.
    replica: str = _key("server", "replica", _replica_name, "",
                        "this auth replica's name (replicated auth on etcd, examples/ha); empty: not a replica")
    # The replicated store: "local" keeps users_file and the journal in state_dir, as one host does.
    store_kind: str = _key("store", "kind", _one_of("local", "etcd"), "local",
                           '"local" (users_file, the journal in state_dir) or "etcd" (replicas share both)')
    store_endpoints: tuple[str, ...] = _key("store", "endpoints", _https_urls, [],
                                            "etcd only: https://HOST:2379 of every member")
    store_ca: str = _key("store", "ca", _optional_path, "", "etcd only: the CA certificate of the members")
    store_cert: str = _key("store", "cert", _optional_path, "", "etcd only: this replica's client certificate")
    store_key: str = _key("store", "key", _optional_path, "", "etcd only: its key (0600)")
    store_user: str = _key("store", "user", _str, "dynknock-auth", "etcd only: its etcd user (role auth-replica)")
    store_password_file: str = _key("store", "password_file", _optional_path, "",
                                    "etcd only: the file of that user's password (0600)")
    store_prefix: str = _key("store", "prefix", _store_prefix, "/dynknock",
                             "etcd only: keys <prefix>/nonces/<hex> and <prefix>/users")
    store_attempt_timeout_s: float = _key("store", "attempt_timeout_s", _float_range(0.05, 10.0), 0.5,
                                          "etcd only: one try at one member")
    store_deadline_s: float = _key("store", "deadline_s", _float_range(0.1, 30.0), 2.0,
                                   "etcd only: a claim or read, all tries: past it the packet is refused")
    store_users_max_age_s: float = _key("store", "users_max_age_s", _float_range(1.0, 600.0), 7.0,
                                        "etcd only: no door while the users document is not proven current "
                                        "for this long (a revoked user must not get in)")
    store_admin_cert: str = _key("store", "admin_cert", _optional_path, "",
                                 "etcd only, knock-admin's host: the admin's client certificate")
    store_admin_key: str = _key("store", "admin_key", _optional_path, "", "etcd only: its key (0600)")
    store_admin_user: str = _key("store", "admin_user", _str, "dynknock-admin",
                                 "etcd only: knock-admin's etcd user (role admin: writes the users)")
    store_admin_password_file: str = _key("store", "admin_password_file", _optional_path, "",
                                          "etcd only: the file of its password (0600)")
    runtime_dir: Path = _key("bus", "runtime_dir", _path, "/run/dynknock", "directory of the ipc sockets (0750)")
    bus_transport: str = _key("bus", "transport", _one_of("ipc", "tcp"), "ipc",
                              '"ipc" (one host) or "tcp" (stages on several hosts, CURVE)')
    curve_dir: Path = _key("bus", "curve_dir", _path, "/etc/dynknock/curve",
                           "tcp only: CURVE keys (knock-admin bus-keys)")
    tcp_endpoints: dict[str, str] = _key("bus", "tcp_endpoints", _tcp_endpoints, {},
                                         "tcp only: tcp://HOST:PORT of each endpoint")
    failover_after_s: float = _key("bus", "failover_after_s", _float_range(0.2, 30.0), 1.5,
                                   "auth replicas: a replica silent this long (or disconnected) gets no packets; "
                                   "its clients go to another")
    gate_backend: str = _key("gate", "backend", _one_of("nftables", "none"), "nftables",
                             '"nftables", or "none" (relay checks only: weaker)')
    stealth: bool = _key("gate", "stealth", _bool, True, "drop every unsolicited inbound packet but public ports")
    public_tcp_ports: tuple[int, ...] = _key("gate", "public_tcp_ports", _ports, [],
                                             "TCP ports that stay reachable with stealth")
    public_udp_ports: tuple[int, ...] = _key("gate", "public_udp_ports", _ports, [],
                                             "UDP ports that stay reachable with stealth")
    nft_table: str = _key("gate", "table", _table, "dynknock", "name of our own nftables table (inet family)")
    metrics_listen: str = _key("metrics", "listen", _listen, "127.0.0.1:9877",
                               "Prometheus endpoint of knock-tap --metrics")
    metrics_token_file: str = _key("metrics", "token_file", _optional_path, "",
                                   "bearer token a scrape must send (0640 at most); "
                                   "empty: <bus.runtime_dir>/metrics.token, made if missing")
    services: dict[str, ServiceConfig] = field(default_factory=dict)  # [services.NAME]
    # The auth host of a fleet ([gateways.NAME]); empty: one host, one implicit gateway.
    gateways: dict[str, GatewayConfig] = field(default_factory=dict)
    # The auth replicas a gateway's stages serve ([replicas.NAME]); empty: one auth.
    replicas: dict[str, ReplicaConfig] = field(default_factory=dict)

    @property
    def door_port_low(self) -> int:
        return self.door_ports[0]

    @property
    def door_port_high(self) -> int:
        return self.door_ports[1]

    @property
    def fleet(self) -> bool:
        return bool(self.gateways)

    @property
    def replicated(self) -> bool:
        """This host serves, or is, one of several auth replicas."""
        return bool(self.replicas) or bool(self.replica)


# Config field name -> its key, in the order of the file's example.
KEYS: Final[dict[str, Key]] = {f.name: f.metadata["key"] for f in fields(Config) if "key" in f.metadata}


def default_of(name: str) -> Any:
    """The value Config field `name` has when the file does not set its key."""
    key = KEYS[name]
    return key.check(copy.deepcopy(key.default))


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
    values: dict[str, Any] = {}
    known = {(key.section, key.name) for key in KEYS.values()}
    known_sections = {section for section, _ in known} | {"services", "gateways", "replicas"}
    for section in document:
        if section not in known_sections:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if section not in ("services", "gateways", "replicas"):
            if not isinstance(document[section], dict):
                raise ConfigError(f"{path}: [{section}] must be a table")
            for name in document[section]:
                if (section, name) not in known:
                    raise ConfigError(f"{path}: unknown key {section}.{name}")
    for field_name, key in KEYS.items():
        raw = document.get(key.section, {}).get(key.name, copy.deepcopy(key.default))
        if raw is None:
            raise ConfigError(f"{path}: {key.section}.{key.name} is required ({key.help})")
        try:
            values[field_name] = key.check(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: {key.section}.{key.name} = {raw!r}: {exc}") from None
    services = _services(document.get("services", {}), path, values["gate_backend"], values["addresses"])
    low, high = values["door_ports"]
    control = values["control_port"]
    if low <= control <= high:
        raise ConfigError(f"{path}: server.control_port {control} lies inside server.door_ports")
    if values["bus_transport"] == "tcp" and not values["tcp_endpoints"]:
        raise ConfigError(f"{path}: bus.tcp_endpoints is required with bus.transport = \"tcp\"")
    gateways = _gateways(document.get("gateways", {}), path)
    if gateways and values["bus_transport"] != "tcp":
        raise ConfigError(f"{path}: [gateways.NAME] (a fleet) needs bus.transport = \"tcp\"")
    replicas = _replicas(document.get("replicas", {}), path)
    if replicas and values["bus_transport"] != "tcp":
        raise ConfigError(f"{path}: [replicas.NAME] (auth replicas) needs bus.transport = \"tcp\"")
    # A gateway serving auth replicas binds gate and relay; packets, knock_filter and events are each
    # replica's ([replicas.NAME]), and it has no tap. Everyone else names every endpoint.
    needed = {"gate", "relay"} if replicas else set(ENDPOINT_NAMES)
    if values["tcp_endpoints"] and not needed <= set(values["tcp_endpoints"]):
        missing = sorted(needed - set(values["tcp_endpoints"]))
        raise ConfigError(f"{path}: bus.tcp_endpoints must name {', '.join(missing)} too"
                          + ("" if replicas else f" (all of {', '.join(ENDPOINT_NAMES)})"))
    if values["store_kind"] == "etcd":
        for name in ("store_endpoints", "store_ca", "store_cert", "store_key", "store_password_file"):
            if not values[name]:
                key = KEYS[name]
                raise ConfigError(f"{path}: {key.section}.{key.name} is required with store.kind = \"etcd\" "
                                  f"({key.help})")
    return Config(path=path, services=services, gateways=gateways, replicas=replicas, **values)


def _named_tables(raw: Any, path: str, section: str) -> list[tuple[str, Any]]:
    """The [SECTION.NAME] tables of a section whose names are host names ([gateways], [replicas]), each name
    checked (ConfigError naming the table)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{section}] must be tables [{section}.NAME]")
    for name in raw:
        try:
            gateway_name(name)
            if not name:
                raise ValueError("must not be empty")
        except ValueError as exc:
            raise ConfigError(f"{path}: {section}.{name}: name {exc}") from None
    return list(raw.items())


def _replicas(raw: Any, path: str) -> dict[str, ReplicaConfig]:
    """[replicas.NAME] tables (a gateway's stages, or a replica naming its peers): packets, knock_filter and
    events, each tcp://HOST:PORT."""
    replicas: dict[str, ReplicaConfig] = {}
    for name, entry in _named_tables(raw, path, "replicas"):
        where = f"{path}: replicas.{name}"
        wanted = {"packets", "knock_filter", "events"}
        if not isinstance(entry, dict) or set(entry) != wanted:
            raise ConfigError(f"{where} takes packets, knock_filter and events (each tcp://HOST:PORT)")
        for key in sorted(wanted):
            if not _is_tcp_url(entry[key]):
                raise ConfigError(f"{where}.{key} = {entry[key]!r}: must look like \"tcp://198.18.0.21:7001\"")
        replicas[name] = ReplicaConfig(name, entry["packets"], entry["knock_filter"], entry["events"])
    return replicas


def _gateways(raw: Any, path: str) -> dict[str, GatewayConfig]:
    """[gateways.NAME] tables (auth host of a fleet): addresses, gate, relay (optional)."""
    gateways: dict[str, GatewayConfig] = {}
    owner: dict[str, str] = {}
    for name, entry in _named_tables(raw, path, "gateways"):
        where = f"{path}: gateways.{name}"
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
            if not isinstance(url, str) or (url or key == "gate") and not _is_tcp_url(url):
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
        if not is_service_name(name):
            raise ConfigError(f"{path}: services.{name}: name must be 1-{SERVICE_NAME_LEN} of a-z 0-9 _ -")
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
