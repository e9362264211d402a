"""The replicated store of auth replicas (issue 23): the replay journal and the users on etcd.

Standard library only: etcd's gRPC-JSON gateway (`/v3/...`, HTTP/1.1 over TLS with a client
certificate), which etcd 3.4 serves on its client port. No etcd client package does TLS client
certificates with several endpoints and our timeouts (docs: /work/notes/h23/FINDINGS.md §1).

Transport (`_call`): a pool of keep-alive connections per endpoint; every request carries
`Grpc-Metadata-hasleader: true`, so a member without a leader answers "no leader" at once rather
than holding the request for its own 7 s; each attempt is bounded by `attempt_timeout_s` and a
call by `deadline_s`, going round the endpoints (the one that answered last first) with a 0.1 s
pause after a round in which all failed (an election takes about a second: that rides it out).
Only an unavailable member (transport error, timeout, 5xx, no leader) is retried elsewhere; a
definite answer (permission denied, bad request) is final. After a call that failed for want of
any member, calls fail at once for `circuit_s` (a store without quorum would otherwise hold
every claim for the deadline). Every failure is a StoreError: the caller refuses, never accepts.

RBAC: the gateway never takes a certificate's CommonName as the user (etcd issue #17025), so
each client logs in with a user and password (`/v3/auth/authenticate`, a token sent as
`Authorization`) and logs in again when a token is refused (simple tokens die with a member's
restart or after `--auth-token-ttl` idle). A store with authentication off is refused: without
RBAC any holder of a client certificate could write the users.

Keys, under `prefix` (default /dynknock):

* `<prefix>/nonces/<hex>`: one per accepted nonce, created by a txn "create if absent", with the
  lease of the nonce's 10 s expiry bucket: one lease (granted on first use, TTL = bucket end -
  now + 1 s, so it outlives every nonce in the bucket) serves all the nonces of that bucket,
  and etcd deletes them together when it ends. The value is unique to the call
  (`<user>:<random>`): a retry of a txn that etcd applied but whose answer was lost finds its
  own value and is an accept, not a false replay.
* `<prefix>/users`: the whole users document, as knock-admin writes the users file today (one
  key: the read-modify-write of a document stays one compare-and-swap on its revision, the watch
  delivers whole documents, never a half-applied change; the limit is etcd's request size,
  1.5 MiB by default, about 9,000 users).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dynknock.keys import secret_file_problem

__all__ = ["ADVISORIES", "BUCKET_MS", "MAX_BATCH", "EtcdStore", "StoreError", "advisories"]

log = logging.getLogger("dynknock.auth.etcd")

BUCKET_MS = 10_000  # nonces whose expiries fall in one such bucket share a lease
LEASE_MARGIN_S = 1  # a bucket's lease outlives its last nonce by this much
MAX_BATCH = 128  # nonces per txn in claim_many: etcd's --max-txn-ops (128 by default)
RETRY_PAUSE_S = 0.1  # between two rounds over the endpoints
DOWN_S = 1.0  # an endpoint that failed is tried last for this long
POOL_SIZE = 4  # idle keep-alive connections kept per endpoint
WATCH_BACKOFF_S = (0.2, 0.5, 1.0, 2.0)  # between two watch connections after failures

Outcome = Literal["final", "next", "login"]

_FIXED_42 = {(3, 4): (3, 4, 42), (3, 5): (3, 5, 28), (3, 6): (3, 6, 9)}
_FIXED_44 = {(3, 4): (3, 4, 44), (3, 5): (3, 5, 30), (3, 6): (3, 6, 11)}
# etcd's published RBAC bypasses that matter to this store, and the first release of each line
# that fixes them (a line not listed: fixed if newer than the newest listed, affected if older).
# Debian 12's etcd-server 3.4.23 has all three; verified in tests/stage/test_etcd_store.py.
ADVISORIES: tuple[tuple[str, dict[tuple[int, int], tuple[int, int, int]]], ...] = (
    ("CVE-2026-33343 (nested txns skip RBAC: any logged-in user, a replica too, can write the users)", _FIXED_42),
    ("CVE-2026-33413 (alarms, compaction, lease and member APIs need no login: a client certificate "
     "alone can raise NOSPACE and stop every claim)", _FIXED_42),
    ("CVE-2026-44283 (lease attachment and prev_kv in txn puts skip RBAC)", _FIXED_44),
)


def advisories(version: str) -> list[str]:
    """The ADVISORIES an etcd server of `version` ("3.4.23") is affected by; [] if unparsable."""
    try:
        parts = tuple(int(x) for x in version.split("-")[0].split(".")[:3])
        major, minor, patch = parts[0], parts[1], parts[2]
    except (ValueError, IndexError):
        return []
    found = []
    for text, fixed in ADVISORIES:
        line = fixed.get((major, minor))
        if line is not None:
            affected = (major, minor, patch) < line
        else:
            affected = (major, minor) < min(fixed)
        if affected:
            found.append(f"etcd {version}: {text}")
    return found


class StoreError(Exception):
    """The store could not do it. str() is one line naming what failed; `kind` is a short word for
    counting (unavailable, timeout, no_leader, tls, permission, auth, conflict, lease,
    bad_answer, refused, circuit, config, bug)."""

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise StoreError(f"etcd answered a non-string value {text!r:.60}", "bad_answer")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise StoreError(f"etcd answered bad base64 {text!r:.60}", "bad_answer") from None


def _int(value: object) -> int:
    """An int64 of the JSON gateway: a string, or absent (0, proto3 omits defaults)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise StoreError(f"etcd answered {value!r:.60} where a number belongs", "bad_answer")
    try:
        return int(value)
    except ValueError:
        raise StoreError(f"etcd answered {value!r:.60} where a number belongs", "bad_answer") from None


