from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    CryptoError,
    EncryptedVector,
    KeyKind,
    KeyMismatchError,
    KeyShare,
    MalformedCiphertextError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    combine_partial_decryptions,
    decrypt_vector,
    encrypt_vector,
    generate_keypair,
    partial_decrypt,
    serde,
    verify_partial_decryption,
)
from fedcity.v1 import crypto_pb2 as pb

KeyPair = tuple[PublicKey, PrivateKey]
ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]


@pytest.fixture(scope="module")
def vector(keypair: KeyPair, spec: PackingSpec) -> EncryptedVector:
    x = np.linspace(-1, 1, 60)
    return encrypt_vector(keypair[0], x, spec) + encrypt_vector(keypair[0], x, spec)


@pytest.fixture(scope="module")
def vector_bytes(vector: EncryptedVector) -> bytes:
    return serde.encrypted_vector_to_bytes(vector)


def _msg(vector: EncryptedVector) -> pb.EncryptedVector:
    return serde.encrypted_vector_to_proto(vector)


def _set_ciphertext(msg: pb.EncryptedVector, index: int, value: int, width: int) -> None:
    blob = bytearray(msg.ciphertexts)
    blob[index * width : (index + 1) * width] = value.to_bytes(width, "big")
    msg.ciphertexts = bytes(blob)


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("short", [False, True])
def test_public_key_round_trip(keypair: KeyPair, short: bool) -> None:
    pk = generate_keypair(264, short_exponent=True)[0] if short else keypair[0]
    msg = serde.public_key_to_proto(pk)
    assert len(msg.n) == pk.n_bytes and len(msg.djn_base) == pk.ciphertext_bytes
    assert msg.key_id == pk.key_id and len(msg.key_id) == 16
    back = serde.public_key_from_proto(pb.PublicKey.FromString(msg.SerializeToString()))
    assert back == pk
    assert (back.djn_base, back.exponent_bits) == (pk.djn_base, pk.exponent_bits)
    assert back.kind is (KeyKind.SHORT_EXPONENT if short else KeyKind.STANDARD)


def test_threshold_public_key_round_trip(threshold_3of5: ThresholdKey) -> None:
    tpk, _ = threshold_3of5
    msg = serde.threshold_public_key_to_proto(tpk)
    back = serde.threshold_public_key_from_proto(
        pb.ThresholdPublicKey.FromString(msg.SerializeToString())
    )
    assert back.public_key == tpk.public_key
    assert back.public_key.kind is KeyKind.THRESHOLD
    assert (back.threshold, back.parties) == (3, 5)
    assert back.verification_base == tpk.verification_base
    assert back.verification_keys == tpk.verification_keys


@pytest.mark.parametrize(
    "spec_",
    [
        PackingSpec(),
        PackingSpec(clip=0.125, precision_bits=8, max_summands=3, n_length=512, noise_bound=9),
        PackingSpec(clip=1e-300, precision_bits=52, max_summands=1, n_length=3072),
    ],
)
def test_packing_spec_round_trip(spec_: PackingSpec) -> None:
    msg = serde.packing_spec_to_proto(spec_)
    wire = pb.PackingSpec.FromString(msg.SerializeToString())
    assert serde.packing_spec_from_proto(wire) == spec_


def test_encrypted_vector_round_trip(
    keypair: KeyPair, vector: EncryptedVector, vector_bytes: bytes
) -> None:
    pk, sk = keypair
    msg = pb.EncryptedVector.FromString(vector_bytes)
    assert len(msg.ciphertexts) == 3 * pk.ciphertext_bytes
    assert (msg.length, msg.summands) == (60, 2)
    back = serde.encrypted_vector_from_bytes(vector_bytes, pk)
    assert back.ciphertexts == vector.ciphertexts
    assert (back.spec, back.length, back.summands) == (vector.spec, 60, 2)
    assert back.digest() == vector.digest()
    np.testing.assert_array_equal(decrypt_vector(sk, back), decrypt_vector(sk, vector))
    assert serde.encrypted_vector_to_bytes(back) == vector_bytes


def test_empty_vector_round_trip(keypair: KeyPair, spec: PackingSpec) -> None:
    pk, sk = keypair
    enc = encrypt_vector(pk, [], spec)
    back = serde.encrypted_vector_from_bytes(serde.encrypted_vector_to_bytes(enc), pk)
    assert back.length == 0 and back.ciphertexts == []
    assert decrypt_vector(sk, back).size == 0


