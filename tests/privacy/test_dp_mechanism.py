"""DistributedNoise: calibration, bounds, shares, accountant, and end to end through Paillier."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedcity.crypto import PackingSpec, decrypt_vector, encrypt_vector, generate_keypair
from fedcity.privacy import (
    DEFAULT_ORDERS,
    BudgetExceededError,
    DistributedNoise,
    DPConfig,
    gaussian_epsilon,
    gaussian_noise_multiplier,
    tail_bound,
)
from fedcity.privacy.noise import NoiseKind

NOISES: list[NoiseKind] = ["gaussian", "skellam"]


def make(
    noise: NoiseKind = "gaussian",
    *,
    epsilon: float | None = 4.0,
    noise_multiplier: float | None = None,
    rounds: int = 20,
    n_min: int = 5,
    dim: int = 100,
    colluding: int = 0,
) -> DistributedNoise:
    cfg = DPConfig(
        epsilon=epsilon,
        noise_multiplier=noise_multiplier,
        delta=1e-6,
        clip_norm=1.0,
        noise=noise,
        rounds=rounds,
    )
    return DistributedNoise(cfg, PackingSpec(max_summands=10), n_min, dim=dim, colluding=colluding)


@pytest.mark.parametrize("noise", NOISES)
def test_calibrated_to_the_target(noise: NoiseKind) -> None:
    dn = make(noise)
    assert dn.epsilon <= 4.0 and dn.epsilon == pytest.approx(4.0, rel=1e-4)
    assert dn.sigma_total == pytest.approx(dn.noise_multiplier * dn.sensitivity.l2)
    assert dn.spec.noise_bound == dn.noise_bound > 0
    assert dn.spec.step == PackingSpec(max_summands=10).step  # noise room does not change steps
    # truncation fits in the reserved δ over the planned rounds at the budget ε
    cost = (1 + math.exp(4.0)) * 20 * dn.truncation_tv_per_release
    assert cost <= dn.config.truncation_delta
    assert dn.tail_probability <= 1e-12
    assert tail_bound(noise, dn.calibration.share, dn.noise_bound) == dn.tail_probability


@pytest.mark.parametrize("noise", NOISES)
def test_samples_in_bound_and_of_the_right_scale(noise: NoiseKind) -> None:
    dn = make(noise, dim=50_000)
    x = dn.sample(rng=np.random.default_rng(8))
    assert x.dtype == np.int64 and x.shape == (50_000,)
    assert np.abs(x).max() <= dn.noise_bound
    share_sd = dn.sigma_total / math.sqrt(5)
    assert abs(x.std() / share_sd - 1) < 5 * math.sqrt(1 / (2 * 50_000))
    assert dn.sample(10, rng=np.random.default_rng(1)).shape == (10,)
    with pytest.raises(ValueError, match="dim"):
        dn.sample(50_001)


def test_expected_sum_std() -> None:
    dn = make("skellam")
    assert dn.expected_sum_std() == pytest.approx(dn.spec.step * dn.sigma_total, rel=1e-12)
    assert dn.expected_sum_std(20) == pytest.approx(2 * dn.expected_sum_std(), rel=1e-12)
    g = make("gaussian")
    assert g.expected_sum_std() == pytest.approx(g.spec.step * g.sigma_total, rel=1e-12)


def test_dropout_and_collusion_raise_each_share() -> None:
    base = make("skellam", n_min=8)
    fewer = make("skellam", n_min=4)
    assert fewer.sigma_total == pytest.approx(base.sigma_total)
    assert fewer.calibration.share == pytest.approx(2 * base.calibration.share)  # variance share
    coll = make("skellam", n_min=8, colluding=4)
    assert coll.calibration.share == pytest.approx(fewer.calibration.share)
    # with all 8 contributing the released sum carries more noise than the target
    assert coll.expected_sum_std(8) > coll.spec.step * coll.sigma_total


def test_noise_multiplier_mode() -> None:
    dn = make("gaussian", epsilon=None, noise_multiplier=6.0)
    assert dn.noise_multiplier == 6.0
    acc = dn.accountant()
    assert acc.epsilon_budget == pytest.approx(dn.epsilon)
    assert acc.remaining_releases() == 20


def test_accountant_from_mechanism() -> None:
    dn = make("skellam", rounds=5, epsilon=2.0)
    acc = dn.accountant()
    for _ in range(5):
        acc.check()
        eps, delta = acc.charge()
    assert eps <= 2.0 and delta <= 1e-6
    with pytest.raises(BudgetExceededError):
        acc.check()


def test_more_rounds_need_more_noise() -> None:
    z5 = make(rounds=5).noise_multiplier
    z50 = make(rounds=50).noise_multiplier
    assert z50 > z5
    # ~ sqrt(T) growth, as for the Gaussian mechanism
    assert z50 / z5 == pytest.approx(
        gaussian_noise_multiplier(epsilon=4.0, delta=1e-6, rounds=50)
        / gaussian_noise_multiplier(epsilon=4.0, delta=1e-6, rounds=5),
        rel=0.02,
    )


def test_validation() -> None:
    cfg = DPConfig(epsilon=1.0, delta=1e-5, clip_norm=1.0)
    spec = PackingSpec(max_summands=4)
    with pytest.raises(ValueError, match="max_summands"):
        DistributedNoise(cfg, spec, 5, dim=10)
    with pytest.raises(ValueError, match="colluding"):
        DistributedNoise(cfg, spec, 3, dim=10, colluding=3)
    with pytest.raises(ValueError, match="dim"):
        DistributedNoise(cfg, spec, 3, dim=0)
    with pytest.raises(ValueError, match="n_contributors_min"):
        DistributedNoise(cfg, spec, 0, dim=10)
    with pytest.raises(TypeError, match="DPConfig"):
        DistributedNoise({"epsilon": 1.0}, spec, 3, dim=10)  # type: ignore[arg-type]
    dn = DistributedNoise(cfg, spec, 3, dim=10)
    with pytest.raises(ValueError, match="n_contributors"):
        dn.expected_sum_std(0)


def test_clip() -> None:
    dn = make()
    assert np.linalg.norm(dn.clip(np.full(100, 1.0))) == pytest.approx(1.0)


# -- end to end through Paillier --------------------------------------------------------------
@pytest.mark.parametrize("noise", NOISES)
def test_decrypted_sum_carries_the_configured_noise(noise: NoiseKind) -> None:
    rng = np.random.default_rng(2024)
    d, agencies = 2400, 5
    base = PackingSpec(clip=1.0, precision_bits=12, max_summands=10, n_length=512)
    cfg = DPConfig(epsilon=8.0, delta=1e-5, clip_norm=2.0, noise=noise, rounds=10)
    dn = DistributedNoise(cfg, base, agencies, dim=d)
    spec = dn.spec
    assert spec.noise_bound == dn.noise_bound and spec.n_length == 512
    pub, priv = generate_keypair(512)
    updates = [dn.clip(rng.normal(scale=0.05, size=d)) for _ in range(agencies)]
    acc = dn.accountant()
    acc.check()
    encrypted = [encrypt_vector(pub, x, spec, noise=dn.sample(d, rng=rng)) for x in updates]
    released = decrypt_vector(priv, sum(encrypted[1:], encrypted[0]))
    acc.charge()
    # the noise exactly: decrypted sum minus the noiseless decoded sum
    slot_sums = np.stack([spec.quantize(x) for x in updates]).sum(axis=0, dtype=np.uint64)
    noiseless = spec.dequantize(slot_sums, agencies)
    err = released - noiseless
    want = dn.expected_sum_std()
    assert abs(err.std() / want - 1) < 0.15
    assert abs(err.mean()) < 5 * want / math.sqrt(d)
    # against the true float sum too (quantization error is negligible next to the noise)
    true_err = released - np.sum(updates, axis=0)
    assert abs(true_err.std() / want - 1) < 0.15
    assert acc.releases == 1 and acc.spent[0] < 8.0


# -- epsilon against contributors and per record ------------------------------------------------
def docs_example(n_min: int = 5) -> DistributedNoise:
    """The example of docs/privacy.md §2."""
    cfg = DPConfig(epsilon=4.0, delta=1e-6, clip_norm=1.0, noise="skellam", rounds=20)
    spec = PackingSpec(clip=1.0, precision_bits=16, max_summands=10, n_length=512)
    return DistributedNoise(cfg, spec, n_min, dim=1000)


def test_record_level_epsilon_of_the_documented_example() -> None:
    # A changed record moves an agency's clipped update anywhere in the clip ball: the
    # replace-one sensitivity 2C/s + √d, not the zero-out C/s + √d the configured ε uses.
    dn = docs_example()
    assert dn.epsilon == pytest.approx(4.0, rel=1e-5)
    record = dn.record_epsilon
    l2_record = (2 * 1.0 / dn.spec.step + math.sqrt(1000)) * (1 + 1e-9)
    z_record = dn.sigma_total / l2_record
    reference = gaussian_epsilon(
        noise_multiplier=z_record, rounds=20, delta=dn.config.delta_rdp, orders=DEFAULT_ORDERS
    )
    # Skellam's bound is the Gaussian curve plus an O(1/μ²) term: at this noise, equal to 1e-6
    assert record == pytest.approx(reference, rel=1e-6)
    assert round(record, 2) == 8.82  # the figure docs/privacy.md states
    assert dn.epsilon_against(0, record_level=True) == record


def test_epsilon_against_a_contributing_agency_with_two_contributors() -> None:
    # The other agency knows its own share and subtracts it: one share of σ²/2 protects.
    dn = docs_example(n_min=2)
    against = dn.epsilon_against_agency
    reference = gaussian_epsilon(
        noise_multiplier=dn.noise_multiplier / math.sqrt(2),
        rounds=20,
        delta=dn.config.delta_rdp,
        orders=DEFAULT_ORDERS,
    )
    assert against == pytest.approx(reference, rel=1e-6)
    assert round(against, 2) == 5.94  # the figure docs/privacy.md states
    assert dn.epsilon_against(2) == math.inf  # both shares known: nothing protects


@pytest.mark.parametrize("noise", NOISES)
def test_epsilon_grows_with_the_coalition_and_releases(noise: NoiseKind) -> None:
    dn = make(noise, n_min=5)
    eps = [dn.epsilon_against(c) for c in range(6)]
    assert eps[0] == pytest.approx(dn.epsilon, rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(eps))
    assert eps[5] == math.inf
    assert dn.epsilon_against(1, releases=5) < dn.epsilon_against(1)
    with pytest.raises(ValueError, match="coalition"):
        dn.epsilon_against(-1)
    # colluding agencies accounted for at calibration: a coalition that size stays in budget
    guarded = make(noise, n_min=5, colluding=2)
    assert guarded.epsilon_against(2) <= 4.0 * (1 + 1e-6)
