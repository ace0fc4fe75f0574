"""The coordinator's state machine for one aggregation round.

::

    COLLECTING --close()--> DECRYPTING --release()--> RELEASED
         |                       |
         +------- fail() --------+--> FAILED

In ``COLLECTING`` the round accepts one contribution per participating agency. A second
upload of the same bytes is acknowledged and ignored (idempotent retry); different bytes are
refused, the first upload stands. ``close()`` adds the contributions once at least
``min_contributors`` arrived. In ``DECRYPTING`` agencies holding key shares upload partial
decryptions of the aggregate; each is verified on arrival and a failing one is refused,
naming its share. ``release()`` combines ``t`` of them.

Every refusal raises before anything is stored, so stored state never changes on bad input.
The round stores only what it received (bytes) and what it derived (the aggregate); with
:class:`~fedcity.core.aggregation.PaillierScheme` both are ciphertexts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.core.aggregation import AggregationScheme
from fedcity.core.errors import JobFailed, ProtocolError, RejectedContribution
from fedcity.core.tasks import Task

__all__ = ["AggregationRound", "RoundPhase", "overflow_flag"]


def overflow_flag(clip: float) -> float:
    """Value of the trailing overflow slot an agency sets when it had to clip an entry."""
    return min(1.0, clip)


class RoundPhase(Enum):
    """Where a round stands."""

    COLLECTING = "collecting"
    DECRYPTING = "decrypting"
    RELEASED = "released"
    FAILED = "failed"


class AggregationRound:
    """Collect, add and release one round's contributions.

    Parameters
    ----------
    task : Task
    scheme : AggregationScheme
    participants : sequence of str
        Agencies asked to contribute.
    min_contributors : int
        Fewest contributions the aggregate may hold (protects small groups).
    share_index_of : mapping of str to int, optional
        Which key share each agency holds; a partial decryption must come from its holder.
    """

    def __init__(
        self,
        task: Task,
        scheme: AggregationScheme,
        *,
        participants: Sequence[str],
        min_contributors: int,
        share_index_of: Mapping[str, int] | None = None,
    ) -> None:
        if min_contributors < 1:
            raise ValueError("min_contributors must be at least 1")
        self.task = task
        self.scheme = scheme
        self.participants = list(participants)
        self.min_contributors = min_contributors
        self.share_index_of = dict(share_index_of or {})
        self.phase = RoundPhase.COLLECTING
        self.contributions: dict[str, bytes] = {}
        self._opened: dict[str, Any] = {}
        self.partials: dict[str, bytes] = {}
        self._verified: dict[str, Any] = {}
        self.aggregate: Any = None
        self.aggregate_bytes: bytes | None = None
        self.released: npt.NDArray[np.float64] | None = None
        self.failure: str | None = None

    # -- collecting --------------------------------------------------------------------------
    def submit(self, agency: str, payload: bytes) -> bool:
        """Accept ``agency``'s contribution; returns False for an identical repeat.

        Raises
        ------
        ProtocolError
            The round is not collecting.
        RejectedContribution
            Unknown agency, a different second upload, or an invalid payload.
        """
        if self.phase is not RoundPhase.COLLECTING:
            raise ProtocolError(
                f"round {self.task.round} of job {self.task.job_id} is {self.phase.value}, "
                "not collecting contributions"
            )
        if agency not in self.participants:
            raise RejectedContribution(f"agency {agency!r} is not a participant of this round")
        if agency in self.contributions:
            if self.contributions[agency] == payload:
                return False
            raise RejectedContribution(
                f"agency {agency!r} already contributed to round {self.task.round}; "
                "the first upload stands"
            )
        opened = self.scheme.open(payload, self.task.spec, self.task.vector_length)
        self.contributions[agency] = bytes(payload)
        self._opened[agency] = opened
        return True

    def restore_contribution(self, agency: str, payload: bytes) -> None:
        """Re-admit a contribution loaded from storage after a restart (validated again)."""
        self.submit(agency, payload)

    def drop(self, agency: str) -> None:
        """Remove an agency that left the job; its contribution (if any) stays counted."""
        if agency in self.participants and agency not in self.contributions:
            self.participants.remove(agency)

    @property
    def contributors(self) -> list[str]:
        """Agencies whose contribution was accepted, sorted."""
        return sorted(self.contributions)

    @property
    def missing(self) -> list[str]:
        """Participants that have not contributed yet."""
        return [a for a in self.participants if a not in self.contributions]

    @property
    def bytes_received(self) -> int:
        """Bytes of all accepted contributions and partial decryptions."""
        return sum(map(len, self.contributions.values())) + sum(map(len, self.partials.values()))

    def close(self) -> bytes:
        """Add the contributions; returns the aggregate's bytes for decryption.

        Raises
        ------
        JobFailed
            Fewer than ``min_contributors`` contributions arrived.
        """
        if self.phase is not RoundPhase.COLLECTING:
            raise ProtocolError(f"round is {self.phase.value}; it can only be closed once")
        if len(self.contributions) < self.min_contributors:
            self.fail(
                f"only {len(self.contributions)} agencies contributed to round "
                f"{self.task.round}; the job needs at least {self.min_contributors}"
            )
        self.aggregate = self.scheme.add([self._opened[a] for a in self.contributors])
        self.aggregate_bytes = self.scheme.aggregate_to_bytes(self.aggregate)
        self.phase = RoundPhase.DECRYPTING
        return self.aggregate_bytes

    # -- decrypting --------------------------------------------------------------------------
    def submit_partial(self, agency: str, payload: bytes, *, verify: bool = True) -> bool:
        """Accept a verified partial decryption; returns False for an identical repeat.

        ``verify=False`` skips the proof check, for a partial this round's owner verified
        before storing it (a coordinator replaying its own event log after a restart).
        """
        if self.phase is not RoundPhase.DECRYPTING:
            raise ProtocolError(f"round is {self.phase.value}, not collecting partial decryptions")
        if agency in self.partials:
            if self.partials[agency] == payload:
                return False
            raise RejectedContribution(f"agency {agency!r} already sent a partial decryption")
        verified = self.scheme.open_partial(payload, self.aggregate, verify=verify)
        expected = self.share_index_of.get(agency)
        index = getattr(verified, "share_index", None)
        if expected is not None and index is not None and index != expected:
            raise RejectedContribution(
                f"agency {agency!r} holds share {expected} but sent a partial for share {index}"
            )
        self.partials[agency] = bytes(payload)
        self._verified[agency] = verified
        return True

    @property
    def decryptors(self) -> list[str]:
        """Agencies whose partial decryption was accepted, sorted."""
        return sorted(self.partials)

    @property
    def ready(self) -> bool:
        """Enough verified partial decryptions to release."""
        return self.phase is RoundPhase.DECRYPTING and len(self._verified) >= self.scheme.threshold

    def release(self) -> npt.NDArray[np.float64]:
        """Combine partial decryptions; returns the step's output (overflow slot removed).

        Raises
        ------
        ProtocolError
            Not enough verified partial decryptions yet.
        """
        if not self.ready:
            raise ProtocolError(
                f"{len(self._verified)} verified partial decryption(s), "
                f"{self.scheme.threshold} needed"
            )
        partials = [self._verified[a] for a in self.decryptors]
        self.released = self.scheme.release(self.aggregate, partials)
        self.phase = RoundPhase.RELEASED
        return self.released[: self.task.request.length]

    @property
    def overflowed(self) -> bool:
        """Whether some contributor had to clip a value (only without DP)."""
        if self.released is None or self.task.dp:
            return False
        # each contributor reports min(1, clip) if any of its entries exceeded the clip
        return bool(self.released[-1] > 0.5 * overflow_flag(self.task.spec.clip))

    def fail(self, reason: str) -> None:
        """Mark the round failed and raise :class:`JobFailed`."""
        self.phase = RoundPhase.FAILED
        self.failure = reason
        raise JobFailed(reason)
