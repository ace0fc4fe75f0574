"""Privacy parameters, sensitivity and Rényi-DP accounting of repeated noisy releases.

The mechanism
-------------
Each contributing agency L2-clips its update to ``clip_norm`` (:func:`clip_l2`), quantizes it
with :meth:`fedcity.crypto.PackingSpec.quantize` (step ``s``, deterministic rounding), adds an
integer noise share (:mod:`fedcity.privacy.noise`) and encrypts. Only the sum is decrypted:
the release is ``Σ_i q(x_i) + Σ_i η_i`` (then dequantized, which is post-processing).

Neighbouring relation and sensitivity
-------------------------------------
The unit of privacy is one agency's update in one release. Which agencies take part (and so
the number of summands, which decoding needs) is public, so the relation is not add/remove:

- ``"zero_out"`` (default): one agency's update is replaced by the null update ``x = 0``
  (``dp_accounting``'s ``REPLACE_SPECIAL`` relation, as used for DP-FTRL by Kairouz et al.
  2021);
- ``"replace_one"``: one agency's update is replaced by any other clipped update.

With ``L = 2^b - 1`` levels the packer computes ``q(x) = rint(x/s + L/2)`` per coordinate
(after clipping each coordinate to ``[-clip, clip]``, which never increases the L2 norm). As
``L`` is odd, ``L/2 = m + 1/2`` with ``m = (L-1)/2`` and ``q(0) = m`` (round half to even), so
``q(x) - q(0) = x/s + u`` with every ``u_j ∈ [0, 1]``. Hence, for ``‖x‖₂ <= C``:

- zero-out: ``‖q(x) - q(0)‖₂ <= C/s + √d``;
- replace-one: ``q(x) - q(x') = (x - x')/s + (u - u')`` with ``|u_j - u'_j| <= 1``, so
  ``‖q(x) - q(x')‖₂ <= 2C/s + √d``.

(The often quoted ``C/s + √d/2`` needs a grid centred on 0; this packer's half-step offset
costs the other ``√d/2``.) The L1 norm is at most ``√d·Δ₂`` (Cauchy–Schwarz; the integer bound
``‖v‖₁ <= ‖v‖₂²`` never helps here because ``Δ₂ >= √d``): ``Δ₁ = √d·Δ₂``. Both bounds get a
relative slack of ``1e-9`` for floating-point rounding in clipping and quantization.

Rényi DP of one release (``σ`` = standard deviation of the summed noise, quantization steps)
---------------------------------------------------------------------------------------------
- Continuous Gaussian reference (:func:`gaussian_rdp`): ``α·Δ₂²/(2σ²)``, from ``dp_accounting``.
- Distributed discrete Gaussian (:func:`ddg_rdp`), ``n`` shares of scale ``σ_i = σ/√n``:
  Kairouz, Liu, Steinke 2021, Proposition 14 / Theorem 1, with
  ``τ = 10·Σ_{k=1}^{n-1} exp(-2π²σ_i²·k/(k+1))`` (needs ``σ_i >= 1/2``)::

      ε(α) = min( α/2·(Δ₂/σ)² + τ·d,
                  α/2·((Δ₂/σ)² + 2·τ·Δ₁/σ + τ²·d),
                  α/2·(Δ₂/σ + τ·√d)² )

  which is exactly the Gaussian curve when ``τ = 0`` (a single share, or ``σ_i ≳ 2`` where
  ``τ`` underflows).
- Skellam (:func:`skellam_rdp`), summed noise ``Sk(μ, μ)`` with ``2μ = σ²``:
  Agarwal, Kairouz, Liu 2021 (arXiv:2110.04995; the same formula as the authors' reference
  code, google-research/federated ``distributed_dp/accounting_utils.py``), integer ``α > 1``::

      ε(α) = α·Δ₂²/(4μ) + min( ((2α - 1)·Δ₂² + 6·Δ₁)/(16μ²), 3·Δ₁/(4μ) )

  This is the Skellam mechanism's own bound, not a Gaussian approximation; the tests check it
  against Rényi divergences computed exactly from the Skellam probability mass function.

Both discrete bounds are used only at integer orders (:data:`DEFAULT_ORDERS`). ``T`` releases
compose by adding RDP curves; ``(ε, δ)`` comes from ``dp_accounting``'s conversion
(:func:`epsilon_from_rdp`; Canonne–Kamath–Steinke 2020, arXiv:2004.00010 Prop. 12, and
arXiv:2001.05990 Eq. 20, as cited by ``dp_accounting``:
``ε = min_α [ρ(α) + log(1 - 1/α) - log(δ·α)/(α - 1)]``), never larger than the classic
``min_α [ρ(α) + log(1/δ)/(α - 1)]`` of Mironov 2017. No privacy amplification by sampling is
claimed: agencies are not sampled secretly.

Truncation of the noise (see :mod:`fedcity.privacy.noise`) is charged on top: the share
:data:`TRUNCATION_DELTA_SHARE` of ``δ`` is reserved for it and ``ε`` is computed at the rest.

Everything here is pure computation: no I/O.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedcity.privacy.noise import NoiseKind, share_parameter

__all__ = [
    "DEFAULT_ORDERS",
    "MAX_CLIP_NORM",
    "MAX_DELTA",
    "MAX_EPSILON",
    "MAX_NOISE_MULTIPLIER",
    "MAX_ROUNDS",
    "MIN_NOISE_MULTIPLIER",
    "TRUNCATION_DELTA_SHARE",
    "Adjacency",
    "BudgetExceededError",
    "Calibration",
    "DPConfig",
    "PrivacyAccountant",
    "Sensitivity",
    "calibrate_noise_multiplier",
    "clip_l2",
    "ddg_rdp",
    "ddg_tau",
    "distributed_epsilon",
    "epsilon_from_rdp",
    "gaussian_epsilon",
    "gaussian_noise_multiplier",
    "gaussian_rdp",
    "quantized_sensitivity",
    "skellam_rdp",
]

Adjacency = Literal["zero_out", "replace_one"]
"""Neighbouring relation: one agency's update zeroed out, or replaced by another."""

