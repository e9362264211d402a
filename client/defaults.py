"""Defaults shared by the command line (client/main.py) and the config file (client/config.py).

A module of its own, importing nothing, so that ``knock-client --help`` can show them
without loading the config and key-file code.
"""

from __future__ import annotations

DEFAULT_CONFIG_PATH = "~/.config/dynknock/client.toml"
DEFAULT_PORT = 62201
DEFAULT_SERVICE = "ssh"
SERVICE_PATTERN = r"^[a-z0-9_-]{1,16}$"  # what a P1 can carry (dynknock/protocol.py)
