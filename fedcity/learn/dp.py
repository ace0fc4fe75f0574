"""Differential privacy for a federated job: the coordinator-side plan.

With a :class:`~fedcity.privacy.DPConfig` on a job, every training release is protected by
distributed noise: each agency clips its contribution in L2 to ``clip_norm`` and adds an
integer noise share in quantization steps before encrypting
(:meth:`fedcity.core.nodes.AgencyNode.contribute`), so the decrypted sum carries noise of the
calibrated scale and no party ever sees a less noisy value. :class:`DPPlan` sizes the packing
(noise room), tells agencies their share, and checks the accountant before each release and
charges it after. The preprocessing statistics that precede training are not covered (see
``docs/privacy.md``).
"""

from __future__ import annotations

from typing import Any

from fedcity.core.errors import JobFailed
from fedcity.core.tasks import TaskRequest
from fedcity.crypto import PackingSpec
from fedcity.privacy import BudgetExceededError, DistributedNoise, DPConfig, PrivacyAccountant

__all__ = ["DPPlan"]


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
    """

    def __init__(
        self, config: DPConfig, *, n_contributors_min: int, precision_bits: int = 16
    ) -> None:
        if not isinstance(config, DPConfig):
            raise TypeError(f"privacy must be a DPConfig, got {type(config).__name__}")
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
        """(ε, δ) spent so far."""
        return (0.0, 0.0) if self._accountant is None else self._accountant.spent

    @property
    def noise(self) -> DistributedNoise | None:
        """The calibrated mechanism, once the first round has been planned."""
        return self._noise
