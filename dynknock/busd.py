"""knock-bus: the event bus that monitors tap (zguide's XSUB/XPUB proxy).

Stages publish events to ``events``; any number of monitors subscribe to
``tap`` by topic prefix. It carries no control message, so if it is down or a
monitor is slow, only events are lost: the knock path never waits on it.
"""

from __future__ import annotations

from typing import Any

import zmq

from dynknock.stage import common_arguments, drop_privileges, load_config_or_exit, open_bus, setup_logging


def main(argv: list[str] | None = None) -> int:
    args = common_arguments("dynknock event bus (XSUB/XPUB proxy for knock-tap)").parse_args(argv)
    config = load_config_or_exit(args.config, "bus")
    drop_privileges(config.run_as)  # started as root by hand: never keep it
    log = setup_logging("bus")
    context: zmq.Context[Any] = zmq.Context()
    transport = open_bus(config, "bus", context)
    inbound = context.socket(zmq.XSUB)
    outbound = context.socket(zmq.XPUB)
    for sock in (inbound, outbound):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
    transport.bind(inbound, "events")
    transport.bind(outbound, "tap")
    log.info("Event bus up: publish to %s, tap %s.", transport.endpoints.events, transport.endpoints.tap)
    try:
        zmq.proxy(inbound, outbound)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as exc:
        if exc.errno != zmq.ETERM:
            raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
