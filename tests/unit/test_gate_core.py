"""Gate's pure core: every command validated again, and the exact nft text built from it.

The gate holds CAP_NET_ADMIN, so the important property is negative: whatever
auth (or anyone on the bus) sends, nft only ever sees an address made of hex
digits, dots and colons, a port inside the door range and a bounded timeout.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dynknock.bus import DoorClose, DoorOpen
from dynknock.gate import core
from dynknock.gate.core import DoorElement, GateSettings, Invalid

NOW = 1_700_000_000_000
SETTINGS = GateSettings(table="dynknock", door_port_low=40000, door_port_high=49999, window_seconds=30,
                        stealth=True)
WINDOW_MS = SETTINGS.window_seconds * 1000
DOOR_ID = "0123456789abcdef0123456789abcdef"


def door_open(client: str = "203.0.113.7", port: int = 40001, expires_at_ms: int = NOW + WINDOW_MS,
              door_id: str = DOOR_ID) -> DoorOpen:
    return DoorOpen(door_id=door_id, user="alice", client=client, port=port, target_host="127.0.0.1",
                    target_port=22, expires_at_ms=expires_at_ms, single_use=True)


def door_close(client: str = "203.0.113.7", port: int = 40001, door_id: str = DOOR_ID) -> DoorClose:
    return DoorClose(door_id=door_id, client=client, port=port)


# --- validate_open / validate_close accept -------------------------------------------


@pytest.mark.parametrize("client,set_name,address", [
    ("203.0.113.7", "ronce4", "203.0.113.7"),
    ("2001:db8::7", "ronce6", "2001:db8::7"),
    ("2001:DB8:0:0:0:0:0:7", "ronce6", "2001:db8::7"),  # canonical form in the rule
    ("127.0.0.1", "ronce4", "127.0.0.1"),
    ("::1", "ronce6", "::1"),
    ("::ffff:203.0.113.7", "ronce6", "::ffff:cb00:7107"),
    ("fe80::1", "ronce6", "fe80::1"),
])
def test_validate_open_accepts_good_commands(client: str, set_name: str, address: str) -> None:
    element, timeout_ms = core.validate_open(SETTINGS, door_open(client=client), NOW)
    assert element == DoorElement(set_name, address, 40001)
    assert timeout_ms == WINDOW_MS


@pytest.mark.parametrize("port", [SETTINGS.door_port_low, SETTINGS.door_port_high, 45000])
def test_validate_open_accepts_the_range_edges(port: int) -> None:
    element, _ = core.validate_open(SETTINGS, door_open(port=port), NOW)
    assert element.port == port


@pytest.mark.parametrize("door_id", ["0", "a" * 32, "deadbeef"])
def test_validate_open_accepts_hex_door_ids(door_id: str) -> None:
    element, _ = core.validate_open(SETTINGS, door_open(door_id=door_id), NOW)
    assert element.address == "203.0.113.7"


@pytest.mark.parametrize("left_ms", [1, 1000, WINDOW_MS, WINDOW_MS + core.TIMEOUT_SLACK_MS])
def test_validate_open_timeout_is_what_is_left(left_ms: int) -> None:
    _, timeout_ms = core.validate_open(SETTINGS, door_open(expires_at_ms=NOW + left_ms), NOW)
    assert timeout_ms == left_ms


def test_validate_close_accepts_good_commands() -> None:
    assert core.validate_close(SETTINGS, door_close()) == DoorElement("ronce4", "203.0.113.7", 40001)
    assert core.validate_close(SETTINGS, door_close(client="2001:db8::7")) == DoorElement("ronce6", "2001:db8::7",
                                                                                          40001)


# --- ... and refuse ----------------------------------------------------------------------------------

BAD_DOOR_IDS = ["", "A" * 4, "0123456789ABCDEF", "g", "a" * 33, "abc ", " abc", "abc\n", "ab-cd", "0x1f",
                "abc}", "١٢٣"]


@pytest.mark.parametrize("door_id", BAD_DOOR_IDS)
def test_bad_door_ids_are_refused(door_id: str) -> None:
    with pytest.raises(Invalid, match="bad door id"):
        core.validate_open(SETTINGS, door_open(door_id=door_id), NOW)
    with pytest.raises(Invalid, match="bad door id"):
        core.validate_close(SETTINGS, door_close(door_id=door_id))


NOT_IP = ["", "alice", "203.0.113", "203.0.113.256", "203.0.113.7 ", " 203.0.113.7", "203.0.113.7\n",
          "203.0.113.7/32", "2001:db8::7/128", "2001:db8:::7", "[2001:db8::7]", "203.0.113.7:22",
          "0x7f.0.0.1", "1.2.3.4 } ; flush ruleset", "::1 . 22 }", "２０３.0.113.7"]


@pytest.mark.parametrize("client", NOT_IP)
def test_non_ip_clients_are_refused(client: str) -> None:
    with pytest.raises(Invalid, match="not an IP address"):
        core.validate_open(SETTINGS, door_open(client=client), NOW)
    with pytest.raises(Invalid, match="not an IP address"):
        core.validate_close(SETTINGS, door_close(client=client))


@pytest.mark.parametrize("client", ["fe80::1%eth0", "fe80::1%x } ; flush ruleset ;", "fe80::1%1\nflush ruleset",
                                    "::1%lo"])
def test_scoped_ipv6_clients_are_refused(client: str) -> None:
    """Python parses a scope id ("%..." with nearly any characters) and str() gives it back: nft must never see it."""
    with pytest.raises(Invalid):
        core.validate_open(SETTINGS, door_open(client=client), NOW)
    with pytest.raises(Invalid):
        core.validate_close(SETTINGS, door_close(client=client))


@pytest.mark.parametrize("client", ["0.0.0.0", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "ff05::2"])
def test_unspecified_and_multicast_clients_are_refused(client: str) -> None:
    with pytest.raises(Invalid, match="cannot be a door's peer"):
        core.validate_open(SETTINGS, door_open(client=client), NOW)
    with pytest.raises(Invalid, match="cannot be a door's peer"):
        core.validate_close(SETTINGS, door_close(client=client))


@pytest.mark.parametrize("port", [0, 1, 22, SETTINGS.door_port_low - 1, SETTINGS.door_port_high + 1, 62201,
                                  65535, 65536, -40001])
def test_ports_outside_the_range_are_refused(port: int) -> None:
    with pytest.raises(Invalid, match="outside the door range"):
        core.validate_open(SETTINGS, door_open(port=port), NOW)
    with pytest.raises(Invalid, match="outside the door range"):
        core.validate_close(SETTINGS, door_close(port=port))


@pytest.mark.parametrize("port", [True, False])
def test_bools_are_not_ports_even_when_the_range_holds_them(port: bool) -> None:
    wide = replace(SETTINGS, door_port_low=0, door_port_high=65535)
    with pytest.raises(Invalid, match="outside the door range"):
        core.validate_open(wide, door_open(port=port), NOW)
    with pytest.raises(Invalid, match="outside the door range"):
        core.validate_close(wide, door_close(port=port))
    assert core.validate_open(wide, door_open(port=1), NOW)[0].port == 1  # the range itself is fine


@pytest.mark.parametrize("late_ms", [0, 1, 5000, 10**9])
def test_late_commands_are_refused(late_ms: int) -> None:
    with pytest.raises(Invalid, match=f"arrived {late_ms} ms after"):
        core.validate_open(SETTINGS, door_open(expires_at_ms=NOW - late_ms), NOW)


@pytest.mark.parametrize("beyond_ms", [1, 1000, 10**9])
def test_timeouts_beyond_the_window_are_refused(beyond_ms: int) -> None:
    limit = WINDOW_MS + core.TIMEOUT_SLACK_MS
    with pytest.raises(Invalid, match="exceeds the window"):
        core.validate_open(SETTINGS, door_open(expires_at_ms=NOW + limit + beyond_ms), NOW)


def test_the_window_follows_the_settings() -> None:
    short = replace(SETTINGS, window_seconds=5)
    command = door_open(expires_at_ms=NOW + 10_000)
    assert core.validate_open(SETTINGS, command, NOW)[1] == 10_000
    with pytest.raises(Invalid):
        core.validate_open(short, command, NOW)


def test_validation_order_reports_the_first_problem() -> None:
    """A bad door id is refused before the client is even parsed."""
    with pytest.raises(Invalid, match="bad door id"):
        core.validate_open(SETTINGS, door_open(door_id="X", client="junk", port=0), NOW)
    with pytest.raises(Invalid, match="not an IP address"):
        core.validate_open(SETTINGS, door_open(client="junk", port=0, expires_at_ms=0), NOW)


# --- nft text -----------------------------------------------------------------------------------------


def test_add_element_text() -> None:
    element, timeout_ms = core.validate_open(SETTINGS, door_open(), NOW)
    assert core.add_element(SETTINGS, element, timeout_ms) == \
        "add element inet dynknock ronce4 { 203.0.113.7 . 40001 timeout 30000ms }\n"
    element6, _ = core.validate_open(SETTINGS, door_open(client="2001:db8::7", port=49999), NOW)
    other_table = replace(SETTINGS, table="knock_2")
    assert core.add_element(other_table, element6, 1234) == \
        "add element inet knock_2 ronce6 { 2001:db8::7 . 49999 timeout 1234ms }\n"


def _add_delete(table: str, name: str, key: str) -> str:
    return f"add element inet {table} {name} {{ {key} }}\ndelete element inet {table} {name} {{ {key} }}\n"


def test_close_text_adds_then_deletes_each_set_so_it_cannot_fail() -> None:
    """A relay-only server: no kernel target, so no map entry to empty."""
    assert core.close_element(SETTINGS, core.validate_close(SETTINGS, door_close())) == "".join(
        _add_delete("dynknock", f"{name}4", "203.0.113.7 . 40001") for name in ("ronce", "rmany", "once", "many"))
    assert core.close_element(SETTINGS, core.validate_close(SETTINGS, door_close(client="::1", port=40000))) == \
        "".join(_add_delete("dynknock", f"{name}6", "::1 . 40000") for name in ("ronce", "rmany", "once", "many"))


def test_remove_table_text() -> None:
    assert core.remove_table(SETTINGS) == "delete table inet dynknock\n"


def _nat(v: int) -> list[str]:
    family, addr = ("ip", "ipv4_addr") if v == 4 else ("ip6", "ipv6_addr")
    key = f"{family} saddr . tcp dport"
    kernel, relay = "ct mark set ct mark or 0x4b4e0000", "ct mark set ct mark or 0x4b520000 redirect to :1022"
    return [
        f"add rule inet dynknock doors_nat tcp dport 40000-49999 {key} @once{v} delete @once{v} {{ {key} }} {kernel}"
        f" dnat {family} to {key} map @fwd{v}",
        f"add rule inet dynknock doors_nat tcp dport 40000-49999 {key} @many{v} {kernel} dnat {family} to {key}"
        f" map @fwd{v}",
        f"add rule inet dynknock doors_nat tcp dport 40000-49999 {key} @ronce{v} delete @ronce{v} {{ {key} }} {relay}",
        f"add rule inet dynknock doors_nat tcp dport 40000-49999 {key} @rmany{v} {relay}",
    ]


def _sets(v: int) -> list[str]:
    addr = "ipv4_addr" if v == 4 else "ipv6_addr"
    return [
        f"add set inet dynknock once{v} {{ type {addr} . inet_service; flags dynamic,timeout; }}",
        f"add set inet dynknock many{v} {{ type {addr} . inet_service; flags timeout; }}",
        f"add map inet dynknock fwd{v} {{ type {addr} . inet_service : {addr} . inet_service; flags timeout; }}",
        f"add set inet dynknock ronce{v} {{ type {addr} . inet_service; flags dynamic,timeout; }}",
        f"add set inet dynknock rmany{v} {{ type {addr} . inet_service; flags timeout; }}",
    ]


BASE_RULESET = [
    "add table inet dynknock",
    *_sets(4), *_sets(6),
    "add chain inet dynknock guard { type filter hook prerouting priority raw; policy accept; }",
    "flush chain inet dynknock guard",
    'add rule inet dynknock guard iifname != "lo" ip daddr 127.0.0.0/8 counter drop',
    'add rule inet dynknock guard iifname != "lo" ip saddr 127.0.0.0/8 counter drop',
    "add chain inet dynknock doors_nat { type nat hook prerouting priority dstnat; policy accept; }",
    "flush chain inet dynknock doors_nat",
    *_nat(4), *_nat(6),
    "add chain inet dynknock input { type filter hook input priority filter - 10; policy accept; }",
    "flush chain inet dynknock input",
    "add rule inet dynknock input ct state established,related accept",
    "add rule inet dynknock input ct status dnat ct mark and 0x4b4e0000 == 0x4b4e0000 accept",
    "add rule inet dynknock input ct status dnat ct mark and 0x4b520000 == 0x4b520000 accept",
    "add rule inet dynknock input tcp dport 1022 drop",
    "add rule inet dynknock input tcp dport 40000-49999 drop",
]
STEALTH_RULES = [
    'add rule inet dynknock input iifname "lo" accept',
    "add rule inet dynknock input icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert,"
    " nd-router-solicit, packet-too-big } accept",
]
OUTPUT_CHAIN = [
    "add chain inet dynknock output { type filter hook output priority filter - 10; policy accept; }",
    "flush chain inet dynknock output",
]
OUTPUT_STEALTH = OUTPUT_CHAIN + [
    'add rule inet dynknock output oifname "lo" accept',
    "add rule inet dynknock output icmp type { echo-reply, destination-unreachable, source-quench,"
    " redirect, router-advertisement, time-exceeded, parameter-problem, timestamp-reply, info-reply,"
    " address-mask-reply } ct status ! confirmed counter drop",
    "add rule inet dynknock output icmpv6 type { destination-unreachable, packet-too-big,"
    " time-exceeded, parameter-problem, echo-reply, nd-redirect, 140 } ct status ! confirmed counter drop",
    "add rule inet dynknock output ct state established,related accept",
    "add rule inet dynknock output icmp type { echo-reply, destination-unreachable, source-quench,"
    " redirect, router-advertisement, time-exceeded, parameter-problem, timestamp-reply, info-reply,"
    " address-mask-reply } counter drop",
    "add rule inet dynknock output icmpv6 type { destination-unreachable, packet-too-big,"
    " time-exceeded, parameter-problem, echo-reply, nd-redirect, 140 } counter drop",
]


def test_ruleset_without_stealth_guards_only_the_door_range() -> None:
    text = core.ruleset(replace(SETTINGS, stealth=False, public_tcp_ports=(80,)))
    assert text == "\n".join(BASE_RULESET + OUTPUT_CHAIN) + "\n"
    assert "output" not in text.split("flush chain inet dynknock output")[1]  # no output rules without stealth
    assert "input drop" not in text and "dport { 80 }" not in text  # public ports only matter with stealth


def test_ruleset_with_stealth_drops_everything_else() -> None:
    text = core.ruleset(SETTINGS)
    assert text == "\n".join(BASE_RULESET + STEALTH_RULES + ["add rule inet dynknock input drop"]
                             + OUTPUT_STEALTH) + "\n"


def test_ruleset_with_stealth_and_public_ports() -> None:
    settings_ = replace(SETTINGS, public_tcp_ports=(80, 443), public_udp_ports=(53,))
    assert core.ruleset(settings_) == "\n".join(BASE_RULESET + STEALTH_RULES + [
        "add rule inet dynknock input tcp dport { 80, 443 } accept",
        "add rule inet dynknock input udp dport { 53 } accept",
        "add rule inet dynknock input drop",
    ] + OUTPUT_STEALTH) + "\n"


def test_ruleset_only_udp_public_ports() -> None:
    lines = core.ruleset(replace(SETTINGS, public_udp_ports=(500, 4500))).splitlines()
    assert "add rule inet dynknock input udp dport { 500, 4500 } accept" in lines
    assert not any("tcp dport {" in line for line in lines)
    assert lines[-1 - len(OUTPUT_STEALTH)] == "add rule inet dynknock input drop"


def test_ruleset_uses_the_table_and_range_given() -> None:
    text = core.ruleset(replace(SETTINGS, table="other", door_port_low=50000, door_port_high=50015))
    assert all(" inet other" in line for line in text.splitlines())
    assert "dynknock" not in text
    assert text.count("tcp dport 50000-50015") == 9  # the input rule, 8 NAT rules (4 kernel, 4 relay doors)


def test_ruleset_never_flushes_the_door_sets() -> None:
    """Doors open when the gate restarts stay open until their own timeouts."""
    text = core.ruleset(SETTINGS)
    assert "flush set" not in text and "flush map" not in text and "flush ruleset" not in text
    # The only deletions are the NAT rules' own, of a single-use element as its connection starts.
    assert [line for line in text.splitlines() if "delete" in line] == [
        line for line in text.splitlines() if line.startswith("add rule inet dynknock doors_nat") and "once" in line]
    assert text.index("ct state established,related accept") < text.index("dport 40000-49999 drop")


# --- injection is impossible ---------------------------------------------------------------------------

SAFE = re.compile(r"[0-9a-f.:]+")
# Strings that look like addresses, with the characters an attack would need mixed in.
ADDRESS_ALPHABET = "0123456789abcdefABCDEF.:%/[] \n\t;{}\"'#$-_lo"
address_like = st.text(alphabet=ADDRESS_ALPHABET, max_size=60)
real_addresses = st.one_of(st.ip_addresses().map(str),
                           st.tuples(st.ip_addresses(v=6).map(str), st.text(max_size=20)).map("%".join))


def _check_safe(client: str, port: int) -> None:
    try:
        element, timeout_ms = core.validate_open(SETTINGS, door_open(client=client, port=port), NOW)
    except Invalid:
        return
    assert SAFE.fullmatch(element.address), element.address
    assert SETTINGS.door_port_low <= element.port <= SETTINGS.door_port_high
    assert element.set_name in ("ronce4", "ronce6")
    assert 0 < timeout_ms <= WINDOW_MS + core.TIMEOUT_SLACK_MS
    text = core.add_element(SETTINGS, element, timeout_ms)
    assert text == f"add element inet dynknock {element.set_name} {{ {element.address} . {port} timeout 30000ms }}\n"
    assert core.close_element(SETTINGS, element).count("{") == 8
    assert ipaddress.ip_address(element.address) == ipaddress.ip_address(client)


@settings(max_examples=2000)
@given(client=st.one_of(st.text(max_size=60), address_like, real_addresses),
       port=st.integers(SETTINGS.door_port_low - 2, SETTINGS.door_port_high + 2))
@example(client="fe80::1%x } ; flush ruleset ;", port=40001)
@example(client="::ffff:1.2.3.4", port=40001)
def test_random_clients_never_reach_nft_unsafe(client: str, port: int) -> None:
    _check_safe(client, port)


@given(address=st.ip_addresses())
def test_every_ordinary_address_passes_or_is_refused_for_its_kind(address: ipaddress.IPv4Address
                                                                   | ipaddress.IPv6Address) -> None:
    if address.is_unspecified or address.is_multicast:
        with pytest.raises(Invalid):
            core.validate_open(SETTINGS, door_open(client=str(address)), NOW)
    else:
        element, _ = core.validate_open(SETTINGS, door_open(client=str(address)), NOW)
        assert element.address == str(address)
        assert element.set_name == f"ronce{address.version}"


@given(door_id=st.text(max_size=40), now_offset=st.integers(-10**6, 10**6))
def test_random_door_ids_and_clocks_never_escape_validation(door_id: str, now_offset: int) -> None:
    try:
        _, timeout_ms = core.validate_open(SETTINGS, door_open(door_id=door_id), NOW + now_offset)
    except Invalid:
        return
    assert re.fullmatch(r"[0-9a-f]{1,32}", door_id)
    assert 0 < timeout_ms <= WINDOW_MS + core.TIMEOUT_SLACK_MS


# --- kernel doors ------------------------------------------------------------------------------------

KERNEL = replace(SETTINGS, kernel_targets=frozenset({("127.0.0.1", 22), ("2001:db8::1", 2222)}))


def kernel_open(client: str = "203.0.113.7", host: str = "127.0.0.1", port: int = 22, single_use: bool = True
                ) -> DoorOpen:
    return replace(door_open(client=client), target_host=host, target_port=port, single_use=single_use, kernel=True)


def test_kernel_door_single_use_is_a_once_element_with_its_target() -> None:
    element, timeout_ms = core.validate_open(KERNEL, kernel_open(), NOW)
    assert element == core.DoorElement("once4", "203.0.113.7", 40001, ("127.0.0.1", 22))
    assert core.add_element(KERNEL, element, timeout_ms) == (
        "add element inet dynknock fwd4 { 203.0.113.7 . 40001 timeout 30000ms : 127.0.0.1 . 22 }\n"
        "add element inet dynknock once4 { 203.0.113.7 . 40001 timeout 30000ms }\n")


def test_kernel_door_for_many_connections_and_ipv6() -> None:
    element, _ = core.validate_open(KERNEL, kernel_open("2001:db8::7", "2001:db8::1", 2222, single_use=False), NOW)
    assert element == core.DoorElement("many6", "2001:db8::7", 40001, ("2001:db8::1", 2222))


@pytest.mark.parametrize("command,reason", [
    (kernel_open(host="127.0.0.1", port=23), "no kernel-forwarded service"),
    (kernel_open(host="10.0.0.1", port=22), "no kernel-forwarded service"),
    (kernel_open(client="2001:db8::7"), "between IPv4 and IPv6"),
    (kernel_open(client="203.0.113.7", host="2001:db8::1", port=2222), "between IPv4 and IPv6"),
])
def test_kernel_door_only_to_configured_targets_of_the_same_family(command: DoorOpen, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        core.validate_open(KERNEL, command, NOW)


def test_kernel_door_refused_when_no_service_is_kernel_forwarded() -> None:
    with pytest.raises(Invalid, match="no kernel-forwarded service"):
        core.validate_open(SETTINGS, kernel_open(), NOW)


def test_close_empties_every_place_a_door_can_be_in_one_transaction() -> None:
    element = core.validate_close(KERNEL, door_close(client="203.0.113.7", port=40001))
    sets = "".join(_add_delete("dynknock", f"{name}4", "203.0.113.7 . 40001")
                   for name in ("ronce", "rmany", "once", "many"))
    # The family's one kernel target, or the one the close names: the map is added to with its own value.
    assert core.close_element(KERNEL, element) == sets + \
        "add element inet dynknock fwd4 { 203.0.113.7 . 40001 : 127.0.0.1 . 22 }\n" \
        "delete element inet dynknock fwd4 { 203.0.113.7 . 40001 }\n"
    two = replace(KERNEL, kernel_targets=KERNEL.kernel_targets | {("127.0.0.1", 8080)})
    assert core.close_element(two, element, ("127.0.0.1", 8080)).endswith(
        "add element inet dynknock fwd4 { 203.0.113.7 . 40001 : 127.0.0.1 . 8080 }\n"
        "delete element inet dynknock fwd4 { 203.0.113.7 . 40001 }\n")
    assert core.close_element(two, element) == sets  # not known which: the map entry keeps to its timeout


LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"set": {"name": "ronce4", "elem": [{"elem": {"val": {"concat": ["198.18.0.2", 63000]}, "timeout": 30}}]}},
    {"set": {"name": "once6", "elem": [{"concat": ["2001:db8::2", 63001]}]}},
    {"map": {"name": "fwd4", "elem": [[{"elem": {"val": {"concat": ["198.18.0.3", 63002]}}},
                                       {"concat": ["127.0.0.1", 22]}]]}},
    {"set": {"name": "other", "elem": [{"concat": ["198.18.0.9", 1]}]}},  # not ours: ignored
    {"map": {"name": "fwd6", "elem": [["junk", 5]]}},  # malformed: ignored
]}


def test_the_kernels_listing_gives_every_door_element() -> None:
    assert core.held_elements(LISTING) == {
        core.Held("ronce4", "198.18.0.2", 63000), core.Held("once6", "2001:db8::2", 63001),
        core.Held("fwd4", "198.18.0.3", 63002, ("127.0.0.1", 22))}
    assert core.held_elements({"nftables": "no"}) == set() and core.held_elements([]) == set()


def test_reconcile_empties_what_auth_does_not_know_and_adds_nothing() -> None:
    held = core.held_elements(LISTING)
    assert core.reconcile(KERNEL, held, {("198.18.0.2", 63000), ("2001:db8::2", 63001), ("198.18.0.3", 63002)}) == []
    scripts = core.reconcile(KERNEL, held, {("198.18.0.2", 63000)})
    assert len(scripts) == 2 and all("add element" in s and "delete element" in s for s in scripts)
    assert "fwd4 { 198.18.0.3 . 63002 : 127.0.0.1 . 22 }" in scripts[0]  # the map's own value, from the listing
    assert "2001:db8::2 . 63001" in scripts[1]
    assert not any("timeout" in s for s in scripts)  # nothing is (re)opened


CONNTRACK_LINES = {
    "new": "[1796056694.093435]\t    [NEW] tcp      6 120 SYN_SENT src=198.18.5.2 dst=198.18.5.1 sport=54820"
           " dport=64000 [UNREPLIED] src=127.0.0.1 dst=198.18.5.2 sport=2222 dport=54820 mark=1263403008 id=322452664",
    "established": "[1796056694.093508]\t [UPDATE] tcp      6 432000 ESTABLISHED src=198.18.5.2 dst=198.18.5.1"
                   " sport=54820 dport=64000 src=127.0.0.1 dst=198.18.5.2 sport=2222 dport=54820 [ASSURED]"
                   " mark=1263403008 id=322452664",
    "time_wait": "[1796056694.101911]\t [UPDATE] tcp      6 120 TIME_WAIT src=198.18.5.2 dst=198.18.5.1 sport=54820"
                 " dport=64000 src=127.0.0.1 dst=198.18.5.2 sport=2222 dport=54820 [ASSURED] mark=1263403008"
                 " id=322452664",
    "destroy": "[1796056696.189563]\t[DESTROY] tcp      6 117 TIME_WAIT src=198.18.5.2 dst=198.18.5.1 sport=54820"
               " dport=64000 packets=5 bytes=278 src=127.0.0.1 dst=198.18.5.2 sport=2222 dport=54820 packets=5"
               " bytes=5268 [ASSURED] mark=1263403008 id=322452664 [USERSPACE] portid=3129579917 progname=conntrack",
}


def test_conntrack_events_of_a_door_connection() -> None:
    seen = {name: core.parse_conntrack_event(line) for name, line in CONNTRACK_LINES.items()}
    used = core.ConnectionSeen("used", 322452664, "198.18.5.2", 54820, 64000, "198.18.5.1")
    assert seen["new"] == used
    assert seen["established"] is None
    assert seen["time_wait"] == replace(used, kind="closed")
    # Each direction counted on its own (and "portid=" is not the entry's id).
    assert seen["destroy"] == replace(used, kind="gone", bytes_in=278, bytes_out=5268)


@pytest.mark.parametrize("line", ["", "conntrack v1.4.7 (conntrack-tools): 7 flow events have been shown.",
                                  CONNTRACK_LINES["new"][:60],
                                  CONNTRACK_LINES["new"].replace("src=198.18.5.2", "src=x"),
                                  CONNTRACK_LINES["new"].replace(" id=322452664", ""),
                                  "[NEW] udp      17 30 src=1.2.3.4 dst=5.6.7.8 sport=1 dport=2 id=3"])
def test_conntrack_lines_that_are_not_a_whole_event_are_skipped(line: str) -> None:
    assert core.parse_conntrack_event(line) is None


def test_counters_of_a_conntrack_get_line() -> None:
    line = ("tcp      6 117 TIME_WAIT src=198.18.0.2 dst=198.18.0.1 sport=1 dport=64000 packets=5 bytes=278"
            " src=127.0.0.1 dst=198.18.0.2 sport=22 dport=1 packets=5 bytes=5268 [ASSURED] mark=1263403008 use=1")
    assert core.parse_counters(line) == (278, 5268)
    assert core.parse_counters("conntrack v1.4.7: 0 flow entries") is None
    seen = core.ConnectionSeen("closed", 1, "198.18.0.2", 1, 64000, "198.18.0.1")
    assert core.conntrack_get_argv("conntrack", seen) == [
        "conntrack", "-G", "-p", "tcp", "-s", "198.18.0.2", "-d", "198.18.0.1", "--sport", "1", "--dport", "64000"]
