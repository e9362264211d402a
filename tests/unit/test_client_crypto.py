"""client/crypto.py: the client's standard-library cryptography computes what the server's does.

Three layers, as in test_protocol.py:
1. the published vectors of each primitive (RFC 8439, draft-irtf-cfrg-xchacha, RFC 5869);
2. the project's key vector (tests/vectors/keys.json; the packets are test_client_wire.py's);
3. hypothesis: random keys, nonces and messages against pycryptodome (what auth/ uses)
   and against dynknock.keys.
It also checks what importing the client loads: no third-party module at all (the
client installs with no dependencies) and nothing the --help path does not need.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import keys as K
from dynknock.client import crypto as C

VECTOR_DIR = Path(__file__).resolve().parent.parent / "vectors"
REPO = Path(__file__).resolve().parent.parent.parent


# --- 1. published vectors ----------------------------------------------------------


def test_chacha20_block_rfc8439_2_3_2() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    expected = ("10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
                "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")
    assert C.chacha20_block(key, 1, nonce).hex() == expected


def test_chacha20_encryption_rfc8439_2_4_2() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000000000004a00000000")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                 b"sunscreen would be it.")
    expected = ("6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0bf91b65c5524733ab8f593dabcd62b357"
                "1639d624e65152ab8f530c359f0861d807ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab779"
                "37365af90bbf74a35be6b40b8eedf2785e42874d")
    assert C.chacha20_xor(key, 1, nonce, plaintext).hex() == expected


def test_poly1305_rfc8439_2_5_2() -> None:
    key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    assert C.poly1305(key, b"Cryptographic Forum Research Group").hex() == "a8061dc1305136c6c22b8baf0c0127a9"


def test_hchacha20_draft_2_2_1() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert C.hchacha20(key, nonce).hex() == "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"


def test_xchacha20poly1305_draft_a_3_1() -> None:
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
                 b"sunscreen would be it.")
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    ciphertext, tag = C.xchacha20poly1305_encrypt(key, nonce, aad, plaintext)
    assert ciphertext.hex() == (
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39"
        "ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e")
    assert tag.hex() == "c0875924c1c7987947deafd8780acf49"
    assert C.xchacha20poly1305_decrypt(key, nonce, aad, ciphertext, tag) == plaintext


def test_hkdf_rfc5869_case_3_empty_salt_and_info() -> None:
    ikm = bytes([0x0B] * 22)
    expected = ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                "9d201395faa4b61a96c8")
    assert C.hkdf_sha256(ikm, b"", 42).hex() == expected


# --- 2. the project's vectors ---------------------------------------------------------


def _vectors() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTOR_DIR.glob("*.json"))}


VECTORS = _vectors()
def test_key_vector() -> None:
    v = VECTORS["keys.json"]
    master = C.derive_master_key(v["inputs"]["user"], v["inputs"]["password"])
    assert master.hex() == v["master_key"]
    keys = C.session_keys(master)
    assert {k: getattr(keys, k).hex() for k in v["session_keys"]} == v["session_keys"]


# --- 3. random inputs against pycryptodome and dynknock.keys -----------------------------------


@settings(max_examples=150, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=24, max_size=24),
       aad=st.binary(max_size=80), plaintext=st.binary(max_size=300))
def test_aead_matches_pycryptodome(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> None:
    cipher = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    cipher.update(aad)
    expected = cipher.encrypt_and_digest(plaintext)
    assert C.xchacha20poly1305_encrypt(key, nonce, aad, plaintext) == expected
    assert C.xchacha20poly1305_decrypt(key, nonce, aad, *expected) == plaintext


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=24, max_size=24),
       aad=st.binary(max_size=40), plaintext=st.binary(min_size=1, max_size=100), data=st.data())
def test_aead_refuses_any_altered_byte(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes,
                                       data: st.DataObject) -> None:
    ciphertext, tag = C.xchacha20poly1305_encrypt(key, nonce, aad, plaintext)
    sealed = bytearray(aad + ciphertext + tag)
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    a, c, t = bytes(sealed[:len(aad)]), bytes(sealed[len(aad):-16]), bytes(sealed[-16:])
    with pytest.raises(ValueError):
        C.xchacha20poly1305_decrypt(key, nonce, a, c, t)


def test_aead_needs_full_size_key_and_nonce() -> None:
    with pytest.raises(ValueError):
        C.xchacha20poly1305_encrypt(bytes(31), bytes(24), b"", b"x")
    with pytest.raises(ValueError):
        C.xchacha20poly1305_encrypt(bytes(32), bytes(12), b"", b"x")


@settings(max_examples=60, deadline=None)
@given(master=st.binary(min_size=32, max_size=32))
def test_session_keys_match_auth_keys(master: bytes) -> None:
    assert C.session_keys(master) == K.SessionKeys.from_master(master)


def test_session_keys_refuse_a_short_master() -> None:
    with pytest.raises(K.KeyError_):
        C.session_keys(bytes(31))


def test_derive_master_key_matches_auth_keys_and_refuses_what_it_refuses() -> None:
    assert C.derive_master_key("  Zoë ", "pässword") == K.derive_master_key("  Zoë ", "pässword")
    salt = K.SCRYPT_SALT_PREFIX + b"alice"
    assert C.scrypt_openssl(b"pw", salt) == K.derive_master_key("alice", "pw")
    for user, password in (("alice", ""), ("bad user", "x"), ("", "x")):
        with pytest.raises(K.KeyError_):
            C.derive_master_key(user, password)


# --- what importing the client loads ----------------------------------------------------


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (no site: only what the code imports)."""
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    # -S: no site-packages, so a third-party import fails here, as in a venv with nothing installed.
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout
    return set(json.loads(out.splitlines()[-1])) - {"__main__", "json", "json.decoder", "json.encoder", "json.scanner",
                                                    "_json"}


