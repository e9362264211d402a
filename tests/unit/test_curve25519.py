"""dynknock/curve25519.py: the client's pure-Python Ed25519 and X25519 compute what pycryptodome does.

1. the published vectors: RFC 8032 7.1 (TEST 1, 2, 3, 1024 and SHA(abc)), RFC 7748 5.2 (the two
   scalar multiplications, then 1 and 1,000 iterations: ~1 s here, the 1,000,000 are left out) and
   RFC 7748 6.1 (the Diffie-Hellman example);
2. hypothesis against pycryptodome, what the server uses (``Crypto.Signature.eddsa``,
   ``Crypto.Protocol.DH``): public keys and signatures byte for byte, verify's verdict on good and
   altered signatures, on crafted small-order and mixed-order ones and on random bytes, X25519;
3. hostile inputs: wrong lengths and types, non-canonical and low-order points give False
   (verify) or ValueError (the others), never anything else;
4. the stored table against the one computed from B, and what importing the module loads.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from Crypto.Protocol import DH
from Crypto.Signature import eddsa
from hypothesis import given, settings
from hypothesis import strategies as st

from dynknock import curve25519 as C

REPO = Path(__file__).resolve().parents[2]
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
NINE = (9).to_bytes(32, "little")

_seeds = st.binary(min_size=32, max_size=32)
_messages = st.binary(max_size=300)


def pcd_public_key(seed: bytes) -> bytes:
    return bytes(eddsa.import_private_key(seed).public_key().export_key(format="raw"))


def pcd_sign(seed: bytes, message: bytes) -> bytes:
    return bytes(eddsa.new(eddsa.import_private_key(seed), "rfc8032").sign(message))


def pcd_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        eddsa.new(eddsa.import_public_key(public), "rfc8032").verify(message, signature)
    except ValueError:
        return False
    return True


def pcd_x25519(scalar: bytes, u: bytes) -> bytes:
    return bytes(DH.key_agreement(static_priv=DH.import_x25519_private_key(scalar),
                                  static_pub=DH.import_x25519_public_key(u), kdf=lambda z: z))


def secret_scalar(seed: bytes) -> int:
    """RFC 8032 5.1.5's s, computed here with hashlib."""
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return int.from_bytes(digest, "little")


def challenge(encoded_r: bytes, public: bytes, message: bytes) -> int:
    return int.from_bytes(hashlib.sha512(encoded_r + public + message).digest(), "little") % L


def point(encoded: bytes) -> tuple[int, int, int, int]:
    decoded = C._decode(encoded)
    assert decoded is not None
    return decoded


# --- 1. published vectors -------------------------------------------------------------------------

MESSAGE_1023 = bytes.fromhex(
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23f"
    "b1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d658675fc6ea534e0810a4432826bf58c"
    "941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4feba15452f80288a82"
    "1a579116ec6dad2b3b310da903401aa62100ab5d1a36553e06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef"
    "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53"
    "f1d8ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
    "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759"
    "d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07"
    "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128bab27af87a71314f318c782b23ebfe808b82b0ce26401d2e22"
    "f04d83d1255dc51addd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8"
    "fcffead94f3c7ca495e056a9b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb"
    "038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7984a74d371459867"
    "80fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1"
    "b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a4"
    "3dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5"
    "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fd"
    "e7cb68606937380db2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
    "c60c905c15fc910840b94c00a0b9d0"
)

RFC8032 = {  # name: (secret key, public key, message, signature)
    "TEST 1": ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
               "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", b"",
               "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
               "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    "TEST 2": ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
               "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", bytes.fromhex("72"),
               "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
               "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    "TEST 3": ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
               "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", bytes.fromhex("af82"),
               "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
               "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    "TEST 1024": ("f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
                  "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e", MESSAGE_1023,
                  "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
                  "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"),
    "TEST SHA(abc)": ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                      "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                      bytes.fromhex("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                                    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
                      "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
                      "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
}


