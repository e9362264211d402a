"""An auth replica's side of the shared store: claims, users and health off the main loop.

knock-auth's loop must not wait on the network: a claim takes ~1.5 ms when etcd is well and up to
`store.deadline_s` during an election. So three daemon threads talk to etcd (auth/etcd.py) and hand
their answers to the loop through one inproc PUSH/PULL pair of ZeroMQ sockets, which the loop polls
like any other socket:

* the claimer takes the engine's ClaimNonce actions from a queue and claims them in batches (one
  etcd txn for all that waited: `claim_many`), answering ("claim", request id, True | False | None,
  detail) for each; a StoreError is None for the whole batch: a refusal, never an accept;
* the users watch (`watch_users`) hands each new users document: ("users", text, revision);
* the health prober runs `health()` every HEALTH_EVERY_S: ("health", summary).

The loop decides; the threads only carry. Pickled tuples never leave the process.
"""

from __future__ import annotations

import logging
import pickle
import queue
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from dynknock.auth.etcd import EtcdStore, StoreError
from dynknock.config import Config

HEALTH_EVERY_S = 5.0
BATCH_WAIT_S = 0.0005  # after the first claim, how long the claimer waits for more to batch with it
MAX_CLAIMS = 128  # per txn (etcd's --max-txn-ops default)


def open_store(config: Config) -> EtcdStore:
    """The replica's store from [store] (StoreError, one line, if a file or value is unusable)."""
    return EtcdStore(list(config.store_endpoints), Path(config.store_ca), Path(config.store_cert),
                     Path(config.store_key), config.store_user, Path(config.store_password_file),
                     config.store_prefix, config.store_attempt_timeout_s, config.store_deadline_s)


def health_summary(health: dict[str, Any]) -> dict[str, Any]:
    """The figures a heartbeat carries (EtcdStore.health() without the per-member details but their
    reachability and alarms): quorum, members reachable of all, the leader, the users revision and
    age, the watch's error, counters, the members' etcd advisories."""
    endpoints = health.get("endpoints", {})
    members = endpoints if isinstance(endpoints, dict) else {}
    return {
        "quorum": bool(health.get("quorum")),
        "members_up": int(health.get("reachable", 0) or 0),
        "members": len(members),
        "down": sorted(url for url, e in members.items() if isinstance(e, dict) and not e.get("reachable")),
        "alarms": sorted({str(a) for e in members.values() if isinstance(e, dict)
                          for a in (e.get("alarms") or [])}),
        "leader": health.get("leader") or "",
        "circuit_open": bool(health.get("circuit_open")),
        "users_revision": health.get("users_revision", 0),
        "users_age_s": health.get("users_age_s"),
        "watch_error": health.get("watch_error") or "",
        "counts": health.get("counts", {}),
        "advisories": health.get("advisories", []),
    }


class StoreLink:
    """The threads and the socket the main loop reads their answers from (`inbox`)."""

    def __init__(self, store: EtcdStore, context: zmq.Context[Any], log: logging.Logger) -> None:
        self.store = store
        self.log = log
        self._context = context
        self._address = f"inproc://dynknock-store-{id(self)}"
        self.inbox = context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(self._address)
        self._claims: queue.Queue[tuple[bytes, bytes, int, int]] = queue.Queue()
        self._stop = threading.Event()
        self.health: dict[str, Any] = {}
        self.claims_sent = 0
        # The claimer's own figures (its thread writes, the heartbeat reads; ints and floats only): how many
        # txns, how many nonces waited for each, and how long the slowest took since the last heartbeat.
        self.batches = 0
        self.batch_max = 0
        self.batch_ms_max = 0.0
        self.waiting_max = 0
        self.batch_ms_max_all = 0.0  # the same two since start (a benchmark reads them after its row)
        self.waiting_max_all = 0
        self._threads = [threading.Thread(target=self._claimer, name="store-claims", daemon=True),
                         threading.Thread(target=self._prober, name="store-health", daemon=True)]

    def start(self, with_users_watch: bool = True) -> None:
        for thread in self._threads:
            thread.start()
        if with_users_watch:
            users_out = self._outbox()
            lock = threading.Lock()

            def on_change(text: str, revision: int) -> None:
                with lock:
                    users_out.send(pickle.dumps(("users", text, revision)))

            self.store.watch_users(on_change, self._stop)

    def claim(self, request_id: bytes, nonce: bytes, expiry_ms: int, now_ms: int) -> None:
        self.claims_sent += 1
        self._claims.put((request_id, nonce, expiry_ms, now_ms))

    def read(self) -> list[tuple[Any, ...]]:
        """Every answer waiting, in order."""
        out = []
        while True:
            try:
                out.append(pickle.loads(self.inbox.recv(zmq.NOBLOCK)))  # noqa: S301 - our own threads' tuples
            except zmq.Again:
                return out

    def figures(self) -> dict[str, Any]:
        """The claimer's figures since the last call (a heartbeat's): txns, the largest batch, the slowest
        txn in ms, the most claims waiting at once (a store falling behind shows here first)."""
        out = {"claims_sent": self.claims_sent, "claim_txns": self.batches, "claim_batch_max": self.batch_max,
               "claim_txn_ms_max": round(self.batch_ms_max, 1), "claims_waiting_max": self.waiting_max,
               "claim_txn_ms_max_all": round(self.batch_ms_max_all, 1), "claims_waiting_max_all": self.waiting_max_all}
        self.batch_max, self.batch_ms_max, self.waiting_max = 0, 0.0, 0
        return out

    def close(self) -> None:
        self._stop.set()
        self._claims.put((b"", b"", 0, 0))  # wakes the claimer
        for thread in self._threads:
            thread.join(2.0)
        self.inbox.close(0)
        self.store.close()

    # --- the threads --------------------------------------------------------------------------

    def _outbox(self) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self._context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._address)
        return sock

    def _claimer(self) -> None:
        out = self._outbox()
        while not self._stop.is_set():
            first = self._claims.get()
            if self._stop.is_set():
                break
            batch = [first]
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < MAX_CLAIMS:
                try:
                    batch.append(self._claims.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            answers: list[tuple[str, bytes, bool | None, str]]
            self.waiting_max = max(self.waiting_max, len(batch) + self._claims.qsize())
            started = time.monotonic()
            try:
                won = self.store.claim_many([(nonce, expiry) for _, nonce, expiry, _ in batch], batch[0][3])
                answers = [("claim", rid, ok, "" if ok else "claimed by another replica")
                           for (rid, _, _, _), ok in zip(batch, won, strict=True)]
            except StoreError as exc:
                answers = [("claim", rid, None, f"store: {exc.kind}: {exc}") for rid, _, _, _ in batch]
            self.batches += 1
            self.batch_max = max(self.batch_max, len(batch))
            self.batch_ms_max = max(self.batch_ms_max, (time.monotonic() - started) * 1000)
            self.batch_ms_max_all = max(self.batch_ms_max_all, self.batch_ms_max)
            self.waiting_max_all = max(self.waiting_max_all, self.waiting_max)
            for answer in answers:
                out.send(pickle.dumps(answer))
        out.close(0)

    def _prober(self) -> None:
        out = self._outbox()
        while not self._stop.is_set():
            try:
                summary = health_summary(self.store.health())
            except Exception as exc:  # noqa: BLE001 - health is monitoring: it must never stop the replica
                summary = {"quorum": False, "error": f"{type(exc).__name__}: {exc}"}
            out.send(pickle.dumps(("health", summary)))
            self._stop.wait(HEALTH_EVERY_S)
        out.close(0)