def _obj(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StoreError(f"etcd answered {value!r:.80} where {what} belongs", "bad_answer")
    return value


def _list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StoreError(f"etcd answered {value!r:.80} where {what} belongs", "bad_answer")
    return value


def _error_text(data: bytes) -> tuple[str, int]:
    """The message and gRPC code of an error answer (JSON from the gateway, or plain text)."""
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        message = answer.get("error") or answer.get("message") or ""
        code = answer.get("code")
        return str(message), code if isinstance(code, int) else -1
    return data[:200].decode("utf-8", "replace").strip(), -1


def _classify(status: int, message: str, code: int) -> tuple[Outcome, str]:
    """What to do about an HTTP error answer: ("next", kind) try another member, ("login", kind)
    log in again and retry, ("final", kind) give up."""
    if "invalid auth token" in message or "revision of auth store is old" in message or "user name is empty" in message:
        return "login", "auth"
    if "CommonName of client" in message:
        return "final", "config"
    if "permission denied" in message:
        return "final", "permission"
    if "lease not found" in message:
        return "final", "lease"
    if "no leader" in message:
        return "next", "no_leader"
    if "database space exceeded" in message:
        return "final", "refused"  # NOSPACE: every member says so until an operator acts
    # gRPC Unavailable, DeadlineExceeded, ResourceExhausted (too many requests), Canceled, Aborted
    if code in (14, 4, 8, 1, 10) or status >= 500:
        return "next", "unavailable"
    return "final", "refused"


class _Endpoint:
    """One member's client URL and a small pool of keep-alive connections to it."""

    def __init__(self, url: str, host: str, port: int, context: ssl.SSLContext) -> None:
        self.url, self.host, self.port, self.context = url, host, port, context
        self._idle: list[http.client.HTTPSConnection] = []
        self._lock = threading.Lock()
        self.down_until = 0.0
        self.failures = 0
        self.last_error = ""

    def take(self, timeout: float) -> tuple[http.client.HTTPSConnection, bool]:
        """A connection (idle one first) and whether it was reused."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout), False

    def give(self, conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        conn.close()

    def failed(self, error: str) -> None:
        self.down_until = time.monotonic() + DOWN_S
        self.failures += 1
        self.last_error = error

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Refused(Exception):
    """An HTTP error answer of one attempt (internal: _call turns it into a StoreError)."""

    def __init__(self, outcome: Outcome, kind: str, message: str) -> None:
        super().__init__(message)
        self.outcome, self.kind, self.message = outcome, kind, message


class EtcdStore:
    """The replay journal and the users document of auth replicas, on an etcd 3.4+ cluster.

    Thread-safe: claims, users and health may be called from several threads at once (each
    request takes a connection of its own from the endpoint's pool).
    """

    def __init__(self, endpoints: list[str], ca: Path, cert: Path, key: Path, user: str, password_file: Path,
                 prefix: str = "/dynknock", attempt_timeout_s: float = 0.5, deadline_s: float = 2.0, *,
                 circuit_s: float = 0.5, watch_idle_s: float = 7.0) -> None:
        if not endpoints:
            raise StoreError("etcd store: no endpoint given", "config")
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise StoreError(f"etcd store: prefix {prefix!r} must start with / and not end with one", "config")
        if not 0 < attempt_timeout_s <= deadline_s:
            raise StoreError("etcd store: need 0 < attempt_timeout_s <= deadline_s", "config")
        if not user:
            raise StoreError("etcd store: no etcd user given (the JSON gateway needs a login)", "config")
        for path, what in ((key, "client key"), (password_file, "password file")):
            try:
                problem = secret_file_problem(path.stat(), path, group_may_read=True)
            except OSError as exc:
                raise StoreError(f"etcd store: {what} {path}: {exc.strerror}", "config") from None
            if problem:
                raise StoreError(f"etcd store: {what} {path}: {problem}", "config")
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise StoreError(f"etcd store: cannot load the CA {ca} or the client certificate {cert}: {exc}",
                             "config") from None
        self._context = context
        self._endpoints: list[_Endpoint] = []
        for url in endpoints:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/"):
                raise StoreError(f"etcd store: endpoint {url!r} is not https://HOST:PORT", "config")
            self._endpoints.append(_Endpoint(url, parts.hostname, port, context))
        self._user = user
        self._password_file = password_file
        self._attempt_s = attempt_timeout_s
        self._deadline_s = deadline_s
        self._circuit_s = circuit_s
        self._watch_idle_s = watch_idle_s
        self._nonces = f"{prefix}/nonces/".encode()
        self._users_key = _b64(f"{prefix}/users".encode())
        self.prefix = prefix

        self._lock = threading.Lock()  # the fields below
        self._preferred = 0  # the endpoint that answered last
        self._circuit_until = 0.0
        self._token: str | None = None
        self._leases: dict[int, int] = {}  # bucket (ceil(expiry_ms / BUCKET_MS)) -> lease id
        self._lease_lock = threading.Lock()  # one grant at a time
        self._counts: Counter[str] = Counter()
        self._users_revision = 0  # what the watch delivered last
        self._users_confirmed = 0.0  # monotonic time the watched document was last proven current
        self._watch_error = ""

    # --- transport ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _order(self) -> list[_Endpoint]:
        with self._lock:
            first = self._preferred
        n = len(self._endpoints)
        ring = [self._endpoints[(first + i) % n] for i in range(n)]
        now = time.monotonic()
        return [e for e in ring if e.down_until <= now] + [e for e in ring if e.down_until > now]

    def _headers(self, token: str | None, *, leader: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if leader:
            headers["Grpc-Metadata-hasleader"] = "true"
        if token:
            headers["Authorization"] = token
        return headers

    def _attempt(self, ep: _Endpoint, path: str, body: bytes, timeout: float, headers: dict[str, str]
                 ) -> dict[str, Any]:
        """One request to one member. Raises _Refused for an HTTP error answer, OSError or
        HTTPException for a transport failure (the request may or may not have been applied).

        Every request this module sends may be repeated safely, here or by _call on another
        member: a claim finds its own value, put_users its own text, a range or a login is a
        read, and a repeated lease grant leaves one unused lease to expire."""
        for _ in range(2):  # a reused connection the member closed meanwhile: once more on a new one
            conn, reused = ep.take(timeout)
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if reused:
                    ep.close()  # its siblings are as stale (a member restarted): next, a new connection
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if response.will_close:
                conn.close()
            else:
                ep.give(conn)
            if response.status != 200:
                message, code = _error_text(data)
                outcome, kind = _classify(response.status, message, code)
                raise _Refused(outcome, kind, f"HTTP {response.status} {message}")
            try:
                answer = json.loads(data)
            except ValueError:
                raise StoreError(f"{ep.url}{path}: not JSON: {data[:80]!r}", "bad_answer") from None
            return _obj(answer, "an object")
        raise http.client.RemoteDisconnected("closed twice")  # not reached: the second try raises

    def _login(self, ep: _Endpoint, timeout: float) -> str:
        try:
            password = self._password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreError(f"etcd login: cannot read {self._password_file}: {exc}", "config") from None
        body = json.dumps({"name": self._user, "password": password}).encode()
        try:
            answer = self._attempt(ep, "/v3/auth/authenticate", body, timeout, self._headers(None))
        except _Refused as refused:
            if "authentication is not enabled" in refused.message:
                raise StoreError(f"etcd login at {ep.url}: authentication is off in etcd; refusing a store any "
                                 "certificate holder could write (enable RBAC: examples/ha/README.md)",
                                 "auth") from None
            if refused.outcome == "final" or refused.kind == "auth":
                raise StoreError(f"etcd login as {self._user!r} at {ep.url}: {refused.message}", "auth") from None
            raise
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise StoreError(f"etcd login at {ep.url}: no token in the answer", "bad_answer")
        log.info("Logged in to etcd at %s as %s.", ep.url, self._user)
        return token

    def _call(self, path: str, body: dict[str, Any], what: str, deadline: float) -> dict[str, Any]:
        """POST `body` to `path` on some member before `deadline` (monotonic); StoreError if none can."""
        now = time.monotonic()
        with self._lock:
            circuit = self._circuit_until - now
        if circuit > 0:
            self._count("error.circuit")
            raise StoreError(f"{what}: etcd unavailable (no member answered the last request; next try in "
                             f"{circuit:.2f} s)", "circuit")
        data = json.dumps(body).encode()
        failures: list[tuple[str, str]] = []  # (kind, "url: what")
        logins = 0
        for _round in range(1000):  # bounded by the deadline long before
            for ep in self._order():
                timeout = min(self._attempt_s, deadline - time.monotonic())
                if timeout < 0.005:
                    break
                with self._lock:
                    token = self._token
                try:
                    if token is None:
                        token = self._login(ep, timeout)
                        with self._lock:
                            self._token = token
                        timeout = min(self._attempt_s, deadline - time.monotonic())
                        if timeout < 0.005:
                            break
                    answer = self._attempt(ep, path, data, timeout, self._headers(token))
                except _Refused as refused:
                    if refused.outcome == "login" and logins < 2:
                        logins += 1
                        with self._lock:
                            if self._token == token:
                                self._token = None
                        failures.append((refused.kind, f"{ep.url}: {refused.message}"))
                        continue
                    if refused.outcome == "next":
                        ep.failed(refused.message)
                        failures.append((refused.kind, f"{ep.url}: {refused.message}"))
                        continue
                    self._count(f"error.{refused.kind}")
                    raise StoreError(f"{what}: {ep.url} refused: {refused.message}", refused.kind) from None
                except (OSError, http.client.HTTPException) as exc:
                    timed_out = isinstance(exc, TimeoutError)
                    text = "timed out" if timed_out else f"{type(exc).__name__}: {exc}"
                    ep.failed(text)
                    # A TLS refusal (our certificate, or theirs) is tried on the other members
                    # too: one member's wrong CA must not stop the others; named "tls" if all say so.
                    kind = "timeout" if timed_out else "tls" if isinstance(exc, ssl.SSLError) else "unavailable"
                    failures.append((kind, f"{ep.url}: {text}"))
                    continue
                except StoreError as exc:
                    self._count(f"error.{exc.kind}")
                    raise
                with self._lock:
                    self._preferred = self._endpoints.index(ep)
                return answer
            pause = min(RETRY_PAUSE_S, deadline - time.monotonic() - 0.005)
            if pause <= 0:
                break
            time.sleep(pause)
        with self._lock:
            self._circuit_until = time.monotonic() + self._circuit_s
        kinds = [kind for kind, _ in failures]
        kind = next((k for k in ("no_leader", "timeout", "auth") if k in kinds),
                    "tls" if kinds and all(k == "tls" for k in kinds) else "unavailable")
        seen: dict[str, None] = {}
        for _, text in failures:
            seen.setdefault(text, None)
        detail = "; ".join(list(seen)[-len(self._endpoints):]) or "no attempt fitted in the deadline"
        self._count(f"error.{kind}")
        raise StoreError(f"{what}: no etcd member answered in time ({detail})", kind)

    def _deadline(self) -> float:
        return time.monotonic() + self._deadline_s

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
            lease = _int(answer.get("ID"))
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
        k = _b64(key)
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
        responses = _list(answer.get("responses"), "the txn's responses")
        if len(responses) != 1:
            raise StoreError(f"{what}: {len(responses)} responses to a claim's txn", "bad_answer")
        found = _obj(_obj(responses[0], "a response").get("response_range"), "a range response")
        kvs = _list(found.get("kvs"), "the key values")
        if not kvs:
            raise StoreError(f"{what}: the compare failed yet the key is absent", "bad_answer")
        return _obj(kvs[0], "a key value").get("value") == value

    def _value(self) -> str:
        return _b64(f"{self._user}:{os.urandom(12).hex()}".encode())

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
                    responses = _list(answer.get("responses"), "the txn's responses")
                    if len(responses) != len(chunk):
                        raise StoreError(f"claim batch: {len(responses)} responses to {len(chunk)} claims",
                                         "bad_answer")
                    for i, response in zip(chunk, responses, strict=True):
                        inner = _obj(_obj(response, "a response").get("response_txn"), "a nested txn")
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
        store_revision = _int(_obj(answer.get("header"), "a header").get("revision"))
        kvs = _list(answer.get("kvs"), "the key values")
        if not kvs:
            return "", 0, store_revision
        kv = _obj(kvs[0], "a key value")
        return self._text(kv.get("value")), _int(kv.get("mod_revision")), store_revision

    @staticmethod
    def _text(value: object) -> str:
        try:
            return _unb64(value or "").decode("utf-8")
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
        value = _b64(text.encode("utf-8"))
        txn = {
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}],
            "success": [{"request_put": {"key": key, "value": value}}],
            "failure": [{"request_range": {"key": key}}],
        }
        answer = self._call("/v3/kv/txn", txn, "put users", self._deadline())
        if answer.get("succeeded") is True:
            return _int(_obj(answer.get("header"), "a header").get("revision"))
        responses = _list(answer.get("responses"), "the txn's responses")
        found = _obj(_obj(responses[0] if responses else None, "a response").get("response_range"), "a range")
        kvs = _list(found.get("kvs"), "the key values")
        now = _obj(kvs[0], "a key value") if kvs else {}
        if now and now.get("value") == value:
            return _int(now.get("mod_revision"))  # our own write, its answer lost: done (or the same text)
        current = _int(now.get("mod_revision")) if now else 0
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

    def _watch_once(self, ep: _Endpoint, on_change: Callable[[str, int], None], stop: threading.Event,
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
                said, _ = _error_text(response.read(400))
                raise StoreError(f"watch at {ep.url}: HTTP {response.status} {said}", "refused")
            if conn.sock is not None:
                conn.sock.settimeout(self._watch_idle_s)
            while not stop.is_set():  # one message a turn; a silence of watch_idle_s raises TimeoutError
                line = response.readline()
                if not line:
                    raise StoreError(f"watch at {ep.url}: the member closed the stream", "unavailable")
                if not line.strip():
                    continue
                message = _obj(json.loads(line), "a watch message")
                if "error" in message:
                    raise StoreError(f"watch at {ep.url}: {str(message['error'])[:200]}", "unavailable")
                result = _obj(message.get("result"), "a watch result")
                self._watch_result(ep, result, on_change, delivered, token)
        finally:
            with self._lock:
                conns.discard(conn)
            conn.close()

    def _watch_result(self, ep: _Endpoint, result: dict[str, Any], on_change: Callable[[str, int], None],
                      delivered: list[int | None], token: str | None) -> None:
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            if _int(result.get("compact_revision")):
                raise StoreError(f"watch at {ep.url}: revision compacted; reading the document again", "unavailable")
            if "invalid auth token" in reason or "revision of auth store is old" in reason:
                with self._lock:
                    if self._token == token:
                        self._token = None  # the next read logs in again
            raise StoreError(f"watch at {ep.url} cancelled: {reason or 'no reason given'}", "unavailable")
        events = _list(result.get("events"), "the watch events")
        if result.get("created"):
            return  # not progress: events after our start revision may still be on their way
        if not events:
            # A progress notification (sent to a watcher that is in sync only): every event up to
            # its header revision has been sent, so the document is current as of then.
            self._confirm()
            return
        last = _obj(events[-1], "a watch event")  # the latest state of the one key watched
        kv = _obj(last.get("kv"), "an event's key value")
        revision = _int(kv.get("mod_revision"))
        text = "" if last.get("type") == "DELETE" else self._text(kv.get("value"))
        self._deliver(on_change, text, revision, delivered)

    # --- health ---------------------------------------------------------------------------------

    def _status(self, ep: _Endpoint, out: dict[str, dict[str, object]]) -> None:
        """Fills out[url] from the member's /v3/maintenance/status: local to the member (no raft,
        no auth, no hasleader), so a member without a leader still says so."""
        started = time.monotonic()
        try:
            answer = self._attempt(ep, "/v3/maintenance/status", b"{}", self._attempt_s,
                                   self._headers(None, leader=False))
            header = _obj(answer.get("header"), "a header")
            member, leader = _int(header.get("member_id")), _int(answer.get("leader"))
            out[ep.url] = {
                "reachable": True,
                "leader": member != 0 and member == leader,
                "has_leader": leader != 0,
                "member_id": f"{member:x}",
                "raft_term": _int(answer.get("raftTerm")),
                "raft_index": _int(answer.get("raftIndex")),
                "revision": _int(header.get("revision")),
                "db_size": _int(answer.get("dbSize")),
                "db_size_in_use": _int(answer.get("dbSizeInUse")),
                "version": str(answer.get("version", "")),
                "alarms": [str(e) for e in _list(answer.get("errors"), "the member's errors")],
                "latency_ms": round((time.monotonic() - started) * 1000, 2),
                "failures": ep.failures,
                "last_error": ep.last_error,
            }
        except (_Refused, StoreError, OSError, http.client.HTTPException) as exc:
            text = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            out[ep.url] = {"reachable": False, "error": text, "failures": ep.failures, "last_error": ep.last_error}

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

    def close(self) -> None:
        """Close the idle connections (a running watch ends with its stop event)."""
        for ep in self._endpoints:
            ep.close()

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
