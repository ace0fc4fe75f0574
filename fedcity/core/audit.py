"""Range audits: which agency made a round's aggregate decrypt out of range, without I/O.

Each contribution is one summand whose value slots lie in ``[0, spec.summand_max]`` and whose
other plaintext bits are zero. A sum of at most ``max_summands`` such plaintexts cannot carry
from one slot into the next, so when an aggregate decrypts out of range
(:class:`~fedcity.crypto.errors.SlotRangeError` on ciphertext ``i``) at least one contributor
encrypted a plaintext that breaks that layout in ciphertext ``i``. The audit finds it:

1. The coordinator shows every contributor the *evidence* (:class:`OutOfRange`): the
   aggregate, the ``t`` partial decryptions that released it (each with its proof) and the
   contributors' digests. An agency recombines ciphertext ``i`` itself
   (:func:`check_out_of_range`) before it spends seconds on a proof, so it answers no audit
   the coordinator cannot justify.
2. Each contributor proves, in zero knowledge, that ciphertext ``i`` of *its signed
   contribution* satisfies the layout (:func:`answer_audit`, with
   :func:`fedcity.crypto.rangeproof.prove_slot_ranges` on the opening it kept in memory) and
   signs the answer (:func:`answer_statement`: kind ``"range-proof"``, bound to job, round,
   agency, key id, ciphertext index and contribution digest; the proof's Fiat–Shamir
   context, :func:`proof_context`, holds the same fields).
3. :meth:`RangeAudit.decide` applies the decision rule: an agency is excluded iff (a) its
   signed proof fails, or (b) it is the only contributor without a valid proof and every
   other contributor's signed proof verified (in-range contributions cannot sum out of
   range, so it is the culprit by elimination). Two or more silent agencies cannot be told
   apart without the coordinator's word: the round fails, naming them.
4. The round is re-aggregated from the remaining signed contributions. A decryptor accepts a
   second aggregate for the same round only with a :class:`Justification` it re-verifies
   (:func:`check_justification`): the out-of-range evidence of the first aggregate and, per
   excluded agency, its failing signed proof, or every other contributor's valid signed proof.
   Without it a coordinator could read an honest agency's contribution as the difference of
   two aggregates.

In the single-key-holder mode the key holder sees no contribution (it could decrypt it), so
it can re-verify only a *failing* proof (the excluded agency's own contribution is shown to
it) and exclusion by elimination is not available there (see ``docs/trust-model.md``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcity.core.aggregation import AggregationScheme, KeyHolderScheme, PaillierScheme
from fedcity.core.errors import RejectedContribution
from fedcity.core.tasks import Task
from fedcity.crypto import CryptoError, EncryptedVector, PackingSpec, serde
from fedcity.crypto.signing import SigningKey, Statement, VerifyKey
from fedcity.crypto.vector import Openings

__all__ = [
    "AUDIT_KIND",
    "DEFAULT_AUDIT_SECONDS",
    "AuditOutcome",
    "AuditSettings",
    "ExcludedContribution",
    "Exclusion",
    "Justification",
    "OpeningsKeeper",
    "OutOfRange",
    "RangeAnswer",
    "RangeAudit",
    "answer_audit",
    "answer_statement",
    "check_justification",
    "check_out_of_range",
    "contribution_layout",
    "proof_context",
    "verify_answer",
]

AUDIT_KIND = "range-proof"
"""The :class:`~fedcity.crypto.signing.Statement` kind of a signed audit answer."""
DEFAULT_AUDIT_SECONDS = 120.0
"""How long contributors have to answer a range audit (``--audit-timeout``)."""
_CONTEXT_DOMAIN = b"fedcity.v1.range-proof-context\x00"
_ANSWER_DOMAIN = b"fedcity.v1.range-proof-answer\x00"
FAILED = "failed"
"""Exclusion because the agency's signed range proof does not verify."""
ELIMINATED = "eliminated"
"""Exclusion by elimination: every other contributor's signed proof verified."""


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# -- layouts and bindings ---------------------------------------------------------------------
def contribution_layout(task: Task, ciphertext: int) -> Any:
    """The :class:`~fedcity.crypto.rangeproof.SlotLayout` one contribution's ciphertext obeys.

    A contribution is one summand: ``slot_bits`` from the round's packing, the value slots
    that ciphertext carries, each in ``[0, spec.summand_max]``.

    Raises
    ------
    ValueError
        ``ciphertext`` is not a ciphertext of this round's vectors.
    """
    from fedcity.crypto.rangeproof import SlotLayout

    spec = task.spec
    length = task.vector_length
    count = spec.n_ciphertexts(length)
    if isinstance(ciphertext, bool) or not isinstance(ciphertext, int):
        raise ValueError(f"ciphertext index must be an int, got {ciphertext!r}")
    if not 0 <= ciphertext < count:
        raise ValueError(f"ciphertext {ciphertext} is outside [0, {count}) for this round")
    s = spec.slots_per_ciphertext
    n_values = min(s, length - ciphertext * s)
    return SlotLayout(slot_bits=spec.slot_bits, n_values=n_values, upper=spec.summand_max)


