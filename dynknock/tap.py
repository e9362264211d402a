"""knock-tap: print every event on the bus as it happens.

Default lines are plain English with ISO-8601 local time stamps, for operators
and log tools; --paper prints the SIG^2 daemon's own wording and time stamps
(typos included); --json gives JSON lines; --topic PREFIX (repeatable) filters
by hierarchical topic, e.g. ``auth.`` or ``gate.rule.``. A tap is a plain subscriber: it may start before or after the
stack, and however slow it is, the knock path never waits for it.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

import zmq

from dynknock import bus
from dynknock.events import as_json, describe, paper_line
from dynknock.metrics import MetricsModel, TokenError, load_token, serve, token_path
from dynknock.stage import common_arguments, load_config_or_exit, transport_for
from dynknock.topics import Topic

_COLOURS = {"rejected": "\033[31m", "refused": "\033[31m", "opened": "\033[32m", "accepted": "\033[32m",
            "expired": "\033[33m", "closed": "\033[33m"}
_RESET = "\033[0m"


# The topics whose sentence in dynknock.events copies the paper's daemon ("Binded port",
# "timeout and closed", "from foobar. (10.0.0.3, 10.0.0.3)"): the operator's wording.
# Every other topic reads as events.describe() has it.
_OPERATOR_WORDING: dict[str, str] = {
    Topic.AUTH_REQUEST_RECEIVED: "Port request from {user} for {client} (sent from {source}).",
    Topic.AUTH_REQUEST_RETRY: "Port request repeated by {user} ({client}).",
    Topic.AUTH_REQUEST_REPLACED: "Older request of {user} ({client}) replaced by a newer one.",
    Topic.AUTH_KNOCK_COMPLETE: "Knock sequence of {user} ({client}) complete.",
    Topic.AUTH_DOOR_OPENED: "Opened door port {port} for {user} ({client}) in {latency_ms} ms.",
    Topic.AUTH_DOOR_EXPIRED: "Door port {port} for {client} timed out and closed.",
}


def iso_stamp(when: float) -> str:
    """Local time with its UTC offset, to the second: ``2026-11-30T16:25:52+00:00``."""
    try:
        return dt.datetime.fromtimestamp(int(when)).astimezone().isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # inf, NaN or out of range: a line all the same
        return "????-??-??T??:??:??"


def operator_line(event: bus.Event) -> str:
    text = None
    template = _OPERATOR_WORDING.get(event.topic)
    if template is not None:
        try:
            text = template.format(**event.fields)
        except (KeyError, IndexError, ValueError, TypeError):
            text = None  # fields missing or odd: describe() has the fallback that never raises
    return f"{iso_stamp(event.time)} {text if text is not None else describe(event)}"


def format_event(event: bus.Event, as_json_lines: bool, colour: bool, paper: bool = False) -> str:
    if as_json_lines:
        return json.dumps(as_json(event), sort_keys=True, default=str)
    line = paper_line(event) if paper else operator_line(event)
    if colour:
        for word, code in _COLOURS.items():
            if event.topic.endswith(word):
                return f"{code}{line}{_RESET}"
    return line


def subscribe(context: zmq.Context[Any], connect: Callable[[zmq.Socket[Any]], None],
              topics: list[str]) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    for topic in topics or [""]:
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
    connect(sock)
    return sock


def run(sock: zmq.Socket[Any], out: TextIO | None, as_json_lines: bool, colour: bool, skip_alive: bool,
        limit: int | None = None, model: MetricsModel | None = None, paper: bool = False) -> int:
    """Print (and/or fold into metrics) events until `limit`; returns how many bad frames were dropped."""
    shown = bad = 0
    while limit is None or shown < limit:
        frames = sock.recv_multipart()
        try:
            if len(frames) != 2:
                raise bus.BadMessage(f"{len(frames)} frames")
            event = bus.decode_as(frames[1], bus.Event)
        except bus.BadMessage:
            bad += 1
            continue
        if model is not None:
            model.apply(event)
        if out is None or (skip_alive and event.topic.endswith(".alive")):
            continue
        out.write(format_event(event, as_json_lines, colour, paper) + "\n")
        out.flush()
        shown += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = common_arguments("print dynknock's events as they happen")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of log lines")
    parser.add_argument("--paper", action="store_true",
                        help="the SIG^2 paper's daemon wording and time stamps (\"Binded port ...\")")
    parser.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                        help="only topics starting with PREFIX (repeatable), e.g. auth. or gate.rule.")
    parser.add_argument("--alive", action="store_true", help="also show the stages' heartbeats")
    parser.add_argument("--count", type=int, help="exit after this many events")
    parser.add_argument("--endpoint", help="tap endpoint (default: from the config's bus.runtime_dir)")
    parser.add_argument("--metrics", nargs="?", const="", metavar="HOST:PORT",
                        help="serve Prometheus metrics instead of printing (default address: metrics.listen)")
    args = parser.parse_args(argv)
    # The config is needed only for what the command line does not say (metrics: always, for the token).
    config = load_config_or_exit(args.config, "tap") if not args.endpoint or args.metrics is not None else None
    def connect(sock: zmq.Socket[Any]) -> None:
        if args.endpoint:
            sock.connect(args.endpoint)
        else:
            assert config is not None
            transport_for(config, "tap").connect(sock, "tap")
    model = None
    if args.metrics is not None:
        assert config is not None
        listen = args.metrics or config.metrics_listen
        try:
            token = load_token(*token_path(config.metrics_token_file, config.runtime_dir))
        except TokenError as exc:
            print(f"knock-tap: {exc}", file=sys.stderr)
            return 2
        model = MetricsModel()
        serve(model, listen, token)
        print(f"knock-tap: Prometheus metrics on http://{listen}/metrics", file=sys.stderr, flush=True)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    context: zmq.Context[Any] = zmq.Context()
    sock = subscribe(context, connect, args.topic)
    try:
        out = None if model is not None else sys.stdout
        run(sock, out, args.json, sys.stdout.isatty(), not args.alive, args.count, model, args.paper)
    except KeyboardInterrupt:
        pass
    finally:
        context.destroy(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