@pytest.mark.parametrize("name", sorted(RFC8032))
def test_rfc8032_7_1(name: str) -> None:
    seed_hex, public_hex, message, signature_hex = RFC8032[name]
    seed, public, signature = bytes.fromhex(seed_hex), bytes.fromhex(public_hex), bytes.fromhex(signature_hex)
    assert name != "TEST 1024" or len(message) == 1023
    assert C.ed25519_public_key(seed) == public
    assert C.ed25519_sign(seed, message) == signature
    assert C.ed25519_verify(public, message, signature) is True
    assert C.ed25519_verify(public, message + b"\x00", signature) is False
    assert pcd_sign(seed, message) == signature  # the oracle of section 2 agrees on the vectors too


@pytest.mark.parametrize(("scalar", "u", "result"), [
    ("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
     "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
     "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"),
    ("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
     "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
     "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"),
])
def test_rfc7748_5_2(scalar: str, u: str, result: str) -> None:
    assert C.x25519(bytes.fromhex(scalar), bytes.fromhex(u)).hex() == result


def test_rfc7748_5_2_iterations_1_and_1000() -> None:
    """k = u = 9; k, u = X25519(k, u), k. The 1,000,000-iteration value (~15 min here) is left out."""
    k = u = NINE
    for i in range(1, 1001):
        k, u = C.x25519(k, u), k
        if i == 1:
            assert k.hex() == "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_rfc7748_6_1_diffie_hellman() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_public = C.x25519_base(alice)
    bob_public = C.x25519_base(bob)
    assert alice_public.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob_public.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    assert C.x25519(alice, NINE) == alice_public and C.x25519(bob, NINE) == bob_public
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert C.x25519(alice, bob_public).hex() == shared
    assert C.x25519(bob, alice_public).hex() == shared


# --- 2. against pycryptodome ----------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(seed=_seeds, message=_messages)
def test_public_keys_and_signatures_are_pycryptodomes_byte_for_byte(seed: bytes, message: bytes) -> None:
    public = C.ed25519_public_key(seed)
    signature = C.ed25519_sign(seed, message)
    assert public == pcd_public_key(seed)
    assert signature == pcd_sign(seed, message)
    assert C.ed25519_verify(public, message, signature) is True


