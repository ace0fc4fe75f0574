"""What an agency's agent may ask of the coordinator (``AgentService``)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from functools import partial

from fedcity.core.errors import ProtocolError, RejectedContribution
from fedcity.core.integrity import Evidence, SignedContribution, withholds_payloads
from fedcity.core.rounds import AggregationRound, RoundPhase
from fedcity.governance.audit import Anchor, AuditError
from fedcity.net import integrity, messages, rangeaudit
from fedcity.net.auth import Principal
from fedcity.net.coordinator.config import (
    Code,
    StatusError,
)
from fedcity.net.coordinator.runtime import (
    JobRuntime,
    holds,
)
from fedcity.net.coordinator.state import (
    STORAGE_ERRORS,
    CoordinatorState,
    _checked_job_id,
    _reason,
    log,
)
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["AgencyCalls"]


def _anchor_message(anchor: Anchor | None) -> fpb.AuditAnchor | None:
    if anchor is None:
        return None
    return fpb.AuditAnchor(
        records=anchor.records,
        head=anchor.head,
        public_key=anchor.public_key,
        signature=anchor.signature,
    )


def _printable(text: str, limit: int = 4000) -> str:
    """An agency's free text made safe to show to data scientists and in logs.

    Control characters (a terminal's escape sequences among them) become U+FFFD, line breaks
    and tabs a space; the text is cut at ``limit`` characters.
    """
    return "".join(
        c if c.isprintable() else " " if c in "\n\r\t" else "\ufffd" for c in text[:limit]
    )


class AgencyCalls(CoordinatorState):
    """Register, heartbeat, long-poll for work, download aggregates, upload, decline."""

    def register(self, principal: Principal, req: fpb.RegisterRequest) -> fpb.RegisterResponse:
        """Record the datasets an agency offers (replacing an earlier registration)."""
        self._require_self(principal, req.agency)
        if req.agency not in self.federation.agencies:
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"agency {req.agency!r} holds no share of this federation's key "
                "(it is not listed in federation-public.json)",
            )
        try:  # every limit before anything is stored
            messages.check_text(
                req.software_version, "software_version", messages.MAX_VERSION_CHARS
            )
            if len(req.task_kinds) > messages.MAX_TASK_KINDS:
                raise messages.MessageError(
                    f"task_kinds lists {len(req.task_kinds)} kinds; the limit is "
                    f"{messages.MAX_TASK_KINDS}"
                )
            for i, kind in enumerate(req.task_kinds):
                messages.check_name(kind, f"task_kinds[{i}]")
            declared = messages.parse_registration(req.datasets)
            tables = messages.parse_tables(req.tables)
            if not declared and not tables:
                raise messages.MessageError("the registration declares no dataset and no table")
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        if req.min_set_difference > 1000:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"min_set_difference {req.min_set_difference} exceeds 1000",
            )
        text = messages.registration_to_json(
            declared, tables, req.task_kinds, int(req.min_set_difference)
        )
        with self._lock:
            self._check_open()
            self._refuse_second_agent(req.agency)
            self._touch(req.agency)
            self._write(
                "the registration", self.store.register_agency, req.agency, text, time.time()
            )
            self._datasets[req.agency] = declared
            self._tables[req.agency] = tables
            self._kinds[req.agency] = frozenset(req.task_kinds)
            self._min_difference[req.agency] = int(req.min_set_difference)
            for rt in list(self._jobs.values()):  # a restarted agent gets its assignments again
                for given in (*rt.handed.values(), *rt.decrypt_handed.values()):
                    given.discard(req.agency)
            self._changed.notify_all()
        log.info(
            "agency %s registered (software %r, datasets %s, tables %s, steps %s)",
            req.agency,
            req.software_version,
            sorted(declared),
            sorted(tables),
            messages.shown(list(req.task_kinds), 300),
        )
        return fpb.RegisterResponse(
            heartbeat_interval_ms=self._heartbeat_ms(),
            key_id=self.federation.key_id,
        )

    def _heartbeat_ms(self) -> int:
        return max(1, round(self.config.heartbeat_interval * 1000))

    def heartbeat(self, principal: Principal, req: fpb.HeartbeatRequest) -> fpb.HeartbeatResponse:
        """Liveness."""
        self._require_self(principal, req.agency)
        with self._lock:
            self._check_open()
            self._touch(req.agency)  # liveness lives in memory: a heartbeat never fails on disk
            if self._storage_fault is None:
                try:
                    self.store.touch_agency(req.agency, self.liveness.last_seen[req.agency])
                except STORAGE_ERRORS as exc:
                    self._pause("a heartbeat's time", exc)
        return fpb.HeartbeatResponse(heartbeat_interval_ms=self._heartbeat_ms())

    def fetch_work(
        self,
        principal: Principal,
        req: fpb.FetchWorkRequest,
        is_active: Callable[[], bool] = lambda: True,
    ) -> fpb.FetchWorkResponse:
        """Long-poll up to ``wait_ms`` (capped) for this agency's next assignment."""
        self._require_self(principal, req.agency)
        wait = min(req.wait_ms / 1000.0, self.config.max_wait)
        deadline = self.clock() + wait
        with self._lock:
            self._refuse_second_agent(req.agency)
            self._touch(req.agency)  # on arrival only: a poll woken after a Leave is no contact
            self._polls[req.agency] = self._polls.get(req.agency, 0) + 1
            try:
                while True:
                    self._check_open()
                    if not is_active():
                        return fpb.FetchWorkResponse()
                    now = self.clock()
                    assignment = self._work_for(req.agency, now)
                    if assignment is not None:
                        return fpb.FetchWorkResponse(assignment=assignment)
                    remaining = deadline - now
                    if remaining <= 0 or not is_active():
                        retry = 0 if wait > 0 else min(self._heartbeat_ms(), 1000)
                        return fpb.FetchWorkResponse(retry_after_ms=retry)
                    self._changed.wait(timeout=min(remaining, 1.0))
            finally:
                self._polls[req.agency] -= 1
                if not self._polls[req.agency]:
                    del self._polls[req.agency]

    def _refuse_second_agent(self, agency: str) -> None:
        """One agent per agency: a registration or poll while another one waits for work.

        An agent waits in one long poll at a time and registers only outside it, so a second
        caller while a poll of the same agency is held is a second agent (a stopped agent's
        poll ends within a second).
        """
        if self._polls.get(agency):
            raise StatusError(
                Code.ALREADY_EXISTS,
                f"agency {agency!r} already has an agent connected to this coordinator: run "
                "one agent per agency (stop the other one first; if it was just stopped, start "
                "again in a few seconds)",
            )

    def _work_for(self, agency: str, now: float) -> fpb.Assignment | None:
        for rt in list(self._jobs.values()):
            if not rt.running:
                continue
            driver = rt.driver
            assert driver is not None
            rnd = driver.round
            if rnd is None:
                continue
            r = rnd.task.round
            action = None
            if rnd.phase is RoundPhase.COLLECTING:
                given = rt.handed.setdefault(r, set())
                if agency in driver.awaiting_contributions() and agency not in given:
                    given.add(agency)
                    action = fpb.ACTION_CONTRIBUTE
            elif rnd.phase is RoundPhase.DECRYPTING:
                given = rt.decrypt_handed.setdefault(r, set())
                if agency not in given and agency in self._ask_decryptors(rt, rnd, now):
                    given.add(agency)
                    action = fpb.ACTION_PARTIAL_DECRYPT
            elif rnd.phase is RoundPhase.AUDITING:  # range audit (fedcity.core.audit)
                given = rt.audit_handed.setdefault(r, set())
                if agency in driver.awaiting_range_answers() and agency not in given:
                    given.add(agency)
                    action = fpb.ACTION_RANGE_PROOF
            if action is not None:
                assignment = messages.task_to_assignment(
                    rnd.task, action, summands_min=int(rt.spec["min_agencies"])
                )
                assignment.dataset = rt.spec["dataset"]
                assignment.attempt = 1 if r in driver.audits else 0  # re-aggregated after an audit
                part = rnd.part_for(agency) if action == fpb.ACTION_PARTIAL_DECRYPT else None
                if part is not None:  # decryption groups: this agency's part only
                    assignment.part_start, assignment.part_stop = part.start, part.stop
                assignment.job.CopyFrom(
                    fpb.JobInfo(
                        job_type=str(rt.spec["job_type"]),
                        submitted_by=rt.owner,
                        agencies=[str(a) for a in rt.spec["agencies"]],
                        privacy_json=json.dumps(rt.spec["privacy"], sort_keys=True)
                        if rt.spec.get("privacy")
                        else "",
                        min_agencies=int(rt.spec["min_agencies"]),
                    )
                )
                log.debug("job %s round %d: %s → %s", rt.id, r, fpb.Action.Name(action), agency)
                return assignment
        return None

    def _running_job(self, job_id: str) -> JobRuntime:
        """The job an agent refers to; stale or unknown references are FAILED_PRECONDITION."""
        _checked_job_id(job_id)
        rt = self._jobs.get(job_id) or self._recent.get(job_id)
        if rt is None:
            raise StatusError(
                Code.FAILED_PRECONDITION, f"no job {job_id!r} is running at this coordinator"
            )
        if not rt.running:
            why = f" ({rt.failure})" if rt.failure else ""
            raise StatusError(
                Code.FAILED_PRECONDITION, f"job {job_id} is {rt.state}{why}; it takes no more input"
            )
        return rt

    @staticmethod
    def _require_participant(rt: JobRuntime, agency: str) -> None:
        if agency not in rt.spec["agencies"]:
            raise StatusError(
                Code.PERMISSION_DENIED, f"agency {agency!r} is not a participant of job {rt.id}"
            )

    def aggregate(self, principal: Principal, ref: fpb.AggregateRef) -> bytes:
        """The encrypted aggregate of a round being (or having been) decrypted."""
        self._require_role(principal, "agency")
        with self._lock:
            self._check_open()
            self._touch(principal.name)
            rt = self._running_job(ref.job_id)
            self._require_participant(rt, principal.name)
            assert rt.driver is not None
            rounds = rt.driver.rounds
            if ref.round >= len(rounds) or rounds[ref.round].aggregate_bytes is None:
                current = rt.driver.task
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"round {ref.round} of job {rt.id} has no aggregate to decrypt (the job is at "
                    f"round {None if current is None else current.round}, "
                    f"{None if rt.driver.round is None else rt.driver.round.phase.value})",
                )
            payload = rounds[ref.round].aggregate_bytes
            assert payload is not None
            return payload

    def contributions(self, principal: Principal, ref: fpb.AggregateRef) -> bytes:
        """The signed contributions a round's aggregate adds (``ContributionEvidence`` bytes).

        Only for an agency asked to decrypt that round, while it is decrypting: a decryptor
        checks the aggregate against them before it helps decrypt. In the single-key-holder
        mode the payloads are withheld (the key holder could decrypt each one): digests and
        signatures only.
        """
        self._require_role(principal, "agency")
        agency = principal.name
        with self._lock:
            self._check_open()
            self._touch(agency)
            rt = self._running_job(ref.job_id)
            self._require_participant(rt, agency)
            assert rt.driver is not None
            rnd = rt.driver.round
            if rnd is None or rnd.task.round != ref.round or rnd.phase is not RoundPhase.DECRYPTING:
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"round {ref.round} of job {rt.id} is not being decrypted; its contributions "
                    "are shown only to its decryptors while it is",
                )
            if agency not in rt.asked.get(ref.round, {}):
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"agency {agency!r} was not asked to decrypt round {ref.round} of job "
                    f"{rt.id}; only its decryptors are shown its contributions",
                )
            signatures = rt.signatures.get(ref.round, {})
            withhold = withholds_payloads(self.scheme)
            evidence = Evidence(
                rt.id,
                ref.round,
                tuple(
                    SignedContribution(
                        a,
                        signatures.get(a, b""),
                        hashlib.sha256(rnd.contributions[a]).digest(),
                        None if withhold else rnd.contributions[a],
                    )
                    for a in rnd.contributors
                ),
            )
            data = integrity.evidence_to_bytes(evidence)
            justification = rt.driver.justification(ref.round, signatures)
            if justification is not None:  # a second aggregate: why it may be decrypted
                extra = fpb.ContributionEvidence(
                    justification=rangeaudit.justification_to_proto(justification)
                )
                data += extra.SerializeToString()  # concatenated messages merge
            return data

    def upload(self, principal: Principal, stream: Iterator[fpb.Chunk]) -> fpb.UploadResponse:
        """Receive a contribution or partial decryption; store it before acknowledging."""
        try:
            return self._upload(principal, stream)
        except StatusError as exc:
            self.metrics.uploads_refused.labels(code=exc.code.name).inc()
            log.info("upload from %s refused (%s): %s", principal.name, exc.code.name, exc.message)
            raise

    def _upload(self, principal: Principal, stream: Iterator[fpb.Chunk]) -> fpb.UploadResponse:
        self._require_role(principal, "agency")
        first = next(stream, None)
        if first is None:
            raise StatusError(Code.INVALID_ARGUMENT, "empty upload stream")
        if not first.HasField("header"):
            raise StatusError(Code.INVALID_ARGUMENT, "the first chunk must carry the header")
        header = first.header
        agency = principal.name
        self._require_self(principal, header.agency)
        kinds = {fpb.PAYLOAD_KIND_CONTRIBUTION: "contribution", fpb.PAYLOAD_KIND_PARTIAL: "partial"}
        kind = kinds.get(header.kind)
        if kind is None:
            known = header.kind in fpb.PayloadKind.values()
            name = fpb.PayloadKind.Name(header.kind) if known else str(header.kind)
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"an agent uploads contributions or partial decryptions, not {name}",
            )
        with self._lock:  # refuse stale or oversized uploads before reading the stream
            self._check_open()
            self._touch(agency)
            rt = self._running_job(header.job_id)
            self._require_participant(rt, agency)
            previous = self._stored(rt, kind, header.round, agency)
            if previous is None:
                rnd = self._require_open_round(rt, kind, header.round, agency)
                limit = rnd.scheme.payload_limit(kind, rnd.task.spec, rnd.task.request.length)
            else:
                limit = len(previous)  # only an identical repeat can be accepted
            limit = min(limit, self.config.max_upload_bytes)
        if header.total_bytes > limit:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"payload of {header.total_bytes} bytes exceeds the {limit} bytes a {kind} for "
                f"round {header.round} of job {rt.id} can take",
            )
        try:  # the agency's signature of exactly this job, round, kind, key and digest
            integrity.check_upload(self.federation, header, agency)
        except integrity.UploadSignatureError as exc:
            code = Code.INVALID_ARGUMENT if exc.missing else Code.PERMISSION_DENIED
            raise StatusError(code, str(exc)) from exc
        try:
            _, payload = messages.assemble(itertools.chain([first], stream), max_bytes=limit)
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        verified = False
        if kind == "partial" and previous is None:
            self._verify_partial(rt, header.round, agency, payload)  # outside the lock
            verified = True
        with self._lock:
            self._check_open()
            rt = self._running_job(header.job_id)
            previous = self._stored(rt, kind, header.round, agency)
            if previous is not None:
                if previous == payload:
                    return fpb.UploadResponse(stored=False, audit=self._head_anchor())
                raise StatusError(
                    Code.ALREADY_EXISTS,
                    f"agency {agency!r} already sent a different {kind} for round "
                    f"{header.round} of job {rt.id}; the first upload stands",
                )
            rnd = self._require_open_round(rt, kind, header.round, agency)
            driver = rt.driver
            assert driver is not None
            if kind == "contribution":
                call = partial(driver.submit_contribution, agency, payload)
                accepted = partial(holds, rnd.contributions, agency, payload)
            else:
                # verified above against this very round's aggregate (a round's aggregate
                # never changes once it is decrypting); not again under the lock
                call = partial(driver.submit_partial, agency, payload, verify=not verified)
                accepted = partial(holds, rnd.partials, agency, payload)
            with self._audit_upload():  # a job's end is recorded after this upload
                try:
                    self._apply(
                        rt,
                        kind,
                        call,
                        agency=agency,
                        round_=header.round,
                        payload=payload,
                        accepted=accepted,
                        signature=bytes(header.signature),
                    )
                except RejectedContribution as exc:
                    self._reask(rt, kind, header.round, agency)
                    raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
                except ProtocolError as exc:
                    raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
                self.metrics.bytes_received.labels(kind=kind).inc(len(payload))
                rt.waiting.pop(agency, None)  # approved: it no longer holds the job
                anchor = self._audit(  # its signed head goes back with the acknowledgement
                    kind,
                    job=rt.id,
                    round=header.round,
                    body={
                        "agency": agency,
                        "sha256": hashlib.sha256(payload).hexdigest(),
                        "bytes": len(payload),
                        "signature": bytes(header.signature).hex(),
                    },
                )
            self._advance_quietly(rt)  # the upload is stored: acknowledge it whatever follows
            return fpb.UploadResponse(stored=True, audit=_anchor_message(anchor))

    def _head_anchor(self) -> fpb.AuditAnchor | None:
        """The audit log's signed head as it is now (None without a log or on failure)."""
        if self.audit is None:
            return None
        try:
            return _anchor_message(self.audit.anchor())
        except (AuditError, sqlite3.Error) as exc:
            log.error("audit log %s: cannot sign its head: %s", self.audit.path, exc)
            return None

    def _verify_partial(self, rt: JobRuntime, round_: int, agency: str, payload: bytes) -> None:
        """Check a partial decryption's proof without holding the coordinator's lock.

        The aggregate is read under the lock; the proof (the costly part, bounded in size by
        the upload limit and the serde checks) is checked outside it, so one agency's upload
        never stalls heartbeats, health or other jobs.
        """
        with self._lock:
            driver = rt.driver
            if driver is None or round_ >= len(driver.rounds):
                raise StatusError(
                    Code.FAILED_PRECONDITION, f"round {round_} of job {rt.id} is not open"
                )
            try:  # its part of the aggregate (decryption groups), or the whole
                aggregate = driver.rounds[round_].decryption_target(agency)
            except RejectedContribution as exc:
                raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
            scheme = driver.rounds[round_].scheme  # the round's (lwr-masked or the federation's)
        try:
            scheme.open_partial(payload, aggregate, verify=True)
        except RejectedContribution as exc:
            with self._lock:
                self._reask(rt, "partial", round_, agency)
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc

    @staticmethod
    def _reask(rt: JobRuntime, kind: str, round_: int, agency: str) -> None:
        """After an invalid partial decryption, ask another share holder at once."""
        asked = rt.asked.get(round_)
        if kind == "partial" and asked is not None and agency in asked:
            asked[agency] = -math.inf

    @staticmethod
    def _stored(rt: JobRuntime, kind: str, round_: int, agency: str) -> bytes | None:
        """What this agency already uploaded of this kind for this round, if anything."""
        assert rt.driver is not None
        rounds = rt.driver.rounds
        if round_ >= len(rounds):
            return None
        rnd = rounds[round_]
        return (rnd.contributions if kind == "contribution" else rnd.partials).get(agency)

    @staticmethod
    def _require_open_round(
        rt: JobRuntime, kind: str, round_: int, agency: str
    ) -> AggregationRound:
        driver = rt.driver
        assert driver is not None
        rnd = driver.round
        if rnd is None or rnd.task.round != round_:
            current = None if rnd is None else rnd.task.round
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"round {round_} of job {rt.id} is not open; the open round is {current}",
            )
        phase = RoundPhase.COLLECTING if kind == "contribution" else RoundPhase.DECRYPTING
        if rnd.phase is not phase:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"round {round_} of job {rt.id} is {rnd.phase.value}; it does not take a {kind} "
                "now",
            )
        if agency in driver.dropped:
            raise StatusError(
                Code.FAILED_PRECONDITION, f"agency {agency!r} was dropped from job {rt.id}"
            )
        if kind == "contribution" and agency not in rnd.participants:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agency {agency!r} was not asked to contribute to round {round_} of job {rt.id}",
            )
        if kind == "partial" and agency not in driver.share_index_of:
            raise StatusError(
                Code.FAILED_PRECONDITION, f"agency {agency!r} holds no share of the key"
            )
        return rnd

    def leave(self, principal: Principal, req: fpb.LeaveRequest) -> fpb.LeaveResponse:
        """The agent is stopping: it leaves every running job at once, with its reason."""
        self._require_self(principal, req.agency)
        try:
            messages.check_text(req.reason, "reason", messages.MAX_STATUS_CHARS)
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        reason = f"stopped its agent ({req.reason or 'no reason given'})"
        left = 0
        with self._lock:
            self._check_open()
            for rt in list(self._jobs.values()):
                driver = rt.driver
                if not rt.running or driver is None or req.agency not in driver.active:
                    continue
                log.warning("job %s: %s leaves: %s", rt.id, req.agency, reason)
                self._apply(
                    rt,
                    "drop",
                    partial(driver.drop, req.agency),
                    agency=req.agency,
                    round_=None if driver.task is None else driver.task.round,
                    payload=reason.encode(),
                )
                left += 1
                self._advance_quietly(rt)
            self.liveness.forget(req.agency)
            self._changed.notify_all()
        return fpb.LeaveResponse(jobs_left=left)

    def defer(self, principal: Principal, req: fpb.DeferRequest) -> fpb.DeferResponse:
        """The agency holds the job until a person approves it; its round waits for it."""
        self._require_self(principal, req.agency)
        try:
            messages.check_text(req.reason, "reason", messages.MAX_STATUS_CHARS)
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        with self._lock:
            self._check_open()
            self._touch(req.agency)
            rt = self._running_job(req.job_id)
            self._require_participant(rt, req.agency)
            reason = _reason(req.reason or "waiting for the agency's approval")
            if rt.waiting.get(req.agency) != reason:
                log.info("job %s: %s holds it: %s", rt.id, req.agency, messages.shown(reason, 200))
                rt.waiting[req.agency] = reason
                self._changed.notify_all()
        return fpb.DeferResponse()

    def decline(self, principal: Principal, req: fpb.DeclineRequest) -> fpb.DeclineResponse:
        """The agency leaves the job (it will not run the assignment)."""
        self._require_self(principal, req.agency)
        reason = _reason(_printable(req.reason) or "declined without a reason")
        with self._lock:
            self._check_open()
            self._touch(req.agency)
            rt = self._running_job(req.job_id)
            self._require_participant(rt, req.agency)
            driver = rt.driver
            assert driver is not None
            if req.agency in driver.dropped:
                return fpb.DeclineResponse()
            log.warning(
                "job %s round %d: %s declined and leaves the job: %s",
                rt.id,
                req.round,
                req.agency,
                messages.shown(reason, 200),
            )
            with self._audit_upload():  # a job's end it causes is recorded after it
                self._apply(
                    rt,
                    "drop",
                    partial(driver.drop, req.agency),
                    agency=req.agency,
                    round_=None if driver.task is None else driver.task.round,
                    payload=f"declined round {req.round}: {reason}".encode(),
                )
                self._audit(
                    "decline",
                    job=rt.id,
                    round=int(req.round),
                    body={"agency": req.agency, "reason": reason[:2000]},
                )
            self._advance_quietly(rt)
        return fpb.DeclineResponse()
