"""What a data scientist may ask of the coordinator (``JobService``)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

from fedcity.analytics.query import QueryJob, query_job_from_spec, query_steps
from fedcity.analytics.spec import QueryError, QuerySpec, TableSchema
from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import JobFailed
from fedcity.core.masked_scheme import DEFAULT_AGGREGATION, check_aggregation
from fedcity.learn.jobs import JOB_TYPES, job_from_spec, job_steps
from fedcity.net import messages
from fedcity.net.auth import Principal
from fedcity.net.coordinator.config import (
    Code,
    StatusError,
)
from fedcity.net.coordinator.history import departure_notice, describe_job
from fedcity.net.coordinator.runtime import (
    QUERY_JOB_TYPE,
    JobRuntime,
    build,
)
from fedcity.net.coordinator.state import (
    CoordinatorState,
    _checked_job_id,
    _reason,
    log,
)
from fedcity.net.store import TERMINAL_STATES, JobUpdate
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["DEFAULT_LISTED_JOBS", "MAX_LISTED_JOBS", "MAX_LOG_EVENTS", "ScientistCalls"]

DEFAULT_LISTED_JOBS = 50
"""Jobs ``ListJobs`` returns when the request sets no limit."""
MAX_LISTED_JOBS = 500
"""Most jobs one ``ListJobs`` answer holds."""
MAX_LOG_EVENTS = 2000
"""Most events ``JobLogs`` describes (the newest ones)."""
MAX_DIFFERENCING_JOBS = 500
"""Earlier jobs a submission is checked against for differencing."""


class ScientistCalls(CoordinatorState):
    """Submit, watch, read, list and cancel; a job belongs to whoever submitted it."""

    def _check_aggregation(self, job_type: str, params: Mapping[str, Any]) -> None:
        """Refuse the opt-in lwr-masked aggregation where it does not apply (ValueError)."""
        if "aggregation" not in params or job_type not in ("fedavg", QUERY_JOB_TYPE):
            return  # fedavg validates the value; other job types refuse it themselves
        value = check_aggregation(params["aggregation"])
        if value == DEFAULT_AGGREGATION:
            return
        if job_type == QUERY_JOB_TYPE:
            raise ValueError(
                f"aggregation {value!r} is offered only for fedavg jobs (FedAvg/FedProx); "
                "analytics queries use the default 'paillier' (leave aggregation out)"
            )
        if not isinstance(self.scheme, PaillierScheme):
            raise ValueError(
                f"aggregation {value!r} needs a threshold key; this federation runs in "
                "key-holder mode (use the default 'paillier')"
            )

    def submit_job(self, principal: Principal, req: fpb.JobSpec) -> fpb.JobStatus:
        """Validate a job, store it and open its first round."""
        self._require_role(principal, "scientist")
        known = sorted([*JOB_TYPES, QUERY_JOB_TYPE])
        if req.job_type not in known:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"unknown job type {messages.shown(req.job_type)}; known types: {known}",
            )
        query = req.job_type == QUERY_JOB_TYPE
        try:
            params = messages.parse_json_object(req.params_json, "params_json")
            privacy = (
                messages.parse_json_object(req.privacy_json, "privacy_json")
                if req.privacy_json
                else None
            )
            if privacy and req.evaluate_dataset:
                raise ValueError(
                    "a job with differential privacy cannot be evaluated: the evaluation's "
                    "metrics are released exactly, outside its privacy budget; leave "
                    "evaluate_dataset empty"
                )
            self._check_aggregation(req.job_type, params)
            job: Any  # validated before anything else, and built once
            if query:
                job = query_job_from_spec(params, privacy)
                self._check_query(req, job)
            else:
                job = job_from_spec(req.job_type, params, privacy)
        except ValueError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, _reason(str(exc))) from exc
        if not req.dataset:
            raise StatusError(Code.INVALID_ARGUMENT, "dataset is required")

        n_members = len(self.federation.agencies)
        if len(req.agencies) > n_members:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"agencies lists {len(req.agencies)} names; the federation has {n_members}",
            )
        try:
            messages.check_name(req.dataset, "dataset")
            if req.evaluate_dataset:
                messages.check_name(req.evaluate_dataset, "evaluate_dataset")
            for i, agency in enumerate(req.agencies):
                messages.check_name(agency, f"agencies[{i}]")
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        if len(set(req.agencies)) != len(req.agencies):
            repeated = sorted({a for a in req.agencies if list(req.agencies).count(a) > 1})
            raise StatusError(Code.INVALID_ARGUMENT, f"agencies listed twice: {repeated}")
        with self._lock:
            self._check_open()
            spec = self._job_spec(req, params, privacy, principal, job)
            job_id = uuid.uuid4().hex[:12]
            rt = JobRuntime(job_id, spec, "running", time.time())
            try:
                build(rt, self.federation, self.scheme, audit_seconds=self.config.audit_timeout)
            except JobFailed as exc:
                raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
            except ValueError as exc:
                raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
            self._check_storage()
            row = self._write(
                "the job", self.store.create_job, job_id, json.dumps(spec, sort_keys=True)
            )
            rt.created = row.created
            self._audit(
                "job",
                job=job_id,
                body={
                    "submitter": principal.name,
                    "job_type": req.job_type,
                    "dataset": req.dataset,
                    "agencies": list(spec["agencies"]),
                    "spec_sha256": hashlib.sha256(
                        json.dumps(spec, sort_keys=True).encode()
                    ).hexdigest(),
                },
            )
            self._jobs[job_id] = rt
            self._after_change(rt, 0)
            log.info(
                "job %s submitted by %s: %s on %r with %s (min %d)",
                job_id,
                principal.name,
                req.job_type,
                req.dataset,
                spec["agencies"],
                spec["min_agencies"],
            )
            return rt.status()

    def _check_query(self, req: fpb.JobSpec, job: QueryJob) -> None:
        """A query's table and disclosure floor (its columns are checked per participant)."""
        if req.dataset and req.dataset != job.spec.table:
            raise ValueError(
                f"the job names dataset {messages.shown(req.dataset)}, its query reads table "
                f"{job.spec.table!r}; leave dataset empty or make them agree"
            )
        if req.evaluate_dataset:
            raise ValueError("a query has no model to evaluate; leave evaluate_dataset empty")
        req.dataset = job.spec.table
        floor = self.config.min_cell_count
        if job.spec.disclosure.min_count < floor:
            raise ValueError(
                f"the query releases cells of {job.spec.disclosure.min_count} rows or more; "
                f"this federation's minimum is {floor} (disclosure.min_count)"
            )

    def _query_participants(self, req: fpb.JobSpec, spec: QuerySpec) -> dict[str, Any]:
        """Holders of the query's table, each schema checked against the query (lock held)."""
        order = list(self.federation.agencies)
        holders = [a for a in order if req.dataset in self._tables.get(a, {})]
        if not holders:
            offered = sorted({t for tables in self._tables.values() for t in tables})
            raise StatusError(
                Code.NOT_FOUND,
                f"unknown table {req.dataset!r}: no registered agency offers it "
                f"(tables offered: {offered[:20]})",
            )
        participants = self._participants(req, holders, f"table {req.dataset!r}")
        for agency in participants:
            schema = TableSchema(req.dataset, self._tables[agency][req.dataset])
            try:
                spec.validate_against(schema)
            except QueryError as exc:
                raise StatusError(
                    Code.INVALID_ARGUMENT, _reason(f"agency {agency!r}: {exc}")
                ) from exc
        first = self._tables[participants[0]][req.dataset]
        return {
            "agencies": participants,
            "table_schema": messages.table_schema_to_json(req.dataset, first),
        }

    def _participants(self, req: fpb.JobSpec, holders: list[str], what: str) -> list[str]:
        """The job's agencies: those it names (each must hold ``what``) or every holder."""
        order = list(self.federation.agencies)
        unknown = [a for a in req.agencies if a not in self.federation.agencies]
        if unknown:
            raise StatusError(
                Code.NOT_FOUND, f"unknown agencies {unknown}; the federation has {order}"
            )
        # by default every holder, except agencies whose agent said it stopped
        participants = list(req.agencies) or [a for a in holders if not self.liveness.departed(a)]
        if not participants:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"0 agencies [] take part: every agency offering {what} ({holders}) stopped its "
                "agent and has not come back",
            )
        lacking = [a for a in participants if a not in holders]
        if lacking:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agencies {lacking} have not registered {what} (it is offered by {holders})",
            )
        return participants

    def _job_spec(
        self,
        req: fpb.JobSpec,
        params: dict[str, Any],
        privacy: dict[str, Any] | None,
        principal: Principal,
        job: Any,
    ) -> dict[str, Any]:
        """Resolve participants and check they can run the job together (lock held)."""
        order = list(self.federation.agencies)
        query: dict[str, Any] = {}
        if req.job_type == QUERY_JOB_TYPE:
            query = self._query_participants(req, job.spec)
            participants = query["agencies"]
        else:
            holders = [a for a in order if req.dataset in self._datasets.get(a, {})]
            if not holders:
                raise StatusError(
                    Code.NOT_FOUND, f"no registered agency offers dataset {req.dataset!r}"
                )
            participants = self._participants(req, holders, f"dataset {req.dataset!r}")
        t = self.federation.threshold
        holder = self.federation.key_holder
        if holder is not None and holder not in participants:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agency {holder!r} holds the federation's decryption key and must take part "
                f"in every job; the job names {participants}",
            )
        holders_of_shares = self.federation.share_index_of(participants)
        if holder is None and len(holders_of_shares) < t:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"the job's agencies include {len(holders_of_shares)} member(s) of the "
                f"decryption committee ({sorted(holders_of_shares)}); decrypting needs "
                f"t={t}: add committee members to --agencies",
            )
        n = len(participants)
        min_agencies = int(req.min_agencies) or max(t, min(2, n))
        need = max(min_agencies, t)
        if n < need:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"{n} agencies {participants} take part; the job needs at least {need} "
                f"(min_agencies={min_agencies}, key threshold t={t})",
            )
        self._check_steps(job, participants, evaluate=bool(req.evaluate_dataset))
        self._check_differencing(req, participants)
        if query:
            record = self._spec_record(req, params, privacy, principal, participants, min_agencies)
            record["table_schema"] = query["table_schema"]
            return record
        spec = self._datasets[participants[0]][req.dataset]
        differ = [a for a in participants if self._datasets[a][req.dataset] != spec]
        if differ:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agencies {differ} declare other columns for {req.dataset!r} than "
                f"{participants[0]!r}; every participant must declare the same FeatureSpec",
            )
        if req.evaluate_dataset:
            if not any(req.evaluate_dataset in d for d in self._datasets.values()):
                raise StatusError(
                    Code.NOT_FOUND, f"no registered agency offers dataset {req.evaluate_dataset!r}"
                )
            missing = [
                a for a in participants if self._datasets[a].get(req.evaluate_dataset) != spec
            ]
            if missing:
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"agencies {missing} do not offer evaluation dataset "
                    f"{req.evaluate_dataset!r} with the training dataset's columns",
                )
        return self._spec_record(
            req,
            params,
            privacy,
            principal,
            participants,
            min_agencies,
            feature_spec=messages.feature_spec_to_json(spec),
        )

    def _spec_record(
        self,
        req: fpb.JobSpec,
        params: dict[str, Any],
        privacy: dict[str, Any] | None,
        principal: Principal,
        participants: list[str],
        min_agencies: int,
        *,
        feature_spec: str | None = None,
    ) -> dict[str, Any]:
        """The job as stored: everything needed to rebuild it after a restart."""
        return {
            "job_type": req.job_type,
            "params": params,
            "privacy": privacy,
            "dataset": req.dataset,
            "evaluate_dataset": req.evaluate_dataset,
            "agencies": participants,
            "min_agencies": min_agencies,
            "share_index_of": self.federation.share_index_of(participants),
            "feature_spec": feature_spec,
            "key_id": self.federation.key_id.hex(),
            "submitted_by": principal.name,
        }

    def _check_steps(self, job: Any, participants: list[str], *, evaluate: bool) -> None:
        """Refuse a job whose steps some participant's policy does not allow (lock held)."""
        if isinstance(job, QueryJob):
            needed = query_steps(job)
        else:
            needed = job_steps(job, evaluate=evaluate)
        refusals = []
        for agency in participants:
            allowed = self._kinds.get(agency)
            if allowed is None:  # registered before steps were recorded: the agent decides
                continue
            missing = [k for k in needed if k not in allowed]
            if missing:
                refusals.append(f"{agency} does not allow {missing}")
        if refusals:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"the job needs steps {list(needed)}, but "
                + "; ".join(refusals)
                + " (allowed_kinds in the agency's [policy]); leave those agencies out with "
                "--agencies or ask them to allow the steps",
            )

    def _check_differencing(self, req: fpb.JobSpec, participants: list[str]) -> None:
        """Refuse a job too close to an earlier one on its dataset (differencing; lock held).

        The job's agencies may not differ from an earlier job's by fewer agencies than some
        differing agency's ``min_set_difference``: two results over nearly the same agencies
        can be subtracted, and the difference is the figures of the agencies in one set only.
        The check covers the last :data:`MAX_DIFFERENCING_JOBS` jobs.
        """
        if not any(self._min_difference.values()):
            return
        current = frozenset(participants)
        for row in self.store.jobs_of(None, MAX_DIFFERENCING_JOBS):
            if row.state not in ("running", "succeeded"):
                continue
            spec = json.loads(row.spec)
            if spec.get("dataset") != req.dataset:
                continue
            diff = current ^ frozenset(spec.get("agencies", []))
            if not diff:
                continue
            strict = max(diff, key=lambda a: self._min_difference.get(a, 0))
            minimum = self._min_difference.get(strict, 0)
            if len(diff) < minimum:
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"policy of {strict}: this job's agencies differ from job {row.id}'s on "
                    f"{req.dataset!r} by {len(diff)} ({sorted(diff)}); {strict} requires "
                    f"min_set_difference = {minimum}, since subtracting the two results "
                    "could reveal its figures",
                )

    @staticmethod
    def _require_owner(principal: Principal, rt: JobRuntime) -> None:
        """Only the data scientist who submitted a job may watch, read or cancel it."""
        if rt.owner != principal.name:
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"job {rt.id} was submitted by another data scientist; only its submitter may "
                "watch it, read its result or cancel it",
            )

    def _lookup(self, job_id: str) -> JobRuntime:
        """A running or recently finished job, or one loaded from the store; else NOT_FOUND."""
        _checked_job_id(job_id)
        rt = self._jobs.get(job_id) or self._recent.get(job_id)
        if rt is not None:
            return rt
        row = self.store.job(job_id) if job_id else None
        if row is None:
            raise StatusError(Code.NOT_FOUND, f"no job {job_id!r}")
        return self._stored_job(row, with_history=True)

    def status(self, principal: Principal, ref: fpb.JobRef) -> fpb.JobStatus:
        """One of the caller's jobs: state, progress, and which agencies left and why."""
        self._require_role(principal, "scientist")
        with self._lock:
            rt = self._lookup(ref.job_id)
            self._require_owner(principal, rt)
            return rt.status()

    def list_jobs(self, principal: Principal, req: fpb.ListJobsRequest) -> fpb.ListJobsResponse:
        """The caller's newest jobs (an operator's: everyone's), newest first (bounded)."""
        self._require_role(principal, "scientist", "operator")
        limit = int(req.limit) or DEFAULT_LISTED_JOBS
        if limit > MAX_LISTED_JOBS:
            raise StatusError(
                Code.INVALID_ARGUMENT, f"limit {limit} exceeds {MAX_LISTED_JOBS} jobs per listing"
            )
        with self._lock:
            rows = self.store.jobs_of(
                None if principal.role == "operator" else principal.name, limit
            )
            out = fpb.ListJobsResponse()
            for row in rows:
                rt = self._stored_job(row)
                status = rt.status()
                status.failure = messages.clipped(status.failure, 300)
                out.jobs.append(status)
            return out

    def job_logs(self, principal: Principal, ref: fpb.JobRef) -> fpb.JobLogsResponse:
        """A job's history in words (its last :data:`MAX_LOG_EVENTS` events)."""
        self._require_role(principal, "scientist")
        with self._lock:
            rt = self._lookup(ref.job_id)
            self._require_owner(principal, rt)
            events = self.store.event_outline(rt.id, MAX_LOG_EVENTS)
            return fpb.JobLogsResponse(lines=describe_job(rt, events))

    def watch(
        self,
        principal: Principal,
        ref: fpb.JobRef,
        is_active: Callable[[], bool] = lambda: True,
    ) -> Iterator[fpb.JobEvent]:
        """Status, then every finished round, until the job ends."""
        self._require_role(principal, "scientist")
        with self._lock:
            rt = self._lookup(ref.job_id)
            self._require_owner(principal, rt)
            status = rt.status()
        yield fpb.JobEvent(status=status)
        for agency, reason in list(rt.left.items()):
            yield fpb.JobEvent(status=status, notice=departure_notice(agency, reason))
        sent, told = 0, len(rt.left)
        holding: dict[str, str] = {}
        while True:
            with self._lock:
                while True:
                    rt = self._jobs.get(ref.job_id) or self._recent.get(ref.job_id) or rt
                    new = rt.records[sent:]
                    left = list(rt.left.items())[told:]
                    held = {a: r for a, r in rt.waiting.items() if holding.get(a) != r}
                    done = rt.state in TERMINAL_STATES
                    if new or left or held or done or self._stopping or not is_active():
                        break
                    self._changed.wait(timeout=1.0)
                status = rt.status()
            for agency, reason in held.items():
                yield fpb.JobEvent(status=status, notice=f"waiting for {agency}: {reason}")
            holding.update(held)
            for agency, reason in left:
                yield fpb.JobEvent(status=status, notice=departure_notice(agency, reason))
            told += len(left)
            for record in new:
                yield fpb.JobEvent(status=status, round_record_json=record)
            sent += len(new)
            if done:
                yield fpb.JobEvent(status=status)
                return
            if self._stopping or not is_active():
                return

    def result(self, principal: Principal, ref: fpb.JobRef) -> fpb.JobResult:
        """The result JSON of a succeeded job."""
        self._require_role(principal, "scientist")
        with self._lock:
            rt = self._lookup(ref.job_id)
            self._require_owner(principal, rt)
            if rt.state != "succeeded" or rt.result is None:
                why = f": {rt.failure}" if rt.failure else ""
                raise StatusError(
                    Code.FAILED_PRECONDITION,
                    f"job {rt.id} is {rt.state}{why}; a result exists once it succeeded",
                )
            if len(rt.result) > messages.MAX_MESSAGE_BYTES - 4096:
                raise StatusError(
                    Code.RESOURCE_EXHAUSTED,
                    f"the result of job {rt.id} holds {len(rt.result)} bytes, more than one "
                    f"message may carry ({messages.MAX_MESSAGE_BYTES})",
                )
            return fpb.JobResult(status=rt.status(), result_json=rt.result)

    def list_agencies(self, principal: Principal) -> fpb.ListAgenciesResponse:
        """Every federation member and registered agency, with what it offers."""
        self._require_role(principal, "scientist", "operator")
        with self._lock:
            now = self.clock()
            names = list(self.federation.agencies)
            names += sorted(a for a in self._datasets if a not in self.federation.agencies)
            out = fpb.ListAgenciesResponse()
            budget = messages.MAX_MESSAGE_BYTES * 3 // 4  # one agency never breaks the listing
            for name in names:
                info = out.agencies.add(
                    name=name,
                    connected=self.liveness.heard(name) and self._alive(name, now),
                    last_seen_unix=self.liveness.last_seen.get(name, 0.0),
                )
                offered = [
                    fpb.DatasetInfo(name=ds, feature_spec_json=messages.feature_spec_to_json(spec))
                    for ds, spec in sorted(self._datasets.get(name, {}).items())
                ]
                tables = [
                    fpb.TableInfo(name=t, schema_json=messages.table_schema_to_json(t, columns))
                    for t, columns in sorted(self._tables.get(name, {}).items())
                ]
                size = sum(d.ByteSize() for d in offered) + sum(t.ByteSize() for t in tables)
                if size > min(budget, 2 * messages.MAX_REGISTRATION_BYTES):
                    log.warning(
                        "listing agency %s without its %d datasets and %d tables (%d bytes, %d "
                        "left for the listing); it must register again within the limits",
                        messages.shown(name),
                        len(offered),
                        len(tables),
                        size,
                        budget,
                    )
                    continue
                budget -= size
                info.datasets.extend(offered)
                info.tables.extend(tables)
            return out

    def cancel(self, principal: Principal, ref: fpb.JobRef) -> fpb.JobStatus:
        """Stop a running job for good."""
        self._require_role(principal, "scientist")
        with self._lock:
            self._check_open()
            rt = self._lookup(ref.job_id)
            self._require_owner(principal, rt)
            if rt.state == "cancelled":
                return rt.status()
            if not rt.running:
                raise StatusError(
                    Code.FAILED_PRECONDITION, f"job {rt.id} already {rt.state}; nothing to cancel"
                )
            reason = f"cancelled by {principal.name}"
            self._write(
                "the cancellation",
                partial(self.store.append_event, rt.id, "cancel", payload=reason.encode()),
                update=JobUpdate("cancelled", failure=reason, rounds_done=rt.rounds_done),
            )
            self._terminate(rt, "cancelled", failure=reason)
            return rt.status()