def _out_of_layout(spec: PackingSpec, plaintext: int, n_values: int, summands: int) -> bool:
    """Whether an aggregate plaintext of ``summands`` summands breaks the round's layout."""
    w = spec.slot_bits
    if plaintext < 0 or plaintext >> (n_values * w):
        return True
    limit = summands * spec.summand_max
    mask = (1 << w) - 1
    return any((plaintext >> (j * w)) & mask > limit for j in range(n_values))


def proof_context(
    job_id: str, round_: int, agency: str, key_id: bytes, ciphertext: int, digest: bytes
) -> bytes:
    """The bytes hashed into a range proof's Fiat–Shamir challenge.

    Length-prefixed job id, round, agency, federation key id, ciphertext index and the
    SHA-256 of the contribution: a proof made for one of them verifies for no other.
    """
    return _CONTEXT_DOMAIN + b"".join(
        _field(part)
        for part in (
            job_id.encode("utf-8"),
            int(round_).to_bytes(8, "big"),
            agency.encode("utf-8"),
            bytes(key_id),
            int(ciphertext).to_bytes(4, "big"),
            bytes(digest),
        )
    )


def _answer_digest(ciphertext: int, contribution_digest: bytes, proof: bytes) -> bytes:
    h = hashlib.sha256(_ANSWER_DOMAIN)
    h.update(int(ciphertext).to_bytes(4, "big"))
    h.update(_field(bytes(contribution_digest)))
    h.update(hashlib.sha256(proof).digest())
    return h.digest()


def answer_statement(
    job_id: str,
    round_: int,
    agency: str,
    key_id: bytes,
    ciphertext: int,
    contribution_digest: bytes,
    proof: bytes,
) -> Statement:
    """What an agency signs for its audit answer (kind :data:`AUDIT_KIND`)."""
    return Statement(
        job_id,
        round_,
        AUDIT_KIND,
        agency,
        bytes(key_id),
        _answer_digest(ciphertext, contribution_digest, proof),
    )


@dataclass(frozen=True)
class AuditSettings:
    """What a coordinator needs to run range audits.

    Attributes
    ----------
    verify_keys : mapping of str to VerifyKey
        Every member's public signing key.
    key_id : bytes
        The federation key's id (signed answers cover it).
    seconds : float
        Answer deadline (default :data:`DEFAULT_AUDIT_SECONDS`).
    """

    verify_keys: Mapping[str, VerifyKey]
    key_id: bytes
    seconds: float = DEFAULT_AUDIT_SECONDS


# -- messages ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RangeAnswer:
    """One contributor's signed answer to a range audit.

    Attributes
    ----------
    agency : str
    ciphertext : int
        The audited ciphertext index.
    contribution_digest : bytes
        SHA-256 of the contribution the proof is about.
    proof : bytes
        :func:`fedcity.crypto.rangeproof.prove_slot_ranges` output.
    signature : bytes
        Ed25519 signature of :func:`answer_statement`.
    """

    agency: str
    ciphertext: int
    contribution_digest: bytes
    proof: bytes
    signature: bytes


