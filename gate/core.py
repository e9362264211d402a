"""Gate's pure core: validate every command again, and write nft input for it.

The gate holds CAP_NET_ADMIN, so it trusts nothing it is told: the address
family and value, the port (inside the configured door range), the remaining
time (positive and no longer than the window) are all checked here, and the nft
text is built only from values that passed. No shell is ever involved.

The ruleset lives in our own table (``inet <table>``) and never touches anyone
else's. Door elements carry kernel-side timeouts: a door closes on time even if
the gate, or the whole stack, dies (fail closed).

Two kinds of door, both forwarded by nftables, so that a door never depends on a port
a local process could take (a local user who binds the whole door range must not deny
every door):

* kernel doors (``once4``/``many4`` and the map ``fwd4``, and their IPv6 twins):
  nftables itself forwards the connection (DNAT to the service's address and port),
  so no byte crosses user space and an established session outlives every stage;
* relay doors (``ronce4``/``ronce6`` single-use, ``rmany4``/``rmany6`` for many
  connections): nftables redirects the connection to the relay's one listener
  (``relay_port``, a privileged port no ordinary user can bind), on the address it
  came to; the relay reads the door port the client asked for from the connection
  (SO_ORIGINAL_DST), checks the client, and pumps the bytes to the service (targets
  on other hosts, and IPv6 clients of an IPv4 service, since NAT keeps the family).

A single-use door is an element that the NAT rule deletes with the first new
connection it forwards: a second connection finds no element, is not forwarded, and
the input chain drops it as it drops any door port.

Forwarding to 127.0.0.0/8 needs ``route_localnet`` on the interface (the gate sets
it, see gate/main.py); the ``guard`` chain, before NAT, drops every packet from
outside addressed to or from 127.0.0.0/8, so the setting opens nothing by itself:
only a door's DNAT reaches a loopback service.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from dynknock.bus import DoorClose, DoorOpen

_DOOR_ID = re.compile(r"[0-9a-f]{1,32}")
# A little slack over the window for clock reading jitter between the stages.
TIMEOUT_SLACK_MS = 2000
# conntrack mark bits of a connection forwarded by a kernel door: the input chain admits
# it and the gate's conntrack watcher reports its use and its bytes ("KN").
KERNEL_DOOR_MARK = 0x4B4E0000
# ... and of one redirected to the relay ("KR"): admitted; the relay reports its use itself.
RELAY_DOOR_MARK = 0x4B520000


class Invalid(ValueError):
    """A command the gate refuses; the message says why."""


# The prefix of a DoorResult detail on which auth moves a door to another port (auth/engine.py; the relay says
# it of a port a local socket holds). The gate says it of a (client, port) another auth replica's door holds.
ADDRESS_IN_USE = "address_in_use"


@dataclass(frozen=True, slots=True)
class GateSettings:
    table: str
    door_port_low: int
    door_port_high: int
    window_seconds: int
    stealth: bool
    public_tcp_ports: tuple[int, ...] = ()
    public_udp_ports: tuple[int, ...] = ()
    # (address, port) of the services a kernel door may forward to; nothing else, whatever
    # a command says (as the relay connects only to configured targets).
    kernel_targets: frozenset[tuple[str, int]] = frozenset()
    relay_port: int = 1022  # where relay doors are redirected (server.relay_port)


@dataclass(frozen=True, slots=True)
class DoorElement:
    set_name: str  # ronce4 / rmany4 (relay); once4 / many4 (kernel); their IPv6 twins
    address: str
    port: int
    target: tuple[str, int] | None = None  # kernel doors: where the connection is forwarded

    @property
    def version(self) -> int:
        return 6 if self.set_name.endswith("6") else 4


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
    return DoorElement(f"ronce{address.version}", str(address), port)


def _kernel_element(settings: GateSettings, element: DoorElement, command: DoorOpen) -> DoorElement:
    target = (command.target_host, command.target_port)
    if target not in settings.kernel_targets:
        raise Invalid(f"target {command.target_host}:{command.target_port} is no kernel-forwarded service")
    if ipaddress.ip_address(command.target_host).version != element.version:
        raise Invalid("NAT cannot forward between IPv4 and IPv6")
    kind = "once" if command.single_use else "many"
    return DoorElement(f"{kind}{element.version}", element.address, element.port,
                       (str(ipaddress.ip_address(command.target_host)), command.target_port))


def validate_open(settings: GateSettings, command: DoorOpen, now_ms: int) -> tuple[DoorElement, int]:
    """The element to add and its timeout in ms, or Invalid."""
    if not _DOOR_ID.fullmatch(command.door_id):
        raise Invalid("bad door id")
    element = _element(settings, command.client, command.port)
    if command.kernel:
        element = _kernel_element(settings, element, command)
    elif not command.single_use:
        element = replace(element, set_name=f"rmany{element.version}")
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
    """One transaction: a kernel door's target and its admission appear together or not at all."""
    t = f"inet {settings.table}"
    text = ""
    if element.target is not None:
        target = f"{element.target[0]} . {element.target[1]}"
        text += f"add element {t} fwd{element.version} {{ {_key(element)} timeout {timeout_ms}ms : {target} }}\n"
    return text + f"add element {t} {element.set_name} {{ {_key(element)} timeout {timeout_ms}ms }}\n"


