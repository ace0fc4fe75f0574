"""An agency's policy: what it lets jobs do with its data, decided locally (sans-IO).

The agent checks every assignment against its :class:`AgencyPolicy` before a step touches the
data. A refusal names the rule it broke (:class:`PolicyRefusal`); the agent declines with that
text and the data scientist reads it in ``fedcity job watch``. Rules, all from the ``[policy]``
table of ``agency.toml``:

- ``allowed_kinds`` — vetted steps it runs (checked elsewhere, per step);
- ``allowed_scientists`` — data scientists whose jobs it serves (default: any);
- ``require_dp`` — every job and query over its data must use differential privacy;
- ``max_epsilon`` / ``max_delta`` — bounds on a job's declared privacy budget (and, per round,
  on the ``ε`` the noise the coordinator asks for actually delivers);
- ``min_noise_multiplier`` / ``max_clip_norm`` / ``min_noise_bound`` — local floors on the DP
  settings the coordinator sends with every round (:meth:`AgencyPolicy.dp_floor`, checked by
  :class:`fedcity.privacy.DPFloor` before the data is read; absurd or inconsistent settings —
  a tiny share, a ``noise_bound`` that cuts the noise off, a stated ``ε`` the noise does not
  deliver — are refused even without a floor);
- ``approval`` — job types (or ``true``: all) that wait for a person's approval
  (``fedcity agent approve JOB`` / ``deny JOB --reason ...``);
- ``min_set_difference`` — differencing: two jobs on one dataset whose participants differ by
  fewer agencies than this (but by at least one) could reveal one agency's figures by
  subtraction, so the later one is refused. The agency registers this number and the
  coordinator refuses such a job at submission; the agent checks it again against the jobs it
  served itself.

Which columns a job may read is the declaration itself: a dataset's features and a query
table's ``columns``; nothing else of the file is ever read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcity.privacy import DPFloor

__all__ = ["AgencyPolicy", "JobFacts", "PolicyError", "PolicyRefusal", "set_difference_breach"]


class PolicyError(ValueError):
    """An invalid ``[policy]`` table; the message names the key."""


class PolicyRefusal(Exception):
    """A job the agency's policy refuses; ``rule`` names the rule, ``str()`` explains it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class JobFacts:
    """What the agency knows of a job when an assignment arrives (from the coordinator)."""

    job_id: str
    job_type: str
    submitted_by: str
    agencies: tuple[str, ...]
    dataset: str
    privacy: Mapping[str, Any] | None = None
    min_agencies: int = 0

    @classmethod
    def from_proto(cls, job_id: str, dataset: str, info: Any) -> JobFacts:
        """From an ``Assignment``'s ``JobInfo`` (an empty or bad privacy JSON counts as none)."""
        privacy: Any = None
        if info.privacy_json:
            try:
                privacy = json.loads(info.privacy_json)
            except ValueError:
                privacy = {"unreadable": True}
        return cls(
            job_id,
            str(info.job_type),
            str(info.submitted_by),
            tuple(info.agencies),
            dataset,
            privacy if isinstance(privacy, dict) else None,
            int(info.min_agencies),
        )


