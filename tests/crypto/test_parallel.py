from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from gmpy2 import mpz

from fedcity.crypto import (
    KeyShare,
    PackingSpec,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    WorkerPool,
    combine_partial_decryptions,
    decrypt_vector,
    encrypt_vector,
    partial_decrypt,
    verify_partial_decryption,
)
from fedcity.crypto.parallel import _split, _unblob

KeyPair = tuple[PublicKey, PrivateKey]
ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]


@pytest.fixture(scope="module")
def pool() -> Iterator[WorkerPool]:
    """The only pool of the suite: spawning workers costs about a second."""
    with WorkerPool(2) as p:
        yield p


def test_split_and_unblob() -> None:
    items = [mpz(i) for i in range(7)]
    parts = _split(items, 2)
    assert [list(p) for p in parts] == [items[:4], items[4:]]
    assert [len(p) for p in _split(items, 3)] == [3, 3, 1]
    assert [len(p) for p in _split(items[:1], 4)] == [1]
    blob = b"".join(int(i).to_bytes(3, "big") for i in items)
    assert _unblob(blob, 3) == items


def test_worker_count_validation() -> None:
    with pytest.raises(ValueError, match="positive"):
        WorkerPool(-1)


def test_pool_encryption_matches_serial(
    pool: WorkerPool, keypair: KeyPair, spec: PackingSpec, rng: np.random.Generator
) -> None:
    pk, sk = keypair
    pool.warm_up(pk)
    x = rng.uniform(-1.5, 1.5, 7 * spec.slots_per_ciphertext + 3)  # 8 ciphertexts, odd split
    parallel = encrypt_vector(pk, x, spec, pool=pool)
    serial = encrypt_vector(pk, x, spec)
    assert len(parallel.ciphertexts) == len(serial.ciphertexts) == 8
    assert set(parallel.ciphertexts).isdisjoint(serial.ciphertexts)  # both randomized
    assert all(pk.check_ciphertext(c) == c for c in parallel.ciphertexts)
    np.testing.assert_array_equal(decrypt_vector(sk, parallel), decrypt_vector(sk, serial))
    np.testing.assert_allclose(decrypt_vector(sk, parallel), np.clip(x, -1, 1), atol=spec.step)
    # order is preserved plaintext by plaintext
    plaintexts = [3, 1, 4, 1, 5, 9, 2, 6, 5]
    cts = pool.raw_encrypt_many(pk, plaintexts)
    assert [sk.raw_decrypt(c) for c in cts] == plaintexts


def test_pool_with_two_keys(pool: WorkerPool, keypair: KeyPair, other_keypair: KeyPair) -> None:
    for pk, sk in (keypair, other_keypair, keypair):
        cts = pool.raw_encrypt_many(pk, [0, 1, int(pk.n) - 1])
        assert [sk.raw_decrypt(c) for c in cts] == [0, 1, pk.n - 1]


def test_pool_input_checks(pool: WorkerPool, keypair: KeyPair, threshold_2of3: ThresholdKey):
    pk, _ = keypair
    assert pool.raw_encrypt_many(pk, []) == []
    assert pool.raw_partial_decrypt_many(threshold_2of3[1][0], []) == []
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        pool.raw_encrypt_many(pk, [1, int(pk.n)])
    with pytest.raises(ValueError, match=r"\[0, n\)"):
        pool.raw_encrypt_many(pk, [-1])


def test_pool_partial_decryption_matches_serial(
    pool: WorkerPool, threshold_3of5: ThresholdKey, spec: PackingSpec
) -> None:
    tpk, shares = threshold_3of5
    x = np.linspace(-1, 1, 5 * spec.slots_per_ciphertext)
    vec = encrypt_vector(tpk.public_key, x, spec, pool=pool)
    serial = [partial_decrypt(s, vec) for s in shares[:3]]
    parallel = [partial_decrypt(s, vec, pool=pool) for s in shares[2:]]
    assert parallel[0].partials == serial[2].partials
    assert all(verify_partial_decryption(tpk, vec, p) for p in parallel)
    out = combine_partial_decryptions(tpk, vec, [serial[0], parallel[1], parallel[2]])
    np.testing.assert_allclose(out, x, atol=spec.step / 2 + 1e-12)


@pytest.mark.parametrize("workers", [0, -2, True])
def test_worker_count_must_be_positive(workers: Any) -> None:
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        WorkerPool(workers)
