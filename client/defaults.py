"""Defaults shared by the command line (client/main.py) and the config file (client/config.py).

A module of its own, importing nothing, so that ``knock-client --help`` can show them
without loading the config and key-file code. The control port is the wire layer's
(dynknock/rules.py CONTROL_PORT).
"""

from __future__ import annotations

DEFAULT_CONFIG_PATH = "~/.config/dynknock/client.toml"
DEFAULT_SERVICE = "ssh"
