"""Integer noise for distributed differential privacy, in quantization steps.

Each of ``n`` agencies adds a *share* of integer noise to its quantized update before
encryption (``noise=`` of :meth:`fedcity.crypto.PackingSpec.quantize`); only the sum is ever
decrypted, and the sum carries noise of the target scale:

- **Skellam** (Agarwal, Kairouz, Liu 2021): a share is ``Poisson(mu) - Poisson(mu)``
  (variance ``2·mu``). Skellam is closed under summation: ``n`` shares of ``mu`` sum to
  *exactly* Skellam with ``n·mu`` per side. :func:`share_parameter` gives
  ``mu = sigma_total² / (2n)``.
- **Discrete Gaussian** (Canonne, Kamath, Steinke 2020): ``P(x) ∝ exp(-x²/(2σ²))`` on the
  integers. A sum of ``n`` discrete Gaussians of scale ``σ`` is *not* a discrete Gaussian,
  but is close to one of scale ``σ·√n``: Kairouz, Liu, Steinke 2021 ("The Distributed
  Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", Prop. 14)
  bound the Rényi divergence between them by
  ``τ = 10 · Σ_{k=1}^{n-1} exp(-2π²σ²·k/(k+1))``; :mod:`fedcity.privacy.accountant` charges
  that ``τ`` (it underflows to 0 for ``σ ≳ 2``). :func:`share_parameter` gives
  ``σ = sigma_total / √n``.

Truncation. :class:`fedcity.crypto.PackingSpec` reserves room for noise in
``[-noise_bound, noise_bound]`` only, so the samplers draw from the distribution *conditioned*
on ``|x| <= bound`` (out-of-range draws are rejected and redrawn). :func:`tail_bound` is a
rigorous Chernoff upper bound ``p`` on ``P(|x| > bound)`` for the untruncated share, and the
conditioned distribution is within total variation ``p`` of the untruncated one. For a whole
run that releases ``N`` noise values, the truncated mechanism therefore differs from the
analysed one by at most ``N·p`` in total variation, and an ``(ε, δ)`` guarantee of the
untruncated mechanism becomes ``(ε, δ + (1 + e^ε)·N·p)``.
:class:`fedcity.privacy.mechanism.DistributedNoise` chooses the bound so that this extra term
fits in a small reserved share of ``δ`` (and ``p <= 1e-12``), and the accountant charges it.

Randomness. By default every draw comes from the operating system's CSPRNG
(:func:`secrets.token_bytes`), turned into uniform doubles with 53 random bits each; the
discrete Gaussian (CKS 2020, Alg. 3) and the Poisson sides of the Skellam share (inversion
below rate 10, Hörmann's PTRS above, with Loader's stable log-pmf) are computed from those
uniforms — the same algorithms as the query noise of :mod:`fedcity.analytics.privacy`. No
seed exists to leak or reuse. Tests may inject a deterministic source explicitly: either
``random_bytes`` (``n -> n bytes``) or a :class:`numpy.random.Generator` as ``rng`` (numpy's
own samplers are then used).

The samplers use float64 arithmetic for the acceptance tests (CKS 2020 describe an
exact-arithmetic sampler); the resulting distribution differs from the ideal one only at the
level of floating-point rounding of the acceptance probabilities (relative ~1e-16).

All functions are pure computation: no I/O.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_GAUSSIAN_SHARE",
    "MAX_SKELLAM_SHARE",
    "MAX_TAIL_PROBABILITY",
    "NoiseKind",
    "RandomBytes",
    "bound_for_tail",
    "csprng_discrete_gaussian",
    "csprng_poisson",
    "discrete_gaussian_variance",
    "new_rng",
    "sample_discrete_gaussian",
    "sample_noise",
    "sample_skellam",
    "share_parameter",
    "share_variance",
    "tail_bound",
]

NoiseKind = Literal["gaussian", "skellam"]
"""``"gaussian"``: distributed discrete Gaussian; ``"skellam"``: distributed Skellam."""

MAX_TAIL_PROBABILITY = 1e-12
"""Largest per-value truncation probability :func:`bound_for_tail` ever accepts."""

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes: ``n -> n bytes`` (default :func:`secrets.token_bytes`)."""

MAX_GAUSSIAN_SHARE = float(2**45)
"""Largest per-agency discrete Gaussian scale the CSPRNG sampler draws (quantization steps)."""

