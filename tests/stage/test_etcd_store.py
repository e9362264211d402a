"""auth/etcd.py against a real three-member etcd cluster (tests/etcdlab.py: namespaces, TLS, RBAC).

Two replicas race for the same nonces; members are killed (SIGKILL) and brought back; the users
document travels from the admin to a replica's watch; RBAC and TLS refuse the wrong clients.
Figures (latencies, failover times) are printed, not asserted: run with -s to see them.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dynknock.auth.etcd import EtcdStore, StoreError, advisories
from tests.etcdlab import PEER_PORT, Credentials, EtcdLab

pytestmark = pytest.mark.stage

WINDOW_MS = 30_000  # a nonce's expiry is about this far ahead, as in auth (timestamp + skew)


@pytest.fixture(scope="module")
def lab() -> Iterator[EtcdLab]:
    # The whole module runs in the clients' namespace (threads started here are born in it).
    with EtcdLab() as built, built.client_netns():
        yield built


def store(lab: EtcdLab, creds: Credentials, first: int = 0, **options: Any) -> EtcdStore:
    """A client with `creds`; it asks member `first` first (the endpoints list, rotated)."""
    endpoints = lab.endpoints[first:] + lab.endpoints[:first]
    return EtcdStore(endpoints, lab.ca, creds.cert, creds.key, creds.user, creds.password_file, **options)


def now_ms() -> int:
    return int(time.time() * 1000)


def nonces(n: int) -> list[bytes]:
    return [os.urandom(24) for _ in range(n)]


def percentiles(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, max {ordered[-1]:.1f} ms (n={len(ordered)})"


def ensure_running(lab: EtcdLab) -> None:
    """Every member up and serving (a test that failed half-way may have left one stopped)."""
    for member in lab.members:
        if not lab.running(member):
            lab.start_member(member, wait=False)
    for member in lab.members:
        lab.wait_ready(member)


def race(replicas: list[EtcdStore], work: Callable[[EtcdStore], list[bool]]) -> list[list[bool]]:
    """Run work(replica) in one thread per replica, started together; their results in order."""
    results: list[list[bool]] = [[] for _ in replicas]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(replicas))

    def run(index: int) -> None:
        try:
            barrier.wait(10)
            results[index] = work(replicas[index])
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(replicas))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_health_sees_three_members_and_one_leader(lab: EtcdLab) -> None:
    with store(lab, lab.replica) as replica:
        health = replica.health()
    endpoints = health["endpoints"]
    assert isinstance(endpoints, dict) and len(endpoints) == 3
    assert all(e["reachable"] for e in endpoints.values()), endpoints
    assert sum(bool(e["leader"]) for e in endpoints.values()) == 1
    assert health["quorum"] is True and health["leader"] is not None
    assert all(isinstance(e["raft_term"], int) and e["raft_term"] > 0 for e in endpoints.values())
    assert all(isinstance(e["db_size"], int) and e["db_size"] > 0 for e in endpoints.values())


def test_two_replicas_race_for_2000_nonces_and_each_is_won_once(lab: EtcdLab) -> None:
    shared = nonces(2000)
    replicas = [store(lab, lab.replica), store(lab, lab.replica, 1)]  # each with its own member first
    timings: list[list[float]] = [[], []]
    lockstep = threading.Barrier(2)  # both ask for each nonce at the same moment

    def claim_all(replica: EtcdStore) -> list[bool]:
        mine = timings[replicas.index(replica)]
        won = []
        for nonce in shared:
            lockstep.wait(10)
            started = time.perf_counter()
            now = now_ms()
            won.append(replica.claim(nonce, now + WINDOW_MS, now))
            mine.append((time.perf_counter() - started) * 1000)
        return won

    a, b = race(replicas, claim_all)
    assert [x + y for x, y in zip(a, b, strict=True)] == [1] * len(shared)  # exactly one winner each
    print(f"\nrace in lockstep, claim(): replica A won {sum(a)}, B won {sum(b)}; A {percentiles(timings[0])}; "
          f"B {percentiles(timings[1])}")

    # A nonce already won is a replay for both, whoever asks.
    assert replicas[0].claim(shared[0], now_ms() + WINDOW_MS, now_ms()) is False
    assert replicas[1].claim(shared[-1], now_ms() + WINDOW_MS, now_ms()) is False
    for replica in replicas:
        replica.close()


def test_two_replicas_race_with_claim_many_and_each_nonce_is_decided_alone(lab: EtcdLab) -> None:
    shared = nonces(2000)
    replicas = [store(lab, lab.replica), store(lab, lab.replica)]

    def in_batches(size: int, offset: int) -> Callable[[EtcdStore], list[bool]]:
        def work(replica: EtcdStore) -> list[bool]:
            won: list[bool] = []
            bounds = [0, *range(offset, len(shared), size), len(shared)]  # other batch borders per replica
            for start, end in zip(bounds, bounds[1:], strict=False):
                if start < end:
                    now = now_ms()
                    won += replica.claim_many([(n, now + WINDOW_MS) for n in shared[start:end]], now)
            return won
        return work

    a, b = race(replicas, lambda r: in_batches(64, 0)(r) if r is replicas[0] else in_batches(50, 17)(r))
    assert [x + y for x, y in zip(a, b, strict=True)] == [1] * len(shared)
    print(f"\nrace, claim_many() (batches of 64 against 50): replica A won {sum(a)}, B won {sum(b)}")

    # In one batch: fresh nonces are won though others in it are replays, and a copy is claimed once.
    fresh = nonces(3)
    now = now_ms()
    batch = [(fresh[0], now + WINDOW_MS), (shared[5], now + WINDOW_MS), (fresh[1], now + WINDOW_MS),
             (fresh[0], now + WINDOW_MS), (fresh[2], now + 2 * WINDOW_MS)]
    assert replicas[0].claim_many(batch, now) == [True, False, True, False, True]
    assert replicas[1].claim_many(batch, now) == [False] * 5
    assert replicas[0].claim_many([], now) == []

    timings = []
    for _ in range(20):
        now = now_ms()
        started = time.perf_counter()
        assert replicas[0].claim_many([(n, now + WINDOW_MS) for n in nonces(64)], now) == [True] * 64
        timings.append((time.perf_counter() - started) * 1000)
    print(f"claim_many of 64 fresh nonces: {percentiles(timings)} per batch")
    for replica in replicas:
        replica.close()


def test_claim_latency_of_one_replica(lab: EtcdLab) -> None:
    timings = []
    with store(lab, lab.replica) as replica:
        for nonce in nonces(3000):
            started = time.perf_counter()
            now = now_ms()
            assert replica.claim(nonce, now + WINDOW_MS, now) is True
            timings.append((time.perf_counter() - started) * 1000)
        counts = replica.health()["counts"]
    print(f"\none replica, 3000 claims in a row: {percentiles(timings)}, mean {statistics.fmean(timings):.2f} ms; "
          f"counts {counts}")


def test_a_retry_after_a_lost_answer_recognises_its_own_write(lab: EtcdLab,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd applies the txn but the answer is lost (a timeout): the retry, on another member, finds
    the call's own value and accepts; a replay of that nonce is still refused."""
    replica, other, admin = store(lab, lab.replica), store(lab, lab.replica), store(lab, lab.admin)
    real = EtcdStore._attempt
    lost: list[str] = []

    def answer_lost(self: EtcdStore, ep: Any, path: str, body: bytes, timeout: float,
                    headers: dict[str, str]) -> dict[str, Any]:
        answer = real(self, ep, path, body, timeout, headers)
        if path == "/v3/kv/txn" and self is replica and not lost:
            lost.append(ep.url)
            raise TimeoutError("the answer was lost")
        return answer

    monkeypatch.setattr(EtcdStore, "_attempt", answer_lost)
    now = now_ms()
    nonce = os.urandom(24)
    assert replica.claim(nonce, now + WINDOW_MS, now) is True and len(lost) == 1
    assert replica.claim(nonce, now + WINDOW_MS, now) is False
    assert other.claim(nonce, now + WINDOW_MS, now) is False

    lost.clear()
    batch = nonces(5)
    assert replica.claim_many([(n, now + WINDOW_MS) for n in batch], now) == [True] * 5 and len(lost) == 1
    assert other.claim_many([(n, now + WINDOW_MS) for n in batch], now) == [False] * 5

    text, revision = admin.load_users()
    lost.clear()
    replica_is_admin: list[EtcdStore] = [admin]

    def users_answer_lost(self: EtcdStore, ep: Any, path: str, body: bytes, timeout: float,
                          headers: dict[str, str]) -> dict[str, Any]:
        answer = real(self, ep, path, body, timeout, headers)
        if path == "/v3/kv/txn" and self in replica_is_admin and not lost:
            lost.append(ep.url)
            raise TimeoutError("the answer was lost")
        return answer

    monkeypatch.setattr(EtcdStore, "_attempt", users_answer_lost)
    document = '{"version": 1, "users": {"lost-answer": {}}}\n'
    new_revision = admin.put_users(document, revision)
    assert len(lost) == 1 and new_revision > revision and admin.load_users() == (document, new_revision)
    for s in (replica, other, admin):
        s.close()


