"""An agency's local floor on the differential privacy a coordinator asks of it.

The coordinator tells every agency, per round, how to noise its contribution: the L2 clip
norm, the noise kind, the per-agency share, the number of honest shares the calibration
counted on, the planned releases and the job's ``(ε, δ)`` (:meth:`fedcity.learn.dp.DPPlan.
task_params`), plus the packing's ``noise_bound``. Nothing forces those to be honest: a share
of ``1e-3`` or a ``noise_bound`` of 0 (the sampler then draws only zeros) gives no noise at all,
and a stated ``ε`` the noise does not deliver under-charges the agency's budget ledger.
:meth:`DPFloor.check` recomputes, from what the agency can verify itself, the noise multiplier
and the ``ε`` its contribution will actually enjoy, and refuses — naming the rule — settings
that are absurd, inconsistent or below the agency's own floor (``[policy]`` of
``agency.toml``: ``min_noise_multiplier``, ``max_clip_norm``, ``min_noise_bound``,
``max_epsilon``, ``max_delta``).

Always checked (no floor configured): a known noise kind; positive, finite, bounded clip norm
and share; a discrete Gaussian share of scale at least 1/2 (where the distributed bound holds);
a ``noise_bound`` whose truncation probability is at most ``1e-12`` per value; a sane count of
shares and releases; ``ε`` and ``δ`` within :data:`~fedcity.privacy.accountant.MAX_EPSILON`
and :data:`~fedcity.privacy.accountant.MAX_DELTA`; and that the stated ``ε`` covers what the
noise delivers (rule ``stated_epsilon``).

Pure computation: no I/O.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedcity.privacy.accountant import (
    MAX_CLIP_NORM,
    MAX_DELTA,
    MAX_EPSILON,
    MAX_ROUNDS,
    distributed_epsilon,
    quantized_sensitivity,
)
from fedcity.privacy.noise import (
    MAX_GAUSSIAN_SHARE,
    MAX_SKELLAM_SHARE,
    MAX_TAIL_PROBABILITY,
    NoiseKind,
    share_variance,
    tail_bound,
)

__all__ = ["DPFloor", "FloorViolation", "ImpliedPrivacy"]

_RTOL = 1e-6
"""Slack on the stated ``ε`` (calibration is a bisection to 1e-6 relative)."""


class FloorViolation(ValueError):
    """Coordinator-sent DP settings an agency refuses; ``rule`` names the rule broken."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class ImpliedPrivacy:
    """What the settings deliver, recomputed by the agency.

    Attributes
    ----------
    noise_multiplier : float
        ``σ/Δ₂`` of the summed noise of ``n_contributors`` shares (zero-out sensitivity).
    epsilon : float
        ``ε`` of ``rounds`` releases with those shares, at the stated ``δ``.
    """

    noise_multiplier: float
    epsilon: float


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        v = float(value)
    except OverflowError:  # an integer beyond float range (JSON allows any)
        return None
    return v if math.isfinite(v) else None


