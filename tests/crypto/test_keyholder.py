"""Single-key-holder decryption of blinded aggregates (fedcity.crypto.keyholder)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    BLINDING_KEY_BYTES,
    InvalidPartialDecryptionError,
    KeyMismatchError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    SlotRangeError,
    WorkerPool,
    blind_vector,
    decrypt_vector,
    encrypt_vector,
    keyholder_decrypt,
    raw_unblind_decode,
    unblind_vector,
    verify_keyholder_decryption,
)

KeyPair = tuple[PublicKey, PrivateKey]

KEY = bytes(range(BLINDING_KEY_BYTES))


def _aggregate(keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator, k: int = 3):  # type: ignore[no-untyped-def]
    pk, _ = keypair
    xs = [rng.uniform(-1, 1, 60) for _ in range(k)]
    total = sum(encrypt_vector(pk, x, spec) for x in xs)
    return total, np.sum(xs, axis=0)


def test_randomness_recovery_reencrypts(keypair: KeyPair) -> None:
    pk, sk = keypair
    for m in (0, 1, 12345, int(pk.n) - 1):
        c = pk.raw_encrypt(m)
        got, rho = sk.raw_decrypt_with_randomness(c)
        assert got == m
        assert c == (1 + got * pk.n) * pow(int(rho), int(pk.n), int(pk.nsquare)) % pk.nsquare


def test_round_trip_releases_the_sum(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    total, expected = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    dec = keyholder_decrypt(sk, blinding.blinded)
    assert verify_keyholder_decryption(pk, blinding.blinded, dec)
    out = unblind_vector(blinding, dec)
    np.testing.assert_allclose(out, expected, atol=3 * spec.clip / (2**spec.precision_bits - 1))
    np.testing.assert_array_equal(out, decrypt_vector(sk, total))


def test_key_holder_sees_only_masked_values(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    """What the key holder decrypts is M + R mod n, not the aggregate's plaintext M."""
    pk, sk = keypair
    total, _ = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    seen = keyholder_decrypt(sk, blinding.blinded).plaintexts
    clear = [sk.raw_decrypt(c) for c in total.ciphertexts]
    assert all(s != m for s, m in zip(seen, clear, strict=True))
    # packed plaintexts are far below n; masked ones fill the whole range
    assert max(int(m).bit_length() for m in clear) < pk.n_length - 8
    assert max(int(s).bit_length() for s in seen) > pk.n_length - 8
    with pytest.raises(SlotRangeError):
        # decoding the key holder's view as if it were the aggregate fails the range checks
        raw_unblind_decode(dataclasses.replace(blinding, masks=(mpz(0),) * len(seen)), seen)