def test_the_knocking_client_loads_only_the_standard_library_and_its_own_code() -> None:
    # What a key-file --proxy run imports; a third-party module here would be a dependency
    # of the client install (pyproject.toml has none) and cost start-up.
    loaded = _loaded_after("import dynknock.client.main, dynknock.client.app, dynknock.client.proxy\n"
                           "from dynknock.client import crypto; crypto.session_keys(bytes(32))")
    ours = {m for m in loaded if m.split(".")[0] == "dynknock"}
    foreign = {m for m in loaded - ours if m.split(".")[0] not in sys.stdlib_module_names}
    assert foreign == set()
    # The wire layer's keys and rules and the client (its own codec, client/wire.py), nothing of the
    # server (auth's engine, the bus, config), nor protocol.py and its dataclasses.
    assert {m for m in ours if not m.startswith("dynknock.client")} == {"dynknock", "dynknock.fields",
                                                                         "dynknock.keys", "dynknock.rules"}
    assert not loaded & {"subprocess", "getpass", "tomllib", "typing_extensions", "dataclasses"}


def test_help_loads_neither_the_knocking_code_nor_its_imports() -> None:
    loaded = _loaded_after("from dynknock.client import main\nmain.build_parser().format_help()")
    assert not loaded & {"dynknock.client.app", "dynknock.client.config", "dynknock.keys", "dynknock.protocol",
                         "socket", "dataclasses", "pathlib", "ipaddress", "hashlib", "typing", "shutil"}


def test_scrypt_preloaded_in_a_thread_gives_the_same_key() -> None:
    """knock-client imports pycryptodome's scrypt in a thread while the password is typed; in a fresh
    process (so the import really races derive_master_key's own) the key is the server's."""
    from dynknock.keys import derive_master_key as server_derive

    code = ("from dynknock.client import crypto\ncrypto.preload_scrypt()\n"
            "print(crypto.derive_master_key('Alice', 'correct horse').hex())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=str(Path(__file__).resolve().parents[2]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == server_derive("Alice", "correct horse").hex()