def set_difference_breach(
    new: Iterable[str], earlier: Iterable[Iterable[str]], minimum: int
) -> tuple[frozenset[str], int] | None:
    """An earlier participant set differing from ``new`` by 1..``minimum``-1 agencies.

    Returns the earlier set and the size of the difference, or None when every earlier set is
    equal to ``new`` or differs by at least ``minimum`` agencies.
    """
    current = frozenset(new)
    if minimum <= 1:
        return None
    for agencies in earlier:
        other = frozenset(agencies)
        diff = len(current ^ other)
        if 0 < diff < minimum:
            return other, diff
    return None


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"[policy] {key} must be a list of names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class AgencyPolicy:
    """The job-level rules of one agency (see the module docstring)."""

    allowed_scientists: tuple[str, ...] | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None
    approval: bool | tuple[str, ...] = False
    min_set_difference: int = 0
    served: tuple[frozenset[str], ...] = field(default=(), compare=False)
    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    min_noise_bound: int | None = None

    KEYS = frozenset(
        {
            "allowed_scientists",
            "require_dp",
            "max_epsilon",
            "max_delta",
            "approval",
            "min_set_difference",
            "min_noise_multiplier",
            "max_clip_norm",
            "min_noise_bound",
        }
    )
    """``[policy]`` keys this class reads (the agent config reads the others)."""

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> AgencyPolicy:
        """Read the job-level keys of a ``[policy]`` table (other keys are ignored here)."""
        scientists = None
        if "allowed_scientists" in table:
            scientists = _names(table["allowed_scientists"], "allowed_scientists")
        require_dp = table.get("require_dp", False)
        if not isinstance(require_dp, bool):
            raise PolicyError(f"[policy] require_dp must be true or false, got {require_dp!r}")
        from fedcity.privacy.accountant import MAX_CLIP_NORM, MAX_DELTA, MAX_EPSILON

        bounds: dict[str, float | None] = {}
        for key, upper in (
            ("max_epsilon", MAX_EPSILON),
            ("max_delta", MAX_DELTA),
            ("min_noise_multiplier", 1e6),
            ("max_clip_norm", MAX_CLIP_NORM),
        ):
            value = table.get(key)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= upper
                or not math.isfinite(value)
            ):
                raise PolicyError(
                    f"[policy] {key} must be a number in (0, {upper:g}], got {value!r}"
                )
            bounds[key] = None if value is None else float(value)
        noise_bound = table.get("min_noise_bound")
        if noise_bound is not None and (
            isinstance(noise_bound, bool)
            or not isinstance(noise_bound, int)
            or not 0 <= noise_bound <= 1 << 62
        ):
            raise PolicyError(
                f"[policy] min_noise_bound must be a non-negative integer, got {noise_bound!r}"
            )
        approval = table.get("approval", False)
        if not isinstance(approval, bool):
            approval = _names(approval, "approval")
        minimum = table.get("min_set_difference", 0)
        if isinstance(minimum, bool) or not isinstance(minimum, int) or not 0 <= minimum <= 1000:
            raise PolicyError(
                f"[policy] min_set_difference must be an integer in [0, 1000], got {minimum!r}"
            )
        return cls(
            scientists,
            require_dp,
            bounds["max_epsilon"],
            bounds["max_delta"],
            approval,
            minimum,
            min_noise_multiplier=bounds["min_noise_multiplier"],
            max_clip_norm=bounds["max_clip_norm"],
            min_noise_bound=noise_bound,
        )

    def dp_floor(self) -> DPFloor:
        """The floor an agency node checks every round's DP settings against.

        Returns
        -------
        fedcity.privacy.DPFloor
            ``min_noise_multiplier``, ``max_clip_norm``, ``min_noise_bound``, ``max_epsilon``,
            ``max_delta`` and ``require_dp`` of this policy (with ``require_dp`` every round
            must carry DP; sanity checks apply even when all are unset).
        """
        from fedcity.privacy import DPFloor

        return DPFloor(
            min_noise_multiplier=self.min_noise_multiplier,
            max_clip_norm=self.max_clip_norm,
            min_noise_bound=self.min_noise_bound,
            max_epsilon=self.max_epsilon,
            max_delta=self.max_delta,
            require_dp=self.require_dp,
        )

    def needs_approval(self, job: JobFacts) -> bool:
        """Whether a person must approve ``job`` before this agency serves it."""
        if isinstance(self.approval, bool):
            return self.approval
        return job.job_type in self.approval

    def check(self, job: JobFacts, earlier: Sequence[Iterable[str]] = ()) -> None:
        """Refuse a job that breaks a rule (approval is decided separately).

        Parameters
        ----------
        job : JobFacts
        earlier : sequence of sets of names
            Participant sets of earlier jobs on the same dataset this agency served.

        Raises
        ------
        PolicyRefusal
        """
        if self.allowed_scientists is not None and job.submitted_by not in self.allowed_scientists:
            raise PolicyRefusal(
                "allowed_scientists",
                f"policy: data scientist {job.submitted_by!r} is not in allowed_scientists "
                f"{list(self.allowed_scientists)}",
            )
        privacy = job.privacy or {}
        if self.require_dp and not privacy:
            raise PolicyRefusal(
                "require_dp",
                f"policy: differential privacy is required for {job.job_type} jobs over this "
                "agency's data (require_dp = true); resubmit with privacy settings",
            )
        for key, bound, name in (
            ("epsilon", self.max_epsilon, "max_epsilon"),
            ("delta", self.max_delta, "max_delta"),
        ):
            asked = privacy.get(key)
            if (
                bound is not None
                and privacy
                and (not isinstance(asked, int | float) or asked > bound)
            ):
                raise PolicyRefusal(
                    name,
                    f"policy: the job asks {key} = {asked!r}; this agency allows at most {bound}",
                )
        breach = set_difference_breach(job.agencies, earlier, self.min_set_difference)
        if breach is not None:
            other, diff = breach
            raise PolicyRefusal(
                "min_set_difference",
                f"policy: this job's agencies differ from an earlier job's on {job.dataset!r} "
                f"({sorted(other)}) by {diff} agenc{'y' if diff == 1 else 'ies'}; "
                f"min_set_difference = {self.min_set_difference} (differencing two such "
                "results could reveal one agency's figures)",
            )
