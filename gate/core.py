"""Gate's pure core: validate every command again, and write nft input for it.

The gate holds CAP_NET_ADMIN, so it trusts nothing it is told: the address
family and value, the port (inside the configured door range), the remaining
time (positive and no longer than the window) are all checked here, and the nft
text is built only from values that passed. No shell is ever involved.

The ruleset lives in our own table (``inet <table>``) and never touches anyone
else's. Door elements carry kernel-side timeouts: a door closes on time even if
the gate, or the whole stack, dies (fail closed).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from dynknock.bus import DoorClose, DoorOpen

_DOOR_ID = re.compile(r"[0-9a-f]{1,32}")
# A little slack over the window for clock reading jitter between the stages.
TIMEOUT_SLACK_MS = 2000


class Invalid(ValueError):
    """A command the gate refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class GateSettings:
    table: str
    door_port_low: int
    door_port_high: int
    window_seconds: int
    control_port: int
    stealth: bool
    public_tcp_ports: tuple[int, ...] = ()
    public_udp_ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DoorElement:
    set_name: str  # doors4 / doors6
    address: str
    port: int


def _element(settings: GateSettings, client: str, port: int) -> DoorElement:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        raise Invalid(f"client {client!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # str() would give the scope ("%..." with nearly any characters) back into the nft text.
        raise Invalid(f"client {client!r} is not an IP address (has a scope id)")
    if address.is_unspecified or address.is_multicast:
        raise Invalid(f"client {client} cannot be a door's peer")
    if isinstance(port, bool) or not settings.door_port_low <= port <= settings.door_port_high:
        raise Invalid(f"port {port} outside the door range")
    return DoorElement("doors4" if address.version == 4 else "doors6", str(address), port)


def validate_open(settings: GateSettings, command: DoorOpen, now_ms: int) -> tuple[DoorElement, int]:
    """The element to add and its timeout in ms, or Invalid."""
    if not _DOOR_ID.fullmatch(command.door_id):
        raise Invalid("bad door id")
    element = _element(settings, command.client, command.port)
    timeout_ms = command.expires_at_ms - now_ms
    if timeout_ms <= 0:
        raise Invalid(f"command arrived {-timeout_ms} ms after the door's end")
    if timeout_ms > settings.window_seconds * 1000 + TIMEOUT_SLACK_MS:
        raise Invalid(f"timeout {timeout_ms} ms exceeds the window")
    return element, timeout_ms


def validate_close(settings: GateSettings, command: DoorClose) -> DoorElement:
    if not _DOOR_ID.fullmatch(command.door_id):
        raise Invalid("bad door id")
    return _element(settings, command.client, command.port)


def _key(element: DoorElement) -> str:
    return f"{element.address} . {element.port}"


def add_element(settings: GateSettings, element: DoorElement, timeout_ms: int) -> str:
    return f"add element inet {settings.table} {element.set_name} {{ {_key(element)} timeout {timeout_ms}ms }}\n"


def delete_element(settings: GateSettings, element: DoorElement) -> str:
    return f"delete element inet {settings.table} {element.set_name} {{ {_key(element)} }}\n"


def ruleset(settings: GateSettings) -> str:
    """Create or refresh our table in one atomic nft transaction.

    The sets are added, not recreated, so doors that are open when the gate
    restarts stay open until their own timeouts, and no longer.
    """
    t = f"inet {settings.table}"
    doors = f"{settings.door_port_low}-{settings.door_port_high}"
    lines = [
        f"add table {t}",
        f"add set {t} doors4 {{ type ipv4_addr . inet_service; flags timeout; }}",
        f"add set {t} doors6 {{ type ipv6_addr . inet_service; flags timeout; }}",
        # Before the usual filter priority so our drop of the door range holds
        # even if another table would accept; we never accept for others.
        f"add chain {t} input {{ type filter hook input priority filter - 10; policy accept; }}",
        f"flush chain {t} input",
        # Connections made through a door outlive its window.
        f"add rule {t} input ct state established,related accept",
        f"add rule {t} input tcp dport {doors} ip saddr . tcp dport @doors4 accept",
        f"add rule {t} input tcp dport {doors} ip6 saddr . tcp dport @doors6 accept",
        # Silently: no RST, so a scan cannot tell a door port from a dead one.
        f"add rule {t} input tcp dport {doors} drop",
    ]
    if settings.stealth:
        lines += [
            f'add rule {t} input iifname "lo" accept',
            # Without neighbour discovery IPv6 stops working altogether.
            f"add rule {t} input icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert,"
            " nd-router-solicit, packet-too-big } accept",
        ]
        if settings.public_tcp_ports:
            lines.append(f"add rule {t} input tcp dport {{ {', '.join(map(str, settings.public_tcp_ports))} }} accept")
        if settings.public_udp_ports:
            lines.append(f"add rule {t} input udp dport {{ {', '.join(map(str, settings.public_udp_ports))} }} accept")
        # Knock SYNs, scans and the control port: no RST, no ICMP, nothing.
        lines.append(f"add rule {t} input drop")
    lines += _output_rules(settings)
    return "\n".join(lines) + "\n"


# ICMP that answers someone: errors about a packet received, and replies to requests.
_ICMP_ANSWERS = ("echo-reply, destination-unreachable, source-quench, redirect, router-advertisement, "
                 "time-exceeded, parameter-problem, timestamp-reply, info-reply, address-mask-reply")
_ICMPV6_ANSWERS = ("destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-reply, "
                   "nd-redirect, 140")  # 140: node information reply


def _output_rules(settings: GateSettings) -> list[str]:
    """The stealth of what leaves: no answer to anyone the server has no connection with.

    The input chain cannot stop the kernel's own answers to packets it judges before
    any input hook: ICMP parameter problem for a malformed IPv4 option or IPv6
    hop-by-hop option (sent while the packet is parsed), ICMP reassembly time exceeded
    when a lone fragment's queue expires (the fragment never reaches a hook whole).
    Every such answer leaves through the output hook. Conntrack either knows it
    belongs to no connection (state invalid: the packet it quotes was never tracked,
    as for an expired fragment) or calls it "related" to the quoted packet's own
    entry, which is still unconfirmed because that packet never got past the input
    hook (as for a bad option, answered while the header is parsed): neither may
    leave. The ICMP a real connection needs (an error about one of our accepted
    flows, a reply to our own ping) is related to or part of a confirmed entry and
    passes. The chain is always there, and empty without stealth, so turning
    stealth off removes its rules.
    """
    t = f"inet {settings.table}"
    lines = [f"add chain {t} output {{ type filter hook output priority filter - 10; policy accept; }}",
             f"flush chain {t} output"]
    if settings.stealth:
        lines += [
            f'add rule {t} output oifname "lo" accept',
            f"add rule {t} output meta l4proto icmp icmp type {{ {_ICMP_ANSWERS} }} ct status ! confirmed counter drop",
            f"add rule {t} output meta l4proto ipv6-icmp icmpv6 type {{ {_ICMPV6_ANSWERS} }} ct status ! confirmed"
            " counter drop",
            f"add rule {t} output ct state established,related accept",
            f"add rule {t} output meta l4proto icmp icmp type {{ {_ICMP_ANSWERS} }} counter drop",
            f"add rule {t} output meta l4proto ipv6-icmp icmpv6 type {{ {_ICMPV6_ANSWERS} }} counter drop",
        ]
    return lines


def remove_table(settings: GateSettings) -> str:
    return f"delete table inet {settings.table}\n"