DEFAULT_ORDERS: tuple[float, ...] = (
    *(float(a) for a in range(2, 129)),
    160.0,
    192.0,
    256.0,
    384.0,
    512.0,
    768.0,
    1024.0,
    2048.0,
    4096.0,
)
"""Integer Rényi orders used for the discrete mechanisms (their bounds hold at integer orders)."""

TRUNCATION_DELTA_SHARE = 1e-3
"""Share of ``δ`` reserved for the truncation of noise shares to ``noise_bound``."""

MAX_EPSILON = 100.0
"""Largest ``ε`` a job may ask or be calibrated to: beyond it the guarantee is void (``e^ε``)."""

MAX_DELTA = 1e-2
"""Largest ``δ`` accepted: a ``δ`` of a percent already allows publishing records outright."""

MIN_NOISE_MULTIPLIER = 1e-3
"""Smallest configured noise multiplier ``z = σ/Δ₂`` (below it the noise is negligible)."""

MAX_NOISE_MULTIPLIER = 1e6
"""Largest configured noise multiplier (beyond it the releases are pure noise)."""

MAX_CLIP_NORM = 1e12
"""Largest L2 clip norm accepted."""

MAX_ROUNDS = 1_000_000
"""Most planned releases of one job."""

_FLOAT_SLACK = 1e-9
_ADJACENCIES = ("zero_out", "replace_one")

FloatArray = npt.NDArray[np.float64]
Orders = Sequence[float] | npt.NDArray[np.float64]


@functools.cache
def _rdp() -> Any:
    """``dp_accounting.rdp.rdp_privacy_accountant``, imported on first use.

    Importing ``dp_accounting`` pulls in ``scipy.signal`` and its PLD code (seconds on a loaded
    machine), so ``import fedcity.privacy`` stays cheap until accounting is needed.
    """
    from dp_accounting.rdp import rdp_privacy_accountant

    return rdp_privacy_accountant


def _gaussian_event(noise_multiplier: float) -> Any:
    from dp_accounting import GaussianDpEvent

    return GaussianDpEvent(noise_multiplier)