@dataclass(frozen=True)
class OutOfRange:
    """Evidence that a round's aggregate decrypts out of range in ciphertext ``ciphertext``.

    Attributes
    ----------
    job_id, round : str, int
    ciphertext : int
    aggregate : bytes
        What was decrypted: the aggregate (threshold) or the blinded aggregate (key holder).
    partials : tuple of (str, bytes)
        Decryptor → its partial decryption (with proof) or the key holder's decryption; the
        ``t`` the release combined.
    contributors : tuple of (str, bytes)
        Contributor → SHA-256 of its contribution, as the aggregate adds them.
    unblinded : int
        Key holder only: ciphertext ``i`` of the aggregate before blinding.
    mask : int
        Key holder only: the blinding mask of ciphertext ``i``.
    part : (int, int) or None
        With decryption groups: the ciphertexts ``start..stop-1`` the ``partials`` decrypt
        (the part holding ciphertext ``i``); None when they decrypt the whole aggregate.
    """

    job_id: str
    round: int
    ciphertext: int
    aggregate: bytes
    partials: tuple[tuple[str, bytes], ...]
    contributors: tuple[tuple[str, bytes], ...]
    unblinded: int = 0
    mask: int = 0
    part: tuple[int, int] | None = None

    @property
    def agencies(self) -> list[str]:
        """The contributors, sorted."""
        return sorted(a for a, _ in self.contributors)


@dataclass(frozen=True)
class ExcludedContribution:
    """An excluded agency's signed contribution and how it was singled out."""

    agency: str
    how: str
    """:data:`FAILED` or :data:`ELIMINATED`."""
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class Justification:
    """Why a second aggregate of the same round may be decrypted (see the module docstring)."""

    out_of_range: OutOfRange
    answers: tuple[RangeAnswer, ...]
    excluded: tuple[ExcludedContribution, ...]


@dataclass(frozen=True)
class Exclusion:
    """An agency excluded from a round by its range audit."""

    agency: str
    round: int
    ciphertext: int
    how: str

    @property
    def reason(self) -> str:
        """The sentence shown in job status, watch and logs."""
        why = (
            "range proof failed"
            if self.how == FAILED
            else "did not prove its range; every other contributor did"
        )
        return (
            f"{self.agency} was excluded from round {self.round}: its contribution to "
            f"ciphertext {self.ciphertext} is out of range ({why})"
        )


@dataclass(frozen=True)
class AuditOutcome:
    """What a closed audit decided."""

    excluded: tuple[Exclusion, ...]
    silent: tuple[str, ...]
    failure: str | None = None