MAX_SKELLAM_SHARE = float(2**50)
"""Largest per-agency Skellam rate (per side) the CSPRNG sampler draws."""

_NOISE_KINDS = ("gaussian", "skellam")
_MAX_BOUND = 1 << 62


def new_rng() -> np.random.Generator:
    """A fresh PCG64 generator seeded with 256 bits from :mod:`secrets`.

    Not used by the samplers any more (they draw from the OS CSPRNG); kept for callers that
    want a secretly seeded numpy generator for non-privacy purposes.

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.default_rng(secrets.randbits(256))


def _check_kind(noise: str) -> None:
    if noise not in _NOISE_KINDS:
        raise ValueError(f"noise must be 'gaussian' or 'skellam', got {noise!r}")


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    return int(size)


def _check_bound(bound: int | None) -> int:
    if bound is None:
        return _MAX_BOUND
    if isinstance(bound, bool) or not isinstance(bound, int | np.integer) or bound < 0:
        raise ValueError(f"bound must be a non-negative integer or None, got {bound!r}")
    return int(bound)


# -- the OS CSPRNG ----------------------------------------------------------------------------
def _source(
    rng: np.random.Generator | None, random_bytes: RandomBytes | None
) -> np.random.Generator | RandomBytes:
    """The explicit test source, or :func:`secrets.token_bytes`."""
    if rng is not None and random_bytes is not None:
        raise ValueError("give at most one of rng and random_bytes (both are test sources)")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    if random_bytes is not None:
        if not callable(random_bytes):
            raise ValueError("random_bytes must be a callable n -> n bytes")
        return random_bytes
    return secrets.token_bytes


def _uniform_open(n: int, random_bytes: RandomBytes) -> npt.NDArray[np.float64]:
    """``n`` uniform doubles in the open interval (0, 1), 53 random bits each."""
    raw = random_bytes(8 * n)
    if not isinstance(raw, bytes | bytearray) or len(raw) != 8 * n:
        raise ValueError(f"random_bytes must return {8 * n} bytes")
    k = np.frombuffer(bytes(raw), dtype=np.uint64) >> np.uint64(11)
    out: npt.NDArray[np.float64] = (k.astype(np.float64) + 0.5) * 2.0**-53
    return out


def csprng_discrete_gaussian(
    sigma: float, n: int, bound: int, random_bytes: RandomBytes
) -> npt.NDArray[np.int64]:
    """CKS 2020 Alg. 3 on CSPRNG uniforms: discrete Laplace proposals, Gaussian acceptance."""
    t = math.floor(sigma) + 1
    shift = sigma * sigma / t
    two_var = 2.0 * sigma * sigma
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        batch = max(2 * (n - filled) + 16, 64)
        u = _uniform_open(3 * batch, random_bytes)
        # geometric on {0, 1, ...} with P(G >= k) = e^{-k/t}: floor(-t·log U)
        g1 = np.floor(-t * np.log(u[:batch]))
        g2 = np.floor(-t * np.log(u[batch : 2 * batch]))
        y = g1 - g2
        a = np.abs(y)
        accept = (u[2 * batch :] < np.exp(-((a - shift) ** 2) / two_var)) & (a <= bound)
        got = y[accept][: n - filled].astype(np.int64)
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def _stirlerr(k: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``log(k!) - ((k + 1/2)·log k - k + log √(2π))`` for ``k >= 1`` (Loader 2000)."""
    from scipy.special import gammaln  # imported on first use: fedcity.privacy stays cheap

    out = np.empty_like(k)
    small = k <= 15
    ks = k[small]
    out[small] = gammaln(ks + 1.0) - (ks + 0.5) * np.log(ks) + ks - 0.5 * math.log(2 * math.pi)
    kl = k[~small]
    kk = kl * kl
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    out[~small] = (s0 - (s1 - (s2 - (s3 - s4 / kk) / kk) / kk) / kk) / kl
    return out


