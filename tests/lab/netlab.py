"""The installed network lab (dynknock/lab/netlab.py) with what only tests and benchmarks use.

:class:`NetLab` here is the installed one plus more hosts on the bridge (a fleet's second gateway,
auth replicas), thousands of extra client addresses (the many-clients benchmarks) and tcpdump
(:meth:`NetLab.sniff`, :func:`pcap_text`). Everything else is the installed module's, re-exported.
"""

from __future__ import annotations

import ipaddress
import selectors
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dynknock.lab import netlab as installed
from dynknock.lab.netlab import (
    ATTACKER_IPV4,
    ATTACKER_IPV6,
    CLIENT_IPV4,
    CLIENT_IPV6,
    DEFAULT_PREFIX,
    IPV4_PREFIXLEN,
    IPV6_PREFIXLEN,
    LAB_INTERFACE,
    SERVER_IPV4,
    SERVER_IPV6,
    SSH_HOST_KEY_ALIAS,
    CommandError,
    Host,
    LabUnavailable,
    SshdInfo,
    check_ipv4,
    explain_netns_failure,
    explain_nft_failure,
    require_lab_support,
    require_privileges,
    run_plain,
    signal_group,
    start_sshd,
)

__all__ = [
    "ATTACKER_IPV4",
    "ATTACKER_IPV6",
    "CLIENT_IPV4",
    "CLIENT_IPV6",
    "DEFAULT_PREFIX",
    "EXTRA_IPV4_NETWORK",
    "IPV4_PREFIXLEN",
    "IPV6_PREFIXLEN",
    "LAB_INTERFACE",
    "SERVER_IPV4",
    "SERVER_IPV6",
    "SSH_HOST_KEY_ALIAS",
    "CommandError",
    "Host",
    "LabUnavailable",
    "NetLab",
    "SshdInfo",
    "explain_netns_failure",
    "explain_nft_failure",
    "pcap_text",
    "require_lab_support",
    "require_privileges",
    "signal_group",
    "start_sshd",
]

# Extra client addresses (for many-clients benchmarks) come from this block.
# Each is a /32 on the host that owns it; every other host routes it through
# the owner's main lab address, so it holds one neighbour (ARP) entry per lab
# host, not one per address: the kernel's neighbour table is shared by every
# namespace (net.ipv4.neigh.default.gc_thresh3), and a server that answered
# each extra address on-link would overflow it (docs/BENCHMARKS.md).
EXTRA_IPV4_NETWORK = "198.19.0.0/16"


class NetLab(installed.NetLab):
    """The installed lab, with more hosts on its bridge, extra client addresses and tcpdump."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, extra_hosts: Sequence[tuple[str, str, str]] = ()) -> None:
        """`extra_hosts`: more machines on the same bridge, as (role, IPv4, IPv6), in namespace
        {prefix}-{role} (a fleet's second gateway and auth host, say); see :meth:`host`."""
        super().__init__(prefix)
        extra = tuple(self._new_host(role, role, ipv4, ipv6) for role, ipv4, ipv6 in extra_hosts)
        self.hosts += extra
        self.namespaces += tuple(h.ns for h in extra)
        # Next free slot in EXTRA_IPV4_NETWORK, shared by all hosts so two
        # hosts never receive the same extra address.
        self._next_extra = 0
        self._extra_owners: set[str] = set()  # namespaces whose ARP already names their main address

    def host(self, role: str) -> Host:
        """A host of this lab by its role (server, client, attacker, or one of extra_hosts)."""
        for host in self.hosts:
            if host.role == role:
                return host
        raise KeyError(f"no host {role!r} in lab {self.prefix!r}")

    def add_ipv4_addresses(self, host: Host | str, count: int) -> list[str]:
        """Give host `count` extra addresses from 198.19.0.0/16; return them.

        Addresses are unique across all hosts of the lab. Each is a /32 on the
        host's eth0; every other host on its subnet (the server above all)
        gets routes to them via the host's main address, a few prefixes per
        call (`ip -batch`: a few processes for thousands of addresses). A
        server answering thousands of them thus holds one neighbour entry for
        the host, not one per address (see EXTRA_IPV4_NETWORK). The host asks
        ARP from its main address too (arp_announce 2, in its namespace only),
        or each extra source would leave an entry for itself on the server.
        """
        ns = self._namespace_of(host)
        if ns == self.bridge_ns:
            raise ValueError("the bridge namespace has no addressed interface")
        if count < 0:
            raise ValueError("count must be >= 0")
        owner = next(h for h in self.hosts if h.ns == ns)
        # Host octets 1..254 in third-octet blocks 1..254 keep clear of the
        # .0/.255 lookalikes.
        capacity = 254 * 254
        if self._next_extra + count > capacity:
            raise ValueError(f"at most {capacity} extra addresses per lab")
        addresses: list[str] = []
        for index in range(self._next_extra, self._next_extra + count):
            third, fourth = divmod(index, 254)
            addresses.append(check_ipv4(f"198.19.{third + 1}.{fourth + 1}"))
        self._next_extra += count
        if not addresses:
            return addresses
        if ns not in self._extra_owners:
            self._sysctl(ns, "net.ipv4.conf.all.arp_announce", "2")
            self._extra_owners.add(ns)
        # One `ip -batch` process per host instead of one per address.
        batch = "".join(f"addr add {addr}/32 dev {owner.interface}\n" for addr in addresses)
        self._ip(ns, "-batch", "-", input=batch)
        routes = "".join(f"route add {prefix} via {owner.ipv4} dev {LAB_INTERFACE}\n"
                         for prefix in _covering_prefixes(addresses))
        subnet = ipaddress.IPv4Interface(owner.ipv4_cidr).network
        for other in self.hosts:
            if other.ns != ns and ipaddress.IPv4Address(other.ipv4) in subnet:
                self._ip(other.ns, "-batch", "-", input=routes)
        return addresses

    @contextmanager
    def sniff(self, host: Host, bpf: str, path: Path) -> Iterator[Path]:
        """tcpdump on host's interface into `path` from when it says it listens (a handshake, not a
        sleep); the file is complete when the block ends."""
        proc = self.popen(host, ["tcpdump", "-n", "-U", "--immediate-mode", "-Z", "root", "-i", host.interface,
                                 "-w", str(path), bpf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        ready = selector.select(10)
        selector.close()
        line = proc.stderr.readline() if ready else ""
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start on {host.ns}: {line!r}")
        try:
            yield path
        finally:
            time.sleep(0.2)  # what is in flight reaches the file
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _covering_prefixes(addresses: Sequence[str]) -> list[ipaddress.IPv4Network]:
    """The fewest prefixes that cover exactly these addresses (runs of consecutive ones summarised)."""
    values = sorted(int(ipaddress.IPv4Address(a)) for a in addresses)
    prefixes: list[ipaddress.IPv4Network] = []
    start = previous = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        prefixes += ipaddress.summarize_address_range(ipaddress.IPv4Address(start), ipaddress.IPv4Address(previous))
        if value is not None:
            start = previous = value
    return prefixes


def pcap_text(path: Path) -> str:
    """What a capture of :meth:`NetLab.sniff` holds, a line per packet as tcpdump prints it ("" if none)."""
    return run_plain(["tcpdump", "-n", "-r", str(path)]).stdout