@settings(max_examples=50, deadline=None)
@given(seed=_seeds, other=_seeds, message=_messages, bit=st.integers(0, 511), message_bit=st.integers(0, 2399))
def test_verify_agrees_with_pycryptodome_on_good_and_altered_signatures(
        seed: bytes, other: bytes, message: bytes, bit: int, message_bit: int) -> None:
    public = C.ed25519_public_key(seed)
    signature = C.ed25519_sign(seed, message)
    flipped = bytearray(signature)
    flipped[bit // 8] ^= 1 << (bit % 8)
    s_plus_l = signature[:32] + (int.from_bytes(signature[32:], "little") + L).to_bytes(32, "little")
    cases = [(public, message, signature, True),
             (public, message, bytes(flipped), False),
             (public, message, s_plus_l, False),
             (public, message + b"\x00", signature, False)]
    if message:
        altered = bytearray(message)
        altered[message_bit // 8 % len(message)] ^= 1 << (message_bit % 8)
        cases.append((public, bytes(altered), signature, False))
    if other != seed:
        cases.append((C.ed25519_public_key(other), message, signature, False))
    for case_public, case_message, case_signature, expected in cases:
        assert C.ed25519_verify(case_public, case_message, case_signature) is expected
        assert pcd_verify(case_public, case_message, case_signature) is expected


@settings(max_examples=100, deadline=None)
@given(public=st.binary(min_size=32, max_size=32), message=st.binary(max_size=64),
       signature=st.binary(min_size=64, max_size=64))
def test_verify_of_arbitrary_bytes_is_pycryptodomes_verdict(public: bytes, message: bytes, signature: bytes) -> None:
    assert C.ed25519_verify(public, message, signature) is pcd_verify(public, message, signature)


@settings(max_examples=100, deadline=None)
@given(scalar=_seeds, u=st.binary(min_size=32, max_size=32))
def test_x25519_agrees_with_pycryptodome(scalar: bytes, u: bytes) -> None:
    try:
        expected: bytes | None = pcd_x25519(scalar, u)
    except ValueError:  # a low-order u: pycryptodome refuses it, x25519 gives all zeros and refuses it
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            C.x25519(scalar, u)
    else:
        assert C.x25519(scalar, u) == expected


@settings(max_examples=100, deadline=None)
@given(scalar=_seeds)
def test_x25519_base_is_the_ladder_on_9_and_pycryptodomes_public_key(scalar: bytes) -> None:
    public = C.x25519_base(scalar)
    assert public == C.x25519(scalar, NINE)
    assert public == bytes(DH.import_x25519_private_key(scalar).public_key().export_key(format="raw"))


# Ed25519's eight points of small order, canonically encoded: the neutral point, order 2, 4 (x2), 8 (x4).
SMALL_ORDER = [bytes.fromhex(h) for h in (
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
)]


def test_the_small_order_points_are_eight_distinct_points_of_order_dividing_8() -> None:
    points = [point(encoded) for encoded in SMALL_ORDER]
    assert len({C._encode(p) for p in points}) == 8
    for p in points:
        assert C._encode(p) in SMALL_ORDER
        assert C._is_identity(C._double(C._double(C._double(p))))


@pytest.mark.parametrize("small", SMALL_ORDER, ids=range(8))
def test_small_and_mixed_order_points_verify_as_pycryptodome_verifies_them(small: bytes) -> None:
    """The cofactored equation, as the server's: a small-order part of A or R is multiplied away.
    RFC 8032 allows it; whoever registers a key refuses a small-order one."""
    message = b"dynknock"
    for small_r in SMALL_ORDER:  # A and R of small order, S = 0
        signature = small_r + bytes(32)
        assert C.ed25519_verify(small, message, signature) is pcd_verify(small, message, signature) is True
    seed = bytes(range(32))
    a = secret_scalar(seed)
    torsion = point(small)
    r = 0x1234567 * a % L
    # A' = aB + T (mixed order), R = rB, S = r + k·a: valid under the cofactored equation only
    mixed_public = C._encode(C._add(C._multiply_base(a), torsion))
    encoded_r = C._encode(C._multiply_base(r))
    signature = encoded_r + ((r + challenge(encoded_r, mixed_public, message) * a) % L).to_bytes(32, "little")
    assert C.ed25519_verify(mixed_public, message, signature) is pcd_verify(mixed_public, message, signature) is True
    # R' = rB + T (mixed order) under the honest A
    public = C.ed25519_public_key(seed)
    mixed_r = C._encode(C._add(C._multiply_base(r), torsion))
    signature = mixed_r + ((r + challenge(mixed_r, public, message) * a) % L).to_bytes(32, "little")
    assert C.ed25519_verify(public, message, signature) is pcd_verify(public, message, signature) is True


# --- 3. hostile inputs ----------------------------------------------------------------------------


def _signed_with_r(seed: bytes, encoded_r: bytes, message: bytes) -> bytes:
    """A signature whose R is the given encoding of a small-order point, valid under the cofactored
    equation if that encoding is accepted: [8]R = 0, so S = k·a."""
    public = C.ed25519_public_key(seed)
    s = challenge(encoded_r, public, message) * secret_scalar(seed) % L
    return encoded_r + s.to_bytes(32, "little")


# Non-canonical encodings of points that exist (y >= p, or x = 0 with the sign bit set): each decodes to a
# small-order point if accepted, so a signature made with it would verify were it not refused.
NON_CANONICAL = {
    "y=p (0)": P.to_bytes(32, "little"),
    "y=p, sign": (P | 1 << 255).to_bytes(32, "little"),
    "y=p+1 (1)": (P + 1).to_bytes(32, "little"),
    "y=1, sign (x=0)": (1 | 1 << 255).to_bytes(32, "little"),
    "y=p-1, sign (x=0)": (P - 1 | 1 << 255).to_bytes(32, "little"),
    "y=p+1, sign": (P + 1 | 1 << 255).to_bytes(32, "little"),
}


@pytest.mark.parametrize("name", sorted(NON_CANONICAL))
def test_verify_refuses_non_canonical_point_encodings(name: str) -> None:
    encoded = NON_CANONICAL[name]
    seed = bytes(range(1, 33))
    message = b"knock"
    public = C.ed25519_public_key(seed)
    # as R: refused, where the canonical encoding of the same point (when there is one) is accepted
    signature = _signed_with_r(seed, encoded, message)
    assert C.ed25519_verify(public, message, signature) is False
    assert pcd_verify(public, message, signature) is False
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    if y % P not in (1, P - 1) or not encoded[31] & 0x80:  # (0, 1) and (0, -1) have no negative x
        canonical = ((y % P) | (encoded[31] & 0x80) << 248).to_bytes(32, "little")
        good = _signed_with_r(seed, canonical, message)
        assert C.ed25519_verify(public, message, good) is pcd_verify(public, message, good) is True
    # as A: refused (with S = 0 and R = the neutral point, the canonical small-order A is accepted)
    neutral = SMALL_ORDER[0] + bytes(32)
    assert C.ed25519_verify(encoded, message, neutral) is False
    assert pcd_verify(encoded, message, neutral) is False


@pytest.mark.parametrize("y", [P + v for v in range(19)] + [2, 7, 8, 11])
def test_verify_refuses_y_not_below_p_and_y_of_no_point(y: int) -> None:
    """Every y >= p (the non-canonical encodings of 0..18), and y whose x² = (y² - 1)/(dy² + 1) is not a
    square, with either sign bit, as A and as R of a real signature."""
    seed = bytes(range(32))
    message = b"knock"
    public = C.ed25519_public_key(seed)
    signature = C.ed25519_sign(seed, message)
    for sign in (0, 1):
        encoded = (y | sign << 255).to_bytes(32, "little")
        assert C._decode(encoded) is None
        assert C.ed25519_verify(encoded, message, signature) is pcd_verify(encoded, message, signature) is False
        altered = encoded + signature[32:]
        assert C.ed25519_verify(public, message, altered) is pcd_verify(public, message, altered) is False


def test_an_all_zero_key_or_r_does_not_verify_a_real_signature() -> None:
    """All zeros encodes a point of order 4: no signature made with a real key verifies under it. (With
    S = 0 and a small-order R the cofactored equation holds: see the small-order test above.)"""
    seed = bytes(range(32))
    message = b"knock"
    signature = C.ed25519_sign(seed, message)
    for public, candidate in ((bytes(32), signature), (C.ed25519_public_key(seed), bytes(32) + signature[32:]),
                              (bytes(32), bytes(32) + signature[32:])):
        assert C.ed25519_verify(public, message, candidate) is pcd_verify(public, message, candidate) is False


def test_verify_refuses_s_not_below_l() -> None:
    seed = bytes(range(32))
    message = b"knock"
    public = C.ed25519_public_key(seed)
    signature = C.ed25519_sign(seed, message)
    s = int.from_bytes(signature[32:], "little")
    for bad in (s + L, L, L + 1, 2 * L, (1 << 256) - 1):
        altered = signature[:32] + bad.to_bytes(32, "little")
        assert C.ed25519_verify(public, message, altered) is False
        assert pcd_verify(public, message, altered) is False
    # S = 0 is canonical: it is refused here only because it is not the signature
    assert C.ed25519_verify(public, message, signature[:32] + bytes(32)) is False


@pytest.mark.parametrize(("public", "message", "signature"), [
    (bytes(31), b"", bytes(64)),
    (bytes(33), b"", bytes(64)),
    (b"", b"", b""),
    (bytes(32), b"", bytes(63)),
    (bytes(32), b"", bytes(65)),
    (None, b"", bytes(64)),
    (bytes(32), None, bytes(64)),
    (bytes(32), b"", None),
    ("0" * 32, b"", bytes(64)),
    (bytes(32), "message", bytes(64)),
    (bytes(32), b"", "0" * 64),
    (32, b"", 64),
    (list(bytes(32)), b"", list(bytes(64))),
])
def test_verify_of_malformed_input_is_false_and_never_raises(public: object, message: object,
                                                             signature: object) -> None:
    assert C.ed25519_verify(public, message, signature) is False  # type: ignore[arg-type]


def test_verify_takes_bytes_like_inputs() -> None:
    """Typed bytes, but a bytearray or memoryview (a buffer a caller reads into) gives the same verdict."""
    seed = bytes(range(32))
    public = C.ed25519_public_key(seed)
    signature = C.ed25519_sign(seed, b"knock")
    assert C.ed25519_verify(bytearray(public), memoryview(b"knock"), bytearray(signature)) is True  # type: ignore[arg-type]
    assert C.ed25519_verify(bytearray(public), memoryview(b"knocK"), bytearray(signature)) is False  # type: ignore[arg-type]
    released = memoryview(public)
    released.release()
    assert C.ed25519_verify(released, b"knock", signature) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_lengths_raise_value_error(length: int) -> None:
    with pytest.raises(ValueError):
        C.ed25519_public_key(bytes(length))
    with pytest.raises(ValueError):
        C.ed25519_sign(bytes(length), b"")
    with pytest.raises(ValueError):
        C.x25519(bytes(length), NINE)
    with pytest.raises(ValueError):
        C.x25519(bytes(32), bytes(length))
    with pytest.raises(ValueError):
        C.x25519_base(bytes(length))


# RFC 7748 u-coordinates of low order (libsodium's list): 0, 1, the two of order 8, p-1, and the
# non-canonical p and p+1; each also with the top bit set (ignored).
LOW_ORDER_U = [(0).to_bytes(32, "little"), (1).to_bytes(32, "little"),
               bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
               bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
               (P - 1).to_bytes(32, "little"), P.to_bytes(32, "little"), (P + 1).to_bytes(32, "little")]


@pytest.mark.parametrize("u", LOW_ORDER_U + [u[:31] + bytes([u[31] | 0x80]) for u in LOW_ORDER_U],
                         ids=[f"{i}{top}" for top in ("", "+top") for i in range(len(LOW_ORDER_U))])
def test_x25519_refuses_low_order_points(u: bytes) -> None:
    for scalar in (bytes(32), bytes(range(32)), b"\xff" * 32):
        with pytest.raises(ValueError, match="low order"):
            C.x25519(scalar, u)
        with pytest.raises(ValueError):
            pcd_x25519(scalar, u)


def test_x25519_takes_non_canonical_u_as_reduced_and_ignores_the_top_bit() -> None:
    scalar = bytes(range(32))
    for u in (2, 9, 18):  # p + 18 = 2^255 - 1, the largest
        assert C.x25519(scalar, (P + u).to_bytes(32, "little")) == C.x25519(scalar, u.to_bytes(32, "little"))
        assert C.x25519(scalar, (u | 1 << 255).to_bytes(32, "little")) == C.x25519(scalar, u.to_bytes(32, "little"))


# --- 4. the table, the constants and what importing costs ------------------------------------------


def test_the_stored_table_is_the_one_computed_from_b() -> None:
    computed = C._table_text()
    assert C._TABLE_TEXT.strip() == computed, "replace _TABLE_TEXT with the output of curve25519._table_text()"
    assert C._load_table() == C._build_table()


def test_the_constants() -> None:
    assert C._P == P and C._L == L
    assert C._D == -121665 * pow(121666, -1, P) % P
    assert C._SQRT_M1**2 % P == P - 1
    assert C._BY == 4 * pow(5, -1, P) % P and C._BX % 2 == 0
    x, y = C._BX, C._BY
    assert (y * y - x * x - 1 - C._D * x * x * y * y) % P == 0  # on -x² + y² = 1 + dx²y²
    assert C._encode(C._B).hex() == "58" + "66" * 31  # RFC 8032 5.1's B
    assert C._is_identity(C._multiply(L, C._B)) and not C._is_identity(C._multiply(L - 1, C._B))


def test_the_module_offers_six_functions() -> None:
    offered = {name for name, value in vars(C).items()
               if not name.startswith("_") and callable(value) and getattr(value, "__module__", "") == C.__name__}
    assert offered == set(C.__all__) == {"ed25519_public_key", "ed25519_secret_scalar", "ed25519_sign",
                                         "ed25519_verify", "x25519", "x25519_base"}


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    # -S: no site-packages, so a third-party import fails here as in a client venv with nothing installed
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    return set(done.stdout.split())


def test_using_it_loads_nothing_but_the_interpreters_sha512_and_binascii() -> None:
    """No typing, hashlib (OpenSSL) or third-party module: knock-client's start-up discipline."""
    use = ("import dynknock.curve25519 as c\nseed = bytes(32)\n"
           "c.ed25519_verify(c.ed25519_public_key(seed), b'', c.ed25519_sign(seed, b''))\n"
           "c.x25519(seed, c.x25519_base(seed))\n")
    extra = _loaded_after(use) - _loaded_after("pass")
    assert extra <= {"__future__", "dynknock", "dynknock.curve25519", "binascii", "_sha512", "_sha2"}, extra
