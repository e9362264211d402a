"""Key-pair users (protocol version 3) in the auth engine: her client's real code seals (client/pair.py,
pure Python), the server's real key checks (auth/serverkey.py, pycryptodome), and a thief holding the
server's key and the users file computes her session keys and tries what they allow."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from dynknock import curve25519
from dynknock import protocol as proto
from dynknock.auth.engine import Action, Engine, Notify, OpenDoor, SendReply
from dynknock.auth.replay import ReplayCache
from dynknock.auth.serverkey import ServerKey
from dynknock.auth.users import User, UsersFileError
from dynknock.client import crypto
from dynknock.client import pair as client_pair
from dynknock.keys import SessionKeys, hint_epoch, user_hint
from dynknock.protocol import IPAddress, Knock, PacketType, Status
from tests.unit.engine_support import CONFIG, KNOCKS, NOW, RID, SERVER, Rng, confirm, make_user, one, rejected

CLIENT = ipaddress.ip_address("203.0.113.7")
THIEF = ipaddress.ip_address("203.0.113.66")
SERVER_SECRET = hashlib.sha256(b"server").digest()
PAULA_SEED = hashlib.sha256(b"paula").digest()
PAULA = User("paula", b"", ("ssh",), public_key=curve25519.ed25519_public_key(PAULA_SEED))
ALICE = make_user("alice", 1, services=("ssh",))

_nonces = itertools.count(1)


def fresh_nonce() -> bytes:
    return next(_nonces).to_bytes(24, "big")


@dataclass
class PairClient:
    """Paula's client reduced to its packets: the session keys and sealing of client/pair.py."""

    seed: bytes
    server_key: bytes
    address: IPAddress = CLIENT
    bind: bool = False
    keys: SessionKeys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = client_pair.session_keys(self.seed, self.server_key)

    def hint(self, ts: int) -> bytes:
        return user_hint(self.keys, hint_epoch(ts / 1000))

    def p1(self, ts: int = NOW, *, address: IPAddress | None | str = "self", rid: bytes = RID,
           knocks: tuple[Knock, Knock, Knock] = KNOCKS, sign: Callable[[bytes], bytes] | None = None,
           nonce: bytes | None = None) -> bytes:
        declared = self.address if address == "self" else address
        assert not isinstance(declared, str)
        signer = client_pair.PairSeal(self.seed, self.server_key).sign
        return crypto.seal_pair(self.keys, proto.P1(ts, rid, declared, "ssh", knocks), self.hint(ts),
                                nonce or fresh_nonce(), self.server_key, SERVER if self.bind else None,
                                sign or signer)

    def p2(self, ts: int = NOW) -> bytes:
        return crypto.seal_pair(self.keys, proto.P2(ts, RID), self.hint(ts), fresh_nonce(), self.server_key,
                                SERVER if self.bind else None)

    def read(self, action: Action) -> proto.P3:
        assert isinstance(action, SendReply)
        header = proto.parse_header(action.payload, (PacketType.P3,), versions=(proto.PAIR_VERSION,))
        assert isinstance(header, proto.Header) and header.bound == self.bind
        message = crypto.open_packet(self.keys, header, action.payload, SERVER if self.bind else None)
        assert isinstance(message, proto.P3)
        return message


def make_engine(server: ServerKey | None = None, users: tuple[User, ...] = (PAULA, ALICE)) -> Engine:
    rng = Rng()
    return Engine(CONFIG, {u.name: u for u in users}, ReplayCache(), rng.random_bytes, rng.random_below,
                  server or ServerKey(SERVER_SECRET))


def send(engine: Engine, payload: bytes, source: IPAddress = CLIENT, now: int = NOW) -> list[Action]:
    return engine.on_datagram(source, 50000, SERVER, payload, now)


def paula(bind: bool = False) -> PairClient:
    return PairClient(PAULA_SEED, ServerKey(SERVER_SECRET).public, bind=bind)


# --- she knocks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bind", [False, True])
def test_a_key_pair_user_opens_a_door_and_reads_its_answer(bind: bool) -> None:
    engine, her = make_engine(), paula(bind)
    actions = send(engine, her.p1())
    assert rejected(actions) == [] and any(isinstance(a, Notify) and a.topic == "auth.request.received"
                                           for a in actions)
    door = one([a for k in KNOCKS for a in engine.on_syn(her.address, k.port, k.isn, NOW)], OpenDoor)
    confirm(engine, door)
    p3 = her.read(one(send(engine, her.p2()), SendReply))
    assert (p3.status, p3.door_port, p3.request_id) == (Status.OPEN, door.port, RID)
    assert len(her.p1()) == proto.PAIR_PACKET_LEN[PacketType.P1] == 194


def test_client_and_server_agree_on_her_keys() -> None:
    """Her X25519 (pure Python, her seed's scalar) and the server's (pycryptodome, her public key's
    Montgomery form) give one secret, so one set of session keys."""
    server = ServerKey(SERVER_SECRET)
    for seed in (PAULA_SEED, os.urandom(32), os.urandom(32)):
        public = curve25519.ed25519_public_key(seed)
        assert client_pair.session_keys(seed, server.public) == server.session_keys(public)