# -- checks shared by agencies, decryptors and the coordinator --------------------------------
def check_out_of_range(scheme: AggregationScheme, task: Task, evidence: OutOfRange) -> None:
    """Accept the evidence that ciphertext ``i`` of the aggregate is out of range, or raise.

    Threshold: every partial's proof is verified against the aggregate, ``t`` of them are
    combined for ciphertext ``i`` only and the plaintext must break the layout. Key holder:
    the key holder's decryption is verified against the blinded aggregate, the blinded
    ciphertext must be ``c_i·(1 + R_i·n)`` and ``m_i - R_i`` must break the layout.

    Raises
    ------
    RejectedContribution
        Naming what does not hold.
    """
    where = f"round {task.round} of job {task.job_id}"
    if evidence.job_id != task.job_id or evidence.round != task.round:
        raise RejectedContribution(
            f"the range audit shows evidence for round {evidence.round} of job "
            f"{evidence.job_id}, not {where}"
        )
    names = [a for a, _ in evidence.contributors]
    if len(set(names)) != len(names) or not names:
        raise RejectedContribution(f"the range audit of {where} lists no or repeated contributors")
    try:
        layout = contribution_layout(task, evidence.ciphertext)
    except ValueError as exc:
        raise RejectedContribution(f"the range audit of {where}: {exc}") from exc
    agg = scheme.aggregate_from_bytes(evidence.aggregate, task.spec, task.vector_length)
    summands = getattr(agg, "summands", None)
    if summands != len(names):
        raise RejectedContribution(
            f"the audited aggregate of {where} holds {summands} summands, the evidence names "
            f"{len(names)} contributors"
        )
    i = evidence.ciphertext
    pk = agg.public_key
    if isinstance(scheme, PaillierScheme):
        target, j = agg, i
        if evidence.part is not None:  # a decryption group decrypted only this part
            start, stop = evidence.part
            if not 0 <= start <= i < stop <= len(agg.ciphertexts):
                raise RejectedContribution(
                    f"the range audit of {where}: part {start}..{stop - 1} does not hold "
                    f"ciphertext {i}"
                )
            target, j = _part(agg, start, stop), i - start
        verified: dict[int, Any] = {}
        for _agency, payload in evidence.partials:
            pd = scheme.open_partial(payload, target, verify=True)  # raises on a bad proof
            if getattr(pd, "proven", True) is not True:
                raise RejectedContribution(
                    f"the range audit of {where} shows a partial decryption without its proof"
                )
            verified.setdefault(pd.share_index, pd)
        if len(verified) < scheme.threshold:
            raise RejectedContribution(
                f"the range audit of {where} shows {len(verified)} valid partial "
                f"decryption(s) from distinct shares; t={scheme.threshold} are needed"
            )
        from fedcity.crypto import raw_combine

        chosen = dict(sorted(verified.items())[: scheme.threshold])
        (plaintext,) = raw_combine(
            scheme.threshold_key, {k: [v.partials[j]] for k, v in chosen.items()}
        )
    elif isinstance(scheme, KeyHolderScheme):
        from fedcity.crypto import verify_keyholder_decryption

        if len(evidence.partials) != 1:
            raise RejectedContribution(f"the range audit of {where} needs the key holder's answer")
        try:
            dec = serde.keyholder_decryption_from_bytes(evidence.partials[0][1], pk)
        except CryptoError as exc:
            raise RejectedContribution(f"the range audit of {where}: {exc}") from exc
        if not verify_keyholder_decryption(pk, agg, dec):
            raise RejectedContribution(
                f"the key holder's decryption shown for {where} does not match the aggregate"
            )
        n, nsq = int(pk.n), int(pk.nsquare)
        c, mask = int(evidence.unblinded), int(evidence.mask)
        if not (0 < c < nsq and 0 <= mask < n) or c * (1 + mask * n) % nsq != int(
            agg.ciphertexts[i]
        ):
            raise RejectedContribution(
                f"the unblinded ciphertext {i} and mask shown for {where} do not give the "
                "blinded aggregate that was decrypted"
            )
        plaintext = (int(dec.plaintexts[i]) - mask) % n
    else:
        raise RejectedContribution("plaintext federations have nothing to audit")
    if not _out_of_layout(task.spec, int(plaintext), layout.n_values, len(names)):
        raise RejectedContribution(
            f"ciphertext {i} of the aggregate of {where} decrypts in range; the range audit is "
            "not justified"
        )


def _part(vector: EncryptedVector, start: int, stop: int) -> EncryptedVector:
    """Ciphertexts ``start..stop-1`` of ``vector`` as the vector a decryption group decrypts."""
    from fedcity.crypto import threshold

    vector_part = getattr(threshold, "vector_part", None)
    if vector_part is None:  # pragma: no cover - a build without decryption groups
        raise RejectedContribution("this build has no decryption groups")
    part: EncryptedVector = vector_part(vector, start, stop)
    return part


def verify_answer(
    scheme: AggregationScheme,
    verify_key: VerifyKey,
    key_id: bytes,
    task: Task,
    ciphertext: int,
    contribution: bytes,
    answer: RangeAnswer,
) -> bool:
    """Whether a *signed* answer's proof verifies; raises if the signature does not.

    Returns True for a valid proof, False for a proof that fails (oversized, malformed or
    wrong). An answer whose signature does not verify for exactly this job, round, agency,
    key, ciphertext and contribution proves nothing about the agency (anyone could have
    made it) and raises :class:`RejectedContribution` instead.
    """
    from fedcity.crypto.rangeproof import RangeProofError, max_proof_bytes, verify_slot_ranges

    digest = hashlib.sha256(contribution).digest()
    if answer.ciphertext != ciphertext or answer.contribution_digest != digest:
        raise RejectedContribution(
            f"the range-audit answer of {answer.agency!r} is for ciphertext {answer.ciphertext} "
            f"of contribution {answer.contribution_digest.hex()[:16]}…, the audit asks about "
            f"ciphertext {ciphertext} of {digest.hex()[:16]}…"
        )
    statement = answer_statement(
        task.job_id, task.round, answer.agency, key_id, ciphertext, digest, answer.proof
    )
    if not verify_key.verify(statement, answer.signature):
        raise RejectedContribution(
            f"the signature of {answer.agency!r} does not verify for its range-audit answer to "
            f"round {task.round} of job {task.job_id}"
        )
    vec = scheme.open(contribution, task.spec, task.vector_length)
    layout = contribution_layout(task, ciphertext)
    if len(answer.proof) > max_proof_bytes(vec.public_key, layout):
        return False  # bounded before parsing
    context = proof_context(task.job_id, task.round, answer.agency, key_id, ciphertext, digest)
    try:
        verify_slot_ranges(
            vec.public_key, int(vec.ciphertexts[ciphertext]), answer.proof, layout, context
        )
    except RangeProofError:
        return False
    return True


