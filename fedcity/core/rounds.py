"""The coordinator's state machine for one aggregation round.

::

    COLLECTING --close()--> DECRYPTING --release()--> RELEASED
         |                       |    \
         |                       |     +--(out of range)--> AUDITING (driver: fedcity.core.audit)
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

Decryption groups (threshold key only)
--------------------------------------
:meth:`AggregationRound.plan_decryption` splits the aggregate's ``k`` ciphertexts into
``g = ⌊ℓ/t⌋`` contiguous parts when ``ℓ ≥ 2t`` share holders are available, and gives each
part to a disjoint group of ``t`` holders (:attr:`AggregationRound.part_of`); each holder
decrypts about ``k/g`` ciphertexts instead of ``k``. Each part is combined from ``t``
partials of its own group. A holder that drops out, stays silent or is named a cheater is
replaced by :meth:`~AggregationRound.reassign` (only its part moves). With fewer than
``2t`` holders there is one part, the whole aggregate, and any ``t`` holders may answer as
before. A part is itself the sum of the same contributions' ciphertexts at the same
positions (addition is ciphertext-wise), so a decryptor checks its part against the signed
contributions' ciphertexts ``start..stop-1`` only (``ContributionVerifier.check(part=...)``).

Optimistic combination (``PaillierScheme(optimistic=True)``)
-------------------------------------------------------------
Partials may arrive without proof; :meth:`~AggregationRound.release` combines first. A
combined value that is not a decryption (``raw_combine(check=True)``), or a decoded slot out
of range, makes it ask the part's unproven decryptors for their proofs
(:class:`ProofsNeeded`, :attr:`~AggregationRound.proofs_asked`); a proof that fails, or
values that differ from the first answer, name the holder in
:attr:`~AggregationRound.cheaters` and remove its partial, and its part is reassigned.

**Contract for range audits.** :meth:`~AggregationRound.release` raises
:class:`~fedcity.crypto.SlotRangeError` only when every partial combined into the failing
ciphertext's part carries a verified proof; until then it raises :class:`ProofsNeeded`
(a :class:`ProtocolError`), never ``SlotRangeError``. So ``SlotRangeError`` keeps meaning
"a contribution is out of range", and :meth:`~AggregationRound.decryptors_of` names the
``t`` agencies whose (proven) partials decrypted that ciphertext.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.core.aggregation import AggregationScheme, PaillierScheme
from fedcity.core.errors import JobFailed, ProtocolError, RejectedContribution
from fedcity.core.tasks import Task
from fedcity.crypto.errors import InvalidPartialDecryptionError, SlotRangeError
from fedcity.crypto.threshold import split_parts

__all__ = [
    "AggregationRound",
    "DecryptionPart",
    "ProofsNeeded",
    "RoundPhase",
    "overflow_flag",
]


@dataclass(frozen=True)
class DecryptionPart:
    """Ciphertexts ``start..stop-1`` of an aggregate, decrypted by one group of ``t``."""

    index: int
    start: int
    stop: int


class ProofsNeeded(ProtocolError):
    """The combination failed its check; these agencies must prove their partials first.

    Attributes
    ----------
    agencies : tuple of str
    """

    def __init__(self, message: str, *, agencies: Sequence[str]) -> None:
        super().__init__(message)
        self.agencies = tuple(agencies)


def overflow_flag(clip: float) -> float:
    """Value of the trailing overflow slot an agency sets when it had to clip an entry."""
    return min(1.0, clip)


class RoundPhase(Enum):
    """Where a round stands."""

    COLLECTING = "collecting"
    DECRYPTING = "decrypting"
    AUDITING = "auditing"
    """The aggregate decrypted out of range; contributors prove their ranges (the driver
    replaces the round with a re-aggregation of the remaining contributions)."""
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
        self.parts: list[DecryptionPart] = []
        """The decryption plan (:meth:`plan_decryption`); empty: the whole aggregate."""
        self.part_of: dict[str, int] = {}
        """Agency → index of the part it is asked to decrypt."""
        self.cheaters: dict[str, str] = {}
        """Agencies whose partial was shown wrong by the proof exchange → why."""
        self.proofs_asked: dict[str, int] = {}
        """Agencies asked to prove their partial (optimistic combination) → part index."""
        self._part_vectors: dict[int, Any] = {}
        self._combined: dict[int, list[str]] = {}

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
        if agency in self.cheaters:
            raise RejectedContribution(
                f"agency {agency!r} sent a wrong partial decryption to this round "
                f"({self.cheaters[agency]}); it is not asked again"
            )
        if not verify and agency not in self.part_of:
            self._adopt_part(agency, payload)
        verified = self.scheme.open_partial(payload, self._target(agency), verify=verify)
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
        """Enough accepted partial decryptions of every part to release, no proof awaited."""
        if self.phase is not RoundPhase.DECRYPTING or self.proofs_asked:
            return False
        if len(self.parts) > 1:
            return all(len(self.members(p.index)) >= self.scheme.threshold for p in self.parts)
        return len(self._verified) >= self.scheme.threshold

    # -- decryption groups -------------------------------------------------------------------
    def plan_decryption(
        self, holders: Sequence[str], *, spares: int = 0
    ) -> dict[str, DecryptionPart]:
        """Split the aggregate among disjoint groups of ``t`` of ``holders`` (in order).

        With ``g = ⌊(ℓ - spares)/t⌋ ≥ 2`` (``ℓ = len(holders)``), ``g`` parts (at most one
        per ciphertext): the first ``t`` holders decrypt part 0, the next ``t`` part 1, and
        so on; the rest (at least ``spares``) replace decryptors that fail
        (:meth:`reassign`). Otherwise one part (the whole aggregate), given to the first
        ``t`` holders. Returns agency → its part.

        Each holder decrypts one part per round, so a split round completes while failed
        decryptors can be replaced by holders not asked yet: it tolerates ``ℓ - g·t``
        failures, where decrypting the whole aggregate by any ``t`` tolerates ``ℓ - t``.
        ``spares`` trades per-agency work for that tolerance.

        Raises
        ------
        ProtocolError
            Not decrypting, not a threshold scheme, already planned or partials arrived.
        """
        if self.phase is not RoundPhase.DECRYPTING:
            raise ProtocolError(f"round is {self.phase.value}; only a decrypting round is planned")
        if not isinstance(self.scheme, PaillierScheme):
            raise ProtocolError("decryption groups need a threshold key (PaillierScheme)")
        if self.parts or self.partials:
            raise ProtocolError("the round's decryption is already planned or under way")
        names = list(dict.fromkeys(holders))
        if self.share_index_of:
            strangers = [a for a in names if a not in self.share_index_of]
            if strangers:
                raise ProtocolError(f"{strangers} hold no key share of this round")
        t = self.scheme.threshold
        if isinstance(spares, bool) or not isinstance(spares, int) or spares < 0:
            raise ValueError(f"spares must be a non-negative integer, got {spares!r}")
        groups = max(1, (len(names) - spares) // t)
        k = len(self.aggregate.ciphertexts)
        self.parts = [DecryptionPart(i, a, b) for i, (a, b) in enumerate(split_parts(k, groups))]
        for p in self.parts:
            for a in names[p.index * t : (p.index + 1) * t]:
                self.part_of[a] = p.index
        return {a: self.parts[i] for a, i in self.part_of.items()}

    def part_for(self, agency: str) -> DecryptionPart | None:
        """The part ``agency`` decrypts; None: the whole aggregate (one part, or no plan)."""
        if len(self.parts) <= 1:
            return None
        i = self.part_of.get(agency)
        return None if i is None else self.parts[i]

    def members(self, part: int) -> list[str]:
        """Agencies with an accepted partial of ``part``, proven ones first, then by name."""
        if len(self.parts) <= 1:
            names = list(self._verified)
        else:
            names = [a for a in self._verified if self.part_of.get(a) == part]
        return sorted(names, key=lambda a: (not getattr(self._verified[a], "proven", True), a))

    def assigned(self, part: int) -> list[str]:
        """Agencies asked to decrypt ``part`` (answered or not), sorted."""
        return sorted(a for a, p in self.part_of.items() if p == part)

    def unassign(self, agency: str) -> bool:
        """Take ``agency``'s part away (dropped, silent, or named a cheater).

        An agency whose partial was accepted keeps it (returns False).
        """
        if agency not in self.part_of or (agency in self._verified and agency not in self.cheaters):
            return False
        del self.part_of[agency]
        return True

    def assign_spare(self, part: int, holders: Sequence[str]) -> str | None:
        """Ask the first of ``holders`` without a part or a partial to decrypt ``part``."""
        for h in holders:
            free = h not in self.part_of and h not in self.cheaters and h not in self._verified
            if free and (not self.share_index_of or h in self.share_index_of):
                self.part_of[h] = part
                return h
        return None

    def reassign(self, agency: str, holders: Sequence[str]) -> str | None:
        """Give ``agency``'s part to the first of ``holders`` with no part; None if none.

        Only for an agency without an accepted partial (dropped, silent, or named a
        cheater); :meth:`unassign` then :meth:`assign_spare`.
        """
        p = self.part_of.get(agency)
        if p is None or not self.unassign(agency):
            return None
        return self.assign_spare(p, [h for h in holders if h != agency])

    def decryption_target(self, agency: str) -> Any:
        """What ``agency``'s partial must decrypt: its part, or the whole aggregate.

        Raises :class:`RejectedContribution` for an agency without a part of a split round.
        """
        return self._target(agency)

    def decryptors_of(self, ciphertext: int) -> list[str]:
        """The agencies whose partials were combined into ``ciphertext`` at the last release."""
        return list(self._combined.get(self._part_index(ciphertext), []))

    def _adopt_part(self, agency: str, payload: bytes) -> None:
        """Replay after a restart: recover the plan from a stored partial of a part.

        The plan is not stored; a partial of a part names the part's digest, which is found
        among the ``⌊ℓ/t⌋``-way splits of the aggregate (hashing only).
        """
        if not isinstance(self.scheme, PaillierScheme) or self.aggregate is None:
            return
        from fedcity.crypto import CryptoError, serde

        try:
            pd = serde.partial_decryption_from_bytes(payload, self.scheme.public_key)
        except CryptoError:
            return  # refused by open_partial with the precise reason
        k = len(self.aggregate.ciphertexts)
        if len(pd.partials) == k:
            return
        t = self.scheme.threshold
        holders = len(self.share_index_of) or self.scheme.threshold_key.parties
        candidates = [len(self.parts)] if len(self.parts) > 1 else range(2, holders // t + 1)
        for g in candidates:
            for i, (a, b) in enumerate(split_parts(k, g)):
                if b - a != len(pd.partials):
                    continue
                if self.scheme.part(self.aggregate, a, b).digest() == pd.vector_digest:
                    if len(self.parts) <= 1:
                        self.parts = [
                            DecryptionPart(j, x, y) for j, (x, y) in enumerate(split_parts(k, g))
                        ]
                        self._part_vectors.clear()
                    self.part_of[agency] = i
                    return

    def _part_index(self, ciphertext: int) -> int:
        for p in self.parts:
            if p.start <= ciphertext < p.stop:
                return p.index
        return 0

    def _target(self, agency: str) -> Any:
        """What ``agency`` decrypts: its part of the aggregate, or the whole of it."""
        if len(self.parts) <= 1:
            return self.aggregate
        i = self.part_of.get(agency)
        if i is None:
            raise RejectedContribution(
                f"agency {agency!r} was not asked to decrypt a part of round {self.task.round}"
            )
        return self._part_vector(i)

    def _part_vector(self, i: int) -> Any:
        if len(self.parts) <= 1:
            return self.aggregate
        if i not in self._part_vectors:
            p = self.parts[i]
            assert isinstance(self.scheme, PaillierScheme)
            self._part_vectors[i] = self.scheme.part(self.aggregate, p.start, p.stop)
        return self._part_vectors[i]

    # -- optimistic combination --------------------------------------------------------------
    def submit_proof(self, agency: str, payload: bytes) -> bool:
        """``agency``'s proven partial, asked for after a failed combination.

        Returns True when the proof verifies for the values first sent. Otherwise the agency
        is named in :attr:`cheaters`, its partial is removed, and False is returned: its part
        must be reassigned (:meth:`reassign`).
        """
        if agency not in self.proofs_asked:
            raise ProtocolError(f"agency {agency!r} was not asked to prove a partial decryption")
        part = self.proofs_asked[agency]
        first = self._verified[agency]
        reason = ""
        try:
            proven = self.scheme.open_partial(payload, self._part_vector(part), verify=True)
        except RejectedContribution as exc:
            reason = str(exc)
        else:
            if not proven.proven:
                reason = "it sent no proof when asked for one"
            elif proven.partials != first.partials or proven.share_index != first.share_index:
                reason = "its proven partial differs from the one it first sent"
        del self.proofs_asked[agency]
        if not reason:
            self._verified[agency] = proven
            self.partials[agency] = bytes(payload)
            return True
        self.cheaters[agency] = reason
        del self._verified[agency]
        del self.partials[agency]
        return False

    def _ask_proofs(self, part: int, chosen: Sequence[str], why: str) -> None:
        """Raise :class:`ProofsNeeded` for the unproven partials among ``chosen``."""
        unproven = [a for a in chosen if not getattr(self._verified[a], "proven", True)]
        if not unproven:
            return
        for a in unproven:
            self.proofs_asked[a] = part
        raise ProofsNeeded(
            f"round {self.task.round}: {why}; asking {unproven} to prove their partial decryptions",
            agencies=unproven,
        )

    def _release_threshold(self) -> npt.NDArray[np.float64]:
        assert isinstance(self.scheme, PaillierScheme)
        t = self.scheme.threshold
        plaintexts: list[int] = []
        parts = self.parts or [DecryptionPart(0, 0, len(self.aggregate.ciphertexts))]
        for p in parts:
            chosen = self.members(p.index)[:t]
            try:
                values = self.scheme.combine(
                    self._part_vector(p.index), [self._verified[a] for a in chosen]
                )
            except InvalidPartialDecryptionError:
                self._ask_proofs(p.index, chosen, f"part {p.index} does not combine")
                raise
            self._combined[p.index] = chosen
            plaintexts.extend(values)
        agg = self.aggregate
        try:
            return self.scheme.decode(agg, plaintexts)
        except SlotRangeError as exc:
            i = self._part_index(exc.ciphertext)
            self._ask_proofs(i, self._combined[i], f"ciphertext {exc.ciphertext} is out of range")
            raise

    def release(self) -> npt.NDArray[np.float64]:
        """Combine partial decryptions; returns the step's output (overflow slot removed).

        Raises
        ------
        ProtocolError
            Not enough verified partial decryptions yet.
        ProofsNeeded
            Optimistic combination failed its check: :attr:`proofs_asked` lists who must
            prove (:meth:`submit_proof`) before the round can be released.
        SlotRangeError
            A slot is out of range although every partial combined into it is proven.
        """
        if not self.ready:
            raise ProtocolError(
                f"{len(self._verified)} verified partial decryption(s), "
                f"{self.scheme.threshold} needed"
            )
        if isinstance(self.scheme, PaillierScheme):
            self.released = self._release_threshold()
        else:
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