def test_a_claim_succeeds_with_one_member_stopped_follower_or_leader(lab: EtcdLab) -> None:
    ensure_running(lab)
    leader = lab.leader()
    victim = 0 if leader != 0 else 1  # a follower, the one the replica talks to
    with store(lab, lab.replica, victim) as replica, store(lab, lab.replica, deadline_s=5.0) as patient:
        now = now_ms()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now)  # a keep-alive connection to the victim
        lab.stop_member(victim)
        started = time.monotonic()
        now = now_ms()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now) is True
        print(f"\nfollower {lab.members[victim].name} killed: the next claim took "
              f"{(time.monotonic() - started) * 1000:.1f} ms")
        lab.start_member(victim)

        # The leader: claims every 20 ms from another thread while it is killed.
        leader = lab.leader()
        assert leader is not None
        log: list[tuple[float, float, str]] = []  # (start, duration, outcome)
        halt = threading.Event()

        def claim_steadily() -> None:
            for _ in range(1000):
                if halt.is_set():
                    return
                began = time.monotonic()
                try:
                    now = now_ms()
                    outcome = "accepted" if replica.claim(os.urandom(24), now + WINDOW_MS, now) else "replay"
                except StoreError as exc:
                    outcome = exc.kind
                log.append((began, time.monotonic() - began, outcome))
                halt.wait(0.02)

        steady = threading.Thread(target=claim_steadily)
        steady.start()
        time.sleep(0.5)
        killed = time.monotonic()
        lab.stop_member(leader)
        started = time.monotonic()
        now = now_ms()
        assert patient.claim(os.urandom(24), now + WINDOW_MS, now) is True
        took = time.monotonic() - started
        time.sleep(2.5)
        halt.set()
        steady.join(10)
        after = [(t, d, o) for t, d, o in log if t + d >= killed]
        refused = [o for _, _, o in after if o not in ("accepted", "replay")]
        print(f"leader {lab.members[leader].name} killed: a claim with a 5 s deadline took {took * 1000:.0f} ms; "
              f"claims every 20 ms (2.0 s deadline): {len(after)} after the kill, {len(refused)} refused "
              f"({sorted(set(refused))}), slowest {max(d for _, d, _ in after) * 1000:.0f} ms; "
              f"new leader: {lab.members[new].name if (new := lab.leader()) is not None else 'none yet'}")
        lab.start_member(leader)