def test_partial_decryption_round_trip(threshold_2of3: ThresholdKey, spec: PackingSpec) -> None:
    tpk, shares = threshold_2of3
    pk = tpk.public_key
    x = np.linspace(-0.5, 0.5, 40)
    vec = encrypt_vector(pk, x, spec)
    wire_vec = serde.encrypted_vector_from_bytes(serde.encrypted_vector_to_bytes(vec), pk)
    partials = []
    for share in shares[:2]:
        p = partial_decrypt(share, wire_vec)
        data = serde.partial_decryption_to_bytes(p, pk)
        back = serde.partial_decryption_from_bytes(data, pk)
        fields = ("key_id", "share_index", "vector_digest", "partials", "challenge", "response")
        assert [getattr(back, f) for f in fields] == [getattr(p, f) for f in fields]
        assert verify_partial_decryption(tpk, vec, back)
        partials.append(back)
    np.testing.assert_allclose(
        combine_partial_decryptions(tpk, vec, partials), x, atol=spec.step / 2 + 1e-12
    )


# -- malformed encrypted vectors ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data", [b"\xff", b"\xff" * 40, b"\x0a\xff\xff\xff\xff\x0f", b"\x08", bytes(range(256))]
)
def test_garbage_bytes(keypair: KeyPair, data: bytes) -> None:
    with pytest.raises(MalformedCiphertextError):
        serde.encrypted_vector_from_bytes(data, keypair[0])


def test_every_truncation_fails(keypair: KeyPair, vector_bytes: bytes) -> None:
    """No prefix parses as a (shortened) copy of the vector.

    Protobuf has no framing: a cut right after the spec is a well-formed message for the
    empty vector with zero summands, which is legal (and cannot be added to the real one).
    """
    pk = keypair[0]
    parsed = []
    for cut in range(len(vector_bytes)):
        try:
            back = serde.encrypted_vector_from_bytes(vector_bytes[:cut], pk)
        except CryptoError:
            continue
        parsed.append(cut)
        assert (back.length, back.summands, back.ciphertexts) == (0, 0, [])
    assert len(parsed) <= 1
    # cutting inside the ciphertexts field is a protobuf decode error
    with pytest.raises(MalformedCiphertextError, match="not a valid protobuf"):
        serde.encrypted_vector_from_bytes(vector_bytes[:-5], pk)


def test_empty_message_is_a_key_mismatch(keypair: KeyPair) -> None:
    with pytest.raises(KeyMismatchError, match="<none>"):
        serde.encrypted_vector_from_bytes(b"", keypair[0])


@pytest.mark.parametrize("delta", [-1, 1, -129, 7])
def test_ciphertext_blob_of_wrong_length(
    keypair: KeyPair, vector: EncryptedVector, delta: int
) -> None:
    msg = _msg(vector)
    msg.ciphertexts = msg.ciphertexts[:delta] if delta < 0 else msg.ciphertexts + bytes(delta)
    with pytest.raises(MalformedCiphertextError, match="whole number of 128-byte"):
        serde.encrypted_vector_from_proto(msg, keypair[0])


def test_ciphertext_count_does_not_match_length(keypair: KeyPair, vector: EncryptedVector):
    msg = _msg(vector)
    msg.ciphertexts = msg.ciphertexts[: 2 * keypair[0].ciphertext_bytes]
    with pytest.raises(MalformedCiphertextError, match="cannot hold 60 values"):
        serde.encrypted_vector_from_proto(msg, keypair[0])
    msg = _msg(vector)
    msg.length = 200
    with pytest.raises(MalformedCiphertextError, match="cannot hold 200 values"):
        serde.encrypted_vector_from_proto(msg, keypair[0])


def test_invalid_ciphertext_values(keypair: KeyPair, vector: EncryptedVector) -> None:
    pk, sk = keypair
    w = pk.ciphertext_bytes
    p = int(sk.to_phe().p)
    cases = [
        (0, 1, "outside"),
        (int(pk.nsquare), 2, "outside"),
        (2 ** (8 * w) - 1, 0, "outside"),
        (p, 1, "not a unit"),
        (p * 12345, 2, "not a unit"),
        (int(pk.n), 0, "not a unit"),
    ]
    for value, index, message in cases:
        msg = _msg(vector)
        _set_ciphertext(msg, index, value, w)
        with pytest.raises(MalformedCiphertextError, match=f"position {index} is {message}"):
            serde.encrypted_vector_from_proto(msg, pk)


