"""The UDP sockets a P3 leaves from: the control port of each server address, for sending only.

On one host auth sends P3 itself; in a fleet the auth host has none of the gateways'
addresses, so each gateway's gate sends the P3s auth hands it (bus.Reply). Either way
the reply leaves from the address and port the client sent its P1/P2 to, so it passes
the client's NAT.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable


def reply_sockets(addresses: Iterable[str], control_port: int) -> dict[str, socket.socket]:
    """One UDP socket per server address, bound to the control port, for sending only.

    The firewall (gate, stealth) drops inbound packets to the control port
    before they reach this socket; capture sees them anyway, since libpcap taps
    the interface before netfilter. Nothing is ever read from these sockets.
    """
    sockets: dict[str, socket.socket] = {}
    for address in addresses:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # FREEBIND: the address may come up after us (e.g. IPv6 DAD still running).
        level, option = ((socket.IPPROTO_IPV6, 78) if family == socket.AF_INET6 else (socket.IPPROTO_IP, 15))
        try:
            sock.setsockopt(level, option, 1)
        except OSError:
            pass
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.bind((address, control_port))
        sock.setblocking(False)
        sockets[address] = sock
    return sockets


def send_reply(sockets: dict[str, socket.socket], source: str, destination: str, port: int,
               payload: bytes) -> str:
    """Send from the socket of `source` (else one of the same family); "" or why it failed."""
    sock = sockets.get(source)
    if sock is None:
        family = socket.AF_INET6 if ipaddress.ip_address(destination).version == 6 else socket.AF_INET
        sock = next((s for s in sockets.values() if s.family == family), None)
    if sock is None:
        return f"no reply socket for {destination}"
    try:
        sock.sendto(payload, (destination, port))
    except OSError as exc:
        return f"reply to {destination} failed: {exc}"
    return ""