def _log_poisson_centred(
    j: npt.NDArray[np.float64], base: float, frac: float, lam: float
) -> npt.NDArray[np.float64]:
    """``log P(K = base + j)`` for ``K ~ Poisson(lam)``, ``lam = base + frac``, stably."""
    d = j - frac
    k = base + j
    out = np.full(j.shape, -np.inf)
    pos = k >= 1
    dd, kk = d[pos], k[pos]
    near = np.abs(dd) < 0.1 * (kk + lam)
    bd0 = np.empty_like(dd)
    bd0[~near] = kk[~near] * np.log1p(dd[~near] / lam) - dd[~near]
    v = dd[near] / (kk[near] + lam)
    s = dd[near] * v
    ej = 2.0 * kk[near] * v
    v2 = v * v
    for i in range(1, 40):
        ej = ej * v2
        s = s + ej / (2 * i + 1)
    bd0[near] = s
    out[pos] = -_stirlerr(kk) - bd0 - 0.5 * np.log(2 * math.pi * kk)
    out[k == 0] = -lam
    return out


def csprng_poisson(lam: float, n: int, random_bytes: RandomBytes) -> npt.NDArray[np.int64]:
    """Poisson(lam) from CSPRNG uniforms: inversion (lam < 10) or PTRS (Hörmann 1993)."""
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    if lam < 10.0:
        u = _uniform_open(n, random_bytes)
        k = np.zeros(n, dtype=np.int64)
        p = math.exp(-lam)
        cdf = p
        active = u > cdf
        i = 0
        while active.any() and i < 200:
            i += 1
            p *= lam / i
            cdf += p
            k[active] += 1
            active &= u > cdf
        return k
    base = math.floor(lam)
    frac = lam - base
    slam = math.sqrt(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)
    filled = 0
    while filled < n:
        batch = max(2 * (n - filled) + 16, 64)
        uv = _uniform_open(2 * batch, random_bytes)
        u = uv[:batch] - 0.5
        v = uv[batch:]
        us = 0.5 - np.abs(u)
        j = np.floor((2.0 * a / us + b) * u + frac + 0.43)
        quick = (us >= 0.07) & (v <= vr)
        ok = (j + base >= 0) & ~((us < 0.013) & (v > us))
        slow = ok & ~quick
        accept = quick.copy()
        if slow.any():
            lhs = np.log(v[slow]) + log_inv_alpha - np.log(a / (us[slow] * us[slow]) + b)
            accept[slow] = lhs <= _log_poisson_centred(j[slow], float(base), frac, lam)
        got = j[accept][: n - filled].astype(np.int64) + np.int64(base)
        out[filled : filled + got.size] = got
        filled += got.size
    return out


# -- samplers ---------------------------------------------------------------------------------
def sample_discrete_gaussian(
    sigma: float,
    size: int,
    *,
    bound: int | None = None,
    rng: np.random.Generator | None = None,
    random_bytes: RandomBytes | None = None,
) -> npt.NDArray[np.int64]:
    """Draw discrete Gaussian integers ``P(x) ∝ exp(-x²/(2·sigma²))``.

    Vectorised form of Canonne–Kamath–Steinke 2020, Algorithm 3: draw ``Y`` from a discrete
    Laplace of scale ``t = floor(sigma) + 1`` (difference of two geometric variables) and
    accept with probability ``exp(-(|Y| - sigma²/t)² / (2·sigma²))``.

    Parameters
    ----------
    sigma : float
        Scale parameter, in quantization steps. The variance is ``<= sigma²``: equal to it
        within a relative ``3e-7`` at ``sigma = 1`` and to float precision from
        ``sigma = 1.5`` (see :func:`discrete_gaussian_variance`).
    size : int
        Number of values.
    bound : int, optional
        Draw from the distribution conditioned on ``|x| <= bound`` (see the module notes on
        truncation). ``None``: no bound.
    rng : numpy.random.Generator, optional
        Only for tests: draw with numpy's samplers from this generator.
    random_bytes : callable, optional
        Only for tests: ``n -> n bytes`` replacing :func:`secrets.token_bytes`.
        By default (neither given) every draw comes from the OS CSPRNG.

    Returns
    -------
    numpy.ndarray of int64, shape (size,)
    """
    sigma = _check_positive("sigma", sigma)
    n = _check_size(size)
    b = _check_bound(bound)
    source = _source(rng, random_bytes)
    if not isinstance(source, np.random.Generator):
        if sigma > MAX_GAUSSIAN_SHARE:
            raise ValueError(f"sigma {sigma:.3g} exceeds the sampler's {MAX_GAUSSIAN_SHARE:.3g}")
        return csprng_discrete_gaussian(sigma, n, b, source)
    gen = source
    t = math.floor(sigma) + 1
    p_geom = -math.expm1(-1.0 / t)  # success probability 1 - e^{-1/t}
    shift = sigma * sigma / t
    two_var = 2.0 * sigma * sigma
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        batch = max(2 * need + 16, 64)
        y = gen.geometric(p_geom, batch) - gen.geometric(p_geom, batch)
        a = np.abs(y).astype(np.float64)
        accept = gen.random(batch) < np.exp(-((a - shift) ** 2) / two_var)
        accept &= np.abs(y) <= b
        got = y[accept][:need]
        out[filled : filled + got.size] = got
        filled += got.size
    return out