def test_a_claim_moves_on_from_a_black_holed_member(lab: EtcdLab) -> None:
    """The member's link is cut (no RST, no FIN): the attempt times out and the next member answers."""
    ensure_running(lab)
    victim = 0 if lab.leader() != 0 else 1
    with store(lab, lab.replica, victim) as replica:
        now = now_ms()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now)
        lab.cut(victim)
        try:
            started = time.monotonic()
            now = now_ms()
            assert replica.claim(os.urandom(24), now + WINDOW_MS, now) is True
            first = time.monotonic() - started
            started = time.monotonic()
            now = now_ms()
            assert replica.claim(os.urandom(24), now + WINDOW_MS, now) is True
            print(f"\nfollower {lab.members[victim].name} black-holed: the next claim took {first * 1000:.0f} ms "
                  f"(one 0.5 s attempt timed out), the one after {(time.monotonic() - started) * 1000:.1f} ms")
        finally:
            lab.restore(victim)
        lab.wait_ready(victim)


def test_without_quorum_a_claim_fails_fast_and_works_again_after(lab: EtcdLab) -> None:
    ensure_running(lab)
    with store(lab, lab.replica) as replica:
        now = now_ms()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now)
        stopped = [0, 1]
        for index in stopped:
            lab.stop_member(index)
        started = time.monotonic()
        with pytest.raises(StoreError) as first:
            now = now_ms()
            replica.claim(os.urandom(24), now + WINDOW_MS, now)
        took = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(StoreError) as second:
            now = now_ms()
            replica.claim(os.urandom(24), now + WINDOW_MS, now)
        again = time.monotonic() - started
        health = replica.health()
        print(f"\n2 of 3 members killed: the claim raised after {took * 1000:.0f} ms ({first.value.kind}: "
              f"{first.value}); the next after {again * 1000:.1f} ms ({second.value.kind}); "
              f"health: quorum {health['quorum']}, reachable {health['reachable']}")
        assert "\n" not in str(first.value)
        assert health["quorum"] is False

        restarted = time.monotonic()
        for index in stopped:
            lab.start_member(index, wait=False)
        recovered = None
        for _ in range(300):  # bounded: 30 s at most
            try:
                now = now_ms()
                if replica.claim(os.urandom(24), now + WINDOW_MS, now):
                    recovered = time.monotonic() - restarted
                    break
            except StoreError:
                pass
            time.sleep(0.1)
        assert recovered is not None, "no claim passed within 30 s of the restart"
        print(f"members restarted: first claim accepted {recovered:.2f} s after the restart")
    ensure_running(lab)