def test_masks_are_deterministic_per_key_and_aggregate(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    total, _ = _aggregate(keypair, spec, rng)
    other, _ = _aggregate(keypair, spec, rng)
    a, b = blind_vector(total, KEY), blind_vector(total, KEY)
    assert a.masks == b.masks and a.blinded.digest() == b.blinded.digest()
    assert blind_vector(total, bytes(BLINDING_KEY_BYTES)).masks != a.masks
    assert blind_vector(other, KEY).masks != a.masks


@pytest.mark.parametrize("key", [b"", b"short", bytes(33), "x" * 32])
def test_bad_blinding_key(keypair: KeyPair, spec: PackingSpec, key: object) -> None:
    total = encrypt_vector(keypair[0], np.zeros(3), spec)
    with pytest.raises(ValueError, match="blinding key must be 32 bytes"):
        blind_vector(total, key)  # type: ignore[arg-type]


def test_wrong_plaintext_is_caught(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    total, _ = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    dec = keyholder_decrypt(sk, blinding.blinded)
    for j in (0, len(dec.plaintexts) - 1):
        for delta in (1, -1, int(pk.n) // 2):
            ms = list(dec.plaintexts)
            ms[j] = (ms[j] + delta) % pk.n
            bad = dataclasses.replace(dec, plaintexts=tuple(ms))
            assert not verify_keyholder_decryption(pk, blinding.blinded, bad)
            with pytest.raises(InvalidPartialDecryptionError, match="does not match"):
                unblind_vector(blinding, bad)


def test_other_malformed_decryptions(
    keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    total, _ = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    dec = keyholder_decrypt(sk, blinding.blinded)
    rs = list(dec.randomness)
    rs[0] = rs[0] * 2 % pk.n
    cases = [
        dataclasses.replace(dec, randomness=tuple(rs)),
        dataclasses.replace(dec, randomness=(mpz(0), *dec.randomness[1:])),
        dataclasses.replace(dec, plaintexts=(pk.n, *dec.plaintexts[1:])),
        dataclasses.replace(dec, plaintexts=dec.plaintexts[:-1]),
        dataclasses.replace(dec, vector_digest=bytes(32)),
        dataclasses.replace(dec, key_id=bytes(16)),
        # the honest decryption of the unblinded aggregate is not an answer for the blinded one
        keyholder_decrypt(sk, total),
    ]
    for bad in cases:
        assert not verify_keyholder_decryption(pk, blinding.blinded, bad)
    with pytest.raises(KeyMismatchError):
        keyholder_decrypt(other_keypair[1], blinding.blinded)


def test_worker_pool_gives_the_same_answer(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    _pk, sk = keypair
    total, _ = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    with WorkerPool(2) as pool:
        got = keyholder_decrypt(sk, blinding.blinded, pool=pool)
    want = keyholder_decrypt(sk, blinding.blinded)
    assert got.plaintexts == want.plaintexts and got.randomness == want.randomness


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1, 1, allow_nan=False), min_size=5, max_size=5),
        min_size=1,
        max_size=6,
    ),
    st.binary(min_size=BLINDING_KEY_BYTES, max_size=BLINDING_KEY_BYTES),
)
def test_blinding_is_transparent(
    keypair: KeyPair, spec: PackingSpec, rows: list[list[float]], key: bytes
) -> None:
    """Property: unblinding after blinding equals plain decryption of the aggregate."""
    pk, sk = keypair
    total = sum(encrypt_vector(pk, np.array(r), spec) for r in rows)
    blinding = blind_vector(total, key)
    out = unblind_vector(blinding, keyholder_decrypt(sk, blinding.blinded))
    np.testing.assert_array_equal(out, decrypt_vector(sk, total))


def test_wire_round_trip_and_bad_bytes(
    keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    from fedcity.crypto import MalformedCiphertextError, serde
    from fedcity.v1 import crypto_pb2 as pb

    pk, sk = keypair
    total, _ = _aggregate(keypair, spec, rng)
    blinding = blind_vector(total, KEY)
    dec = keyholder_decrypt(sk, blinding.blinded)
    data = serde.keyholder_decryption_to_bytes(dec, pk)
    back = serde.keyholder_decryption_from_bytes(data, pk)
    assert back.plaintexts == dec.plaintexts and back.randomness == dec.randomness
    assert verify_keyholder_decryption(pk, blinding.blinded, back)
    with pytest.raises(KeyMismatchError):
        serde.keyholder_decryption_from_bytes(data, other_keypair[0])
    with pytest.raises(MalformedCiphertextError, match="not a valid protobuf"):
        serde.keyholder_decryption_from_bytes(b"\xff\xff\xff", pk)
    msg = pb.KeyHolderDecryption.FromString(data)
    cut = pb.KeyHolderDecryption()
    cut.CopyFrom(msg)
    cut.plaintexts = msg.plaintexts[:-1]
    with pytest.raises(MalformedCiphertextError, match="plaintexts"):
        serde.keyholder_decryption_from_bytes(cut.SerializeToString(), pk)
    cut.CopyFrom(msg)
    cut.randomness = msg.randomness[: pk.n_bytes]
    with pytest.raises(MalformedCiphertextError, match="randomness values"):
        serde.keyholder_decryption_from_bytes(cut.SerializeToString(), pk)
    cut.CopyFrom(msg)
    cut.vector_digest = b"short"
    with pytest.raises(MalformedCiphertextError, match="digest"):
        serde.keyholder_decryption_from_bytes(cut.SerializeToString(), pk)
