"""etcd's gRPC-JSON gateway as the auth replicas' store uses it: TLS, login, retries, errors.

Standard library only: the gateway (`/v3/...`, HTTP/1.1 over TLS with a client certificate),
which etcd 3.4 serves on its client port. No etcd client package does TLS client certificates
with several endpoints and our timeouts.

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

Apart from auth/etcd.py, which says what is kept (the nonce claims, the users document and its
watch): this module knows how a request reaches some member, not what the keys mean.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dynknock.keys import secret_file_problem

log = logging.getLogger("dynknock.auth.etcd")  # the store's name: one logger for all it does

RETRY_PAUSE_S = 0.1  # between two rounds over the endpoints
DOWN_S = 1.0  # an endpoint that failed is tried last for this long
POOL_SIZE = 4  # idle keep-alive connections kept per endpoint

Outcome = Literal["final", "next", "login"]


class StoreError(Exception):
    """The store could not do it. str() is one line naming what failed; `kind` is a short word for
    counting (unavailable, timeout, no_leader, tls, permission, auth, conflict, lease,
    bad_answer, refused, circuit, config, bug)."""

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(" ".join(message.split()))
        self.kind = kind


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise StoreError(f"etcd answered a non-string value {text!r:.60}", "bad_answer")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise StoreError(f"etcd answered bad base64 {text!r:.60}", "bad_answer") from None


def json_int(value: object) -> int:
    """An int64 of the JSON gateway: a string, or absent (0, proto3 omits defaults)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise StoreError(f"etcd answered {value!r:.60} where a number belongs", "bad_answer")
    try:
        return int(value)
    except ValueError:
        raise StoreError(f"etcd answered {value!r:.60} where a number belongs", "bad_answer") from None


def json_obj(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StoreError(f"etcd answered {value!r:.80} where {what} belongs", "bad_answer")
    return value


def json_list(value: object, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise StoreError(f"etcd answered {value!r:.80} where {what} belongs", "bad_answer")
    return value


def error_text(data: bytes) -> tuple[str, int]:
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


class Endpoint:
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


class EtcdClient:
    """Requests to an etcd 3.4+ cluster through its JSON gateway, on whichever member answers.

    `prefix` is the namespace of the store's keys (checked here with the other settings).
    Thread-safe: each request takes a connection of its own from the endpoint's pool.
    """

    def __init__(self, endpoints: list[str], ca: Path, cert: Path, key: Path, user: str, password_file: Path,
                 prefix: str = "/dynknock", attempt_timeout_s: float = 0.5, deadline_s: float = 2.0, *,
                 circuit_s: float = 0.5) -> None:
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
        self._endpoints: list[Endpoint] = []
        for url in endpoints:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme != "https" or not parts.hostname or port is None or parts.path not in ("", "/"):
                raise StoreError(f"etcd store: endpoint {url!r} is not https://HOST:PORT", "config")
            self._endpoints.append(Endpoint(url, parts.hostname, port, context))
        self._user = user
        self._password_file = password_file
        self._attempt_s = attempt_timeout_s
        self._deadline_s = deadline_s
        self._circuit_s = circuit_s
        self.prefix = prefix

        self._lock = threading.Lock()  # the fields below, and the store's users and watch fields
        self._preferred = 0  # the endpoint that answered last
        self._circuit_until = 0.0
        self._token: str | None = None
        self._counts: Counter[str] = Counter()

    # --- transport ------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _order(self) -> list[Endpoint]:
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

    def _attempt(self, ep: Endpoint, path: str, body: bytes, timeout: float, headers: dict[str, str]
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
                message, code = error_text(data)
                outcome, kind = _classify(response.status, message, code)
                raise _Refused(outcome, kind, f"HTTP {response.status} {message}")
            try:
                answer = json.loads(data)
            except ValueError:
                raise StoreError(f"{ep.url}{path}: not JSON: {data[:80]!r}", "bad_answer") from None
            return json_obj(answer, "an object")
        raise http.client.RemoteDisconnected("closed twice")  # not reached: the second try raises

    def _login(self, ep: Endpoint, timeout: float) -> str:
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

    # --- a member's own status ------------------------------------------------------------------

    def _status(self, ep: Endpoint, out: dict[str, dict[str, object]]) -> None:
        """Fills out[url] from the member's /v3/maintenance/status: local to the member (no raft,
        no auth, no hasleader), so a member without a leader still says so."""
        started = time.monotonic()
        try:
            answer = self._attempt(ep, "/v3/maintenance/status", b"{}", self._attempt_s,
                                   self._headers(None, leader=False))
            header = json_obj(answer.get("header"), "a header")
            member, leader = json_int(header.get("member_id")), json_int(answer.get("leader"))
            out[ep.url] = {
                "reachable": True,
                "leader": member != 0 and member == leader,
                "has_leader": leader != 0,
                "member_id": f"{member:x}",
                "raft_term": json_int(answer.get("raftTerm")),
                "raft_index": json_int(answer.get("raftIndex")),
                "revision": json_int(header.get("revision")),
                "db_size": json_int(answer.get("dbSize")),
                "db_size_in_use": json_int(answer.get("dbSizeInUse")),
                "version": str(answer.get("version", "")),
                "alarms": [str(e) for e in json_list(answer.get("errors"), "the member's errors")],
                "latency_ms": round((time.monotonic() - started) * 1000, 2),
                "failures": ep.failures,
                "last_error": ep.last_error,
            }
        except (_Refused, StoreError, OSError, http.client.HTTPException) as exc:
            text = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            out[ep.url] = {"reachable": False, "error": text, "failures": ep.failures, "last_error": ep.last_error}

    def close(self) -> None:
        """Close the idle connections (a running watch ends with its stop event)."""
        for ep in self._endpoints:
            ep.close()