def test_wrong_key_id(keypair: KeyPair, other_keypair: KeyPair, vector_bytes: bytes) -> None:
    with pytest.raises(KeyMismatchError, match="expected"):
        serde.encrypted_vector_from_bytes(vector_bytes, other_keypair[0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("precision_bits", 0, "precision_bits"),
        ("precision_bits", 53, "precision_bits"),
        ("clip", math.nan, "clip is not finite"),
        ("clip", math.inf, "clip is not finite"),
        ("clip", -math.inf, "clip is not finite"),
        ("clip", -1.0, "clip must be a positive"),
        ("clip", 0.0, "clip must be a positive"),
        ("max_summands", 0, "max_summands"),
        ("max_summands", 2**31, "cannot hold 60 values"),  # other layout: 10 slots per ct
        ("n_length", 0, "n_length"),
        ("n_length", 1024, "1024-bit keys"),
        ("n_length", 520, "520-bit keys"),
    ],
)
def test_invalid_spec_fields(
    keypair: KeyPair, vector: EncryptedVector, field: str, value: float, message: str
) -> None:
    msg = _msg(vector)
    setattr(msg.spec, field, value)
    with pytest.raises(MalformedCiphertextError, match=message):
        serde.encrypted_vector_from_proto(msg, keypair[0])
    with pytest.raises(MalformedCiphertextError):
        serde.encrypted_vector_from_bytes(msg.SerializeToString(), keypair[0])


def test_missing_spec(keypair: KeyPair, vector: EncryptedVector) -> None:
    msg = _msg(vector)
    msg.ClearField("spec")
    with pytest.raises(MalformedCiphertextError, match="packing spec"):
        serde.encrypted_vector_from_proto(msg, keypair[0])


def test_summands_beyond_limit(keypair: KeyPair, vector: EncryptedVector) -> None:
    msg = _msg(vector)
    msg.summands = vector.spec.max_summands + 1
    with pytest.raises(MalformedCiphertextError, match="max_summands"):
        serde.encrypted_vector_from_proto(msg, keypair[0])


# -- malformed keys ---------------------------------------------------------------------------
def test_public_key_from_proto_errors(keypair: KeyPair, other_keypair: KeyPair) -> None:
    pk = keypair[0]

    def broken(**changes: object) -> pb.PublicKey:
        msg = serde.public_key_to_proto(pk)
        for k, v in changes.items():
            setattr(msg, k, v)
        return msg

    with pytest.raises(KeyMismatchError, match="key_id"):
        serde.public_key_from_proto(broken(key_id=other_keypair[0].key_id))
    bad_cases: list[tuple[dict[str, object], str]] = [
        ({"n_length": 255}, "invalid n_length"),
        ({"n_length": 516}, "invalid n_length"),
        ({"n_length": 520}, "n must be 65 bytes"),
        ({"n": pk.to_phe().n.to_bytes(64, "big")[1:]}, "n must be 64 bytes"),
        ({"djn_base": b"\x01" * 10}, "djn_base must be 128 bytes"),
        ({"djn_base": bytes(128)}, "djn_base"),
        ({"kind": pb.KEY_KIND_UNSPECIFIED}, "unknown key kind"),
        ({"kind": 99}, "unknown key kind"),
        ({"exponent_bits": 100}, "short_exponent"),
        ({"exponent_bits": 0}, "exponent"),
        ({"n": (int(pk.n) + 1).to_bytes(64, "big")}, "odd"),
        (
            {"n": (2**504 + 1).to_bytes(64, "big"), "djn_base": (4).to_bytes(128, "big")},
            "n_length bits",
        ),
    ]
    for changes, message in bad_cases:
        with pytest.raises(MalformedCiphertextError, match=message):
            serde.public_key_from_proto(broken(**changes))