# -- agency side ------------------------------------------------------------------------------
@dataclass
class _Kept:
    digest: bytes
    vector: EncryptedVector
    openings: Openings

    def __repr__(self) -> str:
        return f"<kept contribution {self.digest.hex()[:16]}…>"


class OpeningsKeeper:
    """Openings of this agency's contributions to rounds still open, in memory only.

    At most ``rounds_per_job`` rounds per job (the current and the previous one) and
    ``max_jobs`` jobs are kept; older ones are cleared. Nothing here is ever written to disk or
    logged (its ``repr`` shows counts only).
    """

    def __init__(self, *, rounds_per_job: int = 2, max_jobs: int = 32) -> None:
        self.rounds_per_job = rounds_per_job
        self.max_jobs = max_jobs
        self._jobs: OrderedDict[str, OrderedDict[int, _Kept]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<OpeningsKeeper jobs={len(self._jobs)}>"

    def keep(
        self, job_id: str, round_: int, payload: bytes, vector: EncryptedVector, openings: Openings
    ) -> None:
        """Remember the opening of the contribution ``payload`` to a round."""
        rounds = self._jobs.setdefault(job_id, OrderedDict())
        self._jobs.move_to_end(job_id)
        old = rounds.pop(round_, None)
        if old is not None:
            old.openings.clear()
        rounds[round_] = _Kept(hashlib.sha256(payload).digest(), vector, openings)
        while len(rounds) > self.rounds_per_job:
            rounds.popitem(last=False)[1].openings.clear()
        while len(self._jobs) > self.max_jobs:
            self.forget(next(iter(self._jobs)))

    def get(self, job_id: str, round_: int) -> _Kept | None:
        """The kept contribution of a round, if any."""
        rounds = self._jobs.get(job_id)
        return None if rounds is None else rounds.get(round_)

    def forget(self, job_id: str) -> None:
        """Drop every opening of a job (it ended)."""
        for kept in self._jobs.pop(job_id, {}).values():
            kept.openings.clear()

    def rounds(self, job_id: str) -> list[int]:
        """Rounds of a job whose openings are kept."""
        return list(self._jobs.get(job_id, {}))


def answer_audit(
    agency: str,
    signing_key: SigningKey,
    key_id: bytes,
    keeper: OpeningsKeeper,
    scheme: AggregationScheme,
    task: Task,
    evidence: OutOfRange,
) -> RangeAnswer:
    """Check the audit is justified, then prove and sign the range of our ciphertext ``i``.

    Raises
    ------
    RejectedContribution
        The evidence does not show the aggregate out of range, does not list this agency's
        contribution, or the agency kept no opening for it.
    """
    where = f"round {task.round} of job {task.job_id}"
    kept = keeper.get(task.job_id, task.round)
    if kept is None:
        raise RejectedContribution(
            f"agency {agency!r} keeps no opening of a contribution to {where} (it keeps only "
            "the current and previous round of running jobs)"
        )
    listed = dict(evidence.contributors)
    if listed.get(agency) != kept.digest:
        raise RejectedContribution(
            f"agency {agency!r}: the range audit of {where} does not list the contribution it sent"
        )
    check_out_of_range(scheme, task, evidence)
    from fedcity.crypto.rangeproof import prove_slot_ranges

    i = evidence.ciphertext
    layout = contribution_layout(task, i)
    context = proof_context(task.job_id, task.round, agency, key_id, i, kept.digest)
    proof = prove_slot_ranges(
        kept.vector.public_key,
        int(kept.vector.ciphertexts[i]),
        kept.openings.plaintext(i),
        int(kept.openings.exponent(i)),
        layout,
        context,
    )
    statement = answer_statement(task.job_id, task.round, agency, key_id, i, kept.digest, proof)
    return RangeAnswer(agency, i, kept.digest, proof, signing_key.sign(statement))


# -- coordinator side -------------------------------------------------------------------------
@dataclass
class RangeAudit:
    """One round's range audit at the coordinator.

    Parameters
    ----------
    task : Task
    evidence : OutOfRange
    contributions : mapping of str to bytes
        The round's accepted contributions (what the aggregate added).
    elimination : bool
        Whether exclusion by elimination is allowed (not in the single-key-holder mode).
    """

    task: Task
    evidence: OutOfRange
    contributions: dict[str, bytes]
    elimination: bool = True
    answers: dict[str, RangeAnswer] = field(default_factory=dict)
    valid: dict[str, bool] = field(default_factory=dict)
    outcome: AuditOutcome | None = None

    @property
    def ciphertext(self) -> int:
        """The audited ciphertext index."""
        return self.evidence.ciphertext

    @property
    def awaiting(self) -> list[str]:
        """Contributors that have not answered yet."""
        return [a for a in sorted(self.contributions) if a not in self.answers]

    @property
    def complete(self) -> bool:
        """Every contributor answered."""
        return not self.awaiting

    def record(self, answer: RangeAnswer, valid: bool) -> bool:
        """Store a signature-checked answer and its verdict; False for a repeat."""
        if self.outcome is not None:
            raise RejectedContribution(
                f"the range audit of round {self.task.round} is closed; answers come too late"
            )
        if answer.agency not in self.contributions:
            raise RejectedContribution(
                f"agency {answer.agency!r} did not contribute to round {self.task.round}"
            )
        previous = self.answers.get(answer.agency)
        if previous is not None:
            if previous == answer:
                return False
            raise RejectedContribution(
                f"agency {answer.agency!r} already answered the range audit; the first answer "
                "stands"
            )
        self.answers[answer.agency] = answer
        self.valid[answer.agency] = bool(valid)
        return True

    def decide(self, *, seconds: float) -> AuditOutcome:
        """Apply the decision rule to the answers so far (the audit closes).

        ``seconds`` is the answer deadline, quoted in the failure message.
        """
        r, i = self.task.round, self.ciphertext
        failed = [a for a in sorted(self.answers) if not self.valid[a]]
        silent = self.awaiting
        excluded = [Exclusion(a, r, i, FAILED) for a in failed]
        failure = None
        if len(silent) == 1 and not failed and self.elimination:
            excluded.append(Exclusion(silent[0], r, i, ELIMINATED))
            silent = []
        if silent:
            names = ", ".join(silent)
            extra = (
                "" if self.elimination else " (the key-holder mode cannot exclude by elimination)"
            )
            failure = (
                f"round {r}: the aggregate decrypts out of range in ciphertext {i}; {names} did "
                f"not answer the range audit within {seconds:g} s, so the culprit cannot be "
                f"singled out{extra}"
            )
        elif not excluded:
            failure = (
                f"round {r}: every contributor proved ciphertext {i} of its contribution in "
                "range, yet the aggregate decrypts out of range: the coordinator's aggregate "
                "does not match the contributions"
            )
        self.outcome = AuditOutcome(tuple(excluded), tuple(silent), failure)
        return self.outcome

    def justification(self, signatures: Mapping[str, bytes]) -> Justification:
        """What decryptors need to accept the re-aggregated round (after :meth:`decide`)."""
        if self.outcome is None:
            raise ValueError("the audit is still open")
        return Justification(
            self.evidence,
            tuple(self.answers[a] for a in sorted(self.answers)),
            tuple(
                ExcludedContribution(
                    e.agency, e.how, self.contributions[e.agency], signatures.get(e.agency, b"")
                )
                for e in self.outcome.excluded
            ),
        )


# -- decryptor side ---------------------------------------------------------------------------
def check_justification(
    scheme: AggregationScheme,
    verify_keys: Mapping[str, VerifyKey],
    key_id: bytes,
    task: Task,
    remaining: Mapping[str, bytes | None],
    justification: Justification,
    *,
    seen: Mapping[str, str] | None = None,
) -> None:
    """Accept a second aggregate of ``task``'s round, or raise :class:`RejectedContribution`.

    Parameters
    ----------
    remaining : mapping of str to bytes or None
        The new aggregate's contributors → their contribution (None where withheld: key
        holder), already signature-checked by :class:`~fedcity.core.integrity.ContributionVerifier`.
    seen : mapping of str to str, optional
        Contributor → hex SHA-256 of the first aggregate, as this decryptor checked it.
    """
    ev = justification.out_of_range
    where = f"round {task.round} of job {task.job_id}"
    check_out_of_range(scheme, task, ev)
    first = {a: d for a, d in ev.contributors}
    if seen is not None and {a: bytes.fromhex(d) for a, d in seen.items()} != first:
        raise RejectedContribution(
            f"the justification for {where} shows another first aggregate than the one this "
            "agency helped decrypt"
        )
    excluded = {e.agency: e for e in justification.excluded}
    if not excluded:
        raise RejectedContribution(f"the justification for {where} excludes nobody")
    if set(remaining) | set(excluded) != set(first) or set(remaining) & set(excluded):
        raise RejectedContribution(
            f"the second aggregate of {where} adds {sorted(remaining)}; the first added "
            f"{sorted(first)} and the justification excludes {sorted(excluded)}"
        )
    answers = {a.agency: a for a in justification.answers}
    i = ev.ciphertext
    payloads: dict[str, bytes | None] = dict(remaining)
    for e in excluded.values():
        digest = hashlib.sha256(e.payload).digest()
        if digest != first[e.agency]:
            raise RejectedContribution(
                f"the contribution of {e.agency!r} shown to justify its exclusion is not the one "
                f"the first aggregate of {where} added"
            )
        statement = Statement(task.job_id, task.round, "contribution", e.agency, key_id, digest)
        key = verify_keys.get(e.agency)
        if key is None or not key.verify(statement, e.signature):
            raise RejectedContribution(
                f"the contribution of {e.agency!r} shown to justify its exclusion from {where} "
                "is not signed by it"
            )
        payloads[e.agency] = e.payload

    def valid(agency: str) -> bool:
        payload, answer = payloads.get(agency), answers.get(agency)
        if payload is None or answer is None or agency not in verify_keys:
            raise RejectedContribution(
                f"the justification for {where} lacks the signed answer or contribution of "
                f"{agency!r}"
            )
        return verify_answer(scheme, verify_keys[agency], key_id, task, i, payload, answer)

    for e in excluded.values():
        if e.how == FAILED:
            if valid(e.agency):
                raise RejectedContribution(
                    f"the range proof of {e.agency!r} verifies: its exclusion from {where} is "
                    "not justified"
                )
        elif e.how == ELIMINATED:
            if isinstance(scheme, KeyHolderScheme) or len(excluded) != 1:
                raise RejectedContribution(
                    f"exclusion of {e.agency!r} by elimination is not justified for {where}"
                )
            if e.agency in answers:
                raise RejectedContribution(
                    f"{e.agency!r} answered the audit of {where}; it cannot be excluded by "
                    "elimination"
                )
            for other in first:
                if other != e.agency and not valid(other):
                    raise RejectedContribution(
                        f"the range proof of {other!r} fails: {e.agency!r} cannot be excluded "
                        f"from {where} by elimination"
                    )
        else:
            raise RejectedContribution(f"unknown exclusion kind {e.how!r}")
    if isinstance(scheme, PaillierScheme):  # the first aggregate is the product of all of them
        try:
            opened = [
                scheme.open(p, task.spec, task.vector_length)
                for p in (payloads[a] for a in sorted(first))
                if p is not None
            ]
            total = scheme.add(opened)
            agg = scheme.aggregate_from_bytes(ev.aggregate, task.spec, task.vector_length)
        except (CryptoError, ValueError) as exc:
            raise RejectedContribution(f"the justification for {where}: {exc}") from exc
        if len(opened) != len(first) or total.ciphertexts != agg.ciphertexts:
            raise RejectedContribution(
                f"the first aggregate shown for {where} is not the product of its signed "
                "contributions"
            )
