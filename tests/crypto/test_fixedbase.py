from __future__ import annotations

import secrets

import pytest
from gmpy2 import mpz
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcity.crypto.fixedbase import FixedBaseTable
from fedcity.crypto.keys import PrivateKey, PublicKey


def _special_exponents(bits: int) -> list[int]:
    """0, 1, 2, every 2^k - 1 and 2^k up to the maximum, and a few random ones."""
    out = {0, 1, 2, (1 << bits) - 1}
    for k in range(1, bits + 1):
        out.add((1 << k) - 1)
        if k < bits:
            out.add(1 << k)
    out.update(secrets.randbits(bits) for _ in range(40))
    return sorted(out)


@pytest.fixture(scope="module")
def modulus(keypair: tuple[PublicKey, PrivateKey]) -> mpz:
    return keypair[0].nsquare


@pytest.mark.parametrize("exponent_bits", [64, 100, 256])
def test_pow_matches_builtin_pow(modulus: mpz, exponent_bits: int) -> None:
    """Every window size against Python's pow, for 0, 1, 2^k - 1, 2^k, the maximum, random."""
    base = int(secrets.randbelow(int(modulus) - 2)) + 2
    expected = {e: pow(base, e, int(modulus)) for e in _special_exponents(exponent_bits)}
    for window in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12):
        table = FixedBaseTable(base, modulus, exponent_bits, window)
        for e, want in expected.items():
            assert table.pow(e) == want, (window, exponent_bits, e)


@settings(max_examples=50, deadline=None)
@given(e=st.integers(0, 2**256 - 1), window=st.sampled_from([3, 8, 10]))
def test_pow_property(keypair: tuple[PublicKey, PrivateKey], e: int, window: int) -> None:
    pk = keypair[0]
    table = _table_cache(pk, window)
    assert table.pow(e) == pow(int(pk.djn_base), e, int(pk.nsquare))


_TABLES: dict[tuple[bytes, int], FixedBaseTable] = {}


def _table_cache(pk: PublicKey, window: int) -> FixedBaseTable:
    key = (pk.key_id, window)
    if key not in _TABLES:
        _TABLES[key] = FixedBaseTable(pk.djn_base, pk.nsquare, 256, window)
    return _TABLES[key]


def test_pow_accepts_mpz_exponent_and_reduces_base(modulus: mpz) -> None:
    base = int(modulus) + 5  # larger than the modulus: reduced on construction
    table = FixedBaseTable(base, modulus, 80)
    e = mpz(2**79 + 12345)
    assert table.pow(e) == pow(5, int(e), int(modulus))


@pytest.mark.parametrize("window", [4, 8])
def test_pow_rejects_out_of_range_exponents(modulus: mpz, window: int) -> None:
    table = FixedBaseTable(3, modulus, 64, window)
    assert table.pow(2**64 - 1) == pow(3, 2**64 - 1, int(modulus))
    with pytest.raises(ValueError, match=r"\[0, 2\^64\)"):
        table.pow(2**64)
    with pytest.raises(ValueError):
        table.pow(-1)


@pytest.mark.parametrize(
    ("bits", "window", "message"),
    [(0, 8, "exponent_bits"), (-3, 8, "exponent_bits"), (64, 0, "window"), (64, 13, "window")],
)
def test_constructor_validation(bits: int, window: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FixedBaseTable(3, 1009, bits, window)


@pytest.mark.parametrize(("bits", "window"), [(12, 8), (16, 8), (12, 5), (13, 1)])
def test_pow_random_is_a_power_of_the_base(bits: int, window: int) -> None:
    """In a small prime field every output must be base^a for some a < 2^bits."""
    p, g = 1_000_003, 2
    table = FixedBaseTable(g, p, bits, window)
    powers = {pow(g, a, p) for a in range(1 << bits)}
    draws = [int(table.pow_random()) for _ in range(300)]
    assert all(d in powers for d in draws)
    assert len(set(draws)) > 250  # fresh exponents, not a constant


def test_pow_random_spans_the_exponent_range() -> None:
    """With base 2 modulo a huge prime, 2^a is exact, so the exponent can be read back."""
    p = (1 << 521) - 1  # Mersenne prime, bigger than 2^(2^8)
    table = FixedBaseTable(2, p, 8, 8)
    exps = {int(table.pow_random()).bit_length() - 1 for _ in range(2000)}
    assert exps <= set(range(256))
    assert len(exps) > 240
    assert 255 in exps or 254 in exps


def test_table_shape_and_nbytes(modulus: mpz) -> None:
    table = FixedBaseTable(3, modulus, 256, 8)
    assert len(table._rows) == 32
    assert all(len(row) == 256 for row in table._rows)
    width = (int(modulus).bit_length() + 7) // 8
    assert 0.9 * 32 * 256 * width < table.nbytes <= 32 * 256 * width
    table5 = FixedBaseTable(3, modulus, 256, 5)
    assert len(table5._rows) == 52  # ceil(256 / 5)
    assert all(len(row) == 32 for row in table5._rows)
