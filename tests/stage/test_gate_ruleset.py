"""The gate's ruleset as the kernel takes it, on a machine without netbase.

A minimal Debian or Ubuntu image has no /etc/protocols and no /etc/services (package
netbase). nft resolves every protocol or service *name* in a rule through them, so a
ruleset that names one ("meta l4proto ipv6-icmp") fails there with "Could not resolve
protocol name" and the gate never starts. Each ruleset variant is loaded here, in a
throwaway network namespace whose mount namespace hides both files, by nft in check mode
(the kernel validates the whole transaction and commits nothing).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from dynknock.gate import core

pytestmark = pytest.mark.stage

SETTINGS = core.GateSettings(table="dkcheck", door_port_low=40000, door_port_high=49999, window_seconds=30,
                             stealth=True, public_tcp_ports=(80, 443), public_udp_ports=(53,),
                             kernel_targets=frozenset({("127.0.0.1", 22), ("::1", 22)}))
VARIANTS = {
    "stealth": SETTINGS,
    "no stealth": replace(SETTINGS, stealth=False),
    "no public ports": replace(SETTINGS, public_tcp_ports=(), public_udp_ports=()),
}
# Each file exists on this host or not; those that exist are hidden by an empty file.
NETBASE_FILES = ("/etc/protocols", "/etc/services")
HIDE_NETBASE = "; ".join(f"if [ -e {path} ]; then mount --bind /dev/null {path}; fi" for path in NETBASE_FILES)


def nft_check_without_netbase(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                           f"{HIDE_NETBASE}; exec nft -c -f -"], input=script, capture_output=True, text=True,
                          timeout=30)


def test_the_check_sees_a_missing_protocols_file() -> None:
    """The harness itself: a protocol name does fail where netbase's files are hidden."""
    if not Path("/etc/protocols").exists():
        pytest.skip("this host has no /etc/protocols to hide")  # the harness check only; the rulesets still run
    done = nft_check_without_netbase("add table inet dkcheck\nadd chain inet dkcheck c\n"
                                     "add rule inet dkcheck c meta l4proto ipv6-icmp accept\n")
    assert done.returncode != 0 and "Could not resolve protocol name" in done.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_ruleset_loads_without_netbase(variant: str) -> None:
    settings = VARIANTS[variant]
    script = core.ruleset(settings)
    # A door of each kind too, as the gate adds them.
    element = core.DoorElement("once4", "198.18.0.2", 40001, ("127.0.0.1", 22))
    script += core.add_element(settings, element, 30_000)
    script += core.add_element(settings, core.DoorElement("ronce6", "2001:db8::2", 40002), 30_000)
    # Closes, of doors there and not there: one transaction each that cannot fail.
    script += core.close_element(settings, element, ("127.0.0.1", 22))
    script += core.close_element(settings, core.DoorElement("ronce6", "2001:db8::9", 40009))
    done = nft_check_without_netbase(script)
    assert done.returncode == 0, done.stderr
