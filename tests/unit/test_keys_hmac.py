"""dynknock/keys.py without hmac, hashlib, base64 or dataclasses (knock-client's start-up): the
same HMAC, the same base64 rules, the same SessionKeys as before."""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import hmac
import pickle

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dynknock import keys as K


@given(st.binary(max_size=200), st.binary(max_size=300))
@example(b"", b"")
@example(bytes(64), b"x")
@example(bytes(65), b"x")  # a key longer than the block is hashed first
def test_hmac_sha256_is_hmac(key: bytes, message: bytes) -> None:
    assert K.hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


def test_hmac_sha256_rfc4231_case_2() -> None:
    mac = K.hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_user_hint_is_the_hmac_of_the_epoch() -> None:
    keys = K.SessionKeys.from_master(bytes(range(32)))
    want = hmac.new(keys.hint, b"epoch" + (12345).to_bytes(8, "big"), hashlib.sha256).digest()[:K.HINT_LEN]
    assert K.user_hint(keys, 12345) == want


@given(st.binary(max_size=48))
def test_encode_key_is_base64(key: bytes) -> None:
    assert K.encode_key(key) == base64.b64encode(key).decode("ascii")


def _old_decode(text: str) -> bytes | str:
    """decode_key as it was, on base64: the key or the message."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        return "key is not valid base64"
    return key if len(key) == K.MASTER_KEY_LEN else f"key must be {K.MASTER_KEY_LEN} bytes, got {len(key)}"


def _new_decode(text: str) -> bytes | str:
    try:
        return K.decode_key(text)
    except K.KeyError_ as exc:
        return str(exc)


GOOD = base64.b64encode(bytes(range(32))).decode()


@given(st.text(alphabet="AZaz09+/=\n \t-_.é", max_size=50) | st.builds(lambda a, b: a + GOOD + b,
       st.text(alphabet="=\n A", max_size=3), st.text(alphabet="=\n A", max_size=3)))
@example(GOOD)
@example(GOOD + "\n")
@example(GOOD[:-1] + "==")
@example(GOOD + "AAAA")
@example("é" + GOOD)
def test_decode_key_accepts_and_refuses_what_base64_validate_did(text: str) -> None:
    assert _new_decode(text) == _old_decode(text)


def test_session_keys_behave_as_the_frozen_dataclass_they_were() -> None:
    a = K.SessionKeys.from_master(bytes(range(32)))
    b = K.SessionKeys.from_master(bytes(range(32)))
    assert a == b and hash(a) == hash(b) and a != K.SessionKeys.from_master(bytes(32))
    assert a != (a.hint, a.client_to_server, a.server_to_client)
    assert K.SessionKeys(hint=a.hint, client_to_server=a.client_to_server, server_to_client=a.server_to_client) == a
    assert copy.deepcopy(a) == a and pickle.loads(pickle.dumps(a)) == a
    assert not hasattr(a, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hint = b"x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del a.hint
    with pytest.raises(binascii.Error):
        binascii.a2b_base64(b"A", strict_mode=True)  # the check decode_key relies on
