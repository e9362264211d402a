"""The replicated store of auth replicas: the replay journal and the users on etcd.

What the keys mean and how they change; auth/etcdclient.py carries the requests (TLS, login,
retries, the circuit; every failure a StoreError).

Keys, under `prefix` (default /dynknock):

* `<prefix>/nonces/<hex>`: one per accepted nonce, created by a txn "create if absent", with the
  lease of the nonce's 10 s expiry bucket: one lease (granted on first use, TTL = bucket end -
  now + 1 s, so it outlives every nonce in the bucket) serves all the nonces of that bucket,
  and etcd deletes them together when it ends. The value is unique to the call
  (`<user>:<random>`): a retry of a txn that etcd applied but whose answer was lost finds its
  own value and is an accept, not a false replay.
* `<prefix>/users`: the whole users document, as knock-admin writes the users file (one
  key: the read-modify-write of a document stays one compare-and-swap on its revision, the watch
  delivers whole documents, never a half-applied change; the limit is etcd's request size,
  1.5 MiB by default, about 9,000 users).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynknock.auth.etcdadvisories import ADVISORIES, advisories
from dynknock.auth.etcdclient import (
    Endpoint,
    EtcdClient,
    StoreError,
    b64,
    error_text,
    json_int,
    json_list,
    json_obj,
    unb64,
)

__all__ = ["ADVISORIES", "BUCKET_MS", "MAX_BATCH", "EtcdStore", "StoreError", "advisories"]

log = logging.getLogger("dynknock.auth.etcd")

BUCKET_MS = 10_000  # nonces whose expiries fall in one such bucket share a lease
LEASE_MARGIN_S = 1  # a bucket's lease outlives its last nonce by this much
MAX_BATCH = 128  # nonces per txn in claim_many: etcd's --max-txn-ops (128 by default)
WATCH_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # between two watch connections after failures


class EtcdStore(EtcdClient):
    """The replay journal and the users document of auth replicas, on an etcd 3.4+ cluster.

    Thread-safe: claims, users and health may be called from several threads at once (each
    request takes a connection of its own from the endpoint's pool).
    """

    def __init__(self, endpoints: list[str], ca: Path, cert: Path, key: Path, user: str, password_file: Path,
                 prefix: str = "/dynknock", attempt_timeout_s: float = 0.5, deadline_s: float = 2.0, *,
                 circuit_s: float = 0.5, watch_idle_s: float = 7.0) -> None:
        super().__init__(endpoints, ca, cert, key, user, password_file, prefix, attempt_timeout_s, deadline_s,
                         circuit_s=circuit_s)
        self._watch_idle_s = watch_idle_s
        self._nonces = f"{prefix}/nonces/".encode()
        self._users_key = b64(f"{prefix}/users".encode())
        self._leases: dict[int, int] = {}  # bucket (ceil(expiry_ms / BUCKET_MS)) -> lease id
        self._lease_lock = threading.Lock()  # one grant at a time
        # under the client's _lock:
        self._users_revision = 0  # what the watch delivered last
        self._users_confirmed = 0.0  # monotonic time the watched document was last proven current
        self._watch_error = ""

    # --- the replay journal ---------------------------------------------------------------------

    def _lease(self, expiry_ms: int, now_ms: int, deadline: float) -> int:
        """The lease of expiry_ms's bucket, granted on first use (one grant per bucket, not per nonce)."""
        bucket = -(-expiry_ms // BUCKET_MS)
        if not self._lease_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreError("lease grant: another claim's grant took the whole deadline", "timeout")
        try:
            lease = self._leases.get(bucket)
            if lease is not None:
                return lease
            end_ms = bucket * BUCKET_MS
            ttl = max(2, math.ceil((end_ms - now_ms) / 1000) + LEASE_MARGIN_S)
            answer = self._call("/v3/lease/grant", {"TTL": str(ttl)}, "lease grant", deadline)
            if answer.get("error"):
                raise StoreError(f"lease grant: {answer['error']}", "lease")
            lease = json_int(answer.get("ID"))
            if lease == 0:
                raise StoreError("lease grant: no lease id in the answer", "bad_answer")
            # Buckets that have ended can take no new nonce (its expiry would be past): forget them.
            self._leases = {b: x for b, x in self._leases.items() if b * BUCKET_MS > now_ms}
            self._leases[bucket] = lease
            return lease
        finally:
            self._lease_lock.release()

    def _forget_leases(self, leases: set[int]) -> None:
        with self._lease_lock:
            self._leases = {b: x for b, x in self._leases.items() if x not in leases}

    def _claim_txn(self, key: bytes, value: str, lease: int) -> dict[str, Any]:
        k = b64(key)
        return {
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": value, "lease": str(lease)}}],
            "failure": [{"request_range": {"key": k}}],
        }

    @staticmethod
    def _claim_result(answer: dict[str, Any], value: str, what: str) -> bool:
        """True if this txn created the key, or if the key holds this call's own value (an earlier
        attempt of the same call that etcd applied but whose answer was lost)."""
        if answer.get("succeeded") is True:
            return True
        responses = json_list(answer.get("responses"), "the txn's responses")
        if len(responses) != 1:
            raise StoreError(f"{what}: {len(responses)} responses to a claim's txn", "bad_answer")
        found = json_obj(json_obj(responses[0], "a response").get("response_range"), "a range response")
        kvs = json_list(found.get("kvs"), "the key values")
        if not kvs:
            raise StoreError(f"{what}: the compare failed yet the key is absent", "bad_answer")
        return json_obj(kvs[0], "a key value").get("value") == value

    def _value(self) -> str:
        return b64(f"{self._user}:{os.urandom(12).hex()}".encode())

    def claim(self, nonce: bytes, expiry_ms: int, now_ms: int) -> bool:
        """Create `<prefix>/nonces/<hex>` if absent, in one txn. True only if this call created it;
        False if it existed (a replay). StoreError on any error or timeout: a refusal."""
        try:
            if not nonce or expiry_ms <= 0:
                raise StoreError(f"claim: bad nonce or expiry ({len(nonce)} bytes, {expiry_ms} ms)", "bug")
            deadline = self._deadline()
            key = self._nonces + nonce.hex().encode()
            value = self._value()
            for attempt in range(2):
                lease = self._lease(expiry_ms, now_ms, deadline)
                try:
                    answer = self._call("/v3/kv/txn", self._claim_txn(key, value, lease), "claim", deadline)
                except StoreError as exc:
                    if exc.kind == "lease" and attempt == 0:
                        self._forget_leases({lease})  # revoked or lost behind our back: a new one
                        continue
                    raise
                won = self._claim_result(answer, value, "claim")
                self._count("claim.accepted" if won else "claim.replay")
                return won
            raise StoreError("claim: the lease vanished twice", "lease")
        except StoreError:
            raise
        except Exception as exc:  # a bug here must be a refusal too, never an accept
            self._count("error.bug")
            raise StoreError(f"claim: {type(exc).__name__}: {exc}", "bug") from exc

    def claim_many(self, items: list[tuple[bytes, int]], now_ms: int) -> list[bool]:
        """claim() for each (nonce, expiry_ms), one txn per MAX_BATCH nonces.

        Each nonce is decided on its own: the txn has no compare of its own and one nested txn
        per nonce ("create if absent, else read it"); etcd evaluates every nested compare against
        the state before the txn and applies the whole txn as one revision, so one nonce already
        present does not fail the others (a flat txn of N compares would). A nonce twice in
        `items` is claimed once: its later copies are False. StoreError if any txn fails (then
        some nonces of the batch may be stored: the caller refuses them all, a safe refusal).
        """
        try:
            results = [False] * len(items)
            first: dict[bytes, int] = {}
            for index, (nonce, expiry_ms) in enumerate(items):
                if not nonce or expiry_ms <= 0:
                    raise StoreError(f"claim: bad nonce or expiry ({len(nonce)} bytes, {expiry_ms} ms)", "bug")
                first.setdefault(nonce, index)
            unique = sorted(first.values())
            deadline = self._deadline()
            value = self._value()
            for start in range(0, len(unique), MAX_BATCH):
                chunk = unique[start:start + MAX_BATCH]
                for attempt in range(2):
                    leases = [self._lease(items[i][1], now_ms, deadline) for i in chunk]
                    ops = [{"request_txn": self._claim_txn(self._nonces + items[i][0].hex().encode(), value, lease)}
                           for i, lease in zip(chunk, leases, strict=True)]
                    try:
                        answer = self._call("/v3/kv/txn", {"success": ops}, "claim batch", deadline)
                    except StoreError as exc:
                        if exc.kind == "lease" and attempt == 0:
                            self._forget_leases(set(leases))
                            continue
                        raise
                    responses = json_list(answer.get("responses"), "the txn's responses")
                    if len(responses) != len(chunk):
                        raise StoreError(f"claim batch: {len(responses)} responses to {len(chunk)} claims",
                                         "bad_answer")
                    for i, response in zip(chunk, responses, strict=True):
                        inner = json_obj(json_obj(response, "a response").get("response_txn"), "a nested txn")
                        results[i] = self._claim_result(inner, value, "claim batch")
                    break
                else:
                    raise StoreError("claim batch: the lease vanished twice", "lease")
            won = sum(results)
            self._count("claim.accepted", won)
            self._count("claim.replay", len(items) - won)
            return results
        except StoreError:
            raise
        except Exception as exc:  # a bug here must be a refusal too, never an accept
            self._count("error.bug")
            raise StoreError(f"claim batch: {type(exc).__name__}: {exc}", "bug") from exc

    # --- users ----------------------------------------------------------------------------------

    def _read_users(self, deadline: float) -> tuple[str, int, int]:
        """(document, its mod revision, the store's revision at the read); ("", 0, rev) if absent.
        Linearizable: it reflects every write acknowledged before it."""
        answer = self._call("/v3/kv/range", {"key": self._users_key}, "load users", deadline)
        store_revision = json_int(json_obj(answer.get("header"), "a header").get("revision"))
        kvs = json_list(answer.get("kvs"), "the key values")
        if not kvs:
            return "", 0, store_revision
        kv = json_obj(kvs[0], "a key value")
        return self._text(kv.get("value")), json_int(kv.get("mod_revision")), store_revision

    @staticmethod
    def _text(value: object) -> str:
        try:
            return unb64(value or "").decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError("the users document in etcd is not UTF-8", "bad_answer") from None

    def load_users(self) -> tuple[str, int]:
        """The users document and its revision (etcd's mod revision of `<prefix>/users`);
        ("", 0) when there is none yet (put_users(text, 0) creates it)."""
        text, revision, _ = self._read_users(self._deadline())
        return text, revision

    def put_users(self, text: str, revision: int) -> int:
        """Replace the users document if it is still at `revision` (what load_users returned; 0:
        create it). Returns the new revision. StoreError "conflict" if another admin changed it
        meanwhile: load it again and redo the change (nothing of theirs is lost)."""
        key = self._users_key
        value = b64(text.encode("utf-8"))
        txn = {
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}],
            "success": [{"request_put": {"key": key, "value": value}}],
            "failure": [{"request_range": {"key": key}}],
        }
        answer = self._call("/v3/kv/txn", txn, "put users", self._deadline())
        if answer.get("succeeded") is True:
            return json_int(json_obj(answer.get("header"), "a header").get("revision"))
        responses = json_list(answer.get("responses"), "the txn's responses")
        found = json_obj(json_obj(responses[0] if responses else None, "a response").get("response_range"), "a range")
        kvs = json_list(found.get("kvs"), "the key values")
        now = json_obj(kvs[0], "a key value") if kvs else {}
        if now and now.get("value") == value:
            return json_int(now.get("mod_revision"))  # our own write, its answer lost: done (or the same text)
        current = json_int(now.get("mod_revision")) if now else 0
        self._count("error.conflict")
        raise StoreError(f"put users: the users document changed since revision {revision} (it is at revision "
                         f"{current} now): load it again and redo the change", "conflict")

    def watch_users(self, on_change: Callable[[str, int], None], stop: threading.Event) -> threading.Thread:
        """Follow the users document in a daemon thread until `stop` is set; returns the thread.

        on_change(text, revision) is called, in that thread, with the current document when the
        watch starts and after every change ("" and the deletion's revision if it is deleted);
        the revision lets the caller skip one it has already loaded. Each connection reads the
        document (linearizable) and watches from the store's revision of that read + 1, so no
        change between the read and the watch is lost; a broken, cancelled (compaction, token,
        no leader) or silent stream is replaced on the next member, after a short backoff. Silent:
        no message for watch_idle_s (7 s). A member sends a progress notification at each tick of
        --experimental-watch-progress-notify-interval (2 s in examples/ha) that follows a whole
        interval without an event, so the longest quiet gap is about two intervals: watch_idle_s
        must exceed that.

        One watch per store: users_age_s() and health() report the store's watch.
        users_age_s() says how long ago the document was last proven current: at a read, or by a
        progress notification (all events up to its revision have been sent). The watch's first
        message ("created") is not such a proof: its header carries the store's revision while
        events after our start revision may still be on their way (taking it as progress lost a
        change in the prototype).
        """
        conns: set[http.client.HTTPSConnection] = set()  # this watch's open stream, for the stopper
        thread = threading.Thread(target=self._watch_loop, args=(on_change, stop, conns), name="etcd-users-watch",
                                  daemon=True)
        stopper = threading.Thread(target=self._watch_stopper, args=(stop, conns), name="etcd-users-watch-stop",
                                   daemon=True)
        thread.start()
        stopper.start()
        return thread

    def users_age_s(self) -> float | None:
        """Seconds since the watched users document was last proven current; None before that."""
        with self._lock:
            confirmed = self._users_confirmed
        return None if confirmed == 0.0 else time.monotonic() - confirmed

    def _confirm(self) -> None:
        with self._lock:
            self._users_confirmed = time.monotonic()

    def _watch_stopper(self, stop: threading.Event, conns: set[http.client.HTTPSConnection]) -> None:
        """Wakes the watch when `stop` is set: its blocking read ends at once."""
        stop.wait()
        with self._lock:
            open_now = list(conns)
        for conn in open_now:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _watch_loop(self, on_change: Callable[[str, int], None], stop: threading.Event,
                    conns: set[http.client.HTTPSConnection]) -> None:
        delivered: list[int | None] = [None]  # the revision on_change saw last (a cell: kept across errors)
        failures = 0
        with self._lock:
            index = self._preferred
        while not stop.is_set():
            ep = self._endpoints[index % len(self._endpoints)]
            started = time.monotonic()
            try:
                self._watch_once(ep, on_change, stop, delivered, conns)
            except (StoreError, OSError, http.client.HTTPException, ValueError) as exc:
                if stop.is_set():
                    break
                text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StoreError) else str(exc)
                with self._lock:
                    self._watch_error = f"{ep.url}: {text}"
                self._count("watch.reconnect")
                if failures == 0 or time.monotonic() - started > 30:
                    log.warning("Users watch on %s ended (%s); watching again.", ep.url, text)
                index += 1
                failures = 1 if time.monotonic() - started > 30 else failures + 1
            stop.wait(WATCH_BACKOFF_S[min(max(failures - 1, 0), len(WATCH_BACKOFF_S) - 1)])

    def _deliver(self, on_change: Callable[[str, int], None], text: str, revision: int,
                 delivered: list[int | None]) -> None:
        if delivered[0] is not None and revision <= delivered[0]:
            return
        delivered[0] = revision
        with self._lock:
            self._users_revision = revision
        try:
            on_change(text, revision)
        except Exception:  # the caller's bug must not end the watch: the next change comes anyway
            self._count("watch.callback_error")
            log.exception("The users watch's callback failed on revision %d.", revision)

    def _watch_once(self, ep: Endpoint, on_change: Callable[[str, int], None], stop: threading.Event,
                    delivered: list[int | None], conns: set[http.client.HTTPSConnection]) -> None:
        text, revision, store_revision = self._read_users(self._deadline())
        self._confirm()
        if delivered[0] is None or revision != delivered[0]:
            self._deliver(on_change, text, revision, delivered)
        with self._lock:
            token = self._token
        body = json.dumps({"create_request": {"key": self._users_key, "start_revision": str(store_revision + 1),
                                              "progress_notify": True}}).encode()
        conn = http.client.HTTPSConnection(ep.host, ep.port, context=self._context, timeout=self._attempt_s)
        with self._lock:
            conns.add(conn)
        try:
            if stop.is_set():
                return
            conn.request("POST", "/v3/watch", body, self._headers(token))
            response = conn.getresponse()
            if response.status != 200:
                said, _ = error_text(response.read(400))
                raise StoreError(f"watch at {ep.url}: HTTP {response.status} {said}", "refused")
            if conn.sock is not None:
                conn.sock.settimeout(self._watch_idle_s)
            while not stop.is_set():  # one message a turn; a silence of watch_idle_s raises TimeoutError
                line = response.readline()
                if not line:
                    raise StoreError(f"watch at {ep.url}: the member closed the stream", "unavailable")
                if not line.strip():
                    continue
                message = json_obj(json.loads(line), "a watch message")
                if "error" in message:
                    raise StoreError(f"watch at {ep.url}: {str(message['error'])[:200]}", "unavailable")
                result = json_obj(message.get("result"), "a watch result")
                self._watch_result(ep, result, on_change, delivered, token)
        finally:
            with self._lock:
                conns.discard(conn)
            conn.close()

    def _watch_result(self, ep: Endpoint, result: dict[str, Any], on_change: Callable[[str, int], None],
                      delivered: list[int | None], token: str | None) -> None:
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            if json_int(result.get("compact_revision")):
                raise StoreError(f"watch at {ep.url}: revision compacted; reading the document again", "unavailable")
            if "invalid auth token" in reason or "revision of auth store is old" in reason:
                with self._lock:
                    if self._token == token:
                        self._token = None  # the next read logs in again
            raise StoreError(f"watch at {ep.url} cancelled: {reason or 'no reason given'}", "unavailable")
        events = json_list(result.get("events"), "the watch events")
        if result.get("created"):
            return  # not progress: events after our start revision may still be on their way
        if not events:
            # A progress notification (sent to a watcher that is in sync only): every event up to
            # its header revision has been sent, so the document is current as of then.
            self._confirm()
            return
        last = json_obj(events[-1], "a watch event")  # the latest state of the one key watched
        kv = json_obj(last.get("kv"), "an event's key value")
        revision = json_int(kv.get("mod_revision"))
        text = "" if last.get("type") == "DELETE" else self._text(kv.get("value"))
        self._deliver(on_change, text, revision, delivered)

    # --- health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        """One status request per member, in parallel (at most attempt_timeout_s): for a heartbeat.

        {"endpoints": {url: {reachable, leader, has_leader, member_id, raft_term, raft_index,
        revision, db_size, db_size_in_use, version, alarms, latency_ms, failures, last_error} or
        {reachable: False, error, ...}}, "reachable": n, "quorum": bool (a majority reachable
        and agreeing on a leader), "leader": url or None, "circuit_open": bool, "users_revision",
        "users_age_s", "watch_error", "counts": {claim.accepted, claim.replay, error.<kind>, ...},
        "advisories": [the published RBAC bypasses of the members' etcd versions]}
        """
        out: dict[str, dict[str, object]] = {}
        threads = [threading.Thread(target=self._status, args=(ep, out), name="etcd-health", daemon=True)
                   for ep in self._endpoints]
        for thread in threads:
            thread.start()
        end = time.monotonic() + self._attempt_s + 0.5
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        endpoints = {ep.url: out.get(ep.url, {"reachable": False, "error": "no answer in time"})
                     for ep in self._endpoints}
        reachable = [e for e in endpoints.values() if e.get("reachable")]
        versions = sorted({str(e.get("version", "")) for e in reachable})
        leaders = [url for url, e in endpoints.items() if e.get("leader")]
        majority = len(self._endpoints) // 2 + 1
        with self._lock:
            circuit_open = self._circuit_until > time.monotonic()
            users_revision, watch_error = self._users_revision, self._watch_error
            counts = dict(self._counts)
        return {
            "endpoints": endpoints,
            "reachable": len(reachable),
            "quorum": len(reachable) >= majority and sum(bool(e.get("has_leader")) for e in reachable) >= majority,
            "leader": leaders[0] if len(leaders) == 1 else None,
            "circuit_open": circuit_open,
            "users_revision": users_revision,
            "users_age_s": self.users_age_s(),
            "watch_error": watch_error,
            "counts": counts,
            "advisories": [text for version in versions for text in advisories(version)],
        }

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
