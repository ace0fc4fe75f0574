"""Optional differential privacy for query vectors: distributed integer noise, calibrated.

What it guarantees
------------------
Neighbouring relation: **add or remove one row** of one agency's table (record-level DP). Each
agency adds an integer noise *share* to every entry of its query vector before encryption; only
the sum over agencies is decrypted, and it carries noise of the calibrated scale, so nobody —
coordinator, decryptors, scientist — sees a less noisy figure (agencies that collude with the
decryptors can subtract their own shares: pass them as ``colluding``).

Sensitivity (integer units, per query vector)
----------------------------------------------
The vector is cut into *blocks*; one row changes **at most one entry of each block**, by at
most the block's ``sensitivity``:

- ``"n"`` rows per cell plus the out-of-domain total (a row is in one cell *or* out of domain):
  ``Δ = 1``;
- ``"nn:<col>"`` non-missing values of a column per cell: ``Δ = 1``;
- ``"s:<col>"`` offset fixed-point sum of a clipped column per cell: a row adds
  ``round(clip(x)·10^d) - LO`` in ``[0, HI - LO]``, so ``Δ = HI - LO`` (the clip range in
  fixed-point units);
- ``"h:<aggregate>"`` histogram bins of every cell (cells × bins entries): a row falls in one
  bin of one cell, ``Δ = 1``;
- ``"presence"`` (the first round: 1 if the agency has a matching row in the cell): adding a
  row flips at most one cell, ``Δ = 1``.

For a block ``k`` the summed noise has standard deviation ``σ_k = z·Δ_k`` (one noise multiplier
``z`` for all blocks), so each block costs the same Rényi-DP curve and the query's curve is the
sum over blocks (composition of independent mechanisms on disjoint coordinates, tight for
Gaussian noise since ``‖change‖₂² = Σ_k Δ_k²``). Per block: distributed discrete Gaussian
(Kairouz–Liu–Steinke 2021, Prop. 14, with its ``τ`` term: :func:`fedcity.privacy.ddg_rdp`) or
Skellam (Agarwal–Kairouz–Liu 2021: :func:`fedcity.privacy.skellam_rdp`) with
``Δ₁ = Δ₂ = Δ_k`` (one entry changes). ``z`` is the smallest noise multiplier with
``ε(queries · Σ_k ρ_k) <= epsilon`` at ``δ·(1 - 10⁻³)``; the other ``10⁻³·δ`` pays for the
truncation of shares to ``noise_bound`` (as in :class:`fedcity.privacy.DistributedNoise`).

Refused under DP (:class:`QueryPrivacyError`, before any agency works):

- ``var`` / ``std``: they need sums of squares, which the query sends as base-2^30 limbs; the
  decrypted per-limb sums are not a function of the noisy total (they reveal carries of each
  agency's own value), and a row changes the sum of squares by up to ``(HI - LO)²``. Ask for
  ``mean`` and a ``histogram`` instead.
- ``quantile``: its brackets are refined over rounds from exact counts until within the
  tolerance; with noisy counts the tolerance guarantee the spec promises no longer holds. Use
  a ``histogram`` on declared bins.

Noise travels as **one entry per value**: under DP a noised quantity must not be split into
limbs (the limb sums would leak each agency's carries); the packing reserves
``[-noise_bound, noise_bound]`` per entry (:attr:`QueryNoisePlan.noise_bound`).

Randomness comes from the operating system's CSPRNG (:func:`secrets.token_bytes`), turned into
uniform doubles; the discrete Gaussian (Canonne–Kamath–Steinke 2020, Alg. 3, float acceptance
tests) and Skellam (difference of two Poisson draws: inversion below rate 10, Hörmann's PTRS
above, with a log-pmf computed stably for rates up to 2^50) samplers of
:mod:`fedcity.privacy.noise` (``csprng_discrete_gaussian``, ``csprng_poisson``) draw from it,
not from numpy's PCG64; training noise uses the same samplers. Tests may pass ``random_bytes``.

What the result states: ``epsilon``, ``delta``, the noise kind, the neighbouring relation and,
per aggregate, the standard deviation of its noise in user units
(:attr:`QueryNoisePlan.stddev_per_aggregate`).

Pure computation: no I/O.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.privacy.accountant import (
    DEFAULT_ORDERS,
    TRUNCATION_DELTA_SHARE,
    PrivacyAccountant,
    Sensitivity,
    calibrate_noise_multiplier,
    ddg_rdp,
    epsilon_from_rdp,
    skellam_rdp,
)
from fedcity.privacy.noise import (
    MAX_TAIL_PROBABILITY,
    NoiseKind,
    bound_for_tail,
    csprng_discrete_gaussian,
    csprng_poisson,
    share_parameter,
    share_variance,
    tail_bound,
)

__all__ = [
    "MAX_GAUSSIAN_SHARE",
    "MAX_SKELLAM_SHARE",
    "NEIGHBOURING",
    "NoiseBlock",
    "QueryNoisePlan",
    "QueryPrivacyError",
    "RandomBytes",
    "plan_query_noise",
    "query_blocks",
    "sample_share",
]

NEIGHBOURING = "add or remove one row of one agency's table"
"""The neighbouring relation of every guarantee in this module."""

MAX_GAUSSIAN_SHARE = float(2**45)
"""Largest per-agency discrete Gaussian scale the sampler draws exactly (integer units)."""

MAX_SKELLAM_SHARE = float(2**50)
"""Largest per-agency Skellam rate (per side) the sampler draws exactly."""

MAX_BLOCKS = 1_024
MAX_BLOCK_LENGTH = 4_000_000
DEFAULT_MAX_AGENCIES = 4_096

RandomBytes = Callable[[int], bytes]
"""A source of uniformly random bytes: ``n -> n bytes`` (default :func:`secrets.token_bytes`)."""

_REFUSED = {
    "var": (
        "var needs sums of squares, which travel as base-2^30 limbs whose per-limb sums are "
        "not a function of the noisy total; ask for mean and a histogram instead"
    ),
    "std": (
        "std needs sums of squares, which travel as base-2^30 limbs whose per-limb sums are "
        "not a function of the noisy total; ask for mean and a histogram instead"
    ),
    "quantile": (
        "quantile refines brackets from exact counts until within its tolerance; with noisy "
        "counts that tolerance cannot be guaranteed; ask for a histogram on declared bins"
    ),
}


class QueryPrivacyError(ValueError):
    """Differential-privacy parameters or a query that DP cannot serve (the message says why)."""


# -- blocks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseBlock:
    """Entries of a query vector of which one row changes at most one, by at most ``sensitivity``.

    Parameters
    ----------
    name : str
        ``"n"``, ``"nn:<col>"``, ``"s:<col>"``, ``"h:<aggregate>"``, ``"presence"`` (see the
        module notes) or any unique name.
    length : int
        Most entries of the block in one query (e.g. every cell; cells × bins).
    sensitivity : int
        Largest change of one entry when one row is added or removed, integer units (>= 1).
    unit : float, default 1.0
        User units per integer unit (``10^-decimals`` for a fixed-point sum).
    """

    name: str
    length: int
    sensitivity: int
    unit: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise QueryPrivacyError(f"a noise block needs a non-empty name, got {self.name!r}")
        _int("length of block " + repr(self.name), self.length, 1, MAX_BLOCK_LENGTH)
        _int("sensitivity of block " + repr(self.name), self.sensitivity, 1, 1 << 62)
        u = self.unit
        if isinstance(u, bool) or not isinstance(u, int | float) or not 0 < u < math.inf:
            raise QueryPrivacyError(
                f"unit of block {self.name!r} must be a positive finite number, got {u!r}"
            )


def _int(what: str, value: object, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not (low <= value <= high)
    ):
        raise QueryPrivacyError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def query_blocks(
    aggregates: Sequence[Mapping[str, Any]],
    ranges: Mapping[str, tuple[int, float]],
    *,
    cells: int,
    presence: bool = True,
) -> list[NoiseBlock]:
    """The noise blocks of a query, from its aggregates (canonical dict form).

    Parameters
    ----------
    aggregates : sequence of mapping
        Each ``{"name", "func", "column"?, "numerator"?, "denominator"?, "bins"?}`` as in the
        query spec.
    ranges : mapping
        For every summed column: ``(HI - LO, 10^-decimals)``, its clip range in fixed-point
        units and the user value of one unit.
    cells : int
        Number of cells (group combinations).
    presence : bool, default True
        Include the presence round (``Δ = 1`` per cell) in the guarantee. With ``False`` the
        per-cell numbers of agencies are released exactly and are *not* covered.

    Returns
    -------
    list of NoiseBlock
        ``"n"`` first (cells + 1 entries: the out-of-domain total is the last), then one block
        per quantity, each once.

    Raises
    ------
    QueryPrivacyError
        ``var``, ``std`` or ``quantile`` asked (see the module notes), an unknown function, a
        summed column without a range.
    """
    n_cells = _int("cells", cells, 1, MAX_BLOCK_LENGTH - 1)
    blocks: dict[str, NoiseBlock] = {"n": NoiseBlock("n", n_cells + 1, 1)}
    if presence:
        blocks["presence"] = NoiseBlock("presence", n_cells, 1)

    def summed(col: object, agg: str) -> None:
        if not isinstance(col, str) or col not in ranges:
            raise QueryPrivacyError(
                f"aggregate {agg!r}: column {col!r} has no clip range in fixed-point units"
            )
        width, unit = ranges[col]
        _int(f"clip range of column {col!r} in fixed-point units", width, 0, 1 << 62)
        key = f"nn:{col}"
        blocks.setdefault(key, NoiseBlock(key, n_cells, 1))
        key = f"s:{col}"
        blocks.setdefault(key, NoiseBlock(key, n_cells, max(1, int(width)), float(unit)))

    for a in aggregates:
        name, func = a.get("name"), a.get("func")
        if func in _REFUSED:
            raise QueryPrivacyError(
                f"aggregate {name!r}: {func} is not available with differential privacy: "
                f"{_REFUSED[str(func)]}"
            )
        if func == "count":
            col = a.get("column")
            if col:
                key = f"nn:{col}"
                blocks.setdefault(key, NoiseBlock(key, n_cells, 1))
        elif func in ("sum", "mean"):
            summed(a.get("column"), str(name))
        elif func == "ratio":
            summed(a.get("numerator"), str(name))
            if a.get("denominator"):
                summed(a.get("denominator"), str(name))
        elif func == "histogram":
            bins = a.get("bins")
            if not isinstance(bins, Sequence) or len(bins) < 2:
                raise QueryPrivacyError(f"aggregate {name!r}: histogram needs at least two edges")
            key = f"h:{name}"
            blocks[key] = NoiseBlock(key, n_cells * (len(bins) - 1), 1)
        else:
            raise QueryPrivacyError(f"aggregate {name!r}: unknown function {func!r}")
    return list(blocks.values())


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueryNoisePlan:
    """Calibrated distributed noise for one query (from :func:`plan_query_noise`).

    Attributes
    ----------
    noise : {"gaussian", "skellam"}
    epsilon, delta : float
        The budget of ``queries`` queries (``epsilon_planned <= epsilon``).
    blocks : tuple of NoiseBlock
    n_agencies_min : int
        Fewest agencies whose shares enter any sum.
    colluding : int
        Agencies assumed to collude with the readers (their noise not counted).
    queries : int
        Queries this budget covers (composition).
    noise_multiplier : float
        ``z``: every block's summed noise has ``σ_k = z·Δ_k``.
    share : dict
        Block name -> per-agency parameter (discrete Gaussian scale, or Skellam rate per side).
    noise_bound : dict
        Block name -> largest ``|share entry|`` (room to reserve in the packing).
    sigma : dict
        Block name -> standard deviation of the summed noise, integer units (over
        ``n_agencies_min - colluding`` honest shares; more agencies add more noise).
    epsilon_planned : float
        ``ε`` spent by ``queries`` queries (at ``δ·(1 - 10⁻³)``), at most ``epsilon``.
    orders, rdp_per_query : tuple of float
        The Rényi curve of one query.
    truncation_tv_per_query : float
        Total variation added by truncating shares, per query (charged to ``δ``).
    """

    noise: NoiseKind
    epsilon: float
    delta: float
    blocks: tuple[NoiseBlock, ...]
    n_agencies_min: int
    colluding: int
    queries: int
    noise_multiplier: float
    share: dict[str, float]
    noise_bound: dict[str, int]
    sigma: dict[str, float]
    epsilon_planned: float
    orders: tuple[float, ...]
    rdp_per_query: tuple[float, ...]
    truncation_tv_per_query: float
    _by_name: dict[str, NoiseBlock] = field(repr=False, compare=False, default_factory=dict)

    def block(self, name: str) -> NoiseBlock:
        """The block called ``name``.

        Parameters
        ----------
        name : str

        Returns
        -------
        NoiseBlock

        Raises
        ------
        QueryPrivacyError
            No such block.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise QueryPrivacyError(
                f"no noise block {name!r}; blocks are {sorted(self._by_name)}"
            ) from None

    @property
    def sensitivity_l2(self) -> float:
        """L2 norm of one row's largest change of the whole query vector: ``√(Σ_k Δ_k²)``."""
        return math.sqrt(sum(float(b.sensitivity) ** 2 for b in self.blocks))

    @property
    def sensitivity_l1(self) -> float:
        """L1 norm of one row's largest change of the whole query vector: ``Σ_k Δ_k``."""
        return float(sum(b.sensitivity for b in self.blocks))

    @property
    def stddev_per_block(self) -> dict[str, float]:
        """Block name -> standard deviation of its summed noise in user units (at least)."""
        h = self.n_agencies_min - self.colluding
        return {
            b.name: b.unit * math.sqrt(h * share_variance(self.noise, self.share[b.name]))
            for b in self.blocks
        }

    def stddev_for(self, aggregates: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Aggregate name -> noise standard deviation in user units.

        ``count`` and ``histogram``: of the count (per bin); ``sum``: of the sum; ``mean``:
        of its sum (divide by the cell's count for the mean's, to first order); ``ratio``:
        ``scale`` times that of the numerator's sum (divide by the denominator's sum).

        Parameters
        ----------
        aggregates : sequence of mapping
            As given to :func:`query_blocks`.

        Returns
        -------
        dict
        """
        sd = self.stddev_per_block
        out: dict[str, float] = {}
        for a in aggregates:
            name, func = str(a.get("name")), a.get("func")
            if func == "count":
                col = a.get("column")
                out[name] = sd[f"nn:{col}"] if col else sd["n"]
            elif func in ("sum", "mean"):
                out[name] = sd[f"s:{a.get('column')}"]
            elif func == "ratio":
                out[name] = float(a.get("scale", 1.0)) * sd[f"s:{a.get('numerator')}"]
            elif func == "histogram":
                out[name] = sd[f"h:{name}"]
        return out

    def sample(
        self, name: str, length: int | None = None, *, random_bytes: RandomBytes | None = None
    ) -> npt.NDArray[np.int64]:
        """One agency's noise share for block ``name`` (an agency calls this, never others).

        Parameters
        ----------
        name : str
        length : int, optional
            Entries; at most the block's ``length`` (default: all of them).
        random_bytes : callable, optional
            Only for tests; default :func:`secrets.token_bytes`.

        Returns
        -------
        numpy.ndarray of int64
            Values in ``[-noise_bound, noise_bound]``.
        """
        b = self.block(name)
        n = b.length if length is None else _int(f"length for block {name!r}", length, 0, b.length)
        return sample_share(
            self.noise, self.share[name], n, bound=self.noise_bound[name], random_bytes=random_bytes
        )

    def share_for_agency(
        self,
        lengths: Mapping[str, int] | None = None,
        *,
        random_bytes: RandomBytes | None = None,
    ) -> dict[str, npt.NDArray[np.int64]]:
        """One agency's shares for every block (or the blocks in ``lengths``, with lengths).

        Parameters
        ----------
        lengths : mapping, optional
            Block name -> entries (e.g. the eligible cells). Default: every block, full length.
        random_bytes : callable, optional

        Returns
        -------
        dict
        """
        want = {b.name: b.length for b in self.blocks} if lengths is None else dict(lengths)
        return {k: self.sample(k, v, random_bytes=random_bytes) for k, v in want.items()}

    def task_params(self) -> dict[str, Any]:
        """What an agency needs to draw its own shares (:func:`sample_share`), JSON-ready."""
        return {
            "noise": self.noise,
            "share": dict(self.share),
            "noise_bound": dict(self.noise_bound),
            # the query's (ε, δ): what each agency's budget ledger charges
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
        }

    def accountant(self) -> PrivacyAccountant:
        """A fresh accountant: budget ``(epsilon, delta)``, one charge per query.

        Check it before the first noisy release of a query is decrypted and charge it once
        the query is released (a failed query after a noisy release is still charged).

        Returns
        -------
        PrivacyAccountant
        """
        return PrivacyAccountant(
            orders=self.orders,
            rdp_per_release=self.rdp_per_query,
            epsilon_budget=self.epsilon,
            delta=self.delta,
            truncation_tv_per_release=self.truncation_tv_per_query,
            truncation_delta=self.delta * TRUNCATION_DELTA_SHARE,
        )

    def to_dict(self) -> dict[str, Any]:
        """What the result table states (JSON-ready)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "noise": self.noise,
            "neighbouring": NEIGHBOURING,
            "queries": self.queries,
            "epsilon_planned": self.epsilon_planned,
            "noise_multiplier": self.noise_multiplier,
            "n_agencies_min": self.n_agencies_min,
            "colluding": self.colluding,
            "sensitivity_l2": self.sensitivity_l2,
            "sensitivity_l1": self.sensitivity_l1,
            "stddev": self.stddev_per_block,
        }