def test_a_users_change_reaches_the_other_replicas_watch(lab: EtcdLab) -> None:
    ensure_running(lab)
    admin, replica = store(lab, lab.admin), store(lab, lab.replica)
    seen: list[tuple[str, int, float]] = []
    arrived = threading.Condition()

    def on_change(text: str, revision: int) -> None:
        with arrived:
            seen.append((text, revision, time.monotonic()))
            arrived.notify_all()

    def wait_for(text: str, since: float, bound_s: float = 10.0) -> float:
        """Seconds from `since` until `text` arrived at the watch (fails after bound_s)."""
        with arrived:
            assert arrived.wait_for(lambda: any(t == text for t, _, _ in seen), bound_s), (text, seen)
        return next(at for t, _, at in seen if t == text) - since

    text, revision = admin.load_users()
    stop = threading.Event()
    watch = replica.watch_users(on_change, stop)
    try:
        # Written right as the watch starts: it must come, whether before or after the watch's
        # first answer (a watch that took "created" for progress lost exactly this change).
        first = '{"version": 1, "users": {"alice": {}}}\n'
        revision = admin.put_users(first, revision)
        wait_for(first, time.monotonic())
        assert seen[0][1] <= revision and seen[-1][1] == revision

        delays = []
        for i in range(5):
            document = f'{{"version": 1, "users": {{"u{i}": {{}}}}}}\n'
            started = time.monotonic()
            revision = admin.put_users(document, revision)
            delays.append(wait_for(document, started))
        print(f"\nusers change seen by the other replica's watch, from the admin's put, after "
              f"{', '.join(f'{d * 1000:.1f}' for d in delays)} ms")
        revisions = [r for _, r, _ in seen]
        assert revisions == sorted(set(revisions))  # in order, never twice

        with pytest.raises(StoreError) as conflict:
            admin.put_users('{"version": 1, "users": {}}\n', revision - 1)  # a stale read: refused
        assert conflict.value.kind == "conflict"

        # The watch's member is killed: the stream moves to another member and the next change comes.
        watched = 0  # the store's first call answered from the first endpoint: the watch is there
        led = lab.leader() == watched
        lab.stop_member(watched)
        document = '{"version": 1, "users": {"after-kill": {}}}\n'
        started = time.monotonic()
        revision = admin.put_users(document, revision)
        delay = wait_for(document, started)
        print(f"watch's member killed ({'the leader' if led else 'a follower'}): the next change arrived "
              f"{delay * 1000:.0f} ms after the admin's put began")
        age = replica.users_age_s()
        assert age is not None and age < 10
        lab.start_member(watched)
    finally:
        stop.set()
        watch.join(5)
        admin.close()
        replica.close()
    assert not watch.is_alive()


