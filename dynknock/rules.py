"""The value rules every layer checks alike, with no import at all.

The client's option parser checks a port or a service name before it has loaded anything
else (so that `knock-client --help` stays quick); the wire protocol, the client's config file,
knock-admin and the server's config use the same definitions (dynknock/protocol.py re-exports
them).
"""

from __future__ import annotations

CONTROL_PORT = 62201  # the default UDP port of P1/P2 (server.control_port, the client's --port)
SERVICE_NAME_LEN = 16
SERVICE_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_-"

TYPE_CHECKING = False  # typing's own costs an import on the client's path
if TYPE_CHECKING:
    from typing import TypeGuard


def is_service_name(name: str) -> bool:
    """What a P1 can carry as its service: 1-16 of [a-z0-9_-]."""
    return 1 <= len(name) <= SERVICE_NAME_LEN and all(c in SERVICE_NAME_CHARACTERS for c in name)


def is_port(value: object) -> TypeGuard[int]:
    """A TCP/UDP port number, 1-65535 (a bool is no number here, though Python says it is an int)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
