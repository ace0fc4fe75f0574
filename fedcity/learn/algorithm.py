"""The interface between learning algorithms and the federation that runs them.

An :class:`Algorithm` runs at the coordinator (or the data scientist's side): it proposes one
:class:`~fedcity.core.tasks.TaskRequest` per round and updates its state from the released
aggregate. It never sees an individual agency's contribution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedcity.core.tasks import TaskRequest

__all__ = ["Algorithm", "RoundRecord"]


@dataclass
class RoundRecord:
    """What one round cost and who took part.

    Seconds per stage are the slowest agency's (agencies work in parallel in a real
    federation) for agency stages, and the coordinator's for aggregation and combination.
    """

    round: int
    kind: str
    label: str
    contributors: list[str]
    decryptors: list[str]
    bytes_per_agency: float
    bytes_to_decryptors: int
    seconds: dict[str, float] = field(default_factory=dict)
    loss: float | None = None
    retried_for_overflow: bool = False
    clip: float = 0.0
    """The packing bound finally used (widened when an agency had to clip)."""
    step: float = 0.0
    """Quantization step of the packing used (0 when encryption is off)."""


class Algorithm(ABC):
    """A federated computation driven round by round."""

    @abstractmethod
    def next_request(self) -> TaskRequest | None:
        """The next round's request, or None when the algorithm has finished."""

    @abstractmethod
    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Consume the released aggregate of ``request``; may set ``record.loss``.

        Raises
        ------
        JobFailed
            The released sums show that the job cannot succeed (e.g. a logistic regression
            whose labels are all one class); the message becomes the job's failure reason.
        """

    @property
    def max_rounds(self) -> int | None:
        """Upper bound on rounds, for progress bars (None if unknown)."""
        return None

    def precision_bits_for(self, request: TaskRequest, clip: float) -> int:
        """Packing precision of ``request`` at the packing bound ``clip`` actually used.

        The bound is ``request.clip`` unless the federation widened it after an agency had to
        clip; an algorithm that chooses its precision from an accuracy (FedAvg) returns more
        bits for a wider bound. The default is ``request.precision_bits``.
        """
        return request.precision_bits

    def on_overflow(self, request: TaskRequest) -> bool:
        """Some agency's values exceed the largest packing bound for ``request``.

        Return True after changing state so that :meth:`next_request` asks something else
        (e.g. a shorter step); False (the default) fails the job.
        """
        return False
