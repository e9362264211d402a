"""raw_syn.py SOURCE DESTINATION PORT:ISN...: SYN knocks through client/syn.py's own raw-socket sender.

Run in a lab namespace by tests/e2e/attacks/test_spoofing.py: the right ports and ISNs
sent by the client's own code, from whichever address the test names.
"""

from __future__ import annotations

import ipaddress
import socket
import sys

from dynknock.client.syn import RawSynSender


def main(argv: list[str]) -> int:
    source, destination = ipaddress.ip_address(argv[0]), ipaddress.ip_address(argv[1])
    sender = RawSynSender(socket.AF_INET if source.version == 4 else socket.AF_INET6)
    try:
        for item in argv[2:]:
            port, isn = item.split(":")
            sender.send(source, destination, int(port), int(isn))
    finally:
        sender.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