def _positive(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise QueryPrivacyError(f"{what} must be a positive finite number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise QueryPrivacyError(f"{what} must be a positive finite number, got {value!r}")
    return v


def plan_query_noise(
    blocks: Sequence[NoiseBlock],
    *,
    epsilon: float,
    delta: float,
    noise: NoiseKind = "gaussian",
    n_agencies_min: int,
    n_agencies_max: int = DEFAULT_MAX_AGENCIES,
    colluding: int = 0,
    queries: int = 1,
) -> QueryNoisePlan:
    """Calibrate distributed noise so that ``queries`` queries spend at most ``(ε, δ)``.

    Parameters
    ----------
    blocks : sequence of NoiseBlock
        From :func:`query_blocks` (or built by hand).
    epsilon : float
        Total budget, ``0 < ε <= 100``.
    delta : float
        ``0 < δ < 1``; ``10⁻³·δ`` of it pays for truncating shares.
    noise : {"gaussian", "skellam"}, default "gaussian"
    n_agencies_min : int
        Fewest agencies whose shares enter a sum (each adds ``1/(n - colluding)`` of the
        variance). Rounds with fewer contributors must be refused.
    n_agencies_max : int, default 4096
        Most shares in a sum (sizes the truncation term).
    colluding : int, default 0
        Agencies that may collude with whoever reads the sums.
    queries : int, default 1
        Queries the budget covers.

    Returns
    -------
    QueryNoisePlan

    Raises
    ------
    QueryPrivacyError
        A parameter out of range (named), no blocks or duplicate names, or noise too large
        for the exact samplers (a fixed-point range too fine: lower the column's decimals).
    """
    eps = _positive("epsilon", epsilon)
    if eps > 100:
        raise QueryPrivacyError(f"epsilon must be at most 100, got {epsilon!r}")
    d = delta
    if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 < float(d) < 1.0:
        raise QueryPrivacyError(f"delta must be a number with 0 < delta < 1, got {delta!r}")
    if noise not in ("gaussian", "skellam"):
        raise QueryPrivacyError(f"noise must be 'gaussian' or 'skellam', got {noise!r}")
    n_min = _int("n_agencies_min", n_agencies_min, 1, DEFAULT_MAX_AGENCIES)
    n_max = _int("n_agencies_max", n_agencies_max, n_min, 1 << 20)
    coll = _int("colluding", colluding, 0, n_min - 1)
    q = _int("queries", queries, 1, 1_000_000)
    bl = tuple(blocks)
    if not bl or len(bl) > MAX_BLOCKS:
        raise QueryPrivacyError(f"give 1 to {MAX_BLOCKS} noise blocks, got {len(bl)}")
    for b in bl:
        if not isinstance(b, NoiseBlock):
            raise QueryPrivacyError(f"blocks must be NoiseBlock, got {type(b).__name__}")
    names = [b.name for b in bl]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise QueryPrivacyError(f"noise block names must be unique; repeated: {dup}")
    honest = n_min - coll
    orders = np.asarray(DEFAULT_ORDERS, dtype=np.float64)
    delta_f = float(d)
    delta_rdp = delta_f * (1.0 - TRUNCATION_DELTA_SHARE)

    def rdp_of(z: float) -> npt.NDArray[np.float64]:
        total = np.zeros_like(orders)
        for b in bl:
            sens = Sensitivity(l2=float(b.sensitivity), l1=float(b.sensitivity), dim=b.length)
            sigma = z * b.sensitivity
            if noise == "gaussian":
                s = sigma / math.sqrt(honest)
                if s < 0.5:
                    return np.full_like(orders, np.inf)
                total = total + ddg_rdp(
                    orders, sigma_share=s, n_contributors=honest, sensitivity=sens
                )
            else:
                total = total + skellam_rdp(orders, mu_total=sigma * sigma / 2.0, sensitivity=sens)
        return total

    def epsilon_of(z: float) -> float:
        rdp = rdp_of(z)
        if not np.all(np.isfinite(rdp)):
            return math.inf
        return epsilon_from_rdp(orders, q * rdp, delta_rdp)

    try:
        z = calibrate_noise_multiplier(epsilon_of, epsilon=eps)
    except ValueError as exc:
        raise QueryPrivacyError(f"cannot reach epsilon={eps}: {exc}") from exc
    rdp = rdp_of(z)
    planned = epsilon_from_rdp(orders, q * rdp, delta_rdp)
    share: dict[str, float] = {}
    sigma_k: dict[str, float] = {}
    for b in bl:
        sigma_k[b.name] = z * b.sensitivity
        share[b.name] = share_parameter(noise, sigma_k[b.name], honest)
        limit = MAX_GAUSSIAN_SHARE if noise == "gaussian" else MAX_SKELLAM_SHARE
        if share[b.name] > limit:
            raise QueryPrivacyError(
                f"block {b.name!r}: a per-agency {noise} share parameter of "
                f"{share[b.name]:.3g} exceeds the exact sampler's {limit:.3g}; its sensitivity "
                f"{b.sensitivity} fixed-point units is too fine: lower the column's decimals"
            )
    # truncation: (1 + e^ε)·queries·(shares · values)·p within the reserved δ share
    values = n_max * sum(b.length for b in bl)
    allowed = delta_f * TRUNCATION_DELTA_SHARE / ((1.0 + math.exp(min(eps, 700.0))) * q * values)
    target = min(MAX_TAIL_PROBABILITY, allowed)
    bounds: dict[str, int] = {}
    tv = 0.0
    for b in bl:
        bounds[b.name] = bound_for_tail(noise, share[b.name], target)
        tv += n_max * b.length * tail_bound(noise, share[b.name], bounds[b.name])
    return QueryNoisePlan(
        noise=noise,
        epsilon=eps,
        delta=delta_f,
        blocks=bl,
        n_agencies_min=n_min,
        colluding=coll,
        queries=q,
        noise_multiplier=z,
        share=share,
        noise_bound=bounds,
        sigma=sigma_k,
        epsilon_planned=planned,
        orders=tuple(float(o) for o in orders),
        rdp_per_query=tuple(float(r) for r in rdp),
        truncation_tv_per_query=tv,
        _by_name={b.name: b for b in bl},
    )


# -- samplers on the OS CSPRNG -----------------------------------------------------------------
def sample_share(
    noise: NoiseKind,
    parameter: float,
    length: int,
    *,
    bound: int,
    random_bytes: RandomBytes | None = None,
) -> npt.NDArray[np.int64]:
    """Draw one agency's noise share from the OS CSPRNG.

    Parameters
    ----------
    noise : {"gaussian", "skellam"}
    parameter : float
        Discrete Gaussian scale, or Skellam rate per side (:attr:`QueryNoisePlan.share`).
    length : int
        Entries.
    bound : int
        Draw conditioned on ``|x| <= bound`` (:attr:`QueryNoisePlan.noise_bound`).
    random_bytes : callable, optional
        ``n -> n random bytes``; default :func:`secrets.token_bytes`. Only tests pass one.

    Returns
    -------
    numpy.ndarray of int64, shape (length,)

    Raises
    ------
    QueryPrivacyError
        A parameter out of range.
    """
    if noise not in ("gaussian", "skellam"):
        raise QueryPrivacyError(f"noise must be 'gaussian' or 'skellam', got {noise!r}")
    p = _positive("noise parameter", parameter)
    limit = MAX_GAUSSIAN_SHARE if noise == "gaussian" else MAX_SKELLAM_SHARE
    if p > limit:
        raise QueryPrivacyError(f"{noise} share parameter {p:.3g} exceeds {limit:.3g}")
    n = _int("length", length, 0, MAX_BLOCK_LENGTH)
    bd = _int("bound", bound, 0, 1 << 62)
    rb = secrets.token_bytes if random_bytes is None else random_bytes
    if noise == "gaussian":
        return csprng_discrete_gaussian(p, n, bd, rb)
    out = csprng_poisson(p, n, rb) - csprng_poisson(p, n, rb)
    bad = np.flatnonzero(np.abs(out) > bd)
    while bad.size:
        redraw = csprng_poisson(p, bad.size, rb) - csprng_poisson(p, bad.size, rb)
        out[bad] = redraw
        bad = bad[np.abs(redraw) > bd]
    return out
