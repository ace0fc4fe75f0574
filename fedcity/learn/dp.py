"""Differential privacy for a federated job: the coordinator-side plan.

With a :class:`~fedcity.privacy.DPConfig` on a job, every training release is protected by
distributed noise: each agency clips its contribution in L2 to ``clip_norm`` and adds an
integer noise share in quantization steps before encrypting
(:meth:`fedcity.core.nodes.AgencyNode.contribute`), so the decrypted sum carries noise of the
calibrated scale and no party ever sees a less noisy value. :class:`DPPlan` sizes the packing
(noise room), tells agencies their share, and checks the accountant before each release and
charges it after.

The job's ``ε`` covers the whole job: a job with differential privacy runs no exact
preprocessing round (counts, means, variances would be released exactly, outside any
accountant); it is given public preprocessing instead (:func:`public_preprocessing`), so every
release is a noisy training release charged here. :meth:`DPPlan.report` states ``ε`` against
outsiders, against a contributing agency (it knows its own share) and for one record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedcity.core.errors import JobFailed
from fedcity.core.tasks import TaskRequest
from fedcity.crypto import PackingSpec
from fedcity.learn.design import Preprocessing
from fedcity.privacy import BudgetExceededError, DistributedNoise, DPConfig, PrivacyAccountant

if TYPE_CHECKING:
    from fedcity.data.dataset import FeatureSpec

__all__ = ["DPPlan", "public_preprocessing"]

NEEDS_PUBLIC_PREPROCESSING = (
    "a job with differential privacy needs public preprocessing (the job parameter "
    "'preprocessing'): otherwise its preprocessing statistics (row counts, means, variances) "
    "are released exactly, outside the epsilon the job reports. Build it from public "
    "knowledge, e.g. fedcity.learn.dp.public_preprocessing(feature_spec, ranges={column: "
    "(low, high)}, total_weight=approximate rows)"
)
"""Why a DP job without public preprocessing is refused."""


def public_preprocessing(
    spec: FeatureSpec,
    *,
    ranges: Mapping[str, Sequence[float]],
    total_weight: float,
) -> Preprocessing:
    """Preprocessing from public knowledge only, for a job with differential privacy.

    Numeric columns are centred on the middle of their public range and scaled by half its
    width; every declared category level is kept; ``total_weight`` (the public, approximate
    number of rows or total weight) only scales the released sums. Nothing here reads data,
    so nothing is released and nothing is charged.

    Parameters
    ----------
    spec : FeatureSpec
    ranges : mapping of str to (float, float)
        A public ``(low, high)`` range for every numeric column.
    total_weight : float
        Public, approximate total weight (rows, without weights).

    Returns
    -------
    Preprocessing

    Raises
    ------
    ValueError
        A numeric column without a finite range with ``low < high``, an unknown column, or a
        non-positive ``total_weight``.
    """
    unknown = sorted(set(ranges) - set(spec.numeric))
    if unknown:
        raise ValueError(f"ranges: unknown numeric column(s) {unknown}")
    mean, scale = [], []
    for col in spec.numeric:
        r = ranges.get(col)
        if r is None or len(r) != 2:
            raise ValueError(f"ranges: numeric column {col!r} needs a public (low, high) range")
        lo, hi = float(r[0]), float(r[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"ranges: {col!r} must have finite low < high, got {tuple(r)!r}")
        mean.append((lo + hi) / 2.0)
        scale.append((hi - lo) / 2.0)
    w = float(total_weight)
    if not (math.isfinite(w) and w >= 1):
        raise ValueError(f"total_weight must be a finite number >= 1, got {total_weight!r}")
    return Preprocessing(
        numeric=tuple(spec.numeric),
        mean=tuple(mean),
        scale=tuple(scale),
        categorical=tuple((c, tuple(v), tuple(v)) for c, v in spec.categorical.items()),
        total_weight=w,
        n_samples=max(1, round(w)),
    )


class DPPlan:
    """How a job applies a :class:`DPConfig` to its rounds.

    Parameters
    ----------
    config : DPConfig
    n_contributors_min : int
        The federation's minimum number of contributors; each agency adds ``1/n`` of the
        noise variance, so a release with fewer contributors is refused by the round.
    precision_bits : int, default 16
        Quantization of the clipped contributions (the noise dwarfs finer steps).
    encrypted : bool, default True
        Whether the aggregation encrypts. Differential privacy without encryption is refused:
        whoever aggregates would see each agency's contribution with only its own share of
        the noise (``1/n`` of the variance), far weaker than the reported ``ε``.

    Raises
    ------
    ValueError
        ``encrypted`` is False.
    """

    def __init__(
        self,
        config: DPConfig,
        *,
        n_contributors_min: int,
        precision_bits: int = 16,
        encrypted: bool = True,
    ) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError(f"privacy must be a DPConfig, got {type(config).__name__}")
        if config.colluding >= n_contributors_min:
            raise ValueError(
                f"privacy: colluding={config.colluding} leaves no honest contributor among "
                f"the {n_contributors_min} agencies every sum has (min_agencies)"
            )
        if not encrypted:
            raise ValueError(
                "differential privacy needs encryption: without it every agency's contribution "
                "is seen with only its own noise share, not covered by the reported epsilon"
            )
        self.config = config
        self.n_contributors_min = n_contributors_min
        self.precision_bits = precision_bits
        self.noise_bound = 0
        self._noise: DistributedNoise | None = None
        self._accountant: PrivacyAccountant | None = None

    def clip_for(self, request: TaskRequest) -> float:
        """Every entry of an L2-clipped vector lies within ``clip_norm``."""
        return float(self.config.clip_norm)

    def spec_for(self, request: TaskRequest, n_summands: int, n_length: int) -> PackingSpec:
        """The packing layout with room for the noise (calibrated once per job)."""
        if self._noise is None:
            base = PackingSpec(
                clip=self.clip_for(request),
                precision_bits=self.precision_bits,
                max_summands=max(n_summands, self.n_contributors_min),
                n_length=n_length,
            )
            self._noise = DistributedNoise(
                self.config, base, self.n_contributors_min, dim=request.length
            )
            self._accountant = self._noise.accountant()
            self.noise_bound = self._noise.noise_bound
        elif request.length > self._noise.dim:
            raise JobFailed(
                f"{request.kind}: {request.length} values exceed the {self._noise.dim} the "
                "privacy calibration was made for"
            )
        return self._noise.spec

    def task_params(self, spec: PackingSpec, n_contributors: int) -> dict[str, Any]:
        """What each agency needs to bound and noise its contribution."""
        assert self._noise is not None
        return {
            "clip_norm": float(self.config.clip_norm),
            "noise": self.config.noise,
            "share": float(self._noise.calibration.share),
            # what an agency needs to recompute the noise's guarantee (fedcity.privacy.DPFloor)
            "n_contributors": int(self._noise.calibration.n_contributors),
            "rounds": int(self.config.rounds),
            "adjacency": self.config.adjacency,
            # the whole job's (ε, δ): what each agency's budget ledger charges
            "epsilon": float(self._noise.calibration.epsilon_budget),
            "delta": float(self.config.delta),
        }

    def check(self) -> None:
        """Before a release: refuse it if it would exceed the privacy budget."""
        if self._accountant is None:
            return
        try:
            self._accountant.check()
        except BudgetExceededError as exc:
            raise JobFailed(f"privacy budget exhausted: {exc}") from exc

    def charge(self, request: TaskRequest) -> None:
        """After a release: record it."""
        assert self._accountant is not None
        self._accountant.charge()

    def spent(self) -> tuple[float, float]:
        """(ε, δ) spent so far, over every release of the job (all are accounted here)."""
        return (0.0, 0.0) if self._accountant is None else self._accountant.spent

    def report(self) -> dict[str, Any]:
        """What the job's releases so far cost, against whom.

        Returns
        -------
        dict
            ``epsilon``, ``delta``: spent against any outside observer (coordinator, data
            scientist, public), one agency's update as the unit; ``epsilon_against_agency``:
            against one contributing agency, which knows its own noise share;
            ``epsilon_record`` and ``epsilon_record_against_agency``: the same for one record
            of an agency (under zero-out, a changed record may move the agency's update
            anywhere within the clip ball: replace-one sensitivity); ``releases``,
            ``n_contributors_min``, ``adjacency``, ``colluding`` (the coalition the noise was
            calibrated against: with ``colluding >= 1``, ``epsilon_against_agency`` is within
            the budget). All ``ε`` at the job's ``δ``; ``inf`` where nothing protects (one
            contributor, against itself).
        """
        eps, delta = self.spent()
        out: dict[str, Any] = {
            "epsilon": eps,
            "delta": delta,
            "releases": 0 if self._accountant is None else self._accountant.releases,
            "n_contributors_min": self.n_contributors_min,
            "adjacency": self.config.adjacency,
            "colluding": self.config.colluding,
        }
        noise, k = self._noise, out["releases"]
        if noise is None or k == 0:
            zero = {"epsilon_against_agency": 0.0, "epsilon_record": 0.0}
            return {**out, **zero, "epsilon_record_against_agency": 0.0}
        out["epsilon_against_agency"] = noise.epsilon_against(1, releases=k)
        out["epsilon_record"] = noise.epsilon_against(0, releases=k, record_level=True)
        out["epsilon_record_against_agency"] = noise.epsilon_against(
            1, releases=k, record_level=True
        )
        return out

    @property
    def noise(self) -> DistributedNoise | None:
        """The calibrated mechanism, once the first round has been planned."""
        return self._noise
