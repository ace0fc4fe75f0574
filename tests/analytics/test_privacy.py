"""DP noise for query vectors: samplers, calibration, accountant, refusals.

Statistical tolerances. Samplers are checked with a chi-square goodness-of-fit test against
the exact probability mass function; summed-share scales with the sample standard deviation,
whose relative standard error is ``1/sqrt(2N)`` for near-Gaussian noise. Randomness comes from
a deterministic SHAKE-256 byte stream with a fixed seed, so each test is reproducible; a
threshold at p = 1e-4 (or 6 standard errors) would fail a correct sampler with probability
about 1e-4 (1e-9) for a fresh seed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets

import numpy as np
import pytest
from scipy import stats

from fedcity.analytics import privacy as qp
from fedcity.analytics.privacy import (
    NoiseBlock,
    QueryPrivacyError,
    plan_query_noise,
    query_blocks,
    sample_share,
)
from fedcity.privacy import BudgetExceededError, discrete_gaussian_variance
from fedcity.privacy.noise import csprng_poisson


def seeded_bytes(seed: int) -> qp.RandomBytes:
    counter = itertools.count()

    def draw(n: int) -> bytes:
        return hashlib.shake_256(f"{seed}:{next(counter)}".encode()).digest(n)

    return draw


AGGS = [
    {"name": "n", "func": "count"},
    {"name": "crit", "func": "sum", "column": "critical"},
    {"name": "mean_x", "func": "mean", "column": "x"},
    {"name": "rate", "func": "ratio", "numerator": "critical", "denominator": "x", "scale": 1000},
    {"name": "h", "func": "histogram", "column": "x", "bins": [0, 10, 20, 50]},
]
RANGES = {"critical": (1, 1.0), "x": (5000, 0.01)}


def chi_square_p(sample: np.ndarray, pmf: dict[int, float]) -> float:
    """Chi-square p-value, pooling the tails into bins with expected counts >= 5."""
    n = sample.size
    keys = sorted(pmf)
    observed, expected = [], []
    acc_o = acc_e = 0.0
    counts = dict(zip(*np.unique(sample, return_counts=True), strict=True))
    for k in keys:
        acc_o += counts.get(k, 0)
        acc_e += n * pmf[k]
        if acc_e >= 5:
            observed.append(acc_o)
            expected.append(acc_e)
            acc_o = acc_e = 0.0
    observed[-1] += acc_o + (n - sum(observed) - acc_o)  # everything beyond the table
    expected[-1] += acc_e
    expected = list(np.array(expected) * n / sum(expected))
    return float(stats.chisquare(observed, expected).pvalue)


# -- samplers --------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.8, 1.3, 6.0])
def test_discrete_gaussian_sampler_matches_its_pmf(sigma: float) -> None:
    x = sample_share("gaussian", sigma, 40_000, bound=10**6, random_bytes=seeded_bytes(1))
    ks = np.arange(-int(15 * sigma) - 5, int(15 * sigma) + 6)
    w = np.exp(-(ks.astype(float) ** 2) / (2 * sigma * sigma))
    pmf = dict(zip(ks.tolist(), (w / w.sum()).tolist(), strict=True))
    assert chi_square_p(x, pmf) > 1e-4
    assert abs(x.var() / discrete_gaussian_variance(sigma) - 1) < 6 * math.sqrt(2 / x.size)


@pytest.mark.parametrize("mu", [0.4, 3.0, 40.0, 900.0])
def test_skellam_sampler_matches_its_pmf(mu: float) -> None:
    # mu < 10 uses inversion, mu >= 10 PTRS with the stable log-pmf
    x = sample_share("skellam", mu, 40_000, bound=10**9, random_bytes=seeded_bytes(2))
    half = int(12 * math.sqrt(2 * mu)) + 10
    ks = np.arange(-half, half + 1)
    pmf = dict(zip(ks.tolist(), stats.skellam.pmf(ks, mu, mu).tolist(), strict=True))
    assert chi_square_p(x, pmf) > 1e-4


def test_poisson_sampler_is_exact_in_the_mean_at_huge_rates() -> None:
    # float64 cannot hold lam + k exactly near 2^50; the centred draw must stay unbiased
    lam = 2.0**48 + 0.37
    n = 20_000
    k = csprng_poisson(lam, n, seeded_bytes(3))
    dev = (k - math.floor(lam)).astype(np.float64) - 0.37
    assert abs(dev.mean()) < 6 * math.sqrt(lam / n)
    assert abs(dev.var() / lam - 1) < 6 * math.sqrt(2 / n)
    # the standardized draws are normal to within KS resolution
    assert stats.kstest(dev / math.sqrt(lam), "norm").pvalue > 1e-4


def test_shares_respect_the_bound() -> None:
    x = sample_share("gaussian", 5.0, 20_000, bound=7, random_bytes=seeded_bytes(4))
    assert np.abs(x).max() <= 7
    y = sample_share("skellam", 30.0, 20_000, bound=9, random_bytes=seeded_bytes(5))
    assert np.abs(y).max() <= 9


def test_default_randomness_is_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = secrets.token_bytes

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    def no_pcg(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy's generator must not be used for query noise")

    monkeypatch.setattr(qp.secrets, "token_bytes", counting)
    monkeypatch.setattr(np.random, "default_rng", no_pcg)
    monkeypatch.setattr(np.random, "Generator", no_pcg)
    sample_share("gaussian", 3.0, 100, bound=100)
    sample_share("skellam", 50.0, 100, bound=1000)
    assert calls and sum(calls) >= 8 * 300


# -- blocks and sensitivity ------------------------------------------------------------------


def test_blocks_of_a_query_and_their_sensitivity() -> None:
    blocks = {b.name: b for b in query_blocks(AGGS, RANGES, cells=12)}
    assert list(blocks) == ["n", "presence", "nn:critical", "s:critical", "nn:x", "s:x", "h:h"]
    assert blocks["n"].length == 13  # cells + the out-of-domain total
    assert blocks["s:x"].sensitivity == 5000 and blocks["s:x"].unit == 0.01
    assert blocks["s:critical"].sensitivity == 1
    assert blocks["h:h"].length == 12 * 3 and blocks["h:h"].sensitivity == 1
    plan = plan_query_noise(list(blocks.values()), epsilon=1.0, delta=1e-6, n_agencies_min=3)
    # one row: +1 in n, presence, nn:critical, nn:x, one histogram bin; up to 1 in s:critical
    # and up to 5000 units in s:x
    assert plan.sensitivity_l1 == 5 + 1 + 5000
    assert plan.sensitivity_l2 == pytest.approx(math.sqrt(6 + 5000**2))
    no_presence = query_blocks(AGGS, RANGES, cells=12, presence=False)
    assert "presence" not in {b.name for b in no_presence}


@pytest.mark.parametrize("func", ["var", "std", "quantile"])
def test_var_std_quantile_are_refused_with_the_reason(func: str) -> None:
    with pytest.raises(QueryPrivacyError) as err:
        query_blocks([{"name": "a", "func": func, "column": "x"}], RANGES, cells=3)
    msg = str(err.value)
    assert f"aggregate 'a': {func} is not available with differential privacy" in msg
    assert ("limbs" in msg) if func != "quantile" else ("tolerance" in msg)


def test_summed_column_without_range_is_refused() -> None:
    with pytest.raises(QueryPrivacyError, match="column 'y' has no clip range"):
        query_blocks([{"name": "s", "func": "sum", "column": "y"}], RANGES, cells=3)


# -- calibration and the scale of the summed noise ---------------------------------------------


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_summed_shares_have_the_configured_scale(noise: qp.NoiseKind) -> None:
    blocks = query_blocks(AGGS, RANGES, cells=4000)
    plan = plan_query_noise(blocks, epsilon=2.0, delta=1e-6, noise=noise, n_agencies_min=5)
    rb = seeded_bytes(6 if noise == "gaussian" else 7)
    sd = plan.stddev_per_block
    for name in ["n", "s:x"]:
        total = sum(plan.sample(name, random_bytes=rb) for _ in range(5))
        n = total.size
        empirical = float(np.std(total * plan.block(name).unit, ddof=1))
        # relative standard error of a sample standard deviation: 1/sqrt(2(n-1))
        assert abs(empirical / sd[name] - 1) < 6 / math.sqrt(2 * (n - 1)), (name, empirical)
        assert abs(float(total.mean())) * plan.block(name).unit < 6 * sd[name] / math.sqrt(n)
    # the stated scale is sigma = z·Δ in user units (to the discrete Gaussian's variance)
    assert sd["s:x"] == pytest.approx(plan.noise_multiplier * 5000 * 0.01, rel=1e-6)
    stated = plan.stddev_for(AGGS)
    assert stated["n"] == sd["n"] and stated["h"] == sd["h:h"]
    assert stated["rate"] == pytest.approx(1000 * sd["s:critical"])


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_calibration_spends_the_budget_and_composes_blocks(noise: qp.NoiseKind) -> None:
    one = plan_query_noise(
        [NoiseBlock("n", 10, 1)], epsilon=1.0, delta=1e-6, noise=noise, n_agencies_min=4
    )
    three = plan_query_noise(
        [NoiseBlock("a", 10, 1), NoiseBlock("b", 10, 7), NoiseBlock("c", 10, 1)],
        epsilon=1.0, delta=1e-6, noise=noise, n_agencies_min=4,
    )  # fmt: skip
    for plan in (one, three):
        assert 0.99 < plan.epsilon_planned <= 1.0
    # three blocks, each sigma_k = z·Δ_k: like one block at z/sqrt(3) (Gaussian composition)
    assert three.noise_multiplier / one.noise_multiplier == pytest.approx(math.sqrt(3), rel=0.05)
    assert three.sigma["b"] == pytest.approx(7 * three.sigma["a"])
    if noise == "gaussian":
        # tau is negligible here: the curve is exactly 3·α/(2z²)
        a = np.array(three.orders)
        expected = 3 * a / (2 * three.noise_multiplier**2)
        assert np.allclose(three.rdp_per_query, expected, rtol=1e-6)
    less = plan_query_noise(
        [NoiseBlock("n", 10, 1)], epsilon=4.0, delta=1e-6, noise=noise, n_agencies_min=4
    )
    assert less.noise_multiplier < one.noise_multiplier


def test_colluding_agencies_raise_each_share() -> None:
    b = [NoiseBlock("n", 10, 1)]
    honest = plan_query_noise(b, epsilon=1.0, delta=1e-6, n_agencies_min=6)
    coll = plan_query_noise(b, epsilon=1.0, delta=1e-6, n_agencies_min=6, colluding=2)
    assert coll.share["n"] == pytest.approx(honest.share["n"] * math.sqrt(6 / 4), rel=1e-3)


def test_noise_bound_keeps_truncation_within_the_reserved_delta() -> None:
    plan = plan_query_noise(
        query_blocks(AGGS, RANGES, cells=50), epsilon=1.0, delta=1e-6, n_agencies_min=3
    )
    for name, bound in plan.noise_bound.items():
        assert qp.tail_bound("gaussian", plan.share[name], bound) <= 1e-12
    assert (1 + math.exp(1.0)) * plan.truncation_tv_per_query <= 1e-6 * 1e-3


# -- the accountant ------------------------------------------------------------------------------


def test_accountant_is_charged_once_per_query_and_refuses_beyond_the_budget() -> None:
    plan = plan_query_noise(
        query_blocks(AGGS, RANGES, cells=20), epsilon=1.0, delta=1e-6, n_agencies_min=3
    )
    acc = plan.accountant()
    acc.check()
    eps, delta = acc.charge()
    assert eps == pytest.approx(plan.epsilon_planned) and eps <= 1.0
    assert 0 < delta <= 1e-6
    with pytest.raises(BudgetExceededError, match="would spend epsilon"):
        acc.check()
    two = plan_query_noise(
        query_blocks(AGGS, RANGES, cells=20), epsilon=1.0, delta=1e-6, n_agencies_min=3, queries=2
    )
    acc2 = two.accountant()
    acc2.charge()
    acc2.check()
    acc2.charge()
    assert acc2.spent[0] <= 1.0
    assert not acc2.can_release()
    assert two.noise_multiplier > plan.noise_multiplier


def test_plan_states_what_the_result_shows() -> None:
    plan = plan_query_noise(
        query_blocks(AGGS, RANGES, cells=5),
        epsilon=1.0,
        delta=1e-6,
        noise="skellam",
        n_agencies_min=3,
    )
    d = plan.to_dict()
    assert d["neighbouring"] == "add or remove one row of one agency's table"
    assert d["epsilon"] == 1.0 and d["delta"] == 1e-6 and d["noise"] == "skellam"
    assert set(d["stddev"]) == {b.name for b in plan.blocks}
    params = plan.task_params()
    x = sample_share(params["noise"], params["share"]["n"], 5, bound=params["noise_bound"]["n"])
    assert x.shape == (5,)


# -- bad parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 0.0}, "epsilon must be a positive finite number, got 0.0"),
        ({"epsilon": float("nan")}, "epsilon must be a positive finite number"),
        ({"epsilon": 1000.0}, "epsilon must be at most 100"),
        ({"delta": 0.0}, "delta must be a number with 0 < delta < 1, got 0.0"),
        ({"delta": 1.0}, "delta must be a number with 0 < delta < 1"),
        ({"noise": "laplace"}, "noise must be 'gaussian' or 'skellam', got 'laplace'"),
        ({"n_agencies_min": 0}, "n_agencies_min must be an integer in [1, 4096], got 0"),
        ({"colluding": 3}, "colluding must be an integer in [0, 2], got 3"),
        ({"queries": 0}, "queries must be an integer in [1, 1000000], got 0"),
        ({"n_agencies_max": 2}, "n_agencies_max must be an integer in [3,"),
        ({"blocks": []}, "give 1 to 1024 noise blocks, got 0"),
        ({"blocks": [NoiseBlock("a", 1, 1), NoiseBlock("a", 2, 1)]}, "repeated: ['a']"),
        (
            {"blocks": [NoiseBlock("s:x", 10, 2**44)], "noise": "skellam"},
            "too fine: lower the column's decimals",
        ),
    ],
)
def test_bad_parameters_are_refused_precisely(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "blocks": [NoiseBlock("n", 10, 1)],
        "epsilon": 1.0,
        "delta": 1e-6,
        "n_agencies_min": 3,
    }
    args.update(kwargs)
    with pytest.raises(QueryPrivacyError) as err:
        plan_query_noise(**args)  # type: ignore[arg-type]
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1, 1), "needs a non-empty name"),
        (("a", 0, 1), "length of block 'a' must be an integer in [1,"),
        (("a", 1, 0), "sensitivity of block 'a' must be an integer in [1,"),
        (("a", 1, 1, -1.0), "unit of block 'a' must be a positive finite number"),
    ],
)
def test_bad_blocks_are_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(QueryPrivacyError) as err:
        NoiseBlock(*args)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_sampling_more_entries_than_planned_is_refused() -> None:
    plan = plan_query_noise([NoiseBlock("n", 10, 1)], epsilon=1.0, delta=1e-6, n_agencies_min=3)
    with pytest.raises(
        QueryPrivacyError, match=r"length for block 'n' must be an integer in \[0, 10\]"
    ):
        plan.sample("n", 11)
    with pytest.raises(QueryPrivacyError, match="no noise block 'x'"):
        plan.sample("x")
