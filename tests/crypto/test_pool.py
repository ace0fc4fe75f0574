"""RandomnessPool: use-once precomputed DJN randomness, and encryption with it."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    KeyMismatchError,
    KeyShare,
    PackingSpec,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    WorkerPool,
    combine_partial_decryptions,
    decrypt_vector,
    encrypt_vector,
    encrypt_vector_with_openings,
    partial_decrypt,
)
from fedcity.crypto.pool import MAX_POOL_SIZE, RandomnessPool, fresh_randomness

KeyPair = tuple[PublicKey, PrivateKey]
ThresholdKey = tuple[ThresholdPublicKey, list[KeyShare]]


def _is_power(pk: PublicKey, pair: tuple[mpz, mpz]) -> bool:
    a, r = pair
    return 0 <= a < 2**pk.exponent_bits and pk.table.pow(a) == r


# -- the pool -----------------------------------------------------------------------------------
def test_refill_respects_the_bound_and_returns_true_powers(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 5)
    assert pool.refill(3) == 3 and len(pool) == 3
    assert pool.refill() == 2 and len(pool) == 5  # default: until full
    assert pool.refill(10) == 0 and pool.fill_to(100) == 0 and len(pool) == 5
    pairs = pool.take_pooled(5)
    assert all(_is_power(pk, p) for p in pairs)
    assert len({int(a) for a, _ in pairs}) == 5  # distinct exponents
    assert len(pool) == 0 and pool.pooled == 5 and pool.fresh == 0


def test_fill_to_stops_at_target_and_at_stop(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 50)
    assert pool.fill_to(4) == 4 and len(pool) == 4
    assert pool.fill_to(2) == 0 and len(pool) == 4  # never shrinks
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    assert pool.refill(stop=stop) == 3 and len(pool) == 7
    assert pool.refill(max_seconds=0.0) == 0


def test_take_hands_out_each_pair_once_then_falls_back_to_fresh(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 4)
    pool.refill()
    pooled = list(pool._items)  # what the pool holds before handing out
    got = pool.take(7)
    assert len(got) == 7 and got[:4] == pooled  # pooled first, in order, then 3 fresh
    assert all(_is_power(pk, p) for p in got)
    assert len({int(a) for a, _ in got}) == 7
    assert (pool.pooled, pool.fresh, len(pool), pool.requested) == (4, 3, 0, 7)
    assert pool.take_pooled(2) == []  # empty: take_pooled never computes
    assert pool.take(0) == []


def test_exactly_once_under_threads(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 64)
    pool.refill()
    taken: list[list[tuple[mpz, mpz]]] = [[] for _ in range(8)]
    start = threading.Barrier(9)

    def taker(i: int) -> None:
        start.wait()
        for _ in range(10):
            taken[i].extend(pool.take_pooled(1))

    def refiller() -> None:
        start.wait()
        pool.refill(40)

    threads = [threading.Thread(target=taker, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=refiller))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [int(a) for part in taken for a, _ in part]
    left = [int(a) for a, _ in pool._items]
    assert len(flat) == pool.pooled and len(flat) + len(left) == len(set(flat + left))
    assert len(pool) <= pool.max_size


def test_concurrent_refills_never_exceed_the_bound(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 10)
    threads = [threading.Thread(target=pool.refill) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pool) == 10
    assert len({int(a) for a, _ in pool._items}) == 10


def test_repr_shows_counts_only_and_pickling_is_refused(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 3)
    pool.refill()
    text = repr(pool)
    assert "available=3/3" in text
    for a, r in pool._items:
        assert str(int(a)) not in text and format(int(r), "x") not in text
    for attempt in (
        lambda: pickle.dumps(pool),
        lambda: copy.copy(pool),
        lambda: copy.deepcopy(pool),
        pool.__getstate__,
    ):
        with pytest.raises(TypeError, match="never"):
            attempt()
    assert pool.clear() == 3 and len(pool) == 0


def test_memory_figures(keypair: KeyPair) -> None:
    pk, _ = keypair
    pool = RandomnessPool(pk, 8)
    per = pool.entry_bytes
    assert per > pk.ciphertext_bytes + pk.exponent_bits // 8
    pool.refill(3)
    assert pool.nbytes == 3 * per and pool.max_bytes == 8 * per


@pytest.mark.parametrize(
    ("size", "message"),
    [(0, "max_size must lie"), (MAX_POOL_SIZE + 1, "max_size must lie"), (True, "integer")],
)
def test_invalid_sizes(keypair: KeyPair, size: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandomnessPool(keypair[0], size)  # type: ignore[arg-type]


def test_invalid_arguments(keypair: KeyPair, threshold_2of3: ThresholdKey) -> None:
    pool = RandomnessPool(keypair[0], 2)
    with pytest.raises(TypeError, match="PublicKey"):
        RandomnessPool(threshold_2of3[0], 2)  # type: ignore[arg-type]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="non-negative integer"):
            pool.take(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_seconds"):
        pool.refill(max_seconds=-1.0)


# -- encryption with the pool -------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(
    x=st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=80),
    pooled=st.integers(0, 5),
)
def test_pooled_encryption_decrypts_and_openings_reproduce(
    keypair: KeyPair, spec: PackingSpec, x: list[float], pooled: int
) -> None:
    pk, sk = keypair
    pool = RandomnessPool(pk, 5)
    pool.refill(pooled)
    ahead = [p for p in pool._items]
    enc, openings = encrypt_vector_with_openings(pk, x, spec, randomness=pool)
    np.testing.assert_allclose(
        decrypt_vector(sk, enc), np.clip(x, -1, 1), rtol=0, atol=spec.step / 2 * (1 + 1e-9)
    )
    openings.check(enc)  # every exponent reproduces its ciphertext
    used = min(pooled, len(enc.ciphertexts))
    assert [(openings.exponent(i), pk.table.pow(openings.exponent(i))) for i in range(used)] == (
        ahead[:used]
    )
    assert len(pool) == pooled - used
    assert pool.pooled == used and pool.fresh == len(enc.ciphertexts) - used


def test_pooled_ciphertexts_are_the_pairs_times_the_message(
    keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, sk = keypair
    pool = RandomnessPool(pk, 8)
    pool.refill()
    ahead = list(pool._items)
    x = np.linspace(-1, 1, 60)  # 3 ciphertexts
    enc = encrypt_vector(pk, x, spec, randomness=pool)
    plain = [sk.raw_decrypt(c) for c in enc.ciphertexts]
    for c, m, (_, r) in zip(enc.ciphertexts, plain, ahead, strict=False):
        assert c == (1 + pk.n * m) * r % pk.nsquare
    assert len(pool) == 8 - len(enc.ciphertexts)
    # used pairs are gone: a second encryption uses the next ones, never the same
    enc2 = encrypt_vector(pk, x, spec, randomness=pool)
    assert set(enc.ciphertexts).isdisjoint(enc2.ciphertexts)


def test_pooled_encryption_under_a_threshold_key(
    threshold_2of3: ThresholdKey, spec: PackingSpec
) -> None:
    tpk, shares = threshold_2of3
    pool = RandomnessPool(tpk.public_key, 4)
    pool.refill()
    x = np.array([0.25, -0.5, 0.75])
    enc = encrypt_vector(tpk.public_key, x, spec, randomness=pool)
    total = enc + encrypt_vector(tpk.public_key, x, spec, randomness=pool)
    out = combine_partial_decryptions(tpk, total, [partial_decrypt(s, total) for s in shares[:2]])
    np.testing.assert_allclose(out, 2 * x, atol=spec.step)
    assert pool.pooled == 2 and pool.fresh == 0


def test_pool_of_another_key_is_refused(
    keypair: KeyPair, other_keypair: KeyPair, spec: PackingSpec
) -> None:
    pool = RandomnessPool(other_keypair[0], 2)
    pool.refill()
    with pytest.raises(KeyMismatchError, match="randomness pool"):
        encrypt_vector(keypair[0], [0.5], spec, randomness=pool)
    assert len(pool) == 2  # nothing was taken


def test_fresh_randomness_is_a_true_power(keypair: KeyPair) -> None:
    pk, _ = keypair
    assert _is_power(pk, fresh_randomness(pk))


@pytest.mark.slow
def test_pool_with_worker_processes_covers_what_it_holds(
    keypair: KeyPair, spec: PackingSpec
) -> None:
    pk, sk = keypair
    pool = RandomnessPool(pk, 2)
    pool.refill()
    x = np.linspace(-1, 1, 130)  # 5 ciphertexts: 2 from the pool, 3 from the workers
    with WorkerPool(2) as workers:
        enc, openings = encrypt_vector_with_openings(pk, x, spec, pool=workers, randomness=pool)
    openings.check(enc)
    np.testing.assert_allclose(decrypt_vector(sk, enc), x, atol=spec.step / 2 * (1 + 1e-9))
    assert (pool.pooled, pool.fresh, len(pool)) == (2, 0, 0)