def test_threshold_public_key_from_proto_errors(threshold_2of3: ThresholdKey) -> None:
    tpk, _ = threshold_2of3
    w = tpk.public_key.ciphertext_bytes

    def broken() -> pb.ThresholdPublicKey:
        return serde.threshold_public_key_to_proto(tpk)

    msg = broken()
    msg.verification_base = b"\x01" * (w - 1)
    with pytest.raises(MalformedCiphertextError, match="verification base must be"):
        serde.threshold_public_key_from_proto(msg)
    msg = broken()
    del msg.verification_keys[-1]
    with pytest.raises(MalformedCiphertextError, match="2 verification keys for 3"):
        serde.threshold_public_key_from_proto(msg)
    msg = broken()
    msg.verification_keys[0] = bytes(w)
    with pytest.raises(MalformedCiphertextError, match="position 1"):
        serde.threshold_public_key_from_proto(msg)
    msg = broken()
    msg.threshold = 4
    with pytest.raises(MalformedCiphertextError, match="threshold"):
        serde.threshold_public_key_from_proto(msg)
    msg = broken()
    msg.public_key.key_id = bytes(16)
    with pytest.raises(KeyMismatchError):
        serde.threshold_public_key_from_proto(msg)


# -- malformed partial decryptions ------------------------------------------------------------
@pytest.fixture(scope="module")
def partial_bytes(threshold_2of3: ThresholdKey, spec: PackingSpec) -> tuple[bytes, EncryptedVector]:
    tpk, shares = threshold_2of3
    vec = encrypt_vector(tpk.public_key, np.linspace(-1, 1, 40), spec)
    return serde.partial_decryption_to_bytes(partial_decrypt(shares[0], vec), tpk.public_key), vec


def test_partial_decryption_errors(
    threshold_2of3: ThresholdKey,
    keypair: KeyPair,
    partial_bytes: tuple[bytes, EncryptedVector],
) -> None:
    tpk, _ = threshold_2of3
    pk = tpk.public_key
    data, _ = partial_bytes
    w = pk.ciphertext_bytes
    with pytest.raises(KeyMismatchError, match="expected"):
        serde.partial_decryption_from_bytes(data, keypair[0])
    with pytest.raises(MalformedCiphertextError, match="not a valid protobuf"):
        serde.partial_decryption_from_bytes(data[:-3], pk)
    with pytest.raises(MalformedCiphertextError):
        serde.partial_decryption_from_bytes(b"\xff\xff", pk)

    def edit(fn) -> bytes:  # type: ignore[no-untyped-def]
        msg = pb.PartialDecryption.FromString(data)
        fn(msg)
        return msg.SerializeToString()

    def set_partials(msg: pb.PartialDecryption, blob: bytes) -> None:
        msg.partials = blob

    cases = [
        (lambda m: set_partials(m, m.partials + b"\x00"), "whole number"),
        (lambda m: set_partials(m, bytes(w) + m.partials[w:]), "position 0 is outside"),
        (lambda m: set_partials(m, m.partials[:w] + b"\xff" * w), "position 1 is outside"),
        (lambda m: setattr(m, "vector_digest", b"\x00" * 31), "32 bytes"),
        (lambda m: setattr(m.proof, "challenge", b"\x00" * 33), "32 bytes"),
    ]
    for fn, message in cases:
        with pytest.raises(MalformedCiphertextError, match=message):
            serde.partial_decryption_from_bytes(edit(fn), pk)


def test_partial_without_proof_round_trips_and_never_verifies(
    threshold_2of3: ThresholdKey, partial_bytes: tuple[bytes, EncryptedVector]
) -> None:
    """No ``proof`` field: an unproven partial (optimistic combination), never a valid one."""
    tpk, _ = threshold_2of3
    data, vec = partial_bytes
    msg = pb.PartialDecryption.FromString(data)
    msg.ClearField("proof")
    bare = serde.partial_decryption_from_bytes(msg.SerializeToString(), tpk.public_key)
    proven = serde.partial_decryption_from_bytes(data, tpk.public_key)
    assert not bare.proven and proven.proven
    assert bare.partials == proven.partials
    assert not verify_partial_decryption(tpk, vec, bare)
    again = serde.partial_decryption_to_bytes(bare, tpk.public_key)
    assert not pb.PartialDecryption.FromString(again).HasField("proof")
    back = serde.partial_decryption_from_bytes(again, tpk.public_key)
    assert (back.share_index, back.vector_digest, back.partials, back.proven) == (
        bare.share_index,
        bare.vector_digest,
        bare.partials,
        False,
    )