def sample_skellam(
    mu: float,
    size: int,
    *,
    bound: int | None = None,
    rng: np.random.Generator | None = None,
    random_bytes: RandomBytes | None = None,
) -> npt.NDArray[np.int64]:
    """Draw symmetric Skellam integers ``Poisson(mu) - Poisson(mu)`` (variance ``2·mu``).

    Parameters
    ----------
    mu : float
        Poisson rate of each side, in quantization steps squared.
    size : int
        Number of values.
    bound : int, optional
        Draw from the distribution conditioned on ``|x| <= bound``.
    rng : numpy.random.Generator, optional
        Only for tests: draw with numpy's samplers from this generator.
    random_bytes : callable, optional
        Only for tests: ``n -> n bytes`` replacing :func:`secrets.token_bytes`.
        By default (neither given) every draw comes from the OS CSPRNG.

    Returns
    -------
    numpy.ndarray of int64, shape (size,)
    """
    mu = _check_positive("mu", mu)
    n = _check_size(size)
    b = _check_bound(bound)
    source = _source(rng, random_bytes)
    if not isinstance(source, np.random.Generator):
        if mu > MAX_SKELLAM_SHARE:
            raise ValueError(f"mu {mu:.3g} exceeds the sampler's {MAX_SKELLAM_SHARE:.3g}")
        rb = source
        out = csprng_poisson(mu, n, rb) - csprng_poisson(mu, n, rb)
        bad = np.flatnonzero(np.abs(out) > b)
        while bad.size:
            redraw = csprng_poisson(mu, bad.size, rb) - csprng_poisson(mu, bad.size, rb)
            out[bad] = redraw
            bad = bad[np.abs(redraw) > b]
        return out
    gen = source
    out = (gen.poisson(mu, n) - gen.poisson(mu, n)).astype(np.int64)
    bad = np.flatnonzero(np.abs(out) > b)
    while bad.size:
        redraw = (gen.poisson(mu, bad.size) - gen.poisson(mu, bad.size)).astype(np.int64)
        out[bad] = redraw
        bad = bad[np.abs(redraw) > b]
    return out


def sample_noise(
    noise: NoiseKind,
    parameter: float,
    size: int,
    *,
    bound: int | None = None,
    rng: np.random.Generator | None = None,
    random_bytes: RandomBytes | None = None,
) -> npt.NDArray[np.int64]:
    """Draw one agency's noise share: dispatch on ``noise``.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    parameter : float
        ``sigma`` of the discrete Gaussian or ``mu`` (per side) of the Skellam share, as
        returned by :func:`share_parameter`.
    size : int
    bound : int, optional
    rng : numpy.random.Generator, optional
        Only for tests (see :func:`sample_discrete_gaussian`).
    random_bytes : callable, optional
        Only for tests; default: the OS CSPRNG.

    Returns
    -------
    numpy.ndarray of int64, shape (size,)
    """
    _check_kind(noise)
    if noise == "gaussian":
        return sample_discrete_gaussian(
            parameter, size, bound=bound, rng=rng, random_bytes=random_bytes
        )
    return sample_skellam(parameter, size, bound=bound, rng=rng, random_bytes=random_bytes)


# -- moments and shares -----------------------------------------------------------------------
def discrete_gaussian_variance(sigma: float) -> float:
    """Exact variance of the discrete Gaussian of scale ``sigma``.

    Summed over the support for ``sigma < 8``; for ``sigma >= 8`` the variance equals
    ``sigma²`` to far below float precision (the gap is ``O(sigma⁴·exp(-2π²sigma²))``, CKS 2020).

    Parameters
    ----------
    sigma : float

    Returns
    -------
    float
    """
    sigma = _check_positive("sigma", sigma)
    if sigma >= 8.0:
        return sigma * sigma
    k = np.arange(-int(40 * sigma + 40), int(40 * sigma + 41), dtype=np.float64)
    w = np.exp(-(k * k) / (2.0 * sigma * sigma))
    return float((k * k * w).sum() / w.sum())