def test_rbac_and_tls_refuse_the_wrong_clients(lab: EtcdLab) -> None:
    ensure_running(lab)
    now = now_ms()
    with store(lab, lab.replica) as replica, store(lab, lab.admin) as admin:
        text, revision = replica.load_users()  # a replica may read the users ...
        with pytest.raises(StoreError) as denied:
            replica.put_users('{"version": 1, "users": {"mallory": {}}}\n', revision)  # ... not write them
        assert denied.value.kind == "permission"
        assert admin.load_users() == (text, revision)

        with pytest.raises(StoreError) as denied:
            admin.claim(os.urandom(24), now + WINDOW_MS, now)  # an admin may not claim nonces
        assert denied.value.kind == "permission"

    with store(lab, lab.rogue, deadline_s=1.0) as rogue, pytest.raises(StoreError) as refused:
        rogue.claim(os.urandom(24), now + WINDOW_MS, now)  # a certificate of another CA
    assert refused.value.kind == "tls"
    print(f"\nclient certificate from another CA: {refused.value}")

    wrong = lab.dir / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    with EtcdStore(lab.endpoints, lab.ca, lab.replica.cert, lab.replica.key, lab.replica.user, wrong) as guess, \
            pytest.raises(StoreError) as refused:
        guess.claim(os.urandom(24), now + WINDOW_MS, now)
    assert refused.value.kind == "auth"

    member = lab.members[0]
    no_cert = ssl.create_default_context(cafile=str(lab.ca))  # trusts the members, shows no certificate
    conn = http.client.HTTPSConnection(member.address, 2379, context=no_cert, timeout=2)
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("POST", "/v3/kv/range", b"{}", {"Content-Type": "application/json"})
        conn.getresponse().read()
    conn.close()

    # A client certificate (the replica's) on the raft port: the peer CA does not know it.
    as_peer = ssl.create_default_context(cafile=str(lab.pki / "peer-ca.crt"))
    as_peer.load_cert_chain(str(lab.replica.cert), str(lab.replica.key))
    conn = http.client.HTTPSConnection(member.address, PEER_PORT, context=as_peer, timeout=2)
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/members")
        conn.getresponse().read()
    conn.close()