def close_element(settings: GateSettings, element: DoorElement, target: tuple[str, int] | None = None) -> str:
    """One transaction that empties every place a door of this (client, port) can be, and cannot fail.

    A DoorClose does not say which kind the door was (a gate restarted in between does not know either),
    and a transaction that deletes a missing element fails whole. A failing nf_tables transaction costs
    the kernel an RCU grace period (nf_tables_abort calls synchronize_rcu): milliseconds of waiting per
    close, which a gate closing many doors cannot afford (docs/BENCHMARKS.md). So each set gets its key
    added (a no-op if there) and then deleted. The map ``fwd`` may be added to only with the value it
    holds: `target`, the door's (from auth's DoorClose, the gate's memory or the kernel's listing), else
    the family's one kernel target; with several and none known, the map element stays to its kernel
    timeout (it admits nothing alone: the NAT rule forwards only what a ``once`` or ``many`` element
    names). A used single-use door has lost its ``once`` element already: the add brings it back for the
    length of this transaction only.
    """
    t = f"inet {settings.table}"
    v = element.version
    key = _key(element)
    text = "".join(f"add element {t} {name}{v} {{ {key} }}\ndelete element {t} {name}{v} {{ {key} }}\n"
                   for name in ("ronce", "rmany", "once", "many"))
    family = sorted(k for k in settings.kernel_targets if ipaddress.ip_address(k[0]).version == v)
    targets = [target] if target is not None else family
    if len(targets) == 1:
        host, port = targets[0]
        text += f"add element {t} fwd{v} {{ {key} : {host} . {port} }}\ndelete element {t} fwd{v} {{ {key} }}\n"
    return text


# An older table may also hold the sets doors4/doors6: no rule reads them, and their elements run out
# within a window.
DOOR_SETS = frozenset({"ronce4", "ronce6", "rmany4", "rmany6", "once4", "once6", "many4", "many6", "fwd4", "fwd6"})


@dataclass(frozen=True, slots=True)
class Held:
    """A door element the kernel holds: its set or map, key, and (a map's) target."""

    name: str
    address: str
    port: int
    target: tuple[str, int] | None = None


def _pair(value: object) -> tuple[str, int] | None:
    concat = value.get("concat") if isinstance(value, dict) else None
    if isinstance(concat, list) and len(concat) == 2 and isinstance(concat[0], str) and isinstance(concat[1], int):
        try:
            return str(ipaddress.ip_address(concat[0])), concat[1]
        except ValueError:
            return None
    return None


