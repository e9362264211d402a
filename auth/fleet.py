"""Which gateway a packet from capture belongs to, and whether the capture that pushed it may say so.

One host: one implicit gateway, "", whatever capture calls it. A fleet ([gateways.NAME]): the gateway a
packet names must be one of ours and the one whose capture key pushed it (ZeroMQ's User-Id of the
CURVE peer), and a datagram must have been sent to one of that gateway's addresses (its door opens
there, and a bound P1 is checked against that address). So a gateway whose capture key is stolen can
speak only for itself. Refusals are counted by reason (`refusals`, auth's heartbeat: gateway_refusals).
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from dynknock.auth.actions import GatewayRefused
from dynknock.auth.settings import EngineConfig
from dynknock.protocol import IPAddress

UNKNOWN_GATEWAY = "unknown_gateway"
OTHER_GATEWAYS_KEY = "other_gateways_key"
NOT_ITS_ADDRESS = "not_its_address"


class GatewayCheck:
    def __init__(self, config: EngineConfig) -> None:
        self.fleet = bool(config.gateways)
        self._path = config.path
        self._names = frozenset(config.gateways)
        self._gateway_of = {ipaddress.ip_address(address): g.name
                            for g in config.gateways.values() for address in g.addresses}
        self._key_gateway = dict(config.capture_keys)
        self.refusals: Counter[str] = Counter()

    def claimed(self, gateway: str, sender_key: str) -> str | GatewayRefused:
        """The gateway of a packet that names `gateway` and came with the capture key `sender_key`."""
        if not self.fleet:
            return ""
        if gateway not in self._names:
            return self._refuse(UNKNOWN_GATEWAY, f"Dropped a packet from unknown gateway {gateway!r} "
                                                 f"(not in [gateways] of {self._path})")
        speaks_for = self._key_gateway.get(sender_key)
        if speaks_for != gateway:
            named = "unknown" if speaks_for is None else speaks_for
            return self._refuse(OTHER_GATEWAYS_KEY, f"Dropped a packet claiming gateway {gateway} from the capture "
                                                    f"key of gateway {named!r}")
        return gateway

    def sent_to(self, gateway: str, destination: IPAddress) -> GatewayRefused | None:
        """None if a datagram the gateway saw, sent to `destination`, may be taken as that gateway's."""
        if self.fleet and self._gateway_of.get(destination) != gateway:
            return self._refuse(NOT_ITS_ADDRESS, f"Dropped a datagram to {destination} reported by gateway "
                                                 f"{gateway}, whose address it is not")
        return None

    def _refuse(self, reason: str, detail: str) -> GatewayRefused:
        self.refusals[reason] += 1
        return GatewayRefused(reason, detail)
