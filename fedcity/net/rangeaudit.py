"""Range audits on the wire: ``fedcity.v1`` messages for :mod:`fedcity.core.audit`, without I/O.

The coordinator serves a round's :class:`~fedcity.core.audit.OutOfRange` evidence as one
``OutOfRangeEvidence`` message (``FetchAuditEvidence``), contributors upload a signed
``RangeProofAnswer`` (``PAYLOAD_KIND_RANGE_PROOF``), and a re-aggregated round's
``ContributionEvidence`` carries a ``RangeAuditJustification``. Every parser bounds counts and
sizes before it builds anything (proofs by :func:`fedcity.crypto.rangeproof.max_proof_bytes`).
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from fedcity.core.audit import (
    ExcludedContribution,
    Justification,
    OutOfRange,
    RangeAnswer,
    contribution_layout,
)
from fedcity.core.tasks import Task
from fedcity.crypto.signing import SIGNATURE_BYTES
from fedcity.net.messages import MessageError
from fedcity.v1 import federation_pb2 as fpb

__all__ = [
    "answer_from_bytes",
    "answer_to_bytes",
    "audit_bound",
    "justification_from_proto",
    "justification_to_proto",
    "out_of_range_from_bytes",
    "out_of_range_from_proto",
    "out_of_range_to_bytes",
    "out_of_range_to_proto",
    "proof_bound",
]

_OVERHEAD = 512
"""Bytes of one entry besides its payload (names, digests, signatures, tags), bounded."""


def proof_bound(public_key: object, task: Task) -> int:
    """Most bytes an honest range proof for any ciphertext of ``task``'s round takes."""
    from fedcity.crypto.rangeproof import max_proof_bytes

    return int(max_proof_bytes(public_key, contribution_layout(task, 0)))  # type: ignore[arg-type]


def audit_bound(aggregate_bytes: int, agencies: int, proof_bytes: int) -> int:
    """Most bytes of out-of-range evidence, or of a justification, for a round.

    An aggregate, at most ``agencies`` partial decryptions (each at most an aggregate plus
    its proof) and contributor digests; a justification adds at most ``agencies`` answers and
    excluded contributions (each at most an aggregate).
    """
    per = 2 * aggregate_bytes + proof_bytes + _OVERHEAD
    return 2 * aggregate_bytes + agencies * per + _OVERHEAD


def _int(data: bytes, what: str, limit: int) -> int:
    if len(data) > limit:
        raise MessageError(f"range audit: {what} is {len(data)} bytes, at most {limit}")
    return int.from_bytes(data, "big")


