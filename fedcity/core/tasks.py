"""Tasks and the registry of vetted local steps.

A :class:`Task` is everything an agency needs to compute its contribution to one round: the
kind of local computation (one of the vetted steps registered with :func:`local_step`), its
public parameters, and the packing layout of the vector to return. No code travels with a
task; an agency runs only steps that are registered in its own installation of fedcity (and,
later, that its policy allows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.crypto import PackingSpec

__all__ = ["LOCAL_STEPS", "LocalStep", "Task", "TaskRequest", "local_step"]

LocalStep = Callable[[Mapping[str, Any], Any], npt.NDArray[np.float64]]
"""A vetted local computation: public task parameters and local data to a float vector.

The data is an :class:`~fedcity.data.dataset.AgencyDataset` for learning steps and a
:class:`fedcity.analytics.LocalTable` for ``query.*`` steps."""

LOCAL_STEPS: dict[str, LocalStep] = {}
"""Registry of vetted local steps by kind (e.g. ``"glm.newton"``)."""


def local_step(kind: str) -> Callable[[LocalStep], LocalStep]:
    """Register a function as the vetted local step ``kind``."""

    def register(fn: LocalStep) -> LocalStep:
        if kind in LOCAL_STEPS and LOCAL_STEPS[kind] is not fn:
            raise ValueError(f"local step {kind!r} is already registered")
        LOCAL_STEPS[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class TaskRequest:
    """What an algorithm asks of every agency in one round.

    Parameters
    ----------
    kind : str
        A registered local step.
    params : mapping
        Public, JSON-serialisable parameters (model coefficients, preprocessing, ...).
    length : int
        Length of the vector the step returns.
    clip : float
        Bound on the absolute value of every entry (the packing clip).
    precision_bits : int
        Quantization precision of the packing.
    integer_valued : bool
        Entries are integers (counts): the released sum is rounded.
    label : str
        Human-readable name of the round.
    private : bool
        The job's differential privacy (if any) applies to this release.
    """

    kind: str
    params: Mapping[str, Any]
    length: int
    clip: float = 256.0
    precision_bits: int = 48
    integer_valued: bool = False
    label: str = ""
    private: bool = False

    def __post_init__(self) -> None:
        if self.kind not in LOCAL_STEPS:
            raise ValueError(
                f"unknown task kind {self.kind!r}; vetted kinds: {sorted(LOCAL_STEPS)}"
            )
        if self.length < 1:
            raise ValueError(f"task length must be positive, got {self.length}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be positive and finite, got {self.clip}")
        try:
            json.dumps(self.params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task parameters must be JSON-serialisable: {exc}") from exc


@dataclass(frozen=True)
class Task:
    """One round's task as sent to agencies.

    Attributes
    ----------
    job_id : str
    round : int
        Round number within the job, from 0.
    request : TaskRequest
    spec : PackingSpec
        Layout of the contribution: ``request.length`` values plus, without differential
        privacy, one trailing overflow indicator.
    dp : mapping or None
        Differential-privacy parameters for this round (clip norm, per-agency noise).
    """

    job_id: str
    round: int
    request: TaskRequest
    spec: PackingSpec
    dp: Mapping[str, Any] | None = field(default=None)

    @property
    def vector_length(self) -> int:
        """Length of the encrypted vector: the step's output plus the overflow slot."""
        return self.request.length + (0 if self.dp else 1)
