"""inject_frames.py IFACE FILE: send the Ethernet frames of FILE with libpcap.

FILE holds one hex frame a line, or "sleep S" for a pause. Run inside a lab
namespace by the end-to-end tests (it can send anything: malformed headers,
lone fragments, forged sources). Prints how many frames it sent.
"""

from __future__ import annotations

import sys
import time

import pcap


def main(interface: str, path: str) -> int:
    handle = pcap.pcap(name=interface, promisc=False, immediate=True, timeout_ms=10)
    sent = 0
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if line.startswith("sleep "):
                time.sleep(float(line[6:]))
            elif line:
                handle.sendpacket(bytes.fromhex(line))
                sent += 1
    print(sent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