def _fixed(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


# -- out-of-range evidence ----------------------------------------------------------------
def out_of_range_to_proto(ev: OutOfRange) -> fpb.OutOfRangeEvidence:
    """The evidence as a ``fedcity.v1.OutOfRangeEvidence`` message."""
    start, stop = ev.part or (0, 0)
    return fpb.OutOfRangeEvidence(
        job_id=ev.job_id,
        round=ev.round,
        ciphertext=ev.ciphertext,
        aggregate=ev.aggregate,
        partials=[fpb.NamedBytes(agency=a, data=p) for a, p in ev.partials],
        contributors=[fpb.NamedBytes(agency=a, data=d) for a, d in ev.contributors],
        unblinded=_fixed(ev.unblinded) if ev.unblinded else b"",
        mask=_fixed(ev.mask) if ev.mask else b"",
        part_start=start,
        part_stop=stop,
    )


def out_of_range_from_proto(msg: fpb.OutOfRangeEvidence, *, max_agencies: int) -> OutOfRange:
    """Parse evidence naming at most ``max_agencies`` contributors and partials.

    Raises
    ------
    MessageError
        Too many entries, a digest that is not 32 bytes, an oversized integer.
    """
    if len(msg.contributors) > max_agencies or len(msg.partials) > max_agencies:
        raise MessageError(
            f"range audit evidence lists {len(msg.contributors)} contributors and "
            f"{len(msg.partials)} partials; the federation has {max_agencies} members"
        )
    for c in msg.contributors:
        if len(c.data) != 32:
            raise MessageError(f"range audit evidence: the digest of {c.agency!r} is not 32 bytes")
    width = 2 * len(msg.aggregate) + 8  # a ciphertext is never longer than the aggregate
    part = None
    if msg.part_stop:
        part = (int(msg.part_start), int(msg.part_stop))
    return OutOfRange(
        msg.job_id,
        int(msg.round),
        int(msg.ciphertext),
        bytes(msg.aggregate),
        tuple((p.agency, bytes(p.data)) for p in msg.partials),
        tuple((c.agency, bytes(c.data)) for c in msg.contributors),
        _int(bytes(msg.unblinded), "the unblinded ciphertext", width),
        _int(bytes(msg.mask), "the mask", width),
        part,
    )


def out_of_range_to_bytes(ev: OutOfRange) -> bytes:
    """Serialize evidence (what ``FetchAuditEvidence`` streams)."""
    return out_of_range_to_proto(ev).SerializeToString()


def out_of_range_from_bytes(data: bytes, *, max_agencies: int) -> OutOfRange:
    """Parse :func:`out_of_range_to_bytes` output."""
    msg = fpb.OutOfRangeEvidence()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise MessageError(f"range audit evidence is not a valid message ({exc})") from exc
    return out_of_range_from_proto(msg, max_agencies=max_agencies)


# -- answers ------------------------------------------------------------------------------
def _answer_to_proto(a: RangeAnswer) -> fpb.RangeProofAnswer:
    return fpb.RangeProofAnswer(
        agency=a.agency,
        ciphertext=a.ciphertext,
        contribution_sha256=a.contribution_digest,
        proof=a.proof,
        signature=a.signature,
    )


def _answer_from_proto(msg: fpb.RangeProofAnswer, max_proof: int) -> RangeAnswer:
    if len(msg.proof) > max_proof:
        raise MessageError(
            f"the range proof of {msg.agency!r} is {len(msg.proof)} bytes; a proof for this "
            f"round takes at most {max_proof}"
        )
    if len(msg.contribution_sha256) != 32 or len(msg.signature) != SIGNATURE_BYTES:
        raise MessageError(
            f"the range-audit answer of {msg.agency!r} needs a 32-byte digest and a "
            f"{SIGNATURE_BYTES}-byte signature"
        )
    return RangeAnswer(
        msg.agency,
        int(msg.ciphertext),
        bytes(msg.contribution_sha256),
        bytes(msg.proof),
        bytes(msg.signature),
    )


def answer_to_bytes(answer: RangeAnswer) -> bytes:
    """Serialize an answer (the ``PAYLOAD_KIND_RANGE_PROOF`` upload)."""
    return _answer_to_proto(answer).SerializeToString()


def answer_from_bytes(data: bytes, *, max_proof: int) -> RangeAnswer:
    """Parse an uploaded answer whose proof takes at most ``max_proof`` bytes.

    Raises
    ------
    MessageError
        Not a valid message, an oversized proof, a malformed digest or signature.
    """
    msg = fpb.RangeProofAnswer()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise MessageError(f"a range-audit answer is not a valid message ({exc})") from exc
    return _answer_from_proto(msg, max_proof)


# -- justifications -----------------------------------------------------------------------
def justification_to_proto(j: Justification) -> fpb.RangeAuditJustification:
    """A justification as a ``fedcity.v1.RangeAuditJustification`` message."""
    return fpb.RangeAuditJustification(
        out_of_range=out_of_range_to_proto(j.out_of_range),
        answers=[_answer_to_proto(a) for a in j.answers],
        excluded=[
            fpb.ExcludedContribution(
                agency=e.agency, how=e.how, payload=e.payload, signature=e.signature
            )
            for e in j.excluded
        ],
    )


def justification_from_proto(
    msg: fpb.RangeAuditJustification, *, max_agencies: int, max_proof: int
) -> Justification:
    """Parse a justification with at most ``max_agencies`` answers and exclusions.

    Raises
    ------
    MessageError
        Too many entries, an oversized proof or a malformed field.
    """
    if len(msg.answers) > max_agencies or len(msg.excluded) > max_agencies:
        raise MessageError(
            f"a range-audit justification lists {len(msg.answers)} answers and "
            f"{len(msg.excluded)} exclusions; the federation has {max_agencies} members"
        )
    return Justification(
        out_of_range_from_proto(msg.out_of_range, max_agencies=max_agencies),
        tuple(_answer_from_proto(a, max_proof) for a in msg.answers),
        tuple(
            ExcludedContribution(e.agency, e.how, bytes(e.payload), bytes(e.signature))
            for e in msg.excluded
        ),
    )
