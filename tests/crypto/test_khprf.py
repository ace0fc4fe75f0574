"""The LWR key-homomorphic PRF and the exact key packing under Paillier."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import (
    InvalidPartialDecryptionError,
    KeyMismatchError,
    NotEnoughSharesError,
    PackingSpec,
    SpecMismatchError,
    encrypt_vector,
    khprf,
    partial_decrypt,
)
from fedcity.crypto.khprf import LWRParams, PRFKeyError

SMALL = LWRParams("test-32-q32-p20", dimension=32, log_q=32, log_p=20, table_log_q=0)
NARROW = LWRParams("test-24-q24-p12", dimension=24, log_q=24, log_p=12, table_log_q=0)


def _keys(params: LWRParams, seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, params.q, params.dimension, dtype=np.uint64) for _ in range(n)]


def _centred(x: np.ndarray, modulus: int) -> np.ndarray:
    v = x.astype(np.int64) % modulus
    return np.where(v >= modulus // 2, v - modulus, v)


# -- parameter sets ------------------------------------------------------------------------
def test_published_sets_stay_below_the_standards_128_bit_bound():
    for params in khprf.PARAMETER_SETS.values():
        # the HE standard's uniform-secret 128-bit classical rows for these dimensions
        assert params.table_log_q == {1024: 29, 2048: 56}[params.dimension]
        assert params.log_q_over_sigma < params.table_log_q_over_sigma
        assert params.margin_bits > 1.0
    assert khprf.LWR_1024.rounding_sigma == pytest.approx(256 / 12**0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dimension": 0, "log_q": 32, "log_p": 24}, "dimension"),
        ({"dimension": 8, "log_q": 33, "log_p": 24}, "log_q"),
        ({"dimension": 8, "log_q": 24, "log_p": 24}, "log_p"),
        ({"dimension": 8, "log_q": 24, "log_p": 0}, "log_p"),
    ],
)
def test_malformed_parameter_sets_are_refused(kwargs, match):
    with pytest.raises(PRFKeyError, match=match):
        LWRParams("bad", table_log_q=0, **kwargs)


# -- inputs and the public matrix ----------------------------------------------------------
def test_prf_input_separates_jobs_and_rounds_and_validates():
    xs = {khprf.prf_input(j, r) for j in ("a", "ab", "b") for r in (0, 1, 2**40)}
    assert len(xs) == 9
    # length prefix: ("a", round) and ("ab", ...) cannot collide by concatenation
    assert khprf.prf_input("a", 0) != khprf.prf_input("a\x00", 0)
    for job, rnd in [("", 0), (b"job", 0), ("j" * 257, 0), ("j", -1), ("j", True), ("j", 1.0)]:
        with pytest.raises(PRFKeyError):
            khprf.prf_input(job, rnd)  # type: ignore[arg-type]


def test_matrix_is_deterministic_per_input_and_block_and_reduced_mod_q():
    x = khprf.prf_input("job", 3)
    a = khprf.expand_matrix(NARROW, x, 0, 10)
    assert a.shape == (10, NARROW.dimension) and a.dtype == np.uint32
    assert np.array_equal(a, khprf.expand_matrix(NARROW, x, 0, 10))
    assert int(a.max()) < NARROW.q
    assert not np.array_equal(a, khprf.expand_matrix(NARROW, x, 1, 10))
    assert not np.array_equal(a, khprf.expand_matrix(NARROW, khprf.prf_input("job", 4), 0, 10))
    with pytest.raises(PRFKeyError):
        khprf.expand_matrix(NARROW, x, 0, khprf.BLOCK_ROWS + 1)


@pytest.mark.parametrize("params", [SMALL, NARROW])
def test_evaluate_matches_a_big_integer_reference(params):
    x = khprf.prf_input("ref", 0)
    (k,) = _keys(params, 5, 1)
    length = khprf.BLOCK_ROWS + 7  # crosses a block boundary
    got = khprf.evaluate(params, k, x, length)
    assert got.dtype == np.uint32 and got.shape == (length,)
    rows = [
        khprf.expand_matrix(params, x, 0, khprf.BLOCK_ROWS),
        khprf.expand_matrix(params, x, 1, 7),
    ]
    a = np.vstack(rows).astype(object)
    z = a.dot(k.astype(object))
    # ⌊(p/q)·z⌉ mod p, with exact integers: floor((p·z + q/2) / q)
    want = np.array([((params.p * int(v) + params.q // 2) // params.q) % params.p for v in z])
    assert np.array_equal(got.astype(np.int64), want.astype(np.int64))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), params=st.sampled_from([SMALL, NARROW])
)
def test_key_homomorphism_error_is_at_most_half_the_number_of_keys(n, seed, params):
    x = khprf.prf_input("kh", seed)
    keys = _keys(params, seed, n)
    length = 300
    parts = sum(khprf.evaluate(params, k, x, length).astype(np.int64) for k in keys)
    whole = khprf.evaluate(params, khprf.add_keys(params, keys), x, length).astype(np.int64)
    e = _centred(whole - parts, params.p)
    assert int(np.abs(e).max()) <= n // 2
    if n == 1:
        assert not e.any()


def test_outputs_are_spread_over_z_p_and_depend_on_the_key():
    x = khprf.prf_input("spread", 0)
    k1, k2 = _keys(SMALL, 9, 2)
    f1 = khprf.evaluate(SMALL, k1, x, 4096)
    f2 = khprf.evaluate(SMALL, k2, x, 4096)
    assert int(f1.max()) < SMALL.p
    assert abs(f1.mean() / SMALL.p - 0.5) < 0.03
    assert np.mean(f1 == f2) < 0.01


def test_generated_keys_are_fresh_and_in_range():
    a, b = khprf.generate_key(NARROW), khprf.generate_key(NARROW)
    assert a.shape == (NARROW.dimension,) and int(a.max()) < NARROW.q
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (np.zeros(SMALL.dimension - 1, dtype=np.uint32), "shape"),
        (np.zeros((2, SMALL.dimension), dtype=np.uint32), "shape"),
        (np.zeros(SMALL.dimension, dtype=np.float64), "integers"),
        (np.full(SMALL.dimension, -1, dtype=np.int64), r"\[0, q"),
        (np.full(SMALL.dimension, 2**32, dtype=np.int64), r"\[0, q"),
    ],
)
def test_malformed_keys_are_refused(key, match):
    with pytest.raises(PRFKeyError, match=match):
        khprf.evaluate(SMALL, key, khprf.prf_input("j", 0), 4)
    with pytest.raises(PRFKeyError, match=r"\[0, q"):
        khprf.check_key(NARROW, np.full(NARROW.dimension, NARROW.q, dtype=np.int64))
    with pytest.raises(PRFKeyError, match="length"):
        khprf.evaluate(SMALL, np.zeros(SMALL.dimension, np.uint32), b"x", -1)
    with pytest.raises(PRFKeyError):
        khprf.add_keys(SMALL, [])


# -- keys under Paillier -------------------------------------------------------------------
@pytest.mark.parametrize("params", [SMALL, NARROW])
def test_encrypted_keys_sum_exactly_mod_q(keypair, params):
    pk, sk = keypair
    keys = _keys(params, 11, 5)
    keys[0][:] = params.q - 1  # worst-case slots: the headroom must absorb the carries
    enc = sum(khprf.encrypt_key(pk, params, k, 5) for k in keys)
    assert enc.summands == 5
    assert np.array_equal(khprf.decrypt_key_sum(sk, params, enc), khprf.add_keys(params, keys))


def test_threshold_key_sum_is_exact_and_partials_are_verified(threshold_2of3, other_keypair):
    tpk, shares = threshold_2of3
    keys = _keys(SMALL, 12, 3)
    enc = sum(khprf.encrypt_key(tpk.public_key, SMALL, k, 3) for k in keys)
    partials = [partial_decrypt(s, enc) for s in shares]
    want = khprf.add_keys(SMALL, keys)
    assert np.array_equal(khprf.combine_key_sum(tpk, SMALL, enc, partials[:2]), want)
    assert np.array_equal(khprf.combine_key_sum(tpk, SMALL, enc, partials[1:]), want)
    with pytest.raises(NotEnoughSharesError):
        khprf.combine_key_sum(tpk, SMALL, enc, partials[:1])
    with pytest.raises(InvalidPartialDecryptionError, match="more than once"):
        khprf.combine_key_sum(tpk, SMALL, enc, [partials[0], partials[0]])
    other = sum(khprf.encrypt_key(tpk.public_key, SMALL, k, 3) for k in keys[:2])
    wrong = partial_decrypt(shares[1], other)  # a partial of another vector
    with pytest.raises(InvalidPartialDecryptionError) as info:
        khprf.combine_key_sum(tpk, SMALL, enc, [partials[0], wrong])
    assert info.value.share_indices == (2,)
    with pytest.raises(KeyMismatchError):
        khprf.decrypt_key_sum(other_keypair[1], SMALL, enc)


def test_a_float_vector_is_not_taken_for_a_key(keypair):
    pk, sk = keypair
    spec = PackingSpec(precision_bits=16, max_summands=3, n_length=pk.n_length)
    v = encrypt_vector(pk, np.zeros(SMALL.dimension), spec)
    with pytest.raises(SpecMismatchError, match="not a key"):
        khprf.decrypt_key_sum(sk, SMALL, v)
    enc = khprf.encrypt_key(pk, SMALL, _keys(SMALL, 1, 1)[0], 3)
    with pytest.raises(SpecMismatchError, match="not a key"):
        khprf.decrypt_key_sum(sk, NARROW, enc)
