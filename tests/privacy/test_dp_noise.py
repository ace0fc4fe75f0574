"""Noise samplers: distributions, moments, truncation, tail bounds, shares, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedcity.privacy import noise as nz


def dg_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    big = np.arange(-int(40 * sigma + 40), int(40 * sigma + 41))
    z = np.exp(-(big.astype(float) ** 2) / (2 * sigma * sigma)).sum()
    out: np.ndarray = np.exp(-(support.astype(float) ** 2) / (2 * sigma * sigma)) / z
    return out


def chi_square_p(samples: np.ndarray, pmf_of: np.ndarray, support: np.ndarray) -> float:
    """Chi-square goodness of fit; values outside ``support`` go to one tail bin."""
    counts = np.array([(samples == k).sum() for k in support], dtype=float)
    n = samples.size
    expected = pmf_of * n
    tail_obs = n - counts.sum()
    tail_exp = n - expected.sum()
    keep = expected >= 5
    obs = np.append(counts[keep], tail_obs + counts[~keep].sum())
    exp = np.append(expected[keep], tail_exp + expected[~keep].sum())
    return float(stats.chisquare(obs, exp).pvalue)


# -- discrete Gaussian ------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.4, 1.0, 1.7, 4.0])
def test_discrete_gaussian_pmf_matches(sigma: float) -> None:
    rng = np.random.default_rng(20240601)
    n = 200_000
    x = nz.sample_discrete_gaussian(sigma, n, rng=rng)
    assert x.dtype == np.int64 and x.shape == (n,)
    support = np.arange(-int(8 * sigma + 3), int(8 * sigma + 4))
    pmf = dg_pmf(sigma, support)
    assert chi_square_p(x, pmf, support) > 1e-3
    emp = np.array([(x == k).mean() for k in support])
    tv = 0.5 * np.abs(emp - pmf).sum()
    # E[TV] ≈ Σ sqrt(p(1-p)/(2πn)) < sqrt(k/(2πn)); 4× that is far outside sampling noise.
    assert tv < 4 * math.sqrt(support.size / (2 * math.pi * n))


def test_discrete_gaussian_mean_variance_large_sigma() -> None:
    rng = np.random.default_rng(7)
    sigma, n = 250.0, 200_000
    x = nz.sample_discrete_gaussian(sigma, n, rng=rng).astype(float)
    se_mean = sigma / math.sqrt(n)
    assert abs(x.mean()) < 5 * se_mean
    se_var = math.sqrt(2 / n)  # relative standard error of a sample variance (Gaussian)
    assert abs(x.var() / sigma**2 - 1) < 5 * se_var


def test_discrete_gaussian_variance_exact() -> None:
    for sigma in (0.3, 0.5, 1.0, 2.0, 9.0):
        k = np.arange(-2000, 2001)
        p = dg_pmf(sigma, k)
        assert nz.discrete_gaussian_variance(sigma) == pytest.approx((k * k * p).sum(), rel=1e-12)
    assert nz.discrete_gaussian_variance(0.3) < 0.3**2  # strictly below sigma² for small sigma


# -- Skellam ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mu", [0.3, 2.5, 20.0])
def test_skellam_pmf_matches(mu: float) -> None:
    rng = np.random.default_rng(99)
    n = 200_000
    x = nz.sample_skellam(mu, n, rng=rng)
    sd = math.sqrt(2 * mu)
    support = np.arange(-int(8 * sd + 3), int(8 * sd + 4))
    pmf = stats.skellam.pmf(support, mu, mu)
    assert chi_square_p(x, pmf, support) > 1e-3


def test_skellam_mean_variance() -> None:
    rng = np.random.default_rng(11)
    mu, n = 5000.0, 200_000
    x = nz.sample_skellam(mu, n, rng=rng).astype(float)
    var = 2 * mu
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n)


# -- truncation and tail bounds ---------------------------------------------------------------
@pytest.mark.parametrize("kind,param", [("gaussian", 3.0), ("skellam", 4.5)])
def test_truncated_sampler_is_the_conditional_distribution(
    kind: nz.NoiseKind, param: float
) -> None:
    rng = np.random.default_rng(5)
    bound, n = 2, 100_000
    x = nz.sample_noise(kind, param, n, bound=bound, rng=rng)
    assert np.abs(x).max() <= bound
    support = np.arange(-bound, bound + 1)
    base = (
        dg_pmf(param, support) if kind == "gaussian" else stats.skellam.pmf(support, param, param)
    )
    pmf = base / base.sum()
    counts = np.array([(x == k).sum() for k in support])
    assert stats.chisquare(counts, pmf * n).pvalue > 1e-3


def test_tail_bound_is_an_upper_bound() -> None:
    for sigma in (0.7, 2.0, 6.0):
        k = np.arange(-4000, 4001)
        p = dg_pmf(sigma, k)
        for b in range(0, int(10 * sigma)):
            exact = p[np.abs(k) > b].sum()
            assert nz.tail_bound("gaussian", sigma, b) >= exact
    for mu in (0.5, 3.0, 40.0):
        for b in range(0, int(10 * math.sqrt(2 * mu)) + 5):
            exact = 2 * stats.skellam.sf(b, mu, mu)
            assert nz.tail_bound("skellam", mu, b) >= exact * (1 - 1e-9)


@pytest.mark.parametrize("kind,param", [("gaussian", 1234.5), ("skellam", 8.0e5), ("skellam", 0.2)])
def test_bound_for_tail_is_minimal(kind: nz.NoiseKind, param: float) -> None:
    b = nz.bound_for_tail(kind, param, 1e-15)
    assert nz.tail_bound(kind, param, b) <= 1e-15
    assert b == 0 or nz.tail_bound(kind, param, b - 1) > 1e-15
    # never looser than MAX_TAIL_PROBABILITY, whatever is asked
    b12 = nz.bound_for_tail(kind, param, 0.5)
    assert nz.tail_bound(kind, param, b12) <= nz.MAX_TAIL_PROBABILITY


def test_gaussian_bound_is_about_seven_sigma_at_1e_12() -> None:
    b = nz.bound_for_tail("gaussian", 1000.0, 1e-12)
    assert 7.3 < b / 1000.0 < 7.6  # sqrt(2 ln(2e12)) = 7.49


# -- shares -----------------------------------------------------------------------------------
def test_skellam_shares_sum_to_target_variance_exactly() -> None:
    sigma_total, n = 300.0, 7
    mu = nz.share_parameter("skellam", sigma_total, n)
    assert n * nz.share_variance("skellam", mu) == pytest.approx(sigma_total**2, rel=1e-15)


def test_shares_sum_to_target_variance_empirically() -> None:
    rng = np.random.default_rng(3)
    sigma_total, n, d = 120.0, 5, 100_000
    kinds: list[nz.NoiseKind] = ["gaussian", "skellam"]
    for kind in kinds:
        p = nz.share_parameter(kind, sigma_total, n)
        shares = [nz.sample_noise(kind, p, d, rng=rng) for _ in range(n)]
        total = np.sum(shares, axis=0).astype(float)
        assert abs(total.var() / sigma_total**2 - 1) < 5 * math.sqrt(2 / d)


def test_default_rng_is_fresh_and_explicit_rng_reproduces() -> None:
    a = nz.sample_discrete_gaussian(50.0, 64)
    b = nz.sample_discrete_gaussian(50.0, 64)
    assert not np.array_equal(a, b)  # P(equal) is astronomically small
    c = nz.sample_skellam(50.0, 64, rng=np.random.default_rng(1))
    d = nz.sample_skellam(50.0, 64, rng=np.random.default_rng(1))
    assert np.array_equal(c, d)
    assert isinstance(nz.new_rng(), np.random.Generator)


def test_zero_size() -> None:
    assert nz.sample_discrete_gaussian(2.0, 0).shape == (0,)
    assert nz.sample_skellam(2.0, 0).shape == (0,)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True, "1"])
def test_sampler_parameter_validation(bad: object) -> None:
    with pytest.raises(ValueError, match="sigma"):
        nz.sample_discrete_gaussian(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mu"):
        nz.sample_skellam(bad, 3)  # type: ignore[arg-type]


def test_size_bound_kind_validation() -> None:
    with pytest.raises(ValueError, match="size"):
        nz.sample_discrete_gaussian(1.0, -1)
    with pytest.raises(ValueError, match="bound"):
        nz.sample_skellam(1.0, 3, bound=-2)
    with pytest.raises(ValueError, match="noise"):
        nz.sample_noise("laplace", 1.0, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_contributors"):
        nz.share_parameter("gaussian", 1.0, 0)


# -- the default source: the OS CSPRNG ---------------------------------------------------------
def _seeded_bytes(seed: int):
    """A deterministic byte source for tests (what ``random_bytes=`` injects)."""
    gen = np.random.default_rng(seed)
    return lambda n: gen.bytes(n)


@pytest.mark.parametrize("sigma", [0.6, 1.7, 4.0])
def test_csprng_discrete_gaussian_pmf_matches(sigma: float) -> None:
    n = 200_000
    x = nz.sample_discrete_gaussian(sigma, n, random_bytes=_seeded_bytes(21))
    assert x.dtype == np.int64 and x.shape == (n,)
    support = np.arange(-int(8 * sigma + 3), int(8 * sigma + 4))
    assert chi_square_p(x, dg_pmf(sigma, support), support) > 1e-3


@pytest.mark.parametrize("mu", [0.3, 2.5, 20.0, 3000.0])
def test_csprng_skellam_pmf_matches(mu: float) -> None:
    # below rate 10 the Poisson sides are drawn by inversion, above by PTRS
    n = 200_000
    x = nz.sample_skellam(mu, n, random_bytes=_seeded_bytes(22))
    sd = math.sqrt(2 * mu)
    support = np.arange(-int(8 * sd + 3), int(8 * sd + 4))
    assert chi_square_p(x, stats.skellam.pmf(support, mu, mu), support) > 1e-3


def test_csprng_skellam_moments_at_realistic_share_sizes() -> None:
    mu, n = 3.461e9, 100_000  # the per-side rate of the docs' example share
    x = nz.sample_skellam(mu, n, random_bytes=_seeded_bytes(23)).astype(float)
    var = 2 * mu
    assert abs(x.mean()) < 5 * math.sqrt(var / n)
    assert abs(x.var() / var - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("kind,param", [("gaussian", 3.0), ("skellam", 4.5), ("skellam", 40.0)])
def test_csprng_truncated_sampler_is_the_conditional_distribution(
    kind: nz.NoiseKind, param: float
) -> None:
    bound, n = 2, 100_000
    x = nz.sample_noise(kind, param, n, bound=bound, random_bytes=_seeded_bytes(24))
    assert np.abs(x).max() <= bound
    support = np.arange(-bound, bound + 1)
    base = (
        dg_pmf(param, support) if kind == "gaussian" else stats.skellam.pmf(support, param, param)
    )
    counts = np.array([(x == k).sum() for k in support])
    assert stats.chisquare(counts, base / base.sum() * n).pvalue > 1e-3


def test_default_source_is_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    # Today the default was a PCG64 generator; now every draw reads secrets.token_bytes.
    import secrets

    asked: list[int] = []
    original = secrets.token_bytes

    def counting(n: int | None = None) -> bytes:
        asked.append(int(n or 0))
        return original(n)

    monkeypatch.setattr(secrets, "token_bytes", counting)
    for kind, param in (("gaussian", 50.0), ("skellam", 50.0)):
        asked.clear()
        nz.sample_noise(kind, param, 64)  # type: ignore[arg-type]
        assert sum(asked) >= 8 * 64


def test_an_injected_byte_source_reproduces_and_sources_are_exclusive() -> None:
    a = nz.sample_skellam(5e4, 64, random_bytes=_seeded_bytes(1))
    b = nz.sample_skellam(5e4, 64, random_bytes=_seeded_bytes(1))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="at most one of rng and random_bytes"):
        nz.sample_skellam(5.0, 4, rng=np.random.default_rng(0), random_bytes=_seeded_bytes(0))
    with pytest.raises(ValueError, match="random_bytes must return"):
        nz.sample_discrete_gaussian(5.0, 4, random_bytes=lambda n: b"short")
    with pytest.raises(ValueError, match="exceeds the sampler"):
        nz.sample_discrete_gaussian(2.0**46, 4)
