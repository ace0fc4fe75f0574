"""Distributed differential privacy for fedcity's encrypted aggregates.

Each agency clips its update (:func:`clip_l2`), adds an integer noise share in quantization
steps (:class:`DistributedNoise`, built on :mod:`fedcity.privacy.noise`) and encrypts; only the
sum — which carries noise of the configured scale — is decrypted. :class:`DPConfig` holds the
keyword-only, validated privacy parameters; :class:`PrivacyAccountant` is checked before and
charged after every release; :class:`DPFloor` is an agency's check of the settings a
coordinator sends it. See ``docs/privacy.md``.

Pure computation: nothing in this package does I/O.
"""

from fedcity.privacy.accountant import (
    DEFAULT_ORDERS,
    MAX_DELTA,
    MAX_EPSILON,
    TRUNCATION_DELTA_SHARE,
    BudgetExceededError,
    Calibration,
    DPConfig,
    PrivacyAccountant,
    Sensitivity,
    calibrate_noise_multiplier,
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
from fedcity.privacy.floors import DPFloor, FloorViolation, ImpliedPrivacy
from fedcity.privacy.mechanism import DistributedNoise
from fedcity.privacy.noise import (
    bound_for_tail,
    discrete_gaussian_variance,
    new_rng,
    sample_discrete_gaussian,
    sample_noise,
    sample_skellam,
    share_parameter,
    share_variance,
    tail_bound,
)

__all__ = [
    "DEFAULT_ORDERS",
    "MAX_DELTA",
    "MAX_EPSILON",
    "TRUNCATION_DELTA_SHARE",
    "BudgetExceededError",
    "Calibration",
    "DPConfig",
    "DPFloor",
    "DistributedNoise",
    "FloorViolation",
    "ImpliedPrivacy",
    "PrivacyAccountant",
    "Sensitivity",
    "bound_for_tail",
    "calibrate_noise_multiplier",
    "clip_l2",
    "ddg_rdp",
    "ddg_tau",
    "discrete_gaussian_variance",
    "distributed_epsilon",
    "epsilon_from_rdp",
    "gaussian_epsilon",
    "gaussian_noise_multiplier",
    "gaussian_rdp",
    "new_rng",
    "quantized_sensitivity",
    "sample_discrete_gaussian",
    "sample_noise",
    "sample_skellam",
    "share_parameter",
    "share_variance",
    "skellam_rdp",
    "tail_bound",
]