def test_what_the_running_etcd_version_lets_a_credential_holder_do(lab: EtcdLab) -> None:
    """etcd before 3.4.42 / 3.5.28 / 3.6.9 skips RBAC in nested txns (CVE-2026-33343) and lets a
    bare client certificate raise alarms (CVE-2026-33413). Debian 12's 3.4.23 does both: this test
    shows it there and expects refusals on a fixed etcd, so an upgrade (or a regression) shows."""
    ensure_running(lab)
    member = lab.members[0]
    with store(lab, lab.replica) as replica, store(lab, lab.admin) as admin:
        version = str(lab.status(member).get("version", ""))
        known = advisories(version)
        assert replica.health()["advisories"] == known
        nested_bypass = any("CVE-2026-33343" in text for text in known)
        bare_alarm = any("CVE-2026-33413" in text for text in known)
        print(f"\netcd {version}: {len(known)} known advisories" + "".join(f"\n  WARNING {t}" for t in known))

        now = now_ms()
        users_key = base64.b64encode(f"{lab.prefix}/users".encode()).decode()
        text, revision = admin.load_users()
        forged = json.dumps({"success": [{"request_txn": {"success": [{"request_put": {
            "key": users_key, "value": base64.b64encode(text.encode()).decode()}}]}}]}).encode()  # same text
        status, answer = lab.request(member, "POST", "/v3/kv/txn", forged, creds=lab.replica,
                                     token=lab.login(member, lab.replica))
        if nested_bypass:
            assert admin.claim_many([(os.urandom(24), now + WINDOW_MS)], now) == [True]  # not checked
            assert status == 200 and admin.load_users()[1] > revision  # a replica wrote the users
        else:
            with pytest.raises(StoreError) as denied:
                admin.claim_many([(os.urandom(24), now + WINDOW_MS)], now)
            assert denied.value.kind == "permission"
            assert status == 403 and admin.load_users() == (text, revision), answer

        alarm = json.dumps({"action": "ACTIVATE", "memberID": "0", "alarm": "NOSPACE"}).encode()
        status, answer = lab.request(member, "POST", "/v3/maintenance/alarm", alarm, creds=lab.admin)  # no login
        try:
            if bare_alarm:
                assert status == 200, answer
                health = replica.health()
                endpoints = health["endpoints"]
                assert isinstance(endpoints, dict)
                assert any("NOSPACE" in str(e.get("alarms")) for e in endpoints.values()), endpoints
                with pytest.raises(StoreError) as refused:
                    replica.claim(os.urandom(24), now + WINDOW_MS, now)
                print(f"NOSPACE raised with a bare client certificate: the claim: {refused.value}")
            else:
                assert status in (401, 403), answer
        finally:
            lab.etcdctl("alarm", "disarm")
        assert replica.claim(os.urandom(24), now_ms() + WINDOW_MS, now_ms()) is True


def test_a_refused_token_is_replaced_by_a_new_login(lab: EtcdLab) -> None:
    """A token etcd no longer takes (a member restarted, --auth-token-ttl idle, or the auth store
    changed since the login) costs one login, not a refusal."""
    ensure_running(lab)
    with store(lab, lab.replica) as replica:
        now = now_ms()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now)
        replica._token = "not-a-token"  # as after a member restart: "invalid auth token"
        started = time.monotonic()
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now) is True
        print(f"\ninvalid token: the claim logged in again and passed in {(time.monotonic() - started) * 1000:.0f} ms")
        # Any change of users or roles makes older tokens "revision of auth store is old".
        lab.etcdctl("role", "grant-permission", "auth-replica", "read", f"{lab.prefix}/users")
        assert replica.claim(os.urandom(24), now + WINDOW_MS, now) is True
        counts = replica.health()["counts"]
        assert isinstance(counts, dict) and not any(k.startswith("error.") for k in counts), counts


def test_configuration_errors_are_one_line_store_errors(lab: EtcdLab, tmp_path: Path) -> None:
    creds = lab.replica

    def refused(**change: Any) -> StoreError:
        options: dict[str, Any] = {"endpoints": lab.endpoints, "ca": lab.ca, "cert": creds.cert, "key": creds.key,
                                   "user": creds.user, "password_file": creds.password_file} | change
        with pytest.raises(StoreError) as error:
            EtcdStore(**options)
        assert error.value.kind == "config" and "\n" not in str(error.value)
        return error.value

    assert "not https://HOST:PORT" in str(refused(endpoints=["http://198.18.231.1:2379"]))
    assert "no endpoint" in str(refused(endpoints=[]))
    assert "prefix" in str(refused(prefix="/dynknock/"))
    open_password = tmp_path / "open.password"
    open_password.write_text("x\n")
    open_password.chmod(0o644)
    assert "chmod 640" in str(refused(password_file=open_password))
    assert "No such file" in str(refused(key=tmp_path / "missing.key"))


def test_advisories_follow_the_fixed_releases() -> None:
    assert len(advisories("3.4.23")) == 3  # Debian 12
    assert len(advisories("3.4.42")) == 1 and "CVE-2026-44283" in advisories("3.4.42")[0]
    assert advisories("3.4.44") == advisories("3.5.30") == advisories("3.6.11") == advisories("3.7.0") == []
    assert len(advisories("3.5.27")) == 3 and len(advisories("3.3.27")) == 3
    assert advisories("not a version") == []