def share_parameter(noise: NoiseKind, sigma_total: float, n_contributors: int) -> float:
    """Per-agency noise parameter so that ``n_contributors`` shares sum to scale ``sigma_total``.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    sigma_total : float
        Standard deviation of the summed noise, in quantization steps.
    n_contributors : int
        Number of agencies whose shares are summed (use the *minimum* expected, see
        ``docs/privacy.md``).

    Returns
    -------
    float
        Discrete Gaussian: ``sigma = sigma_total / √n`` (the sum is *approximately* a discrete
        Gaussian of scale ``sigma_total``; Kairouz–Liu–Steinke 2021). Skellam:
        ``mu = sigma_total² / (2n)`` per side (the sum is *exactly* Skellam with variance
        ``sigma_total²``).
    """
    _check_kind(noise)
    sigma_total = _check_positive("sigma_total", sigma_total)
    n = n_contributors
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_contributors must be a positive integer, got {n_contributors!r}")
    if noise == "gaussian":
        return sigma_total / math.sqrt(n_contributors)
    return sigma_total * sigma_total / (2.0 * n_contributors)


def share_variance(noise: NoiseKind, parameter: float) -> float:
    """Variance of one untruncated share with the given parameter.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    parameter : float
        ``sigma`` (discrete Gaussian) or ``mu`` (Skellam, per side).

    Returns
    -------
    float
    """
    _check_kind(noise)
    if noise == "gaussian":
        return discrete_gaussian_variance(parameter)
    return 2.0 * _check_positive("mu", parameter)


# -- truncation -------------------------------------------------------------------------------
def tail_bound(noise: NoiseKind, parameter: float, bound: int) -> float:
    """Rigorous upper bound on ``P(|x| > bound)`` for one untruncated share.

    Discrete Gaussian: it is ``sigma``-subgaussian (``E e^{λx} <= e^{λ²σ²/2}``, CKS 2020), so
    ``P(|x| >= m) <= 2·exp(-m²/(2σ²))`` with ``m = bound + 1``. Skellam: Chernoff with the
    moment generating function ``exp(2μ(cosh λ - 1))`` at ``λ = asinh(m/(2μ))`` gives
    ``P(|x| >= m) <= 2·exp(-(m·asinh(m/(2μ)) - 2μ(√(1 + (m/(2μ))²) - 1)))``.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    parameter : float
        ``sigma`` or ``mu`` (per side).
    bound : int

    Returns
    -------
    float
        At most 1.
    """
    _check_kind(noise)
    p = _check_positive("parameter", parameter)
    b = _check_bound(bound)
    m = float(b) + 1.0
    if noise == "gaussian":
        exponent = m * m / (2.0 * p * p)
    else:
        y = m / (2.0 * p)
        exponent = m * math.asinh(y) - 2.0 * p * (math.hypot(1.0, y) - 1.0)
    return min(1.0, 2.0 * math.exp(-exponent))


def bound_for_tail(noise: NoiseKind, parameter: float, tail_probability: float) -> int:
    """Smallest integer bound whose :func:`tail_bound` is at most ``tail_probability``.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    parameter : float
        ``sigma`` or ``mu`` (per side).
    tail_probability : float
        In ``(0, 1e-12]``: larger values are clamped to :data:`MAX_TAIL_PROBABILITY`.

    Returns
    -------
    int
    """
    _check_kind(noise)
    parameter = _check_positive("parameter", parameter)
    target = min(_check_positive("tail_probability", tail_probability), MAX_TAIL_PROBABILITY)
    hi = 1
    while tail_bound(noise, parameter, hi) > target:
        hi *= 2
        if hi > _MAX_BOUND:
            raise ValueError(f"no 62-bit noise bound reaches tail probability {target}")
    lo = 0
    if tail_bound(noise, parameter, lo) <= target:
        return 0
    while hi - lo > 1:  # invariant: tail(lo) > target >= tail(hi)
        mid = (lo + hi) // 2
        if tail_bound(noise, parameter, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
