"""The coordinator's job state machine, without I/O.

A :class:`JobDriver` runs one :class:`~fedcity.learn.algorithm.Algorithm` over an
:class:`~fedcity.core.aggregation.AggregationScheme`: it opens an
:class:`~fedcity.core.rounds.AggregationRound` per request, widens the packing bound and
repeats a round when an agency reports it had to clip, checks and charges the privacy budget
around releases, drops agencies that left, and fails with a precise reason when fewer remain
than the job's minimum or the key's threshold. Shells feed it events: the in-process
:class:`~fedcity.learn.federation.LocalFederation` calls agencies directly, the gRPC
coordinator answers agents' uploads. Replaying stored uploads through the same calls rebuilds
the exact state after a restart.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcity.core import audit as range_audit
from fedcity.core.aggregation import AggregationScheme, KeyHolderScheme
from fedcity.core.errors import JobFailed, ProtocolError, RejectedContribution
from fedcity.core.masked_scheme import (
    MASKED,
    MaskedDecodeError,
    masked_precision_limit,
    scheme_for_task,
)
from fedcity.core.rounds import AggregationRound, ProofsNeeded, RoundPhase
from fedcity.core.tasks import Task, TaskRequest
from fedcity.crypto import PackingSpec
from fedcity.crypto.errors import SlotRangeError
from fedcity.learn.algorithm import Algorithm, RoundRecord

__all__ = ["Chain", "JobDriver"]

MAX_CLIP = float(2**40)
_MAX_SLOT_BITS = 62


class Chain(Algorithm):
    """Run ``first``, then the algorithm ``then(first)`` builds from its result."""

    def __init__(self, first: Algorithm, then: Callable[[Any], Algorithm]) -> None:
        self.first = first
        self.then = then
        self.second: Algorithm | None = None

    @property
    def current(self) -> Algorithm:
        """The stage now running."""
        return self.second if self.second is not None else self.first

    @property
    def max_rounds(self) -> int | None:
        """Sum of the stages' bounds, when known."""
        a = self.first.max_rounds
        b = None if self.second is None else self.second.max_rounds
        return None if a is None else a + (b or 0)

    def next_request(self) -> TaskRequest | None:
        """The first stage's requests, then the second's."""
        if self.second is None:
            request = self.first.next_request()
            if request is not None:
                return request
            self.second = self.then(self.first)
        return self.second.next_request()

    def update(
        self, request: TaskRequest, released: npt.NDArray[np.float64], record: RoundRecord
    ) -> None:
        """Forward to the running stage."""
        self.current.update(request, released, record)

    def on_overflow(self, request: TaskRequest) -> bool:
        """Forward to the running stage."""
        return self.current.on_overflow(request)

    def precision_bits_for(self, request: TaskRequest, clip: float) -> int:
        """Forward to the running stage."""
        return self.current.precision_bits_for(request, clip)


