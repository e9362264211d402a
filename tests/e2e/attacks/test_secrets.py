"""Secrets (docs/SECURITY.md 2.11): no key, password or decrypted payload in a log, an event or an error."""

from __future__ import annotations

import base64
import json

import pytest

from dynknock.events import as_json
from tests.e2e.attacks.world import (
    ALICE_PASSWORD,
    BOB_KEY,
    FIGURES,
    LOG_DIR,
    World,
    note_payloads,
    record_exchange,
    record_figures,
    start_refused,
)

pytestmark = pytest.mark.e2e

# Knocks this test makes so that there is enough to search when it runs alone (run with the
# others, it searches everything they made the stages log or publish too).
MAX_KNOCKS = 12  # half of them alice's: with her recorded knock, fewer doors than max_doors_per_user (8)


def _material(world: World) -> None:
    """Make the stages and the client say what they say: a recorded knock (its payloads decrypted
    to search for), a refused start, a client that gets no answer, sessions through the relay."""
    recorded, _ = record_exchange(world)
    note_payloads(world, world.alice, recorded)
    start_refused(world, "users_file_0644", "auth")
    world.knock(user="alice", timeout_s=1, host=world.lab.attacker.ipv4)  # no server there: an error
    for index in range(MAX_KNOCKS):
        if len(world.events.since(0)) > 100:
            break
        world.knock("--exec", world.ssh_command(f"echo secrets-{index}"), user=("bob", "alice")[index % 2])


def test_no_secret_in_any_log_event_or_error_message(world: World) -> None:
    """Everything the package's tests (this one's at least) made the stages log or publish, and every
    error printed."""
    _material(world)
    for stage in ("capture", "auth", "gate", "relay"):
        world.events.next_alive(stage)  # each stage has gone round its loop since: what it logs is out
    offsets = FIGURES["run"]["log_offsets"]
    logs = ""
    for path in sorted(LOG_DIR.glob("*.log")):
        with path.open("rb") as handle:
            start = offsets.get(path.name, 0)
            if path.stat().st_size >= start:
                handle.seek(start)
            logs += handle.read().decode(errors="replace")
    for out in world.workdir.rglob("supervisord.out"):
        logs += out.read_text(errors="replace")
    events = world.events.since(0)
    dumped = json.dumps([as_json(e) for e in events], default=repr)
    errors = "\n".join(world.outputs)
    keys = [ALICE_PASSWORD, *world.alice.secrets(), *world.bob.secrets(), base64.b64encode(BOB_KEY).decode()]
    payloads = sorted(world.payload_secrets)
    assert len(events) > 100 and len(logs) > 1000 and payloads, "the suite left too little to search"
    leaks = []
    for needle in keys + payloads:
        for name, text in (("logs", logs), ("events", dumped)):
            if needle.lower() in text.lower():
                leaks.append((name, needle))
    for needle in keys:  # the client's own terminal may show its knocks (as in the paper), never keys
        if needle.lower() in errors.lower():
            leaks.append(("error messages", needle))
    record_figures("secrets", log_bytes_searched=len(logs), events_searched=len(events),
                   error_text_bytes=len(errors), needles=len(keys) + len(payloads), leaks=len(leaks))
    assert leaks == [], leaks