def test_a_symmetric_user_beside_her_is_unchanged() -> None:
    from tests.unit.engine_support import Client

    engine = make_engine()
    alice = Client(ALICE)
    assert rejected(engine.on_datagram(CLIENT, 50000, SERVER, alice.p1(), NOW)) == []


# --- a thief with the server's key and the users file ---------------------------------------------


def _thief_keys() -> SessionKeys:
    """What the stolen files give: the server's secret and her public key, so her session keys."""
    assert PAULA.public_key is not None
    return ServerKey(SERVER_SECRET).session_keys(PAULA.public_key)


def test_the_thief_computes_her_keys_but_no_signature_of_hers() -> None:
    engine, her = make_engine(), paula()
    assert _thief_keys() == her.keys
    thief_seed = os.urandom(32)
    forgeries = {
        "random bytes": lambda m: os.urandom(64),
        "the thief's own key": lambda m: curve25519.ed25519_sign(thief_seed, m),
        "zeros": lambda m: bytes(64),
    }
    for name, sign in forgeries.items():
        actions = send(engine, her.p1(address=THIEF, sign=sign), THIEF)
        assert rejected(actions) == ["bad_signature"], name
    assert engine.open_doors() == [] and engine.opening(NOW) == (0, 0)


def test_her_signature_moved_into_another_p1_fails() -> None:
    """The signature covers every field: her knocks, address and nonce re-used around the thief's own
    address make a message she never signed."""
    engine, her = make_engine(), paula()
    captured: list[bytes] = []

    def record(message: bytes) -> bytes:
        signature = curve25519.ed25519_sign(PAULA_SEED, message)
        captured.append(signature)
        return signature

    her.p1(sign=record)  # sniffed: the thief decrypts it with her keys and takes the signature
    actions = send(engine, her.p1(address=THIEF, sign=lambda m: captured[0]), THIEF)
    assert rejected(actions) == ["bad_signature"]


@pytest.mark.parametrize("version", [proto.VERSION, proto.BOUND_VERSION])
def test_an_older_version_sealed_with_her_keys_opens_nothing(version: int) -> None:
    """v1 and v2 carry no signature: her keys in them (a thief's only way around it) are refused."""
    engine = make_engine()
    keys = _thief_keys()
    message = proto.P1(NOW, RID, THIEF, "ssh", KNOCKS)
    packet = proto.seal(keys, message, user_hint(keys, hint_epoch(NOW / 1000)), fresh_nonce(),
                        SERVER if version == proto.BOUND_VERSION else None)
    assert rejected(send(engine, packet, THIEF)) == ["bad_version"]


def test_a_verified_nonce_does_not_vouch_for_other_bytes() -> None:
    """Her P1 is signed and verified but refused afterwards (here: "as seen" without nat); a thief's P1
    under that same nonce is checked again, not waved through."""
    engine, her = make_engine(), paula()
    nonce = fresh_nonce()
    assert rejected(send(engine, her.p1(address=None, nonce=nonce))) == ["wrong_source"]
    forged = her.p1(address=THIEF, nonce=nonce, sign=lambda m: os.urandom(64))
    assert rejected(send(engine, forged, THIEF)) in (["bad_signature"], ["replay"])
    assert engine.open_doors() == [] and engine.opening(NOW) == (0, 0)


def test_her_p1_replayed_is_a_replay() -> None:
    engine, her = make_engine(), paula()
    packet = her.p1()
    assert rejected(send(engine, packet)) == []
    assert rejected(send(engine, packet, THIEF)) == ["replay"]


def test_her_packets_for_another_server_key_mean_nothing_here() -> None:
    engine = make_engine()
    elsewhere = PairClient(PAULA_SEED, ServerKey(hashlib.sha256(b"another server").digest()).public)
    assert rejected(send(engine, elsewhere.p1())) == ["unknown_user"]


def test_signature_checks_are_budgeted_per_hint() -> None:
    """A flood of well-tagged P1s with bad signatures (only a holder of her keys can make them) costs at
    most hint_signatures_per_second verifications a second; then they are refused unchecked."""
    engine, her = make_engine(), paula()
    budget = engine.config.hint_signatures_per_second
    for _ in range(budget + 5):
        send(engine, her.p1(address=THIEF, sign=lambda m: bytes(64)), THIEF)
    assert (engine.rejections["bad_signature"], engine.rejections["hint_over_budget"]) == (budget, 5)
    # The next second she knocks again.
    assert rejected(send(engine, her.p1(NOW + 1000), now=NOW + 1000)) == []


def test_a_users_file_with_her_and_no_server_key_is_refused() -> None:
    rng = Rng()
    with pytest.raises(UsersFileError, match="server.key_file"):
        Engine(CONFIG, {"paula": PAULA}, ReplayCache(), rng.random_bytes, rng.random_below)


def test_the_server_key_made_after_start_is_taken_once() -> None:
    rng = Rng()
    engine = Engine(CONFIG, {"alice": ALICE}, ReplayCache(), rng.random_bytes, rng.random_below)
    assert not engine.has_pair_server
    engine.set_pair_server(ServerKey(SERVER_SECRET))
    engine.replace_users({"alice": ALICE, "paula": PAULA})
    her = paula()
    assert rejected(send(engine, her.p1())) == []
    with pytest.raises(ValueError):
        engine.set_pair_server(ServerKey(SERVER_SECRET))