# -- validation helpers -----------------------------------------------------------------------
def _as_real(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    return float(value)


def _positive_finite(name: str, value: object) -> float:
    v = _as_real(value)
    if v is None or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _probability(name: str, value: object) -> float:
    v = _as_real(value)
    if v is None or not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be a number with 0 < {name} < 1, got {value!r}")
    return v


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _orders_array(orders: Orders | None) -> FloatArray:
    arr = np.asarray(DEFAULT_ORDERS if orders is None else orders, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 1.0):
        raise ValueError("orders must be a non-empty 1-D sequence of finite numbers > 1")
    return arr


def _integer_orders(orders: Orders | None) -> FloatArray:
    arr = _orders_array(orders)
    if np.any(arr != np.floor(arr)):
        raise ValueError("the discrete mechanisms' RDP bounds hold at integer orders only")
    return arr


# -- clipping and sensitivity -----------------------------------------------------------------
def clip_l2(vector: npt.ArrayLike, clip_norm: float) -> FloatArray:
    """Scale a vector down so that its L2 norm is at most ``clip_norm``.

    Parameters
    ----------
    vector : array_like of float
        Any shape; the norm is taken over all entries.
    clip_norm : float
        Positive and finite.

    Returns
    -------
    numpy.ndarray of float64
        A new array: ``vector · min(1, clip_norm / ‖vector‖₂)``.

    Raises
    ------
    ValueError
        ``clip_norm`` is not positive and finite, or ``vector`` holds NaN or infinity.
    """
    c = _positive_finite("clip_norm", clip_norm)
    arr = np.array(vector, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector holds NaN or infinity; only finite values can be clipped")
    norm = float(np.linalg.norm(arr.ravel()))
    if norm > c:
        arr *= c / norm
    return arr


@dataclass(frozen=True)
class Sensitivity:
    """Sensitivity of the quantized sum to one agency's update, in quantization steps.

    Attributes
    ----------
    l2 : float
        ``Δ₂``, bound on the L2 norm of the change.
    l1 : float
        ``Δ₁``, bound on the L1 norm of the change.
    dim : int
        Number of coordinates ``d``.
    """

    l2: float
    l1: float
    dim: int

    def __post_init__(self) -> None:
        _positive_finite("l2", self.l2)
        _positive_finite("l1", self.l1)
        _positive_int("dim", self.dim)


def quantized_sensitivity(
    *, clip_norm: float, step: float, dim: int, adjacency: Adjacency = "zero_out"
) -> Sensitivity:
    """Sensitivity of the quantized sum after L2 clipping and deterministic rounding.

    Parameters
    ----------
    clip_norm : float
        ``C``: every agency's update has L2 norm at most ``C`` (float units).
    step : float
        ``s``: the quantization step (:attr:`fedcity.crypto.PackingSpec.step`).
    dim : int
        ``d``: number of coordinates released.
    adjacency : {"zero_out", "replace_one"}, default "zero_out"

    Returns
    -------
    Sensitivity
        ``Δ₂ = C/s + √d`` (zero-out) or ``2C/s + √d`` (replace-one), derived in the module
        notes, and ``Δ₁ = √d·Δ₂``; each times ``1 + 1e-9``.
    """
    c = _positive_finite("clip_norm", clip_norm)
    s = _positive_finite("step", step)
    d = _positive_int("dim", dim)
    if adjacency not in _ADJACENCIES:
        raise ValueError(f"adjacency must be 'zero_out' or 'replace_one', got {adjacency!r}")
    factor = 1.0 if adjacency == "zero_out" else 2.0
    l2 = (factor * c / s + math.sqrt(d)) * (1.0 + _FLOAT_SLACK)
    l1 = math.sqrt(d) * l2 * (1.0 + _FLOAT_SLACK)
    return Sensitivity(l2=l2, l1=l1, dim=d)


# -- RDP curves of one release ----------------------------------------------------------------
def gaussian_rdp(orders: Orders, noise_multiplier: float) -> FloatArray:
    """RDP of one continuous Gaussian release, ``α / (2z²)``, computed by ``dp_accounting``.

    Parameters
    ----------
    orders : sequence of float
        Rényi orders ``> 1``.
    noise_multiplier : float
        ``z = σ/Δ₂``.

    Returns
    -------
    numpy.ndarray of float64
    """
    z = _positive_finite("noise_multiplier", noise_multiplier)
    arr = _orders_array(orders)
    acc = _rdp().RdpAccountant(orders=list(arr))
    acc.compose(_gaussian_event(z))
    return np.asarray(acc.rdp, dtype=np.float64)


def ddg_tau(sigma_share: float, n_contributors: int) -> float:
    """``τ = 10·Σ_{k=1}^{n-1} exp(-2π²σ²·k/(k+1))`` of Kairouz–Liu–Steinke 2021.

    Bounds the divergence between a sum of ``n`` discrete Gaussians of scale ``σ`` and one
    discrete Gaussian of scale ``σ√n`` (0 for ``n = 1``).

    Parameters
    ----------
    sigma_share : float
        ``σ``, per-agency scale, quantization steps.
    n_contributors : int

    Returns
    -------
    float
    """
    s = _positive_finite("sigma_share", sigma_share)
    n = _positive_int("n_contributors", n_contributors)
    c = 2.0 * math.pi**2 * s * s
    return 10.0 * math.fsum(math.exp(-c * k / (k + 1)) for k in range(1, n))


def ddg_rdp(
    orders: Orders,
    *,
    sigma_share: float,
    n_contributors: int,
    sensitivity: Sensitivity,
) -> FloatArray:
    """RDP of one release of the distributed discrete Gaussian mechanism.

    Kairouz, Liu, Steinke 2021 ("The Distributed Discrete Gaussian Mechanism for Federated
    Learning with Secure Aggregation"), Proposition 14 with ``τ`` of Theorem 1; see the module
    notes for the formula.

    Parameters
    ----------
    orders : sequence of float
        Integer orders ``> 1``.
    sigma_share : float
        Per-agency scale ``σ_i >= 1/2`` (quantization steps).
    n_contributors : int
        Number of shares in the sum (the minimum guaranteed).
    sensitivity : Sensitivity

    Returns
    -------
    numpy.ndarray of float64
    """
    s = _positive_finite("sigma_share", sigma_share)
    if s < 0.5:
        raise ValueError(f"sigma_share must be >= 1/2 for the DDG bound, got {sigma_share!r}")
    n = _positive_int("n_contributors", n_contributors)
    a = _integer_orders(orders)
    tau = ddg_tau(s, n)
    sigma = s * math.sqrt(n)
    l2s, l1s, d = sensitivity.l2 / sigma, sensitivity.l1 / sigma, sensitivity.dim
    term1 = a / 2.0 * l2s**2 + tau * d
    term2 = a / 2.0 * (l2s**2 + 2.0 * l1s * tau + tau**2 * d)
    term3 = a / 2.0 * (l2s + math.sqrt(d) * tau) ** 2
    out: FloatArray = np.minimum(np.minimum(term1, term2), term3)
    return out


def skellam_rdp(orders: Orders, *, mu_total: float, sensitivity: Sensitivity) -> FloatArray:
    """RDP of one release of the (distributed) Skellam mechanism.

    Agarwal, Kairouz, Liu 2021 ("The Skellam Mechanism for Differentially Private Federated
    Learning", arXiv:2110.04995): for integer ``α > 1`` and summed noise ``Sk(μ, μ)`` per
    coordinate, ``ε(α) = α·Δ₂²/(4μ) + min(((2α - 1)·Δ₂² + 6·Δ₁)/(16μ²), 3·Δ₁/(4μ))``.

    Parameters
    ----------
    orders : sequence of float
        Integer orders ``> 1``.
    mu_total : float
        ``μ``: Poisson rate per side of the *summed* noise (variance ``2μ``).
    sensitivity : Sensitivity

    Returns
    -------
    numpy.ndarray of float64
    """
    mu = _positive_finite("mu_total", mu_total)
    a = _integer_orders(orders)
    l2sq, l1 = sensitivity.l2**2, sensitivity.l1
    extra = np.minimum(
        ((2.0 * a - 1.0) * l2sq + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu)
    )
    out: FloatArray = a * l2sq / (4.0 * mu) + extra
    return out


# -- conversion and calibration ---------------------------------------------------------------
def epsilon_from_rdp(orders: Orders, rdp: npt.ArrayLike, delta: float) -> float:
    """Convert an RDP curve to ``ε`` at ``δ`` with ``dp_accounting``'s conversion.

    ``ε = min_α [ρ(α) + log(1 - 1/α) - log(δ·α)/(α - 1)]`` over orders ``α > 1.01``
    (Canonne–Kamath–Steinke 2020, Prop. 12 of arXiv:2004.00010v4; arXiv:2001.05990), which
    never exceeds the classic ``min_α [ρ(α) + log(1/δ)/(α - 1)]`` (Mironov 2017).

    Parameters
    ----------
    orders : sequence of float
    rdp : array_like of float
        RDP at each order (already composed).
    delta : float
        ``0 < δ < 1``.

    Returns
    -------
    float
    """
    d = _probability("delta", delta)
    arr = _orders_array(orders)
    r = np.asarray(rdp, dtype=np.float64)
    if r.shape != arr.shape:
        raise ValueError(f"rdp has shape {r.shape}, orders {arr.shape}")
    eps, _ = _rdp().compute_epsilon(list(arr), list(r), d)
    return float(eps)


def gaussian_epsilon(
    *,
    noise_multiplier: float,
    rounds: int,
    delta: float,
    orders: Orders | None = None,
) -> float:
    """``ε`` of ``rounds`` compositions of the Gaussian mechanism with ``z = σ/Δ₂``.

    Uses ``dp_accounting``'s :class:`RdpAccountant` (``GaussianDpEvent`` composed ``rounds``
    times, no sampling).

    Parameters
    ----------
    noise_multiplier : float
    rounds : int
    delta : float
    orders : sequence of float, optional
        Rényi orders; default ``dp_accounting``'s ``DEFAULT_RDP_ORDERS``.

    Returns
    -------
    float
    """
    z = _positive_finite("noise_multiplier", noise_multiplier)
    t = _positive_int("rounds", rounds)
    d = _probability("delta", delta)
    acc = _rdp().RdpAccountant(orders=None if orders is None else list(_orders_array(orders)))
    acc.compose(_gaussian_event(z), t)
    return float(acc.get_epsilon(d))


def calibrate_noise_multiplier(
    epsilon_of: Callable[[float], float], *, epsilon: float, rtol: float = 1e-6
) -> float:
    """Smallest noise multiplier (to ``rtol``) whose ``ε`` is at most the target.

    Bracketing then bisection in ``log z``; ``epsilon_of`` must be non-increasing in ``z``.
    The returned ``z`` always satisfies ``epsilon_of(z) <= epsilon``.

    Parameters
    ----------
    epsilon_of : callable
        ``z -> ε``.
    epsilon : float
        Target ``ε > 0``.
    rtol : float, default 1e-6
        Relative width of the final bracket.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        No ``z`` in ``[1e-6, 1e9]`` reaches the target.
    """
    target = _positive_finite("epsilon", epsilon)
    hi = 1.0
    while epsilon_of(hi) > target:
        hi *= 2.0
        if hi > 1e9:
            raise ValueError(f"no noise multiplier up to 1e9 reaches epsilon={target}")
    lo = hi / 2.0
    while epsilon_of(lo) <= target:
        hi = lo
        lo /= 2.0
        if lo < 1e-6:
            return hi
    while hi / lo - 1.0 > rtol:
        mid = math.sqrt(lo * hi)
        if epsilon_of(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def gaussian_noise_multiplier(
    *, epsilon: float, delta: float, rounds: int, orders: Orders | None = None
) -> float:
    """Smallest Gaussian noise multiplier giving at most ``epsilon`` over ``rounds``.

    Binary search over :func:`gaussian_epsilon`.

    Parameters
    ----------
    epsilon : float
    delta : float
    rounds : int
    orders : sequence of float, optional

    Returns
    -------
    float
    """
    _positive_finite("epsilon", epsilon)
    _probability("delta", delta)
    _positive_int("rounds", rounds)
    return calibrate_noise_multiplier(
        lambda z: gaussian_epsilon(noise_multiplier=z, rounds=rounds, delta=delta, orders=orders),
        epsilon=epsilon,
    )


def distributed_epsilon(
    *,
    noise: NoiseKind,
    share: float,
    honest_shares: int,
    sensitivity: Sensitivity,
    releases: int,
    delta: float,
    orders: Orders | None = None,
) -> float:
    """``ε`` of ``releases`` sums protected by ``honest_shares`` noise shares of ``share`` each.

    The view of a party that knows (and subtracts) every other share — e.g. a contributing
    agency that knows its own, or a coalition of them — is the same mechanism with fewer
    shares: this is how :class:`~fedcity.privacy.DistributedNoise` reports ``ε`` against
    contributors.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    share : float
        Per-agency discrete Gaussian scale, or Skellam rate per side (quantization steps).
    honest_shares : int
        Shares the observer does not know (``0``: no noise protects the sum, ``ε = inf``).
    sensitivity : Sensitivity
    releases : int
    delta : float
        ``δ`` of the RDP conversion.
    orders : sequence of float, optional
        Integer orders; default :data:`DEFAULT_ORDERS`.

    Returns
    -------
    float
        ``inf`` when no unknown share is left or a discrete Gaussian share is below scale 1/2.
    """
    p = _positive_finite("share", share)
    h = _non_negative_int("honest_shares", honest_shares)
    k = _positive_int("releases", releases)
    a = _integer_orders(orders)
    if noise not in ("gaussian", "skellam"):
        raise ValueError(f"noise must be 'gaussian' or 'skellam', got {noise!r}")
    if h == 0:
        return math.inf
    if noise == "gaussian":
        if p < 0.5:
            return math.inf
        rdp = ddg_rdp(a, sigma_share=p, n_contributors=h, sensitivity=sensitivity)
    else:
        rdp = skellam_rdp(a, mu_total=h * p, sensitivity=sensitivity)
    return epsilon_from_rdp(a, k * rdp, delta)


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Validated differential-privacy parameters of a federated job (all keyword-only).

    Give exactly one of ``epsilon`` (the noise multiplier is then calibrated so that
    ``rounds`` releases spend at most ``epsilon``) or ``noise_multiplier`` (``ε`` is then
    computed). See :meth:`calibrate`.

    Parameters
    ----------
    epsilon : float, optional
        Total ``ε`` budget for all releases; positive and finite.
    delta : float
        Total ``δ``, ``0 < δ < 1`` (it includes the truncation reserve,
        :data:`TRUNCATION_DELTA_SHARE`).
    clip_norm : float
        L2 bound ``C`` on each agency's update (float units); positive and finite.
    noise : {"gaussian", "skellam"}, default "gaussian"
        Distributed discrete Gaussian or distributed Skellam noise.
    noise_multiplier : float, optional
        ``z = σ/Δ₂``: standard deviation of the summed noise over the L2 sensitivity, both in
        quantization steps.
    rounds : int, default 1
        Planned number of releases (composition count).
    adjacency : {"zero_out", "replace_one"}, default "zero_out"
        Neighbouring relation (see the module notes).
    colluding : int, default 0
        Contributing agencies that may pool their noise shares with the reader of the sums
        (each agency knows its own): the noise is calibrated on the other
        ``n_contributors_min - colluding`` shares, so ``ε`` holds against such coalitions too.

    Raises
    ------
    ValueError
        A parameter is out of range (the message names it), or both or neither of
        ``epsilon`` and ``noise_multiplier`` are given.
    """

    epsilon: float | None = None
    delta: float
    clip_norm: float
    noise: NoiseKind = "gaussian"
    noise_multiplier: float | None = None
    rounds: int = 1
    adjacency: Adjacency = "zero_out"
    colluding: int = 0

    def __post_init__(self) -> None:
        if self.epsilon is not None:
            _positive_finite("epsilon", self.epsilon)
            if self.epsilon > MAX_EPSILON:
                raise ValueError(
                    f"epsilon={self.epsilon!r} is absurd: above {MAX_EPSILON:g} differential "
                    "privacy promises nothing (the bound grows as e^epsilon)"
                )
        _probability("delta", self.delta)
        if self.delta > MAX_DELTA:
            raise ValueError(
                f"delta={self.delta!r} is absurd: above {MAX_DELTA:g} a mechanism may publish "
                "records outright with that probability; use delta well below 1/records"
            )
        _positive_finite("clip_norm", self.clip_norm)
        if self.clip_norm > MAX_CLIP_NORM:
            raise ValueError(f"clip_norm={self.clip_norm!r} exceeds {MAX_CLIP_NORM:g}")
        if self.noise not in ("gaussian", "skellam"):
            raise ValueError(f"noise must be 'gaussian' or 'skellam', got {self.noise!r}")
        if self.noise_multiplier is not None:
            _positive_finite("noise_multiplier", self.noise_multiplier)
            if not MIN_NOISE_MULTIPLIER <= self.noise_multiplier <= MAX_NOISE_MULTIPLIER:
                raise ValueError(
                    f"noise_multiplier={self.noise_multiplier!r} is absurd: it must be in "
                    f"[{MIN_NOISE_MULTIPLIER:g}, {MAX_NOISE_MULTIPLIER:g}]"
                )
        _non_negative_int("colluding", self.colluding)
        if self.colluding > 1000:
            raise ValueError(f"colluding={self.colluding!r} exceeds 1000")
        _positive_int("rounds", self.rounds)
        if self.rounds > MAX_ROUNDS:
            raise ValueError(f"rounds={self.rounds!r} exceeds {MAX_ROUNDS}")
        if self.adjacency not in _ADJACENCIES:
            raise ValueError(
                f"adjacency must be 'zero_out' or 'replace_one', got {self.adjacency!r}"
            )
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "give exactly one of epsilon (to calibrate the noise) and noise_multiplier "
                f"(to compute epsilon); got epsilon={self.epsilon!r}, "
                f"noise_multiplier={self.noise_multiplier!r}"
            )

    @property
    def delta_rdp(self) -> float:
        """The part of ``delta`` used to convert RDP to ``(ε, δ)``: ``δ·(1 - share)``."""
        return self.delta * (1.0 - TRUNCATION_DELTA_SHARE)

    @property
    def truncation_delta(self) -> float:
        """The part of ``delta`` reserved for noise truncation: ``δ·share``."""
        return self.delta * TRUNCATION_DELTA_SHARE

    def rdp_per_release(
        self,
        noise_multiplier: float,
        *,
        sensitivity: Sensitivity,
        n_contributors: int,
        orders: Orders | None = None,
    ) -> FloatArray:
        """RDP of one release of this config's mechanism at a given noise multiplier.

        Parameters
        ----------
        noise_multiplier : float
        sensitivity : Sensitivity
        n_contributors : int
            Minimum number of (honest) noise shares in every sum.
        orders : sequence of float, optional
            Integer orders; default :data:`DEFAULT_ORDERS`.

        Returns
        -------
        numpy.ndarray of float64
            ``inf`` everywhere if a discrete Gaussian share would fall below scale 1/2, where
            the DDG bound does not apply.
        """
        z = _positive_finite("noise_multiplier", noise_multiplier)
        n = _positive_int("n_contributors", n_contributors)
        a = _integer_orders(orders)
        sigma_total = z * sensitivity.l2
        share = share_parameter(self.noise, sigma_total, n)
        if self.noise == "gaussian":
            if share < 0.5:
                return np.full(a.shape, np.inf)
            return ddg_rdp(a, sigma_share=share, n_contributors=n, sensitivity=sensitivity)
        return skellam_rdp(a, mu_total=sigma_total * sigma_total / 2.0, sensitivity=sensitivity)

    def calibrate(
        self,
        *,
        sensitivity: Sensitivity,
        n_contributors: int,
        orders: Orders | None = None,
    ) -> Calibration:
        """Resolve the noise multiplier and ``ε`` of the planned ``rounds`` releases.

        With ``epsilon`` given, binary-search the smallest noise multiplier whose ``rounds``
        releases spend at most ``epsilon`` at ``delta_rdp``; with ``noise_multiplier`` given,
        compute that ``ε``.

        Parameters
        ----------
        sensitivity : Sensitivity
        n_contributors : int
            Minimum number of (honest) noise shares in every sum.
        orders : sequence of float, optional

        Returns
        -------
        Calibration

        Raises
        ------
        ValueError
            The given noise multiplier puts a discrete Gaussian share below scale 1/2.
        """
        a = _integer_orders(orders)
        n = _positive_int("n_contributors", n_contributors)

        def epsilon_of(z: float) -> float:
            rdp = self.rdp_per_release(z, sensitivity=sensitivity, n_contributors=n, orders=a)
            return epsilon_from_rdp(a, self.rounds * rdp, self.delta_rdp)

        if self.noise_multiplier is None:
            assert self.epsilon is not None
            z = calibrate_noise_multiplier(epsilon_of, epsilon=self.epsilon)
        else:
            z = float(self.noise_multiplier)
        rdp = self.rdp_per_release(z, sensitivity=sensitivity, n_contributors=n, orders=a)
        if not np.all(np.isfinite(rdp)):
            raise ValueError(
                f"noise_multiplier={z!r} gives each of {n} agencies a discrete Gaussian share "
                "below scale 1/2, where the distributed discrete Gaussian bound does not hold"
            )
        planned = epsilon_from_rdp(a, self.rounds * rdp, self.delta_rdp)
        if planned > MAX_EPSILON:
            raise ValueError(
                f"noise_multiplier={z!r} over {self.rounds} release(s) gives epsilon="
                f"{planned:.4g}, above {MAX_EPSILON:g}: no meaningful privacy; raise the noise"
            )
        sigma_total = z * sensitivity.l2
        return Calibration(
            noise=self.noise,
            noise_multiplier=z,
            sigma_total=sigma_total,
            share=share_parameter(self.noise, sigma_total, n),
            n_contributors=n,
            sensitivity=sensitivity,
            orders=tuple(float(x) for x in a),
            rdp_per_release=tuple(float(x) for x in rdp),
            planned_epsilon=planned,
            epsilon_budget=planned if self.epsilon is None else float(self.epsilon),
            delta=float(self.delta),
            rounds=self.rounds,
        )


@dataclass(frozen=True)
class Calibration:
    """A resolved noise level and its privacy cost (from :meth:`DPConfig.calibrate`).

    Attributes
    ----------
    noise : {"gaussian", "skellam"}
    noise_multiplier : float
        ``z = σ/Δ₂``.
    sigma_total : float
        ``σ``: standard deviation (discrete Gaussian: scale) of the summed noise, quantization
        steps.
    share : float
        Per-agency parameter: ``σ/√n`` (discrete Gaussian) or ``σ²/(2n)`` (Skellam, per side).
    n_contributors : int
    sensitivity : Sensitivity
    orders : tuple of float
    rdp_per_release : tuple of float
    planned_epsilon : float
        ``ε`` of ``rounds`` releases at ``δ·(1 - TRUNCATION_DELTA_SHARE)``.
    epsilon_budget : float
        The configured ``epsilon``, or ``planned_epsilon`` when a noise multiplier was given.
    delta : float
        Total ``δ``.
    rounds : int
    """

    noise: NoiseKind
    noise_multiplier: float
    sigma_total: float
    share: float
    n_contributors: int
    sensitivity: Sensitivity
    orders: tuple[float, ...]
    rdp_per_release: tuple[float, ...]
    planned_epsilon: float
    epsilon_budget: float
    delta: float
    rounds: int


# -- the accountant ---------------------------------------------------------------------------
class BudgetExceededError(RuntimeError):
    """A release would exceed (or, when charged unchecked, has exceeded) the privacy budget."""


class PrivacyAccountant:
    """Checks each release against an ``(ε, δ)`` budget before it happens and charges after.

    Usage: call :meth:`check` (or :meth:`can_release`) *before* decrypting a release, then
    :meth:`charge` once it has been released. ``k`` releases of the same mechanism cost the
    RDP curve ``k·ρ(α)``, converted at ``δ_rdp = delta - truncation_delta``; truncation of the
    noise costs ``(1 + e^ε)·k·truncation_tv_per_release`` more ``δ``, which must stay within
    ``truncation_delta``.

    Parameters
    ----------
    orders : sequence of float
        Rényi orders.
    rdp_per_release : sequence of float
        RDP of one release at each order.
    epsilon_budget : float
        Total ``ε`` allowed.
    delta : float
        Total ``δ``.
    truncation_tv_per_release : float, default 0
        Total-variation distance between one truncated and one untruncated release (number of
        noise values times the per-value tail bound).
    truncation_delta : float, default 0
        Part of ``delta`` reserved for truncation; required ``> 0`` if
        ``truncation_tv_per_release > 0``.

    Attributes
    ----------
    releases : int
        Releases charged so far.
    """

    def __init__(
        self,
        *,
        orders: Orders,
        rdp_per_release: Sequence[float] | npt.NDArray[np.float64],
        epsilon_budget: float,
        delta: float,
        truncation_tv_per_release: float = 0.0,
        truncation_delta: float = 0.0,
    ) -> None:
        self._orders = _orders_array(orders)
        rdp = np.asarray(rdp_per_release, dtype=np.float64)
        if rdp.shape != self._orders.shape or np.any(np.isnan(rdp)) or np.any(rdp < 0):
            raise ValueError("rdp_per_release must be non-negative, one value per order")
        self._rdp = rdp
        self.epsilon_budget = _positive_finite("epsilon_budget", epsilon_budget)
        self.delta = _probability("delta", delta)
        tv = float(truncation_tv_per_release)
        if not (math.isfinite(tv) and tv >= 0):
            raise ValueError(
                "truncation_tv_per_release must be finite and >= 0, "
                f"got {truncation_tv_per_release!r}"
            )
        td = float(truncation_delta)
        if not (math.isfinite(td) and 0 <= td < self.delta):
            raise ValueError(f"truncation_delta must be in [0, delta), got {truncation_delta!r}")
        if tv > 0 and td == 0:
            raise ValueError("truncation_delta must be > 0 when truncation_tv_per_release > 0")
        self.truncation_tv_per_release = tv
        self.truncation_delta = td
        self.releases = 0

    @classmethod
    def gaussian(
        cls,
        *,
        noise_multiplier: float,
        epsilon_budget: float,
        delta: float,
        orders: Orders | None = None,
    ) -> PrivacyAccountant:
        """An accountant for the continuous Gaussian mechanism with ``z = σ/Δ₂``.

        Parameters
        ----------
        noise_multiplier : float
        epsilon_budget : float
        delta : float
        orders : sequence of float, optional
            Default: ``dp_accounting``'s ``DEFAULT_RDP_ORDERS``.

        Returns
        -------
        PrivacyAccountant
        """
        a = _rdp().DEFAULT_RDP_ORDERS if orders is None else orders
        return cls(
            orders=a,
            rdp_per_release=gaussian_rdp(a, noise_multiplier),
            epsilon_budget=epsilon_budget,
            delta=delta,
        )

    @classmethod
    def from_calibration(
        cls, calibration: Calibration, *, truncation_tv_per_release: float = 0.0
    ) -> PrivacyAccountant:
        """An accountant for a calibrated distributed mechanism.

        Parameters
        ----------
        calibration : Calibration
        truncation_tv_per_release : float, default 0

        Returns
        -------
        PrivacyAccountant
            Budget ``calibration.epsilon_budget``, ``δ = calibration.delta`` with
            :data:`TRUNCATION_DELTA_SHARE` of it reserved for truncation.
        """
        return cls(
            orders=calibration.orders,
            rdp_per_release=calibration.rdp_per_release,
            epsilon_budget=calibration.epsilon_budget,
            delta=calibration.delta,
            truncation_tv_per_release=truncation_tv_per_release,
            truncation_delta=calibration.delta * TRUNCATION_DELTA_SHARE,
        )

    def __repr__(self) -> str:
        eps, delta = self.spent
        return (
            f"<PrivacyAccountant releases={self.releases} spent=(ε={eps:.4g}, δ={delta:.3g}) "
            f"budget=(ε={self.epsilon_budget:.4g}, δ={self.delta:.3g})>"
        )

    # -- queries ------------------------------------------------------------------------
    @property
    def delta_rdp(self) -> float:
        """``δ`` at which RDP is converted: ``delta - truncation_delta``."""
        return self.delta - self.truncation_delta

    def epsilon_after(self, releases: int) -> float:
        """``ε`` after ``releases`` releases in total (0 for none).

        Parameters
        ----------
        releases : int

        Returns
        -------
        float
        """
        k = _non_negative_int("releases", releases)
        if k == 0:
            return 0.0
        return epsilon_from_rdp(self._orders, k * self._rdp, self.delta_rdp)

    def delta_after(self, releases: int) -> float:
        """``δ`` after ``releases`` releases: ``δ_rdp + (1 + e^ε)·k·tv`` (0 for none).

        Parameters
        ----------
        releases : int

        Returns
        -------
        float
        """
        k = _non_negative_int("releases", releases)
        if k == 0:
            return 0.0
        return self.delta_rdp + self._truncation_cost(k, self.epsilon_after(k))

    def _truncation_cost(self, k: int, eps: float) -> float:
        if self.truncation_tv_per_release == 0:
            return 0.0
        return (1.0 + math.exp(min(eps, 700.0))) * k * self.truncation_tv_per_release

    @property
    def spent(self) -> tuple[float, float]:
        """``(ε, δ)`` spent by the releases charged so far."""
        return self.epsilon_after(self.releases), self.delta_after(self.releases)

    def _problem(self, k: int) -> str | None:
        eps = self.epsilon_after(k)
        if eps > self.epsilon_budget:
            return (
                f"{k} release(s) would spend epsilon={eps:.6g} > budget {self.epsilon_budget:.6g}"
            )
        trunc = self._truncation_cost(k, eps)
        if trunc > self.truncation_delta:
            return (
                f"{k} release(s) would spend {trunc:.3g} of delta on noise truncation > "
                f"reserved {self.truncation_delta:.3g}"
            )
        return None

    def can_release(self, releases: int = 1) -> bool:
        """Whether ``releases`` more releases fit in the budget.

        Parameters
        ----------
        releases : int, default 1

        Returns
        -------
        bool
        """
        r = _positive_int("releases", releases)
        return self._problem(self.releases + r) is None

    def check(self, releases: int = 1) -> None:
        """Refuse (raise) if ``releases`` more releases would exceed the budget.

        Call before decrypting a release.

        Parameters
        ----------
        releases : int, default 1

        Raises
        ------
        BudgetExceededError
        """
        r = _positive_int("releases", releases)
        problem = self._problem(self.releases + r)
        if problem is not None:
            raise BudgetExceededError(f"privacy budget refuses the release: {problem}")

    def charge(self, releases: int = 1) -> tuple[float, float]:
        """Record ``releases`` releases that have happened; return ``(ε, δ)`` spent.

        The releases are always recorded, since they have happened. If they take the total
        beyond the budget (the :meth:`check` before them was skipped),
        :class:`BudgetExceededError` is raised *after* recording.

        Parameters
        ----------
        releases : int, default 1

        Returns
        -------
        (float, float)

        Raises
        ------
        BudgetExceededError
        """
        r = _positive_int("releases", releases)
        self.releases += r
        problem = self._problem(self.releases)
        if problem is not None:
            raise BudgetExceededError(f"privacy budget exceeded (release recorded): {problem}")
        return self.spent

    def remaining_releases(self) -> int:
        """How many more releases the budget allows (capped at ``2**40``).

        Returns
        -------
        int
        """
        if self._problem(self.releases + 1) is not None:
            return 0
        lo, hi = 1, 2
        cap = 1 << 40
        while hi < cap and self._problem(self.releases + hi) is None:
            lo, hi = hi, hi * 2
        if hi >= cap and self._problem(self.releases + cap) is None:
            return cap
        while hi - lo > 1:  # problem(lo) is None, problem(hi) is not
            mid = (lo + hi) // 2
            if self._problem(self.releases + mid) is None:
                lo = mid
            else:
                hi = mid
        return lo