class JobDriver:
    """One job at the coordinator.

    Parameters
    ----------
    job_id : str
    algorithm : Algorithm
    scheme : AggregationScheme
    agencies : sequence of str
        Agencies taking part, in a fixed order.
    min_agencies : int
        Fewest contributors per released aggregate.
    share_index_of : mapping of str to int
        Each agency's key share (empty without encryption).
    n_length : int
        Key size (packing layouts are built for it).
    dp : DPPlan, optional
        Applied to requests marked ``private``.
    audit : AuditSettings, optional
        Run a range audit (:mod:`fedcity.core.audit`) when an aggregate decrypts out of range:
        the culprit is excluded and the round re-aggregated. Without it such a round fails
        the job.
    """

    def __init__(
        self,
        job_id: str,
        algorithm: Algorithm,
        scheme: AggregationScheme,
        *,
        agencies: Sequence[str],
        min_agencies: int,
        share_index_of: Mapping[str, int],
        n_length: int,
        dp: Any = None,
        audit: range_audit.AuditSettings | None = None,
    ) -> None:
        self.job_id = job_id
        self.algorithm = algorithm
        self.scheme = scheme
        self.agencies = list(agencies)
        self.min_agencies = min_agencies
        self.share_index_of = dict(share_index_of)
        self.n_length = n_length
        self.dp = dp
        self.dropped: set[str] = set()
        self.rounds: list[AggregationRound] = []
        self.records: list[RoundRecord] = []
        self.failure: str | None = None
        self.finished = False
        self._request: TaskRequest | None = None
        self._clip = 0.0
        self._retried = False
        self._seconds: dict[str, float] = {}
        self.audit_settings = audit
        self.audits: dict[int, range_audit.RangeAudit] = {}
        """Round → its range audit (at most one per round)."""
        self.exclusions: list[range_audit.Exclusion] = []
        """Agencies excluded by range audits, in order."""

    # -- inspection ---------------------------------------------------------------------------
    @property
    def active(self) -> list[str]:
        """Agencies still in the job."""
        return [a for a in self.agencies if a not in self.dropped]

    @property
    def round(self) -> AggregationRound | None:
        """The open round, if any."""
        if self.rounds and self.rounds[-1].phase in (
            RoundPhase.COLLECTING,
            RoundPhase.DECRYPTING,
            RoundPhase.AUDITING,
        ):
            return self.rounds[-1]
        return None

    @property
    def auditing(self) -> range_audit.RangeAudit | None:
        """The open round's range audit while it runs."""
        rnd = self.round
        if rnd is None or rnd.phase is not RoundPhase.AUDITING:
            return None
        return self.audits.get(rnd.task.round)

    def awaiting_range_answers(self) -> list[str]:
        """Active contributors that still owe the open round's audit an answer."""
        audit = self.auditing
        return [] if audit is None else audit.awaiting

    def justification(
        self, round_: int, signatures: Mapping[str, bytes]
    ) -> range_audit.Justification | None:
        """Why round ``round_``'s aggregate is a second one (None: it is the first)."""
        audit = self.audits.get(round_)
        if audit is None or audit.outcome is None or not audit.outcome.excluded:
            return None
        return audit.justification(signatures)

    @property
    def task(self) -> Task | None:
        """The open round's task."""
        rnd = self.round
        return None if rnd is None else rnd.task

    def awaiting_contributions(self) -> list[str]:
        """Active agencies that still owe the open round a contribution."""
        rnd = self.round
        if rnd is None or rnd.phase is not RoundPhase.COLLECTING:
            return []
        return [a for a in rnd.missing if a not in self.dropped]

    def decryption_candidates(self) -> list[str]:
        """Active share holders that could still send a partial decryption."""
        rnd = self.round
        if rnd is None or rnd.phase is not RoundPhase.DECRYPTING:
            return []
        return [
            a
            for a in self.agencies
            if a in self.share_index_of
            and a not in self.dropped
            and a not in rnd.partials
            and a not in rnd.cheaters
        ]

    # -- events -------------------------------------------------------------------------------
    def start(self) -> Task | None:
        """Open the first round; None if the algorithm has nothing to ask."""
        return self._next()

    def drop(self, agency: str) -> None:
        """An agency left the job (it stopped answering, or asked to leave)."""
        self.dropped.add(agency)
        rnd = self.round
        if rnd is not None:
            rnd.drop(agency)

    def submit_contribution(self, agency: str, payload: bytes) -> bool:
        """An agency's upload for the open round (see :meth:`AggregationRound.submit`)."""
        rnd = self._open_round()
        if agency in self.dropped:
            raise ProtocolError(f"agency {agency!r} left job {self.job_id}")
        return rnd.submit(agency, payload)

    def close_collection(self) -> bytes:
        """Stop collecting and add what arrived; returns the aggregate for decryption."""
        rnd = self._open_round()
        self._require(len(self.active), "take part")
        with self._timed("aggregation"):
            aggregate: bytes = self._guard(rnd.close)
        if rnd.ready:  # nothing to decrypt
            self._release(rnd)
        return aggregate

    def submit_partial(self, agency: str, payload: bytes, *, verify: bool = True) -> bool:
        """A partial decryption of the open round's aggregate; releases when ``t`` arrived.

        ``verify=False`` only when replaying partials that were verified before they were
        stored (see :meth:`AggregationRound.submit_partial`).
        """
        rnd = self._open_round()
        with self._timed("verification"):
            stored = rnd.submit_partial(agency, payload, verify=verify)
        if rnd.ready:
            self._release(rnd)
        return stored

    def submit_proof(self, agency: str, payload: bytes) -> bool:
        """A proven partial asked for after an optimistic combination failed its check.

        Returns False when the proof named ``agency`` a cheater (see
        :meth:`AggregationRound.submit_proof`); its part then needs another decryptor.
        Releases when nothing else is awaited.
        """
        rnd = self._open_round()
        with self._timed("verification"):
            valid = rnd.submit_proof(agency, payload)
        if rnd.ready:
            self._release(rnd)
        return valid

    def fail_decryption(self) -> None:
        """No further partial decryption will come for the open round: fail the job."""
        rnd = self._open_round()
        self._guard(
            lambda: rnd.fail(
                f"only {len(rnd.decryptors)} agencies answered to decrypt round {rnd.task.round} "
                f"({len(self.active)} remain in the job); the key needs "
                f"t={self.scheme.threshold}"
            )
        )

    def add_seconds(self, stage: str, seconds: float) -> None:
        """Record an agency-side stage duration (the slowest agency counts)."""
        self._seconds[stage] = max(self._seconds.get(stage, 0.0), seconds)

    # -- internals ----------------------------------------------------------------------------
    def _open_round(self) -> AggregationRound:
        rnd = self.round
        if rnd is None:
            raise ProtocolError(f"job {self.job_id} has no open round")
        return rnd

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except JobFailed as exc:
            self.failure = str(exc)
            raise

    def _require(self, available: int, what: str) -> None:
        need = max(self.min_agencies, self.scheme.threshold)
        if available < need:
            self.failure = (
                f"job {self.job_id}: {available} agencies remain to {what}; the job needs at "
                f"least {self.min_agencies} contributors and t={self.scheme.threshold} "
                f"decryptors (dropped: {sorted(self.dropped)})"
            )
            if self.round is not None:
                self.round.phase = RoundPhase.FAILED
            raise JobFailed(self.failure)

    def _spec(self, request: TaskRequest, clip: float, n: int) -> PackingSpec:
        if self.dp is not None and request.private:
            return self.dp.spec_for(request, n, self.n_length)  # type: ignore[no-any-return]
        headroom = (max(n, 1) - 1).bit_length()
        declared = self.algorithm.precision_bits_for(request, clip)
        precision = min(declared, _MAX_SLOT_BITS - headroom - 1, 52)
        if request.params.get("aggregation") == MASKED:  # what fits the PRF's modulus p
            precision = min(precision, max(masked_precision_limit(max(n, 1)), 1))
        return PackingSpec(
            clip=clip, precision_bits=precision, max_summands=max(n, 1), n_length=self.n_length
        )

    def _next(self, retry: bool = False) -> Task | None:
        if not retry:
            request = self.algorithm.next_request()
            if request is None:
                self.finished = True
                return None
            self._request = request
            self._retried = False
            private = self.dp is not None and request.private
            self._clip = self.dp.clip_for(request) if private else min(request.clip, MAX_CLIP)
            if private:
                try:
                    self.dp.check()
                except JobFailed as exc:
                    self.failure = str(exc)
                    raise
            self._seconds = {}
        assert self._request is not None
        request = self._request
        participants = self.active
        self._require(len(participants), "contribute")
        spec = self._spec(request, self._clip, len(participants))
        private = self.dp is not None and request.private
        task = Task(
            self.job_id,
            len(self.rounds),
            request,
            spec,
            dp=self.dp.task_params(spec, len(participants)) if private else None,
        )
        try:  # the round's scheme: the federation's, or lwr-masked if the request opts in
            scheme = scheme_for_task(self.scheme, task)
        except RejectedContribution as exc:
            self.failure = f"job {self.job_id} round {task.round} ({request.kind}): {exc}"
            raise JobFailed(self.failure) from exc
        self.rounds.append(
            AggregationRound(
                task,
                scheme,
                participants=participants,
                min_contributors=self.min_agencies,
                share_index_of=self.share_index_of,
            )
        )
        return task

    def _release(self, rnd: AggregationRound) -> None:
        with self._timed("combination"):
            try:
                released = rnd.release()
            except ProofsNeeded:
                return  # optimistic combination: the round waits for rnd.proofs_asked
            except MaskedDecodeError as exc:
                rnd.phase = RoundPhase.FAILED
                self.failure = (
                    f"round {rnd.task.round} ({rnd.task.request.kind}): the lwr-masked sum of "
                    f"{sorted(rnd.contributors)} is out of range ({exc}); at least one of these "
                    "agencies sent a malformed masked vector or key, and in this opt-in scheme "
                    "the culprit cannot be identified (masked vectors admit no range audit; "
                    "docs/trust-model.md)"
                )
                raise JobFailed(self.failure) from exc
            except SlotRangeError as exc:
                if self._begin_audit(rnd, exc):
                    return
                self.failure = (
                    f"round {rnd.task.round} ({rnd.task.request.kind}): the aggregate of "
                    f"{sorted(rnd.contributors)} decrypts out of range ({exc}); at least one of "
                    "these agencies sent values outside the round's encoding, and which one "
                    "cannot be told without revealing individual contributions "
                    "(docs/trust-model.md, 'Malicious agencies')"
                )
                raise JobFailed(self.failure) from exc
        request = rnd.task.request
        if not rnd.task.dp and rnd.overflowed:
            if self._clip >= MAX_CLIP:
                if self.algorithm.on_overflow(request):
                    self._next()  # the algorithm changed course (e.g. a shorter step)
                    return
                self.failure = (
                    f"{request.kind}: local values exceed the largest supported bound {MAX_CLIP}"
                )
                raise JobFailed(self.failure)
            self._clip = min(self._clip * 256.0, MAX_CLIP)  # someone clipped: widen, repeat
            self._retried = True
            self._next(retry=True)
            return
        n = len(rnd.contributors)
        record = RoundRecord(
            round=rnd.task.round,
            kind=request.kind,
            label=request.label or request.kind,
            contributors=rnd.contributors,
            decryptors=rnd.decryptors,
            bytes_per_agency=sum(map(len, rnd.contributions.values())) / max(n, 1),
            bytes_to_decryptors=len(rnd.aggregate_bytes or b"") * len(rnd.decryptors),
            seconds=dict(self._seconds),
            retried_for_overflow=self._retried,
            clip=self._clip,
            step=rnd.task.spec.step if self.scheme.encrypted else 0.0,
        )
        if request.integer_valued:
            released = np.rint(released)
        if rnd.task.dp:
            self.dp.charge(request)
        # an algorithm fails the job with JobFailed when the released sums show it cannot go
        # on (e.g. one-class labels); the reason becomes the job's failure
        self._guard(lambda: self.algorithm.update(request, released, record))
        self.records.append(record)
        self._next()

    # -- range audits -------------------------------------------------------------------------
    def _begin_audit(self, rnd: AggregationRound, exc: SlotRangeError) -> bool:
        """Enter the AUDITING phase for ``rnd``; False when no audit is possible."""
        r = rnd.task.round
        if self.audit_settings is None or r in self.audits or not self.scheme.encrypted:
            return False
        ciphertext = getattr(exc, "ciphertext", None)
        if not isinstance(ciphertext, int):
            return False
        # with decryption groups, the partials combined into ciphertext i's part
        combined = getattr(rnd, "decryptors_of", None)
        used = (combined(ciphertext) if combined is not None else []) or rnd.decryptors[
            : self.scheme.threshold
        ]
        part = None
        for p in getattr(rnd, "parts", ()):
            if len(rnd.parts) > 1 and p.start <= ciphertext < p.stop:
                part = (p.start, p.stop)
        unblinded = mask = 0
        if isinstance(self.scheme, KeyHolderScheme):
            unblinded = int(rnd.aggregate.vector.ciphertexts[ciphertext])
            mask = int(rnd.aggregate.masks[ciphertext])
        evidence = range_audit.OutOfRange(
            self.job_id,
            r,
            ciphertext,
            rnd.aggregate_bytes or b"",
            tuple((a, rnd.partials[a]) for a in used),
            tuple((a, hashlib.sha256(rnd.contributions[a]).digest()) for a in rnd.contributors),
            unblinded,
            mask,
            part,
        )
        self.audits[r] = range_audit.RangeAudit(
            rnd.task,
            evidence,
            dict(rnd.contributions),
            elimination=not isinstance(self.scheme, KeyHolderScheme),
        )
        rnd.phase = RoundPhase.AUDITING
        return True

    def verify_range_answer(self, answer: range_audit.RangeAnswer) -> bool:
        """Verify an answer to the open audit (signature raises, proof → bool); no state change.

        Pure: the coordinator runs it outside its lock, then calls
        :meth:`submit_range_answer` with the verdict.
        """
        audit = self.auditing
        settings = self.audit_settings
        if audit is None or settings is None:
            raise ProtocolError(f"job {self.job_id} has no range audit open")
        payload = audit.contributions.get(answer.agency)
        key = settings.verify_keys.get(answer.agency)
        if payload is None or key is None:
            raise RejectedContribution(
                f"agency {answer.agency!r} did not contribute to round {audit.task.round}"
            )
        return range_audit.verify_answer(
            self.scheme, key, settings.key_id, audit.task, audit.ciphertext, payload, answer
        )

    def submit_range_answer(
        self, answer: range_audit.RangeAnswer, *, valid: bool | None = None
    ) -> bool:
        """Record an answer to the open audit; closes it when every contributor answered.

        ``valid`` is the verdict of :meth:`verify_range_answer` when the caller already ran
        it (None: verified here). Returns False for an identical repeat.
        """
        audit = self.auditing
        if audit is None:
            raise ProtocolError(f"job {self.job_id} has no range audit open")
        if valid is None:
            valid = self.verify_range_answer(answer)
        stored = audit.record(answer, valid)
        if stored and audit.complete:
            self.close_audit()
        return stored

    def close_audit(self) -> None:
        """Decide the open audit (deadline passed or all answered) and go on or fail."""
        audit = self.auditing
        rnd = self.round
        if audit is None or rnd is None or self.audit_settings is None:
            raise ProtocolError(f"job {self.job_id} has no range audit open")
        outcome = audit.decide(seconds=self.audit_settings.seconds)
        for exclusion in outcome.excluded:
            self.exclusions.append(exclusion)
            self.dropped.add(exclusion.agency)
        excluded = ", ".join(e.reason for e in outcome.excluded)
        if outcome.failure is not None:
            rnd.phase = RoundPhase.FAILED
            self.failure = outcome.failure + (f" ({excluded})" if excluded else "")
            raise JobFailed(self.failure)
        names = {e.agency for e in outcome.excluded}
        remaining = [a for a in rnd.contributors if a not in names]
        again = AggregationRound(
            rnd.task,
            rnd.scheme,
            participants=remaining,
            min_contributors=self.min_agencies,
            share_index_of=self.share_index_of,
        )
        for a in remaining:
            again.submit(a, rnd.contributions[a])
        rnd.phase = RoundPhase.FAILED
        rnd.failure = excluded
        self.rounds[-1] = again
        if len(remaining) < max(self.min_agencies, 1):
            again.phase = RoundPhase.FAILED
            self.failure = (
                f"{excluded}; {len(remaining)} contributor(s) remain for round "
                f"{rnd.task.round}, the job needs at least {self.min_agencies}"
            )
            raise JobFailed(self.failure)
        with self._timed("aggregation"):
            self._guard(again.close)
        if again.ready:
            self._release(again)

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + time.perf_counter() - start
