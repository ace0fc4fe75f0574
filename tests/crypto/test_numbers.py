from __future__ import annotations

import gmpy2
import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto import _numbers as nt


def _naive_primes(limit: int) -> list[int]:
    return [k for k in range(2, limit) if all(k % d for d in range(2, int(k**0.5) + 1))]


def test_primes_below_matches_trial_division() -> None:
    assert [int(p) for p in nt._primes_below(3000)] == _naive_primes(3000)


def test_small_prime_tables() -> None:
    odd = _naive_primes(2000)[1:]
    assert odd == nt._SMALL_PRIMES
    product = 1
    for p in odd:
        product *= p
    assert int(nt._PRIMORIAL) == product
    assert nt._SIEVE_PRIMES[0] == 3
    assert nt._SIEVE_PRIMES[-1] == 65521  # largest prime below 2^16
    assert 2 not in nt._SIEVE_PRIMES


@pytest.mark.parametrize("bound", [1, 2, 3, 1000, 2**64 + 13, 2**512 - 1])
def test_random_below_in_range(bound: int) -> None:
    for _ in range(200):
        r = nt.random_below(bound)
        assert isinstance(r, type(mpz(0)))
        assert 0 <= r < bound


def test_random_below_covers_small_range() -> None:
    seen = {int(nt.random_below(5)) for _ in range(500)}
    assert seen == {0, 1, 2, 3, 4}


def test_random_bits_range_and_spread() -> None:
    values = [nt.random_bits(64) for _ in range(200)]
    assert all(0 <= v < 2**64 for v in values)
    assert max(v.bit_length() for v in values) == 64  # top bit set in ~half of draws
    assert len(set(values)) == len(values)


def test_random_unit_is_unit() -> None:
    n = mpz(3 * 5 * 7 * 11)
    for _ in range(300):
        r = nt.random_unit(n)
        assert 1 < r < n
        assert gmpy2.gcd(r, n) == 1


@pytest.mark.parametrize("bits", [16, 17, 64, 255, 256, 512])
def test_random_prime_exact_size_and_top_bits(bits: int) -> None:
    for _ in range(3):
        p = nt.random_prime(bits)
        assert p.bit_length() == bits
        assert p >> (bits - 2) == 3  # two top bits set
        assert gmpy2.is_prime(p, 50)


def test_two_random_primes_multiply_to_exact_size() -> None:
    for _ in range(10):
        assert (nt.random_prime(128) * nt.random_prime(128)).bit_length() == 256


@pytest.mark.parametrize("fn", [nt.random_prime, nt.random_safe_prime])
def test_prime_size_lower_bound(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="at least 16 bits"):
        fn(15)


@pytest.mark.parametrize("bits", [16, 32, 63, 64, 65, 128, 256])
def test_random_safe_prime(bits: int) -> None:
    """Both the rejection-sampling path (< 64 bits) and the sieved path."""
    for _ in range(2):
        p = nt.random_safe_prime(bits)
        assert p.bit_length() == bits
        assert gmpy2.is_prime(p, 50)
        assert gmpy2.is_prime((p - 1) // 2, 50)
        assert p % 2 == 1


def test_safe_primes_multiply_to_exact_size() -> None:
    for _ in range(3):
        assert (nt.random_safe_prime(128) * nt.random_safe_prime(128)).bit_length() == 256


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**64), st.integers(0, 2**64))
def test_crt_pair(x: int, salt: int) -> None:
    p, q = mpz(18446744073709551557), mpz(18446744073709551533)  # primes below 2^64
    value = (x * (salt + 1)) % (p * q)
    r = nt.crt_pair(mpz(value % p), mpz(value % q), p, q, gmpy2.invert(q, p))
    assert r == value
    assert 0 <= r < p * q


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**256 - 1))
def test_int_bytes_round_trip(value: int) -> None:
    data = nt.int_to_bytes(value, 32)
    assert len(data) == 32
    assert data == value.to_bytes(32, "big")
    assert nt.int_from_bytes(data) == value


def test_int_to_bytes_rejects_overflow_and_negative() -> None:
    with pytest.raises(OverflowError):
        nt.int_to_bytes(256, 1)
    with pytest.raises(OverflowError):
        nt.int_to_bytes(-1, 4)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 2**300), st.integers(0, 2**140)), min_size=0, max_size=40),
    st.integers(3, 2**200),
)
def test_multi_pow_equals_the_product_of_powers(pairs, modulus):
    from fedcity.crypto._numbers import multi_pow

    bases = [mpz(b % modulus) for b, _ in pairs]
    exps = [e for _, e in pairs]
    want = 1
    for b, e in zip(bases, exps, strict=True):
        want = want * pow(int(b), e, modulus) % modulus
    assert multi_pow(bases, exps, mpz(modulus)) == want % modulus


def test_multi_pow_rejects_bad_input():
    from fedcity.crypto._numbers import multi_pow

    with pytest.raises(ValueError, match="differ in length"):
        multi_pow([mpz(2)], [1, 2], mpz(7))
    with pytest.raises(ValueError, match="non-negative"):
        multi_pow([mpz(2)], [-1], mpz(7))
