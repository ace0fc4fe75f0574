"""Range audits at the coordinator (``FetchAuditEvidence`` and range-proof uploads).

When a round's aggregate decrypts out of range the job's driver enters its AUDITING phase
(:mod:`fedcity.core.audit`); :meth:`AgencyCalls._work_for` hands every contributor a
``RANGE_PROOF`` assignment, :meth:`AuditCalls.audit_evidence` serves the out-of-range evidence
and :meth:`AuditCalls.upload_range_proof` stores the signed answers. Each answer's signature
and proof are verified outside the coordinator's lock (a proof costs milliseconds to seconds);
only the verdict is applied under it. The audit closes when every contributor answered or
``audit_timeout`` passed (:meth:`CoordinatorState._advance_audit`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from functools import partial

from fedcity.core import audit as range_audit
from fedcity.core.errors import ProtocolError, RejectedContribution
from fedcity.net import integrity, messages, rangeaudit
from fedcity.net.auth import Principal
from fedcity.net.coordinator.agencies import AgencyCalls
from fedcity.net.coordinator.config import Code, StatusError
from fedcity.net.coordinator.runtime import JobRuntime
from fedcity.net.coordinator.state import log
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["AuditCalls"]

_ENVELOPE = 4096
"""Bytes of an answer besides its proof (names, digest, signature, framing)."""


class AuditCalls(AgencyCalls):
    """The agencies' side of a range audit."""

    def upload(self, principal: Principal, stream: Iterator[fpb.Chunk]) -> fpb.UploadResponse:
        """Range-proof answers here; every other upload as :meth:`AgencyCalls.upload`."""
        first = next(stream, None)
        if first is None or not (
            first.HasField("header") and first.header.kind == fpb.PAYLOAD_KIND_RANGE_PROOF
        ):
            rest: Iterator[fpb.Chunk] = iter(())
            if first is not None:
                rest = itertools.chain([first], stream)
            return super().upload(principal, rest)
        try:
            self._require_role(principal, "agency")
            self._require_self(principal, first.header.agency)
            return self.upload_range_proof(principal, first, stream)
        except StatusError as exc:
            self.metrics.uploads_refused.labels(code=exc.code.name).inc()
            log.info(
                "range-audit answer from %s refused (%s): %s",
                principal.name,
                exc.code.name,
                exc.message,
            )
            raise

    def _open_audit(self, rt: JobRuntime, round_: int, agency: str) -> range_audit.RangeAudit:
        driver = rt.driver
        assert driver is not None
        audit = driver.auditing
        if audit is None or audit.task.round != round_:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"round {round_} of job {rt.id} is not being range-audited",
            )
        if agency not in audit.contributions:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agency {agency!r} did not contribute to round {round_} of job {rt.id}; only "
                "its contributors take part in its range audit",
            )
        return audit

    def audit_evidence(self, principal: Principal, ref: fpb.AggregateRef) -> bytes:
        """The evidence that a round's aggregate decrypts out of range (for its contributors)."""
        self._require_role(principal, "agency")
        with self._lock:
            self._check_open()
            self._touch(principal.name)
            rt = self._running_job(ref.job_id)
            self._require_participant(rt, principal.name)
            audit = self._open_audit(rt, ref.round, principal.name)
            return rangeaudit.out_of_range_to_bytes(audit.evidence)

    def upload_range_proof(
        self, principal: Principal, first: fpb.Chunk, stream: Iterator[fpb.Chunk]
    ) -> fpb.UploadResponse:
        """Store an agency's signed answer to a range audit (verified outside the lock)."""
        header = first.header
        agency = principal.name
        with self._lock:
            self._check_open()
            self._touch(agency)
            rt = self._running_job(header.job_id)
            self._require_participant(rt, agency)
            audit = self._open_audit(rt, header.round, agency)
            max_proof = rangeaudit.proof_bound(getattr(self.scheme, "public_key", None), audit.task)
            limit = min(max_proof + _ENVELOPE, self.config.max_upload_bytes)
            task, ciphertext = audit.task, audit.ciphertext
            contribution = audit.contributions[agency]
            previous = audit.answers.get(agency)
        if header.total_bytes > limit:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"a range-audit answer of {header.total_bytes} bytes exceeds the {limit} bytes "
                f"an answer for round {header.round} of job {rt.id} can take",
            )
        try:
            integrity.check_upload(self.federation, header, agency)
        except integrity.UploadSignatureError as exc:
            code = Code.INVALID_ARGUMENT if exc.missing else Code.PERMISSION_DENIED
            raise StatusError(code, str(exc)) from exc
        try:
            _, payload = messages.assemble(itertools.chain([first], stream), max_bytes=limit)
            answer = rangeaudit.answer_from_bytes(payload, max_proof=max_proof)
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        if answer.agency != agency:
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"authenticated as {agency!r}, the answer names {messages.shown(answer.agency)}",
            )
        if previous is not None:
            if previous == answer:
                return fpb.UploadResponse(stored=False, audit=None)
            raise StatusError(
                Code.ALREADY_EXISTS,
                f"agency {agency!r} already answered the range audit of round {header.round} of "
                f"job {rt.id}; the first answer stands",
            )
        key = self.federation.signing_keys.get(agency)
        if key is None:
            raise StatusError(Code.PERMISSION_DENIED, f"no signing key for agency {agency!r}")
        try:  # the costly part, outside the lock
            valid = range_audit.verify_answer(
                self.scheme, key, self.federation.key_id, task, ciphertext, contribution, answer
            )
        except RejectedContribution as exc:  # not its signature: proves nothing about it
            raise StatusError(Code.PERMISSION_DENIED, str(exc)) from exc
        with self._lock:
            self._check_open()
            rt = self._running_job(header.job_id)
            audit = self._open_audit(rt, header.round, agency)
            driver = rt.driver
            assert driver is not None
            r = audit.task.round
            before = len(driver.exclusions)
            log.info(
                "job %s round %d: range proof of %s %s",
                rt.id,
                r,
                agency,
                "verifies" if valid else "FAILS",
            )
            with self._audit_upload():
                try:
                    self._apply(  # stored as the audited round's "partial" (see replay)
                        rt,
                        "partial",
                        partial(driver.submit_range_answer, answer, valid=valid),
                        agency=agency,
                        round_=r,
                        payload=payload,
                        accepted=lambda: audit.answers.get(agency) == answer,
                    )
                except RejectedContribution as exc:
                    raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
                except ProtocolError as exc:
                    raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
                anchor = self._audit(
                    "range-proof",
                    job=rt.id,
                    round=r,
                    body={
                        "agency": agency,
                        "ciphertext": ciphertext,
                        "sha256": hashlib.sha256(payload).hexdigest(),
                        "valid": valid,
                    },
                )
            if audit.outcome is not None:  # the last answer closed the audit
                self._after_audit(rt, driver, r, before)
            self._advance_quietly(rt)
            response = fpb.UploadResponse(stored=True)
            if anchor is not None:
                response.audit.CopyFrom(
                    fpb.AuditAnchor(
                        records=anchor.records,
                        head=anchor.head,
                        public_key=anchor.public_key,
                        signature=anchor.signature,
                    )
                )
            return response
