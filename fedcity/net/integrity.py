"""Signed uploads and contribution evidence as ``fedcity.v1`` messages, without I/O.

Every upload's :class:`~fedcity.v1.federation_pb2.ChunkHeader` carries the uploading
agency's Ed25519 signature of the payload's :class:`~fedcity.crypto.signing.Statement` (job,
round, kind, agency, federation key id, SHA-256). :func:`sign_upload` makes it (agent side),
:func:`check_upload` verifies it against ``federation-public.json`` (coordinator side, before
the payload is read). A decryptor fetches the round's signed contributions as one
``ContributionEvidence`` message (:func:`evidence_to_bytes` / :func:`evidence_from_bytes`)
and checks them with :class:`~fedcity.core.integrity.ContributionVerifier`. The digests of
the contributions an aggregate adds are recorded with the round's ``close`` event
(:func:`close_record`), so the store's hash chain commits to them before anyone decrypts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from google.protobuf.message import DecodeError

from fedcity.core.integrity import Evidence, SignedContribution
from fedcity.crypto import CryptoError
from fedcity.crypto.signing import SIGNATURE_BYTES, SigningKey, Statement
from fedcity.net.ceremony import Federation
from fedcity.net.messages import MessageError
from fedcity.v1 import federation_pb2 as fpb

__all__ = [
    "UPLOAD_KINDS",
    "UploadSignatureError",
    "check_upload",
    "close_record",
    "evidence_bound",
    "evidence_from_bytes",
    "evidence_to_bytes",
    "parse_close_record",
    "sign_upload",
]

UPLOAD_KINDS: dict[int, str] = {
    fpb.PAYLOAD_KIND_CONTRIBUTION: "contribution",
    fpb.PAYLOAD_KIND_PARTIAL: "partial",
    fpb.PAYLOAD_KIND_RANGE_PROOF: "range-proof",
}
"""Payload kinds an agency uploads, with the name its signature statement uses."""
_ENTRY_OVERHEAD = 256
"""Bytes of an evidence entry besides its payload (name, signature, digest, tags), bounded."""


class UploadSignatureError(ValueError):
    """An upload without a valid signature by its agency.

    Attributes
    ----------
    missing : bool
        True when the upload carries no signature at all.
    """

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def sign_upload(
    key: SigningKey,
    payload: bytes,
    *,
    job_id: str,
    round: int,
    kind: int,
    agency: str,
    key_id: bytes,
) -> bytes:
    """The signature an agency puts in the header of an upload of ``payload``.

    Parameters
    ----------
    key : SigningKey
        The agency's signing key.
    payload : bytes
    job_id, round, agency : str, int, str
    kind : int
        ``PAYLOAD_KIND_CONTRIBUTION`` or ``PAYLOAD_KIND_PARTIAL``.
    key_id : bytes
        The federation key's id.

    Returns
    -------
    bytes
        64 bytes.
    """
    name = UPLOAD_KINDS.get(kind)
    if name is None:
        raise ValueError(f"an agency signs contributions and partial decryptions, not {kind}")
    return key.sign(Statement.for_payload(job_id, round, name, agency, key_id, payload))


def check_upload(federation: Federation, header: fpb.ChunkHeader, agency: str) -> None:
    """Verify an upload's signature against the header's fields, before reading the payload.

    The statement is built from the header (job, round, kind, the claimed SHA-256) and the
    authenticated ``agency``; :func:`~fedcity.net.messages.assemble` later checks that the
    payload matches that SHA-256, so the signature covers exactly what is stored.

    Raises
    ------
    UploadSignatureError
        No signature, or not ``agency``'s signature of exactly these fields.
    """
    kind = UPLOAD_KINDS.get(header.kind)
    if kind is None:
        raise ValueError(f"payload kind {header.kind} is not an upload")
    signature = bytes(header.signature)
    if not signature:
        raise UploadSignatureError(
            f"the {kind} for round {header.round} of job {header.job_id} carries no "
            "signature: an agency signs every upload with its signing key (signing-key.json "
            "from the key ceremony)",
            missing=True,
        )
    if len(signature) != SIGNATURE_BYTES:
        raise UploadSignatureError(
            f"the signature on the {kind} is {len(signature)} bytes; an Ed25519 signature is "
            f"{SIGNATURE_BYTES}",
            missing=False,
        )
    key = federation.signing_keys.get(agency)
    if key is None:
        raise UploadSignatureError(
            f"federation-public.json lists no signing key for agency {agency!r}", missing=False
        )
    try:
        statement = Statement(
            header.job_id, header.round, kind, agency, federation.key_id, bytes(header.sha256)
        )
    except CryptoError as exc:
        raise UploadSignatureError(
            f"cannot check the upload's signature: {exc}", missing=False
        ) from exc
    if not key.verify(statement, signature):
        raise UploadSignatureError(
            f"the signature on this upload is not {agency!r}'s signature of ({kind}, job "
            f"{header.job_id}, round {header.round}, key {federation.key_id.hex()[:16]}, "
            f"sha256 {bytes(header.sha256).hex()[:16]}…): it was made by another agency, or "
            "for another job, round, kind, key or payload",
            missing=False,
        )


# -- evidence for decryptors --------------------------------------------------------------
def evidence_to_bytes(evidence: Evidence) -> bytes:
    """Serialize evidence as a ``fedcity.v1.ContributionEvidence`` message."""
    msg = fpb.ContributionEvidence(job_id=evidence.job_id, round=evidence.round)
    for c in evidence.contributions:
        msg.contributions.add(
            agency=c.agency, signature=c.signature, sha256=c.digest, payload=c.payload or b""
        )
    return msg.SerializeToString()


def evidence_from_bytes(data: bytes, *, max_contributions: int) -> Evidence:
    """Parse a ``ContributionEvidence`` message of at most ``max_contributions`` entries.

    An empty payload field means the payload was withheld (single-key-holder mode).

    Raises
    ------
    MessageError
        Not a valid message, too many entries, or a digest that is not 32 bytes.
    """
    msg = fpb.ContributionEvidence()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise MessageError(f"contribution evidence is not a valid message ({exc})") from exc
    if len(msg.contributions) > max_contributions:
        raise MessageError(
            f"contribution evidence lists {len(msg.contributions)} contributions; the "
            f"federation has {max_contributions} agencies"
        )
    out = []
    for c in msg.contributions:
        if len(c.sha256) != 32:
            raise MessageError(f"contribution evidence: the digest of {c.agency!r} is not 32 bytes")
        out.append(
            SignedContribution(
                c.agency, bytes(c.signature), bytes(c.sha256), bytes(c.payload) or None
            )
        )
    return Evidence(msg.job_id, int(msg.round), tuple(out))


def evidence_bound(aggregate_bytes: int, agencies: int) -> int:
    """Most bytes a round's evidence may take.

    ``agencies`` contributions, each no larger than the aggregate (same layout, one summand),
    plus a bounded overhead per entry.
    """
    return agencies * (aggregate_bytes + _ENTRY_OVERHEAD) + _ENTRY_OVERHEAD


# -- what a round's close event records ---------------------------------------------------
def close_record(contributions: Mapping[str, bytes]) -> bytes:
    """The ``close`` event's payload: contributor → hex SHA-256 of what the aggregate adds."""
    digests = {a: hashlib.sha256(p).hexdigest() for a, p in sorted(contributions.items())}
    return json.dumps({"contributions": digests}, sort_keys=True).encode()


def parse_close_record(payload: bytes) -> dict[str, str]:
    """Inverse of :func:`close_record`.

    Raises
    ------
    ValueError
        Not a close record.
    """
    data = json.loads(payload)
    digests = data.get("contributions") if isinstance(data, dict) else None
    if not isinstance(digests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
    ):
        raise ValueError("not a close record: expected {'contributions': {agency: sha256}}")
    return dict(digests)
