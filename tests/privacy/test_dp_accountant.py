"""Accounting: hand-computed ε, RDP bounds against exact divergences, sensitivity, accountant."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS
from scipy import stats
from scipy.special import logsumexp

from fedcity.crypto import PackingSpec
from fedcity.privacy import (
    DEFAULT_ORDERS,
    TRUNCATION_DELTA_SHARE,
    BudgetExceededError,
    DPConfig,
    PrivacyAccountant,
    Sensitivity,
    clip_l2,
    ddg_rdp,
    ddg_tau,
    distributed_epsilon,
    epsilon_from_rdp,
    gaussian_epsilon,
    gaussian_noise_multiplier,
    gaussian_rdp,
    quantized_sensitivity,
    skellam_rdp,
)
from fedcity.privacy.noise import NoiseKind


# -- ε by hand --------------------------------------------------------------------------------
def hand_epsilon_improved(z: float, t: int, delta: float, orders: list[float]) -> float:
    """Gaussian RDP T·α/(2z²), converted as dp_accounting does (CKS 2020 / Asoodeh et al.).

    ε = min over α > 1.01 of  T·α/(2z²) + log(1 - 1/α) - log(δ·α)/(α - 1),
    floored at 0 (orders where δ² > 1 - exp(-ρ) give ε = 0 via the KL bound).
    """
    best = math.inf
    for a in orders:
        rho = t * a / (2 * z * z)
        if delta**2 + math.expm1(-rho) > 0:
            eps = 0.0
        elif a > 1.01:
            eps = rho + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        best = min(best, eps)
    return max(0.0, best)


def hand_epsilon_classic(z: float, t: int, delta: float, orders: list[float]) -> float:
    """Mironov 2017: ε = min_α T·α/(2z²) + log(1/δ)/(α - 1)."""
    return min(t * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in orders)


CASES = [(1.0, 1, 1e-5), (0.8, 10, 1e-6), (5.0, 100, 1e-5), (20.0, 1000, 1e-8), (1.1, 3, 0.01)]


@pytest.mark.parametrize("z,t,delta", CASES)
def test_gaussian_epsilon_matches_hand_computation(z: float, t: int, delta: float) -> None:
    orders = [1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 32.0, 64.0]
    got = gaussian_epsilon(noise_multiplier=z, rounds=t, delta=delta, orders=orders)
    assert got == pytest.approx(hand_epsilon_improved(z, t, delta, orders), rel=1e-12)
    # with dp_accounting's default grid too
    got_default = gaussian_epsilon(noise_multiplier=z, rounds=t, delta=delta)
    want_default = hand_epsilon_improved(z, t, delta, list(DEFAULT_RDP_ORDERS))
    assert got_default == pytest.approx(want_default, rel=1e-12)


@pytest.mark.parametrize("z,t,delta", CASES)
def test_improved_conversion_is_below_classic_and_close(z: float, t: int, delta: float) -> None:
    orders = list(DEFAULT_RDP_ORDERS)
    got = gaussian_epsilon(noise_multiplier=z, rounds=t, delta=delta)
    classic = hand_epsilon_classic(z, t, delta, orders)
    # the classic curve over continuous α is minimised at α - 1 = z·sqrt(2 log(1/δ)/T):
    closed_form = t / (2 * z * z) + math.sqrt(2 * t * math.log(1 / delta)) / z
    assert classic >= closed_form * (1 - 1e-12)
    assert got <= classic
    assert got >= 0.75 * classic  # the improvement is a few percent to ~20 %, not magic


def test_literal_value() -> None:
    # z = 1, one release, δ = 1e-5, single order α = 6:
    # ρ = 3; ε = 3 + log(5/6) - log(6e-5)/5 = 3 - 0.1823216 + 1.9442332 = 4.7619116
    want = 3 + math.log(5 / 6) - math.log(6e-5) / 5
    assert want == pytest.approx(4.7619116, abs=1e-7)
    got = gaussian_epsilon(noise_multiplier=1.0, rounds=1, delta=1e-5, orders=[6])
    assert got == pytest.approx(want, rel=1e-13)


def test_gaussian_rdp_and_composition_scale() -> None:
    orders = [2.0, 3.0, 10.0]
    assert np.allclose(gaussian_rdp(orders, 2.0), np.array(orders) / 8.0, rtol=1e-15)
    e1 = gaussian_epsilon(noise_multiplier=3.0, rounds=50, delta=1e-6)
    e2 = epsilon_from_rdp(DEFAULT_RDP_ORDERS, 50 * gaussian_rdp(DEFAULT_RDP_ORDERS, 3.0), 1e-6)
    assert e1 == pytest.approx(e2, rel=1e-12)
    assert gaussian_epsilon(noise_multiplier=3.0, rounds=51, delta=1e-6) > e1


def test_gaussian_noise_multiplier_inverts_epsilon() -> None:
    z = gaussian_noise_multiplier(epsilon=2.0, delta=1e-5, rounds=30)
    assert gaussian_epsilon(noise_multiplier=z, rounds=30, delta=1e-5) <= 2.0
    assert gaussian_epsilon(noise_multiplier=z * (1 - 1e-5), rounds=30, delta=1e-5) > 2.0


# -- RDP bounds of the discrete mechanisms against exact Rényi divergences ----------------------
def renyi_of_shift(logq: np.ndarray, shift: int, alpha: int) -> float:
    """D_α(P‖Q) for P(x) = Q(x - shift), from log-pmf values on a contiguous support."""
    logp = np.full_like(logq, -np.inf)
    logp[shift:] = logq[: logq.size - shift]
    m = np.isfinite(logp)
    return float(logsumexp(alpha * logp[m] + (1 - alpha) * logq[m]) / (alpha - 1))


def log_convolve(la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """log of the convolution of exp(la) and exp(lb), in log space (no underflow)."""
    out = np.full(la.size + lb.size - 1, -np.inf)
    for i, a in enumerate(la):
        out[i : i + lb.size] = np.logaddexp(out[i : i + lb.size], a + lb)
    return out


def skellam_logpmf(mu: float) -> np.ndarray:
    """log pmf of Poisson(mu) - Poisson(mu) on [-K, K], K far beyond every term that matters."""
    k = np.arange(0, int(mu + 30 * math.sqrt(mu) + 120))
    lp = stats.poisson.logpmf(k, mu)
    out: np.ndarray = log_convolve(lp, lp[::-1])
    return out


def dg_sum_logpmf(sigma: float, n: int) -> np.ndarray:
    """log pmf of a sum of n discrete Gaussians of scale sigma (each on [-60, 60])."""
    k = np.arange(-60, 61).astype(float)
    lp = -k * k / (2 * sigma * sigma)
    lp -= logsumexp(lp)
    total: np.ndarray = lp
    for _ in range(n - 1):
        total = log_convolve(total, lp)
    return total


@pytest.mark.parametrize("mu", [0.5, 1.0, 5.0, 25.0])
def test_skellam_rdp_bounds_exact_divergence(mu: float) -> None:
    logq = skellam_logpmf(mu)
    for shift in (1, 2, 5):
        s = Sensitivity(l2=shift, l1=shift, dim=1)
        for alpha in (2, 3, 4, 8, 16):
            exact = renyi_of_shift(logq, shift, alpha)
            bound = skellam_rdp([alpha], mu_total=mu, sensitivity=s)[0]
            assert exact <= bound * (1 + 1e-9)
            if mu >= 25:
                assert bound <= 1.4 * exact  # and it is not vacuous


def test_skellam_rdp_bounds_exact_divergence_multidimensional() -> None:
    # Independent coordinates: the divergence of a shift v is the sum over coordinates.
    mu = 3.0
    logq = skellam_logpmf(mu)
    v = np.array([2, 1, 1, 0, 3])
    l2 = float(np.linalg.norm(v))
    s = Sensitivity(l2=l2, l1=float(np.abs(v).sum()), dim=v.size)
    for alpha in (2, 5, 12):
        exact = sum(renyi_of_shift(logq, int(c), alpha) for c in v if c)
        assert exact <= skellam_rdp([alpha], mu_total=mu, sensitivity=s)[0]


@pytest.mark.parametrize("sigma", [0.5, 0.6, 0.8, 1.0])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_ddg_rdp_bounds_exact_divergence_of_sum(sigma: float, n: int) -> None:
    logq = dg_sum_logpmf(sigma, n)
    for shift in (1, 2, 3):
        s = Sensitivity(l2=shift, l1=shift, dim=1)
        for alpha in (2, 3, 5, 8):
            exact = renyi_of_shift(logq, shift, alpha)
            bound = ddg_rdp([alpha], sigma_share=sigma, n_contributors=n, sensitivity=s)[0]
            assert exact <= bound * (1 + 1e-9)


def test_ddg_tau_is_needed_for_small_shares() -> None:
    # A sum of small discrete Gaussians is *less* private than one discrete Gaussian of the
    # summed variance: the plain Gaussian curve α·Δ²/(2nσ²) would under-count.
    sigma, n, alpha = 0.5, 3, 5
    exact = renyi_of_shift(dg_sum_logpmf(sigma, n), 1, alpha)
    assert exact > alpha / (2 * n * sigma * sigma) * (1 + 1e-3)
    assert ddg_tau(sigma, n) > 0
    assert ddg_tau(sigma, 1) == 0.0


def test_ddg_rdp_is_gaussian_for_large_shares() -> None:
    s = Sensitivity(l2=100.0, l1=1000.0, dim=100)
    sigma_share, n = 80.0, 5
    z = sigma_share * math.sqrt(n) / s.l2
    assert ddg_tau(sigma_share, n) == 0.0
    got = ddg_rdp(DEFAULT_ORDERS, sigma_share=sigma_share, n_contributors=n, sensitivity=s)
    assert np.allclose(got, np.array(DEFAULT_ORDERS) / (2 * z * z), rtol=1e-12)


def test_discrete_rdp_rejects_fractional_orders_and_small_shares() -> None:
    s = Sensitivity(l2=1.0, l1=1.0, dim=1)
    with pytest.raises(ValueError, match="integer orders"):
        skellam_rdp([1.5], mu_total=3.0, sensitivity=s)
    with pytest.raises(ValueError, match="sigma_share"):
        ddg_rdp([2], sigma_share=0.4, n_contributors=3, sensitivity=s)


# -- clipping and sensitivity -----------------------------------------------------------------
def test_clip_l2() -> None:
    x = np.array([3.0, 4.0])
    assert np.allclose(clip_l2(x, 1.0), [0.6, 0.8])
    assert np.linalg.norm(clip_l2(x, 1.0)) <= 1.0 + 1e-15
    small = np.array([0.1, -0.2])
    out = clip_l2(small, 1.0)
    assert np.array_equal(out, small) and out is not small
    with pytest.raises(ValueError, match="clip_norm"):
        clip_l2(x, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        clip_l2([1.0, math.nan], 1.0)


def test_quantized_sensitivity_values() -> None:
    s = quantized_sensitivity(clip_norm=2.0, step=0.01, dim=400)
    assert s.l2 == pytest.approx(200 + 20, rel=1e-8)
    assert s.l1 == pytest.approx(20 * s.l2, rel=1e-8)  # √d·Δ₂
    r = quantized_sensitivity(clip_norm=2.0, step=0.01, dim=400, adjacency="replace_one")
    assert r.l2 == pytest.approx(400 + 20, rel=1e-8)


def test_sensitivity_bound_holds_for_the_real_quantizer() -> None:
    rng = np.random.default_rng(17)
    spec = PackingSpec(clip=1.0, precision_bits=8, max_summands=10, n_length=512)
    d, c = 300, 0.5
    zo = quantized_sensitivity(clip_norm=c, step=spec.step, dim=d)
    ro = quantized_sensitivity(clip_norm=c, step=spec.step, dim=d, adjacency="replace_one")
    null = spec.quantize(np.zeros(d)).astype(np.int64)
    worst_zero = 0.0
    for trial in range(300):
        if trial % 3 == 0:  # adversarial: every coordinate just above a rounding threshold
            x = np.full(d, 1e-9)
        else:
            x = clip_l2(rng.normal(size=d) * rng.uniform(0.01, 3.0), c)
        y = clip_l2(rng.normal(size=d), c)
        qx = spec.quantize(x).astype(np.int64)
        qy = spec.quantize(y).astype(np.int64)
        v = qx - null
        worst_zero = max(worst_zero, float(np.linalg.norm(v)))
        assert np.linalg.norm(v) <= zo.l2
        assert np.abs(v).sum() <= zo.l1
        assert np.linalg.norm(qx - qy) <= ro.l2
    # the √d term is real: a vector of norm ~0 moves every coordinate by one step
    assert worst_zero >= math.sqrt(d) - 1e-9


# -- DPConfig validation ----------------------------------------------------------------------
def test_dpconfig_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        DPConfig(1.0, 1e-5, 1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": math.nan}, "delta"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": -2.0}, "clip_norm"),
        ({"clip_norm": math.inf}, "clip_norm"),
        ({"noise": "laplace"}, "noise"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
        ({"adjacency": "add_remove"}, "adjacency"),
    ],
)
def test_dpconfig_validation_names_the_parameter(kwargs: dict[str, object], name: str) -> None:
    base: dict[str, object] = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}
    base.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name} "):
        DPConfig(**base)  # type: ignore[arg-type]


def test_dpconfig_needs_exactly_one_of_epsilon_and_noise_multiplier() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(delta=1e-5, clip_norm=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        DPConfig(epsilon=1.0, noise_multiplier=1.0, delta=1e-5, clip_norm=1.0)
    with pytest.raises(ValueError, match=r"^noise_multiplier "):
        DPConfig(noise_multiplier=0.0, delta=1e-5, clip_norm=1.0)
    cfg = DPConfig(noise_multiplier=1.0, delta=1e-5, clip_norm=1.0)
    assert cfg.delta_rdp + cfg.truncation_delta == pytest.approx(1e-5, rel=1e-15)


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_calibration_hits_the_target(noise: NoiseKind) -> None:
    s = quantized_sensitivity(clip_norm=1.0, step=2 / 65535, dim=1000)
    cfg = DPConfig(epsilon=3.0, delta=1e-6, clip_norm=1.0, noise=noise, rounds=40)
    cal = cfg.calibrate(sensitivity=s, n_contributors=4)
    assert cal.planned_epsilon <= 3.0
    assert cal.planned_epsilon == pytest.approx(3.0, rel=1e-4)
    # the discrete mechanisms at this scale cost what the Gaussian costs (integer orders)
    z_gauss = gaussian_noise_multiplier(
        epsilon=3.0, delta=cfg.delta_rdp, rounds=40, orders=DEFAULT_ORDERS
    )
    assert cal.noise_multiplier == pytest.approx(z_gauss, rel=1e-4)
    # noise multiplier given → the same ε back
    back_cfg = DPConfig(
        noise_multiplier=cal.noise_multiplier, delta=1e-6, clip_norm=1.0, noise=noise, rounds=40
    )
    back = back_cfg.calibrate(sensitivity=s, n_contributors=4)
    assert back.planned_epsilon == pytest.approx(cal.planned_epsilon, rel=1e-12)


def test_calibration_refuses_tiny_discrete_gaussian_shares() -> None:
    s = Sensitivity(l2=1.0, l1=1.0, dim=1)
    cfg = DPConfig(noise_multiplier=0.5, delta=1e-5, clip_norm=1.0)
    with pytest.raises(ValueError, match="below scale 1/2"):
        cfg.calibrate(sensitivity=s, n_contributors=10)


# -- the accountant ---------------------------------------------------------------------------
def test_accountant_checks_before_and_charges_after() -> None:
    z, delta = 4.0, 1e-5
    budget = gaussian_epsilon(noise_multiplier=z, rounds=5, delta=delta)
    acc = PrivacyAccountant.gaussian(noise_multiplier=z, epsilon_budget=budget, delta=delta)
    assert acc.spent == (0.0, 0.0)
    assert acc.remaining_releases() == 5
    previous = 0.0
    for k in range(1, 6):
        acc.check()
        eps, d = acc.charge()
        assert eps == pytest.approx(gaussian_epsilon(noise_multiplier=z, rounds=k, delta=delta))
        assert eps > previous and d == delta
        previous = eps
    assert acc.releases == 5 and acc.remaining_releases() == 0
    assert not acc.can_release()
    with pytest.raises(BudgetExceededError, match="refuses"):
        acc.check()
    assert acc.releases == 5  # a refused check charges nothing
    with pytest.raises(BudgetExceededError, match="recorded"):
        acc.charge()
    assert acc.releases == 6  # a release that happened is recorded even past the budget
    assert acc.spent[0] > budget


def test_accountant_multi_release_check() -> None:
    acc = PrivacyAccountant.gaussian(noise_multiplier=2.0, epsilon_budget=5.0, delta=1e-5)
    n = acc.remaining_releases()
    assert acc.can_release(n) and not acc.can_release(n + 1)
    acc.charge(n)
    assert acc.spent[0] <= 5.0


def test_accountant_charges_truncation_delta() -> None:
    acc = PrivacyAccountant(
        orders=[2.0, 4.0, 8.0, 16.0, 32.0],
        rdp_per_release=[0.01, 0.02, 0.04, 0.08, 0.16],
        epsilon_budget=10.0,
        delta=1e-6,
        truncation_tv_per_release=1e-12,
        truncation_delta=1e-6 * TRUNCATION_DELTA_SHARE,
    )
    eps, d = acc.charge(3)
    assert d == pytest.approx(acc.delta_rdp + (1 + math.exp(eps)) * 3e-12, rel=1e-12)
    assert d <= 1e-6
    # a truncation cost that cannot fit is refused
    tight = PrivacyAccountant(
        orders=[2.0],
        rdp_per_release=[0.001],
        epsilon_budget=100.0,
        delta=1e-6,
        truncation_tv_per_release=1e-9,
        truncation_delta=1e-9,
    )
    with pytest.raises(BudgetExceededError, match="truncation"):
        tight.check()


def test_accountant_validation() -> None:
    with pytest.raises(ValueError, match="epsilon_budget"):
        PrivacyAccountant(orders=[2.0], rdp_per_release=[0.1], epsilon_budget=0.0, delta=1e-5)
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant(orders=[2.0], rdp_per_release=[0.1], epsilon_budget=1.0, delta=2.0)
    with pytest.raises(ValueError, match="rdp_per_release"):
        PrivacyAccountant(orders=[2.0, 3.0], rdp_per_release=[0.1], epsilon_budget=1.0, delta=0.1)
    with pytest.raises(ValueError, match="truncation_delta"):
        PrivacyAccountant(
            orders=[2.0],
            rdp_per_release=[0.1],
            epsilon_budget=1.0,
            delta=0.1,
            truncation_tv_per_release=1e-12,
        )
    acc = PrivacyAccountant.gaussian(noise_multiplier=1.0, epsilon_budget=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="releases"):
        acc.check(0)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"epsilon": 1e4}, "epsilon"),
        ({"delta": 0.5}, "delta"),
        ({"delta": 0.02}, "delta"),
        ({"clip_norm": 1e300}, "clip_norm"),
        ({"rounds": 10**9}, "rounds"),
        ({"epsilon": None, "noise_multiplier": 1e-9}, "noise_multiplier"),
        ({"epsilon": None, "noise_multiplier": 1e9}, "noise_multiplier"),
    ],
)
def test_absurd_privacy_parameters_are_refused(kwargs: dict[str, object], name: str) -> None:
    # Today an epsilon of 10^4, a delta of 1/2 or a noise multiplier of 1e-9 was accepted.
    base: dict[str, object] = {"epsilon": 1.0, "delta": 1e-5, "clip_norm": 1.0}
    base.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{name}[ =]") as info:
        DPConfig(**base)  # type: ignore[arg-type]
    assert "absurd" in str(info.value) or "exceeds" in str(info.value)


def test_a_noise_multiplier_giving_meaningless_epsilon_is_refused_at_calibration() -> None:
    cfg = DPConfig(noise_multiplier=0.01, delta=1e-6, clip_norm=1.0, rounds=10)
    sens = quantized_sensitivity(clip_norm=1.0, step=1e-3, dim=10)
    with pytest.raises(ValueError, match="no meaningful privacy"):
        cfg.calibrate(sensitivity=sens, n_contributors=3)


@pytest.mark.parametrize("noise", ["gaussian", "skellam"])
def test_distributed_epsilon_with_all_shares_is_the_calibrated_epsilon(noise: NoiseKind) -> None:
    cfg = DPConfig(epsilon=3.0, delta=1e-6, clip_norm=1.0, noise=noise, rounds=5)
    sens = quantized_sensitivity(clip_norm=1.0, step=1e-3, dim=50)
    cal = cfg.calibrate(sensitivity=sens, n_contributors=4)
    eps = distributed_epsilon(
        noise=noise,
        share=cal.share,
        honest_shares=4,
        sensitivity=sens,
        releases=5,
        delta=cfg.delta_rdp,
    )
    assert eps == pytest.approx(cal.planned_epsilon, rel=1e-12)
    fewer = distributed_epsilon(
        noise=noise,
        share=cal.share,
        honest_shares=3,
        sensitivity=sens,
        releases=5,
        delta=cfg.delta_rdp,
    )
    assert fewer > eps
    none = distributed_epsilon(
        noise=noise,
        share=cal.share,
        honest_shares=0,
        sensitivity=sens,
        releases=5,
        delta=cfg.delta_rdp,
    )
    assert none == math.inf