def _count(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return int(value)


@functools.lru_cache(maxsize=256)
def _implied(
    noise: str,
    share: float,
    n: int,
    rounds: int,
    delta: float,
    clip_norm: float,
    step: float,
    dim: int,
    adjacency: str,
) -> ImpliedPrivacy:
    sens = quantized_sensitivity(
        clip_norm=clip_norm,
        step=step,
        dim=dim,
        adjacency="replace_one" if adjacency == "replace_one" else "zero_out",
    )
    kind: NoiseKind = "gaussian" if noise == "gaussian" else "skellam"
    sigma = math.sqrt(n * share_variance(kind, share))
    eps = distributed_epsilon(
        noise=kind,
        share=share,
        honest_shares=n,
        sensitivity=sens,
        releases=rounds,
        delta=delta * (1.0 - 1e-3),
    )
    return ImpliedPrivacy(noise_multiplier=sigma / sens.l2, epsilon=eps)


@dataclass(frozen=True, kw_only=True)
class DPFloor:
    """An agency's floor on coordinator-sent DP settings (every bound optional).

    Parameters
    ----------
    min_noise_multiplier : float, optional
        Smallest ``z = σ/Δ₂`` of the summed noise the agency accepts.
    max_clip_norm : float, optional
        Largest L2 clip norm of its contribution.
    min_noise_bound : int, optional
        Smallest packing ``noise_bound`` (quantization steps).
    max_epsilon, max_delta : float, optional
        Largest ``(ε, δ)`` of one job: the stated values and the ``ε`` the noise delivers.
    require_dp : bool, default False
        Every contribution must carry differential privacy: a round without it (an exact
        release, e.g. preprocessing statistics or evaluation metrics) is refused.

    Raises
    ------
    ValueError
        A bound out of range (the message names it).
    """

    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    min_noise_bound: int | None = None
    max_epsilon: float | None = None
    max_delta: float | None = None
    require_dp: bool = False

    def __post_init__(self) -> None:
        for name, value, high in (
            ("min_noise_multiplier", self.min_noise_multiplier, 1e6),
            ("max_clip_norm", self.max_clip_norm, MAX_CLIP_NORM),
            ("max_epsilon", self.max_epsilon, MAX_EPSILON),
            ("max_delta", self.max_delta, MAX_DELTA),
        ):
            v = None if value is None else _real(value)
            if value is not None and (v is None or not 0 < v <= high):
                raise ValueError(f"{name} must be a number in (0, {high:g}], got {value!r}")
        if not isinstance(self.require_dp, bool):
            raise ValueError(f"require_dp must be True or False, got {self.require_dp!r}")
        if self.min_noise_bound is not None and _count(self.min_noise_bound, 0, 1 << 62) is None:
            raise ValueError(
                f"min_noise_bound must be a non-negative integer, got {self.min_noise_bound!r}"
            )

    def check(
        self,
        dp: Mapping[str, Any],
        *,
        step: float,
        noise_bound: int,
        dim: int,
        max_summands: int | None = None,
        declared_epsilon: float | None = None,
    ) -> ImpliedPrivacy:
        """Refuse settings that are absurd, inconsistent or below this floor.

        Parameters
        ----------
        dp : mapping
            A task's DP parameters: ``clip_norm``, ``noise``, ``share``, ``n_contributors``,
            ``rounds``, ``epsilon``, ``delta`` and optionally ``adjacency``.
        step : float
            The packing's quantization step.
        noise_bound : int
            The packing's noise room.
        dim : int
            Values the contribution releases per round.
        max_summands : int, optional
            The packing's most summands: the stated ``n_contributors`` may not exceed it.
        declared_epsilon : float, optional
            The ``ε`` the job declared at submission (what the budget ledger charges); the
            noise must deliver at most the smaller of it and the round's stated ``ε``.

        Returns
        -------
        ImpliedPrivacy

        Raises
        ------
        FloorViolation
            ``rule`` names the rule; the message says what was asked and what is allowed.
        """
        noise = dp.get("noise")
        if noise not in ("gaussian", "skellam"):
            raise FloorViolation("noise", f"privacy: unknown noise kind {noise!r}")
        clip = _real(dp.get("clip_norm"))
        if clip is None or not 0 < clip <= MAX_CLIP_NORM:
            raise FloorViolation(
                "clip_norm",
                f"privacy: clip_norm must be in (0, {MAX_CLIP_NORM:g}], got "
                f"{dp.get('clip_norm')!r}",
            )
        share = _real(dp.get("share"))
        limit = MAX_GAUSSIAN_SHARE if noise == "gaussian" else MAX_SKELLAM_SHARE
        low = 0.5 if noise == "gaussian" else 0.0
        if share is None or share <= 0 or share < low or share > limit:
            raise FloorViolation(
                "share",
                f"privacy: a {noise} noise share of {dp.get('share')!r} is absurd "
                f"(allowed: {'>= 0.5' if noise == 'gaussian' else '> 0'} and <= {limit:.3g})",
            )
        n = _count(dp.get("n_contributors"), 1, max_summands or (1 << 20))
        rounds = _count(dp.get("rounds"), 1, MAX_ROUNDS)
        if n is None or rounds is None:
            raise FloorViolation(
                "n_contributors",
                "privacy: the settings must state n_contributors (honest noise shares, 1.."
                f"{max_summands or (1 << 20)}) "
                f"and rounds (1..{MAX_ROUNDS}); got {dp.get('n_contributors')!r} and "
                f"{dp.get('rounds')!r}",
            )
        eps_stated, delta = _real(dp.get("epsilon")), _real(dp.get("delta"))
        if eps_stated is None or not 0 < eps_stated <= MAX_EPSILON:
            raise FloorViolation(
                "epsilon",
                f"privacy: epsilon must be in (0, {MAX_EPSILON:g}], got {dp.get('epsilon')!r}",
            )
        if delta is None or not 0 < delta <= MAX_DELTA:
            raise FloorViolation(
                "delta", f"privacy: delta must be in (0, {MAX_DELTA:g}], got {dp.get('delta')!r}"
            )
        adjacency = dp.get("adjacency", "zero_out")
        if adjacency not in ("zero_out", "replace_one"):
            raise FloorViolation(
                "adjacency",
                f"privacy: adjacency must be 'zero_out' or 'replace_one', got {adjacency!r}",
            )
        bound = _count(noise_bound, 0, 1 << 62)
        tail = 1.0 if bound is None else tail_bound(noise, share, bound)
        if tail > MAX_TAIL_PROBABILITY:
            raise FloorViolation(
                "noise_bound",
                f"privacy: noise_bound={noise_bound!r} truncates a {noise} share of {share:.4g} "
                f"with probability up to {tail:.3g} per value (at most "
                f"{MAX_TAIL_PROBABILITY:g} allowed): the noise would be cut off",
            )
        if self.max_clip_norm is not None and clip > self.max_clip_norm:
            raise FloorViolation(
                "max_clip_norm",
                f"policy: clip_norm = {clip:g} exceeds this agency's max_clip_norm = "
                f"{self.max_clip_norm:g}",
            )
        if self.min_noise_bound is not None and noise_bound < self.min_noise_bound:
            raise FloorViolation(
                "min_noise_bound",
                f"policy: noise_bound = {noise_bound} is below this agency's min_noise_bound = "
                f"{self.min_noise_bound}",
            )
        if self.max_delta is not None and delta > self.max_delta:
            raise FloorViolation(
                "max_delta",
                f"policy: the job asks delta = {delta:g}; this agency allows at most "
                f"{self.max_delta:g}",
            )
        implied = _implied(
            str(noise),
            share,
            n,
            rounds,
            delta,
            clip,
            float(step),
            int(dim),
            str(adjacency),
        )
        if self.min_noise_multiplier is not None and (
            implied.noise_multiplier < self.min_noise_multiplier
        ):
            raise FloorViolation(
                "min_noise_multiplier",
                f"policy: the noise share gives a noise multiplier of "
                f"{implied.noise_multiplier:.4g} over {n} share(s); this agency requires at "
                f"least min_noise_multiplier = {self.min_noise_multiplier:g}",
            )
        limit = eps_stated
        declared = None if declared_epsilon is None else _real(declared_epsilon)
        if declared is not None and declared > 0:
            limit = min(limit, declared)
        if implied.epsilon > limit * (1.0 + _RTOL):
            raise FloorViolation(
                "stated_epsilon",
                f"privacy: the noise delivers epsilon = {implied.epsilon:.4g} over {rounds} "
                f"release(s), more than the job states ({limit:g}); the budget would be "
                "under-charged",
            )
        worst = max(implied.epsilon, eps_stated)
        if self.max_epsilon is not None and worst > self.max_epsilon:
            raise FloorViolation(
                "max_epsilon",
                f"policy: the job spends epsilon = {worst:.4g}; this agency allows at most "
                f"max_epsilon = {self.max_epsilon:g}",
            )
        return implied
