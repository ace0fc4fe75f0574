"""Tests of encryption openings and slot range proofs (issue 8 item 16)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from fedcity.crypto import (
    EncryptedVector,
    MalformedCiphertextError,
    PackingSpec,
    PrivateKey,
    PublicKey,
    WorkerPool,
    decrypt_vector,
    encrypt_vector_with_openings,
)

KeyPair = tuple[PublicKey, PrivateKey]


# -- openings --------------------------------------------------------------------------------
def test_openings_reproduce_ciphertexts(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    x = rng.uniform(-1, 1, 2 * spec.slots_per_ciphertext + 5)
    vector, openings = encrypt_vector_with_openings(pk, x, spec)
    assert len(openings) == len(vector.ciphertexts) == 3
    openings.check(vector)
    for i, c in enumerate(vector.ciphertexts):
        assert sk.raw_decrypt(c) == openings.plaintext(i)
        a = openings.exponent(i)
        assert 0 <= a < 1 << pk.exponent_bits
        assert (1 + pk.n * openings.plaintext(i)) * pow(pk.djn_base, a, pk.nsquare) % (
            pk.nsquare
        ) == c
    assert np.abs(decrypt_vector(sk, vector) - x).max() <= spec.step


def test_openings_check_names_a_wrong_ciphertext(
    keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, _ = keypair
    vector, openings = encrypt_vector_with_openings(pk, np.zeros(40), spec)
    cts = list(vector.ciphertexts)
    cts[1] = cts[1] * cts[1] % pk.nsquare
    tampered = EncryptedVector(pk, spec, vector.length, 1, cts)
    with pytest.raises(MalformedCiphertextError, match="opening 1 does not reproduce"):
        openings.check(tampered)
    other, _ = encrypt_vector_with_openings(other_keypair[0], np.zeros(40), spec)
    with pytest.raises(ValueError, match="openings are for key"):
        openings.check(other)
    with pytest.raises(IndexError, match="outside"):
        openings.plaintext(len(openings))


def test_openings_reveal_nothing_and_refuse_serialization(
    keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, _ = keypair
    _, openings = encrypt_vector_with_openings(pk, np.full(10, 0.5), spec)
    text = repr(openings) + str(openings)
    for i in range(len(openings)):
        assert str(openings.plaintext(i)) not in text
        assert str(openings.exponent(i)) not in text
        assert format(openings.plaintext(i), "x") not in text
    for action in (pickle.dumps, copy.copy, copy.deepcopy, lambda o: o.__getstate__()):
        with pytest.raises(TypeError, match="never"):
            action(openings)
    openings.clear()
    assert len(openings) == 0


def test_openings_from_worker_processes(
    keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    x = rng.uniform(-1, 1, 3 * spec.slots_per_ciphertext + 1)
    with WorkerPool(2) as pool:
        vector, openings = encrypt_vector_with_openings(pk, x, spec, pool=pool)
    openings.check(vector)
    assert [openings.plaintext(i) for i in range(len(openings))] == [
        sk.raw_decrypt(c) for c in vector.ciphertexts
    ]
