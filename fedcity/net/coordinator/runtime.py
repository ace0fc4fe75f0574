"""A job as the coordinator holds it in memory, and how it is rebuilt from the store.

:func:`build` instantiates a job's algorithm and driver from its stored spec; :func:`replay`
feeds the job's stored events through that fresh driver, which reaches the exact state of an
uninterrupted run (including encrypted aggregates). Neither touches the network or a lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedcity.analytics.query import query_job_from_spec
from fedcity.analytics.spec import TableSchema
from fedcity.core.aggregation import AggregationScheme
from fedcity.core.audit import DEFAULT_AUDIT_SECONDS, AuditSettings
from fedcity.data.dataset import FeatureSpec
from fedcity.learn.algorithm import Algorithm
from fedcity.learn.dp import DPPlan
from fedcity.learn.driver import Chain, JobDriver
from fedcity.learn.evaluation import FederatedEvaluation
from fedcity.learn.jobs import job_from_spec, record_to_dict
from fedcity.net import messages, rangeaudit
from fedcity.net.ceremony import Federation
from fedcity.net.integrity import close_record
from fedcity.net.store import Event
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["EVAL_KIND", "QUERY_JOB_TYPE", "JobRuntime", "build", "record_json", "replay"]

EVAL_KIND = "eval.model"
QUERY_JOB_TYPE = "query"
"""The job type of federated queries (:mod:`fedcity.analytics`)."""

_STATE_PROTO = {
    "queued": fpb.JOB_STATE_QUEUED,
    "running": fpb.JOB_STATE_RUNNING,
    "succeeded": fpb.JOB_STATE_SUCCEEDED,
    "failed": fpb.JOB_STATE_FAILED,
    "cancelled": fpb.JOB_STATE_CANCELLED,
}


@dataclass
class JobRuntime:
    """A job as the coordinator holds it in memory.

    Attributes ``job`` ... ``feature_spec`` exist while it runs; ``opened``, ``handed``,
    ``asked`` and ``decrypt_handed`` are per-round bookkeeping on the coordinator's
    progress clock (see :class:`~fedcity.net.coordinator.liveness.ProgressClock`).
    """

    id: str
    spec: dict[str, Any]
    state: str
    created: float
    failure: str | None = None
    result: str | None = None
    rounds_done: int = 0
    records: list[str] = field(default_factory=list)
    # running jobs only
    job: Any = None
    training: Chain | None = None
    algorithm: Algorithm | None = None
    driver: JobDriver | None = None
    dp: DPPlan | None = None
    feature_spec: FeatureSpec | None = None
    opened: dict[int, float] = field(default_factory=dict)
    handed: dict[int, set[str]] = field(default_factory=dict)
    asked: dict[int, dict[str, float]] = field(default_factory=dict)
    decrypt_handed: dict[int, set[str]] = field(default_factory=dict)
    audit_opened: dict[int, float] = field(default_factory=dict)
    """Round → when its range audit opened (progress clock)."""
    audit_handed: dict[int, set[str]] = field(default_factory=dict)
    """Round → contributors handed its range audit."""
    signatures: dict[int, dict[str, bytes]] = field(default_factory=dict)
    """Round → agency → the signature of its accepted contribution (shown to decryptors)."""
    waiting: dict[str, str] = field(default_factory=dict)
    """Agency → why it holds the job (a person must approve it there); not stored."""
    left: dict[str, str] = field(default_factory=dict)
    """Agency → why it left the job (its decline reason, or the coordinator's drop reason)."""

    def with_reasons(self, failure: str) -> str:
        """A failure message followed by why each agency that left did so."""
        if not self.left or "why agencies left" in failure:
            return failure
        why = "; ".join(f"{a}: {r}" for a, r in self.left.items())
        return messages.clipped(f"{failure} — why agencies left: {why}", 1500)

    @property
    def running(self) -> bool:
        """Whether the job is running and its driver is loaded."""
        return self.state == "running" and self.driver is not None

    @property
    def owner(self) -> str:
        """The data scientist who submitted the job."""
        return str(self.spec.get("submitted_by", ""))

    def status(self) -> fpb.JobStatus:
        """The job's status message."""
        label = ""
        if self.driver is not None and self.driver.task is not None:
            label = self.driver.task.request.label or self.driver.task.request.kind
        return fpb.JobStatus(
            job_id=self.id,
            state=_STATE_PROTO.get(self.state, fpb.JOB_STATE_UNSPECIFIED),
            rounds_done=self.rounds_done,
            failure=self.failure or "",
            current_round_label=label,
            departures=[
                fpb.Departure(agency=a, reason=messages.clipped(r, 500))
                for a, r in self.left.items()
            ],
            submitted_unix=self.created,
            job_type=str(self.spec.get("job_type", "")),
            dataset=str(self.spec.get("dataset", "")),
            participants=len(self.spec.get("agencies", ())),
            waiting=[
                fpb.Departure(agency=a, reason=messages.clipped(r, 500))
                for a, r in self.waiting.items()
            ],
        )


def record_json(record: Any) -> str:
    """A round record as canonical JSON (what watchers receive)."""
    return json.dumps(record_to_dict(record), sort_keys=True, allow_nan=False)


def holds(stored: Mapping[str, bytes], agency: str, payload: bytes) -> bool:
    """Whether ``stored`` holds exactly ``payload`` for ``agency``."""
    return stored.get(agency) == payload


def build(
    rt: JobRuntime,
    federation: Federation,
    scheme: AggregationScheme,
    *,
    audit_seconds: float = DEFAULT_AUDIT_SECONDS,
) -> None:
    """Instantiate job, algorithm, DP plan and driver from the stored spec; start it.

    ``audit_seconds`` is the range-audit answer deadline (:mod:`fedcity.core.audit`).

    Raises
    ------
    ValueError
        The spec does not fit this coordinator (another key) or asks for no round.
    JobFailed
        The algorithm refused to start.
    """
    spec = rt.spec
    key_id = federation.key_id.hex()
    if spec["key_id"] != key_id:
        raise ValueError(
            f"the job was submitted under key {spec['key_id']}, the coordinator "
            f"now serves key {key_id}"
        )
    feature_spec: FeatureSpec | None = None
    training: Chain | None = None
    dp = None
    algorithm: Algorithm
    if spec["job_type"] == QUERY_JOB_TYPE:
        schema = TableSchema.from_json(spec["table_schema"]) if spec.get("table_schema") else None
        job: Any = query_job_from_spec(spec["params"], spec["privacy"], schema=schema)
        algorithm = job.algorithm(min_agencies=int(spec["min_agencies"]))
    else:
        job = job_from_spec(spec["job_type"], spec["params"], spec["privacy"])
        feature_spec = messages.feature_spec_from_json(spec["feature_spec"])
        training = job.algorithm(feature_spec)
        algorithm = training
        if spec["evaluate_dataset"]:
            algorithm = Chain(training, _evaluation_stage(rt, job, training, feature_spec))
        privacy = getattr(job, "privacy", None)
        if privacy is not None:
            dp = DPPlan(privacy, n_contributors_min=int(spec["min_agencies"]))
    driver = JobDriver(
        rt.id,
        algorithm,
        scheme,
        agencies=list(spec["agencies"]),
        min_agencies=int(spec["min_agencies"]),
        share_index_of={str(a): int(i) for a, i in spec["share_index_of"].items()},
        n_length=federation.public_key.n_length,
        dp=dp,
        audit=AuditSettings(dict(federation.signing_keys), federation.key_id, audit_seconds)
        if federation.signing_keys and scheme.encrypted
        else None,
    )
    rt.job, rt.training, rt.algorithm, rt.dp = job, training, algorithm, dp
    rt.feature_spec, rt.driver = feature_spec, driver
    driver.start()
    if driver.finished:
        raise ValueError("the job's algorithm asked for no round at all")


def _evaluation_stage(
    rt: JobRuntime, job: Any, training: Chain, feature_spec: FeatureSpec
) -> Callable[[Any], Algorithm]:
    def then(_: Any) -> Algorithm:
        trained = job.result(training, feature_spec, history=[], job_id=rt.id, seconds=0.0)
        return FederatedEvaluation(
            trained.model_params_, trained.problem_, dataset=rt.spec["evaluate_dataset"]
        )

    return then


def replay(rt: JobRuntime, events: Sequence[Event], now: float) -> None:
    """Feed stored events through the freshly built driver, checking they fit its rounds.

    Raises
    ------
    ValueError
        An event does not fit the replayed job (the store and the code disagree).
    """
    driver = rt.driver
    assert driver is not None
    for ev in events:
        task = driver.task
        if ev.type in ("contribution", "close", "partial") and (
            task is None or task.round != ev.round
        ):
            raise ValueError(
                f"event {ev.seq} ({ev.type}) is for round {ev.round}, the replayed job is "
                f"at round {None if task is None else task.round}"
            )
        if ev.type == "contribution":
            assert ev.agency is not None and ev.payload is not None and ev.round is not None
            driver.submit_contribution(ev.agency, ev.payload)
            if ev.signature is not None:
                rt.signatures.setdefault(ev.round, {})[ev.agency] = ev.signature
        elif ev.type == "partial" and driver.auditing is not None:
            # a range-audit answer, stored as the audited round's "partial" (the schema's
            # event types are fixed); signature checked before storing, verdict recomputed
            assert ev.payload is not None
            answer = rangeaudit.answer_from_bytes(ev.payload, max_proof=len(ev.payload))
            driver.submit_range_answer(answer)
        elif ev.type == "close" and driver.auditing is not None:
            driver.close_audit()  # the range audit's deadline passed
        elif ev.type == "partial":
            assert ev.agency is not None and ev.payload is not None
            # verified before it was stored: replay does not pay for the proofs again
            driver.submit_partial(ev.agency, ev.payload, verify=False)
        elif ev.type == "close":
            rnd = driver.round
            assert rnd is not None
            if ev.payload is not None and ev.payload != close_record(rnd.contributions):
                raise ValueError(
                    f"event {ev.seq} (close) records other contributions than the replayed "
                    f"round {ev.round} holds ({rnd.contributors})"
                )
            driver.close_collection()
        elif ev.type == "drop":
            assert ev.agency is not None
            if ev.payload is not None:
                rt.left[ev.agency] = ev.payload.decode(errors="replace")
            driver.drop(ev.agency)
        elif ev.type == "cancel":
            raise ValueError(f"event {ev.seq} cancelled the job, yet it is stored as running")
    if driver.finished:
        raise ValueError("the replayed job finished, yet it is stored as running")
    rt.records = [record_json(r) for r in driver.records]
    rt.rounds_done = len(driver.records)
    if driver.task is not None:
        rt.opened[driver.task.round] = now
