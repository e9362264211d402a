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
from gate import core
from gate.core import DoorElement, GateSettings, Invalid

NOW = 1_700_000_000_000
SETTINGS = GateSettings(table="dynknock", door_port_low=40000, door_port_high=49999, window_seconds=30,
                        control_port=62201, stealth=True)
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
    ("203.0.113.7", "doors4", "203.0.113.7"),
    ("2001:db8::7", "doors6", "2001:db8::7"),
    ("2001:DB8:0:0:0:0:0:7", "doors6", "2001:db8::7"),  # canonical form in the rule
    ("127.0.0.1", "doors4", "127.0.0.1"),
    ("::1", "doors6", "::1"),
    ("::ffff:203.0.113.7", "doors6", "::ffff:cb00:7107"),
    ("fe80::1", "doors6", "fe80::1"),
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
    assert core.validate_close(SETTINGS, door_close()) == DoorElement("doors4", "203.0.113.7", 40001)
    assert core.validate_close(SETTINGS, door_close(client="2001:db8::7")) == DoorElement("doors6", "2001:db8::7",
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
        "add element inet dynknock doors4 { 203.0.113.7 . 40001 timeout 30000ms }\n"
    element6, _ = core.validate_open(SETTINGS, door_open(client="2001:db8::7", port=49999), NOW)
    other_table = replace(SETTINGS, table="knock_2")
    assert core.add_element(other_table, element6, 1234) == \
        "add element inet knock_2 doors6 { 2001:db8::7 . 49999 timeout 1234ms }\n"


def test_delete_element_text() -> None:
    assert core.delete_element(SETTINGS, core.validate_close(SETTINGS, door_close())) == \
        "delete element inet dynknock doors4 { 203.0.113.7 . 40001 }\n"
    assert core.delete_element(SETTINGS, core.validate_close(SETTINGS, door_close(client="::1", port=40000))) == \
        "delete element inet dynknock doors6 { ::1 . 40000 }\n"


def test_remove_table_text() -> None:
    assert core.remove_table(SETTINGS) == "delete table inet dynknock\n"


BASE_RULESET = [
    "add table inet dynknock",
    "add set inet dynknock doors4 { type ipv4_addr . inet_service; flags timeout; }",
    "add set inet dynknock doors6 { type ipv6_addr . inet_service; flags timeout; }",
    "add chain inet dynknock input { type filter hook input priority filter - 10; policy accept; }",
    "flush chain inet dynknock input",
    "add rule inet dynknock input ct state established,related accept",
    "add rule inet dynknock input tcp dport 40000-49999 ip saddr . tcp dport @doors4 accept",
    "add rule inet dynknock input tcp dport 40000-49999 ip6 saddr . tcp dport @doors6 accept",
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
    "add rule inet dynknock output meta l4proto icmp icmp type { echo-reply, destination-unreachable, source-quench,"
    " redirect, router-advertisement, time-exceeded, parameter-problem, timestamp-reply, info-reply,"
    " address-mask-reply } ct status ! confirmed counter drop",
    "add rule inet dynknock output meta l4proto ipv6-icmp icmpv6 type { destination-unreachable, packet-too-big,"
    " time-exceeded, parameter-problem, echo-reply, nd-redirect, 140 } ct status ! confirmed counter drop",
    "add rule inet dynknock output ct state established,related accept",
    "add rule inet dynknock output meta l4proto icmp icmp type { echo-reply, destination-unreachable, source-quench,"
    " redirect, router-advertisement, time-exceeded, parameter-problem, timestamp-reply, info-reply,"
    " address-mask-reply } counter drop",
    "add rule inet dynknock output meta l4proto ipv6-icmp icmpv6 type { destination-unreachable, packet-too-big,"
    " time-exceeded, parameter-problem, echo-reply, nd-redirect, 140 } counter drop",
]


def test_ruleset_without_stealth_guards_only_the_door_range() -> None:
    text = core.ruleset(replace(SETTINGS, stealth=False, public_tcp_ports=(80,)))
    assert text == "\n".join(BASE_RULESET + OUTPUT_CHAIN) + "\n"
    assert "input drop" not in text and "output" not in text.split("flush chain inet dynknock output")[1] and "dport { 80 }" not in text  # public ports only matter with stealth


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
    assert text.count("tcp dport 50000-50015") == 3


def test_ruleset_never_flushes_the_door_sets() -> None:
    """Doors open when the gate restarts stay open until their own timeouts."""
    text = core.ruleset(SETTINGS)
    assert "flush set" not in text and "delete" not in text and "flush ruleset" not in text
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
    assert element.set_name in ("doors4", "doors6")
    assert 0 < timeout_ms <= WINDOW_MS + core.TIMEOUT_SLACK_MS
    text = core.add_element(SETTINGS, element, timeout_ms)
    assert text == f"add element inet dynknock {element.set_name} {{ {element.address} . {port} timeout 30000ms }}\n"
    assert core.delete_element(SETTINGS, element).count("{") == 1
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
        assert element.set_name == f"doors{address.version}"


@given(door_id=st.text(max_size=40), now_offset=st.integers(-10**6, 10**6))
def test_random_door_ids_and_clocks_never_escape_validation(door_id: str, now_offset: int) -> None:
    try:
        _, timeout_ms = core.validate_open(SETTINGS, door_open(door_id=door_id), NOW + now_offset)
    except Invalid:
        return
    assert re.fullmatch(r"[0-9a-f]{1,32}", door_id)
    assert 0 < timeout_ms <= WINDOW_MS + core.TIMEOUT_SLACK_MS