def held_elements(listing: object) -> set[Held]:
    """Every element of our door sets and maps in the JSON of `nft -j list table` (what the kernel holds,
    whoever put it there)."""
    found: set[Held] = set()
    items = listing.get("nftables") if isinstance(listing, dict) else None
    for item in items if isinstance(items, list) else []:
        holder = (item.get("set") or item.get("map")) if isinstance(item, dict) else None
        if not isinstance(holder, dict) or holder.get("name") not in DOOR_SETS:
            continue
        for entry in holder.get("elem") or []:
            key, value = (entry[0], entry[1]) if isinstance(entry, list) and len(entry) == 2 else (entry, None)
            if isinstance(key, dict) and isinstance(key.get("elem"), dict):
                key = key["elem"].get("val")
            pair = _pair(key)
            if pair is not None:
                found.add(Held(str(holder["name"]), pair[0], pair[1], _pair(value)))
    return found


def reconcile(settings: GateSettings, held: set[Held], believed: set[tuple[str, int]]) -> list[str]:
    """One transaction (that cannot fail) per door whose (client, port) the kernel holds and auth no longer
    believes open, emptying it. Never an addition: a door the kernel no longer holds stays shut (a used
    single-use door has lost its element on purpose, and must never get it back)."""
    stale: dict[tuple[str, int], tuple[str, int] | None] = {}
    for element in held:
        key = (element.address, element.port)
        if key not in believed:
            stale[key] = element.target or stale.get(key)
    return [close_element(settings, DoorElement(f"ronce{ipaddress.ip_address(a).version}", a, p), target)
            for (a, p), target in sorted(stale.items())]


# --- who opened each door: several auth replicas ----------------------------------------------------------

DoorKey = tuple[str, int]  # (client address as the kernel lists it, door port)


@dataclass(frozen=True, slots=True)
class Opener:
    """The auth a command came from. `name`: with auth replicas, the name of the CURVE key behind its
    connection (ZeroMQ's User-Id: `auth@a`), which stays the same through a reconnection and a restart of
    that replica; "" when the gate serves one auth, whose every door is its own. `identity`: the ROUTER
    identity of the connection the command came on (a new one at each reconnection)."""

    name: str
    identity: bytes


@dataclass(frozen=True, slots=True)
class Owned:
    opener: Opener
    door_id: str
    until_ms: int  # the kernel has dropped the element by then (its own timeout): the record may go


class Openers:
    """Which auth opened each door of this gate, so that several auth replicas can share it.

    Each replica knows only its own doors: its DoorSet lists them, and it closes them. So:

    1. A DoorSet empties only doors of its sender. Another replica's doors stay, and so do the doors of a
       replica that went quiet or died: they run out their kernel timeouts. A replica that comes back (the
       same key, a new process) lists only its new doors, and its old ones are emptied, as a restarted
       auth's are.
    2. A door the gate knows no opener of (the gate restarted: its memory went, the kernel's elements did
       not) is claimed by the first replica whose DoorSet lists it. One that no DoorSet lists is emptied
       only once every replica of the config has sent one since the gate started: a replica that is down
       may own it, and it waits for its kernel timeout instead.
    3. A DoorClose, or a DoorOpen of the same (client, port), from another replica than the door's opener
       is refused.
    4. With one auth (`replicas` empty) every door is that auth's (openers are all ""): a DoorSet empties
       every door it does not list, and nothing is refused.

    Pure: the shell hands in what the kernel holds and the clock.
    """

    def __init__(self, replicas: frozenset[str] = frozenset(), claim_ms: int = 0) -> None:
        self.replicas = replicas  # the key names of the config's replicas (auth@NAME); empty: one auth
        self.claim_ms = claim_ms  # a door claimed from a DoorSet is held no longer than this (window, slack)
        self._owned: dict[DoorKey, Owned] = {}
        self._heard: set[str] = set()  # the openers whose DoorSet came since the gate started

    def __len__(self) -> int:
        return len(self._owned)

    def owner(self, key: DoorKey, now_ms: int) -> Owned | None:
        owned = self._owned.get(key)
        return owned if owned is not None and now_ms <= owned.until_ms else None

    def refusal(self, key: DoorKey, opener: str, now_ms: int) -> str:
        """Why `opener` may not open or close the door `key` ("": it may)."""
        owned = self.owner(key, now_ms)
        if owned is None or owned.opener.name == opener:
            return ""
        return f"the door is {owned.opener.name}'s, not {opener or 'this auth'}'s"

    def opened(self, key: DoorKey, opener: Opener, door_id: str, until_ms: int) -> None:
        self._owned[key] = Owned(opener, door_id, until_ms)

    def closed(self, key: DoorKey) -> None:
        self._owned.pop(key, None)

    def on_door_set(self, opener: Opener, listed: dict[DoorKey, str], held: set[DoorKey], now_ms: int
                    ) -> set[DoorKey]:
        """The doors of `held` (what the kernel holds) that a DoorSet from `opener` listing `listed` (key ->
        door id) must leave alone although it does not list them; held doors it lists that no one owns
        become its own."""
        self._heard.add(opener.name)
        everyone_heard = self.replicas <= self._heard
        spared: set[DoorKey] = set()
        for key in held:
            owned = self.owner(key, now_ms)
            if key in listed:
                if owned is None:
                    self._owned[key] = Owned(opener, listed[key], now_ms + self.claim_ms)
            elif owned is not None and owned.opener.name != opener.name:
                spared.add(key)  # another replica's
            elif owned is None and not everyone_heard:
                spared.add(key)  # perhaps the door of a replica not heard since the gate started
        return spared

    def forget_expired(self, now_ms: int) -> None:
        for key in [k for k, owned in self._owned.items() if now_ms > owned.until_ms]:
            del self._owned[key]

    def counts(self, now_ms: int) -> dict[str, int]:
        """Doors per opener (heartbeat); the one auth of a gate without replicas is "auth"."""
        counts: dict[str, int] = {}
        for owned in self._owned.values():
            if now_ms <= owned.until_ms:
                name = owned.opener.name or "auth"
                counts[name] = counts.get(name, 0) + 1
        return counts