def test_partial_with_bad_index_parses_but_fails_verification(
    threshold_2of3: ThresholdKey, partial_bytes: tuple[bytes, EncryptedVector]
) -> None:
    tpk, _ = threshold_2of3
    data, vec = partial_bytes
    msg = pb.PartialDecryption.FromString(data)
    honest = serde.partial_decryption_from_proto(msg, tpk.public_key)
    assert verify_partial_decryption(tpk, vec, honest)
    for index in (0, 2, 4, 2**32 - 1):
        msg.share_index = index
        parsed = serde.partial_decryption_from_proto(msg, tpk.public_key)
        assert not verify_partial_decryption(tpk, vec, parsed)


# -- fuzzing -----------------------------------------------------------------------------------
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_encrypted_vector_arbitrary_bytes(keypair: KeyPair, data: bytes) -> None:
    with contextlib.suppress(CryptoError):
        serde.encrypted_vector_from_bytes(data, keypair[0])


@FUZZ
@given(data=st.data())
def test_fuzz_encrypted_vector_mutations(
    keypair: KeyPair, vector_bytes: bytes, data: st.DataObject
) -> None:
    """Mutated valid messages keep the right key id often enough to reach the deep checks."""
    blob = bytearray(vector_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not blob:
            break
        i = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            blob[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del blob[i : i + data.draw(st.integers(1, 8))]
        else:
            del blob[i:]
    try:
        back = serde.encrypted_vector_from_bytes(bytes(blob), keypair[0])
    except CryptoError:
        return
    # whatever parses is a well-formed vector under the key
    assert back.public_key == keypair[0]
    assert len(back.ciphertexts) == back.spec.n_ciphertexts(back.length)
    assert all(keypair[0].check_ciphertext(c) == c for c in back.ciphertexts)


@FUZZ
@given(
    key_id=st.one_of(st.just(b"KEY"), st.binary(max_size=20)),
    clip=st.floats(allow_nan=True, allow_infinity=True),
    precision=st.integers(0, 2**32 - 1),
    summands_max=st.integers(0, 2**32 - 1),
    n_length=st.sampled_from([0, 256, 512, 2048, 2**32 - 1]),
    noise=st.integers(0, 2**32 - 1),
    length=st.integers(0, 2**64 - 1),
    summands=st.integers(0, 2**32 - 1),
    n_cts=st.integers(0, 3),
    ct=st.sampled_from(["zero", "ones", "valid", "short"]),
)
def test_fuzz_encrypted_vector_fields(
    keypair: KeyPair,
    key_id: bytes,
    clip: float,
    precision: int,
    summands_max: int,
    n_length: int,
    noise: int,
    length: int,
    summands: int,
    n_cts: int,
    ct: str,
) -> None:
    pk = keypair[0]
    w = pk.ciphertext_bytes
    one = {
        "zero": bytes(w),
        "ones": b"\xff" * w,
        "valid": int(pk.raw_encrypt(0)).to_bytes(w, "big"),
        "short": b"\x01" * (w - 1),
    }[ct]
    msg = pb.EncryptedVector(
        key_id=pk.key_id if key_id == b"KEY" else key_id,
        spec=pb.PackingSpec(
            clip=clip,
            precision_bits=precision,
            max_summands=summands_max,
            n_length=n_length,
            noise_bound=noise,
        ),
        length=length,
        summands=summands,
        ciphertexts=one * n_cts,
    )
    with contextlib.suppress(CryptoError):
        serde.encrypted_vector_from_bytes(msg.SerializeToString(), pk)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_partial_decryption_bytes(threshold_2of3: ThresholdKey, data: bytes) -> None:
    with contextlib.suppress(CryptoError):
        serde.partial_decryption_from_bytes(data, threshold_2of3[0].public_key)


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_public_key_bytes(data: bytes) -> None:
    try:
        msg = pb.PublicKey.FromString(data)
    except DecodeError:  # protobuf's own parser, not ours
        return
    with contextlib.suppress(CryptoError):
        serde.public_key_from_proto(msg)


def test_fuzz_targets_reach_success(keypair: KeyPair, vector_bytes: bytes) -> None:
    """The fuzzers above would be vacuous if valid input failed."""
    assert serde.encrypted_vector_from_bytes(vector_bytes, keypair[0]).length == 60