def ruleset(settings: GateSettings) -> str:
    """Create or refresh our table in one atomic nft transaction.

    The sets are added, not recreated, so doors that are open when the gate
    restarts stay open until their own timeouts, and no longer.
    """
    t = f"inet {settings.table}"
    doors = f"{settings.door_port_low}-{settings.door_port_high}"
    lines = [
        f"add table {t}",
        *_door_nat_rules(settings),
        # Before the usual filter priority so our drop of the door range holds
        # even if another table would accept; we never accept for others.
        f"add chain {t} input {{ type filter hook input priority filter - 10; policy accept; }}",
        f"flush chain {t} input",
        # Connections made through a door outlive its window.
        f"add rule {t} input ct state established,related accept",
        # A new connection that a door forwarded (DNAT or redirect to the relay, marked, in _door_nat_rules).
        f"add rule {t} input ct status dnat ct mark and {KERNEL_DOOR_MARK:#x} == {KERNEL_DOOR_MARK:#x} accept",
        f"add rule {t} input ct status dnat ct mark and {RELAY_DOOR_MARK:#x} == {RELAY_DOOR_MARK:#x} accept",
        # Nothing else reaches the relay's port: it admits only what a door redirected.
        f"add rule {t} input tcp dport {settings.relay_port} drop",
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


def _door_nat_rules(settings: GateSettings) -> list[str]:
    t = f"inet {settings.table}"
    doors = f"{settings.door_port_low}-{settings.door_port_high}"
    lines = []
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += [
            # "dynamic": the NAT rule deletes from it.
            f"add set {t} once{v} {{ type {addr} . inet_service; flags dynamic,timeout; }}",
            f"add set {t} many{v} {{ type {addr} . inet_service; flags timeout; }}",
            f"add map {t} fwd{v} {{ type {addr} . inet_service : {addr} . inet_service; flags timeout; }}",
            f"add set {t} ronce{v} {{ type {addr} . inet_service; flags dynamic,timeout; }}",
            f"add set {t} rmany{v} {{ type {addr} . inet_service; flags timeout; }}",
        ]
    lines += [
        # Before NAT (raw priority): from outside, nothing may reach 127.0.0.0/8, whatever
        # route_localnet says; only a door's DNAT, after this chain, leads there.
        f"add chain {t} guard {{ type filter hook prerouting priority raw; policy accept; }}",
        f"flush chain {t} guard",
        f'add rule {t} guard iifname != "lo" ip daddr 127.0.0.0/8 counter drop',
        f'add rule {t} guard iifname != "lo" ip saddr 127.0.0.0/8 counter drop',
        f"add chain {t} doors_nat {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"flush chain {t} doors_nat",
    ]
    mark = f"ct mark set ct mark or {KERNEL_DOOR_MARK:#x}"
    relay_mark = f"ct mark set ct mark or {RELAY_DOOR_MARK:#x}"
    relay = f"redirect to :{settings.relay_port}"
    for v, family in ((4, "ip"), (6, "ip6")):
        key = f"{family} saddr . tcp dport"
        target = f"dnat {family} to {key} map @fwd{v}"
        # Only the first packet of a connection passes a NAT chain: deleting the element
        # there makes the door single-use, and the connection keeps its mapping.
        lines += [
            f"add rule {t} doors_nat tcp dport {doors} {key} @once{v} delete @once{v} {{ {key} }} {mark} {target}",
            f"add rule {t} doors_nat tcp dport {doors} {key} @many{v} {mark} {target}",
            f"add rule {t} doors_nat tcp dport {doors} {key} @ronce{v} delete @ronce{v} {{ {key} }} {relay_mark} "
            f"{relay}",
            f"add rule {t} doors_nat tcp dport {doors} {key} @rmany{v} {relay_mark} {relay}",
        ]
    return lines


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

    No rule names a protocol or a service ("meta l4proto ipv6-icmp"): nft resolves names
    through /etc/protocols and /etc/services, which minimal images lack (package netbase).
    "icmp type" alone makes nft add the family and protocol match itself.
    """
    t = f"inet {settings.table}"
    lines = [f"add chain {t} output {{ type filter hook output priority filter - 10; policy accept; }}",
             f"flush chain {t} output"]
    if settings.stealth:
        lines += [
            f'add rule {t} output oifname "lo" accept',
            f"add rule {t} output icmp type {{ {_ICMP_ANSWERS} }} ct status ! confirmed counter drop",
            f"add rule {t} output icmpv6 type {{ {_ICMPV6_ANSWERS} }} ct status ! confirmed"
            " counter drop",
            f"add rule {t} output ct state established,related accept",
            f"add rule {t} output icmp type {{ {_ICMP_ANSWERS} }} counter drop",
            f"add rule {t} output icmpv6 type {{ {_ICMPV6_ANSWERS} }} counter drop",
        ]
    return lines


# What nft's error most likely means on a server, in the words of the fix; the first match wins.
_NFT_CAUSES = (
    ("cannot run", "nftables is not installed (apt-get install nftables)"),
    ("Operation not permitted", "the gate lacks CAP_NET_ADMIN here: start it as supervisord.conf does "
     "(setpriv ... +net_admin), or set gate.backend = \"none\""),
    ("Could not resolve protocol", "/etc/protocols is missing or lacks the name (package netbase)"),
    ("Could not resolve service", "/etc/services is missing or lacks the name (package netbase)"),
    ("Protocol not supported", "this kernel has no nf_tables: modprobe nf_tables, or use a kernel built with it"),
    ("Address family not supported", "this kernel has no nf_tables: modprobe nf_tables, or use a kernel built "
     "with it"),
    ("No such file or directory", "this kernel lacks an nftables module the ruleset needs (nft_ct, nft_nat, "
     "nft_set_hash, nft_reject): modprobe them, or use a kernel built with them"),
)


def explain_nft_error(error: str) -> str:
    """The likely cause of an nft error, for the line the admin reads."""
    for needle, cause in _NFT_CAUSES:
        if needle in error:
            return f"likely cause: {cause}"
    return "see nft's error above; `nft -c -f FILE` with `knock-gate --print-ruleset` output reproduces it"


def explain_os_error(error: OSError) -> str:
    path = str(error.filename or "")
    if isinstance(error, FileNotFoundError) and path.startswith("/proc/sys/net/ipv4/conf/"):
        return f"there is no interface {path.split('/')[6]!r} (server.interface)"
    if path.startswith("/proc/sys/"):
        return ("kernel doors set this sysctl: the gate needs CAP_NET_ADMIN and a writable /proc/sys "
                "(no ProtectKernelTunables= in a systemd unit)")
    return "check gate.backend and server.interface"


def remove_table(settings: GateSettings) -> str:
    return f"delete table inet {settings.table}\n"


# --- what conntrack says of kernel doors ------------------------------------------------------------

_CT_EVENT = re.compile(r"\[(NEW|UPDATE|DESTROY)\]\s+tcp\s+\d+\s+(?:\d+\s+)?([A-Z_]+)?\s*(.*)")
_CT_FIELD = re.compile(r"(?<![\w-])(src|dst|sport|dport|packets|bytes|id)=(\S+)")
# conntrack states after which a connection carries no more data.
_CT_CLOSED_STATES = frozenset({"TIME_WAIT", "CLOSE"})


@dataclass(frozen=True, slots=True)
class ConnectionSeen:
    """One line of `conntrack -E -o id` about a connection a kernel door forwarded."""

    kind: str  # "used" (a new connection), "closed" (no more data), "gone" (entry destroyed)
    conntrack_id: int
    client: str
    client_port: int
    door_port: int
    server: str
    bytes_in: int | None = None  # client -> service, whole IP packets (conntrack accounting)
    bytes_out: int | None = None


def parse_conntrack_event(line: str) -> ConnectionSeen | None:
    """The event of a line, or None for any line that is not one of ours (it is kernel output, but
    only a fully formed line is trusted: a torn or unexpected one is skipped, never guessed at)."""
    match = _CT_EVENT.search(line)
    if match is None:
        return None
    event, state, rest = match.group(1), match.group(2) or "", match.group(3)
    original: dict[str, str] = {}
    reply: dict[str, str] = {}
    conntrack_id = None
    for key, value in _CT_FIELD.findall(rest):
        if key == "id":
            conntrack_id = value
        else:  # the original direction's fields come first, then the reply's
            (reply if key in original else original).setdefault(key, value)
    try:
        client, server = str(ipaddress.ip_address(original["src"])), str(ipaddress.ip_address(original["dst"]))
        client_port, door_port = int(original["sport"]), int(original["dport"])
        identity = int(conntrack_id or "")
    except (KeyError, ValueError):
        return None
    seen = ConnectionSeen("used", identity, client, client_port, door_port, server)
    if event == "NEW":
        return seen
    if event == "UPDATE" and state in _CT_CLOSED_STATES:
        return replace(seen, kind="closed")
    if event == "DESTROY":
        return replace(seen, kind="gone", bytes_in=_int_or_none(original.get("bytes")),
                       bytes_out=_int_or_none(reply.get("bytes")))
    return None


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def parse_counters(line: str) -> tuple[int, int] | None:
    """(bytes in, bytes out) of a `conntrack -G` line, or None."""
    byte_counts = [int(v) for k, v in _CT_FIELD.findall(line) if k == "bytes" and v.isdigit()]
    return (byte_counts[0], byte_counts[1]) if len(byte_counts) == 2 else None


def conntrack_get_argv(conntrack: str, seen: ConnectionSeen) -> list[str]:
    """The conntrack command that reads one door connection's counters (before its entry is gone)."""
    return [conntrack, "-G", "-p", "tcp", "-s", seen.client, "-d", seen.server, "--sport", str(seen.client_port),
            "--dport", str(seen.door_port)]


def conntrack_watch_argv(conntrack: str) -> list[str]:
    """The conntrack command that reports the connections of kernel doors (our mark) as they come and go."""
    mark = f"{KERNEL_DOOR_MARK:#x}/{KERNEL_DOOR_MARK:#x}"
    return [conntrack, "-E", "-p", "tcp", "-e", "NEW,UPDATE,DESTROY", "-o", "id", "--mark", mark]
