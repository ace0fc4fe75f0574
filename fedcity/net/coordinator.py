"""The coordinator: a gRPC shell over :class:`~fedcity.learn.driver.JobDriver` with a durable log.

Agencies' agents dial in (``AgentService``): they register the datasets they offer, heartbeat,
long-poll for work, upload encrypted contributions and partial decryptions, and download the
encrypted aggregates they are asked to partially decrypt. Data scientists submit and watch
jobs (``JobService``). The coordinator only ever holds ciphertexts and released aggregates.

Architecture::

    gRPC threads ──► servicers (thin: status codes) ──► Coordinator (one RLock + Condition)
                                                          │   ├─ JobDriver per running job
                                                          │   └─ Store (SQLite, WAL, FULL sync)
    ticker thread ──► Coordinator.tick(): liveness drops, collect deadlines, decrypt re-asks

State lives in the drivers; durability in the :class:`~fedcity.net.store.Store`'s per-job
event log. Every event a driver accepted (contribution, drop, close, partial, cancel) is
written in its own transaction before the RPC is acknowledged; a refused input writes
nothing. On start every running job is rebuilt from its stored spec and its events replayed
in order through a fresh driver, which reaches the exact same state (including encrypted
aggregates) as an uninterrupted run. Timer-driven decisions (closing at a deadline, dropping
a silent agency) are themselves events, so replay never depends on the clock.

Run it with :func:`serve` or :func:`main` (``fedcity coordinator serve ...``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedcity.core.errors import JobFailed, ProtocolError, RejectedContribution
from fedcity.core.rounds import AggregationRound, RoundPhase
from fedcity.crypto import BLINDING_KEY_BYTES
from fedcity.data.dataset import FeatureSpec
from fedcity.learn.algorithm import Algorithm
from fedcity.learn.dp import DPPlan
from fedcity.learn.driver import Chain, JobDriver
from fedcity.learn.evaluation import FederatedEvaluation
from fedcity.learn.jobs import JOB_TYPES, job_from_spec, record_to_dict, result_to_json
from fedcity.net import messages
from fedcity.net.auth import (
    Authenticator,
    AuthError,
    AuthInterceptor,
    Principal,
    check_listen_address,
    load_credentials,
    server_credentials,
)
from fedcity.net.ceremony import CeremonyError, Federation, load_federation
from fedcity.net.store import TERMINAL_STATES, Event, JobUpdate, Store, StoreError
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = [
    "AGENT_SERVICE",
    "JOB_SERVICE",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorMetrics",
    "CoordinatorServer",
    "DecodeInterceptor",
    "StatusError",
    "main",
    "serve",
]

log = logging.getLogger(__name__)

AGENT_SERVICE = "fedcity.v1.AgentService"
JOB_SERVICE = "fedcity.v1.JobService"

_STATE_PROTO = {
    "queued": fpb.JOB_STATE_QUEUED,
    "running": fpb.JOB_STATE_RUNNING,
    "succeeded": fpb.JOB_STATE_SUCCEEDED,
    "failed": fpb.JOB_STATE_FAILED,
    "cancelled": fpb.JOB_STATE_CANCELLED,
}
_EVAL_KIND = "eval.model"
_MAX_REASON = 2000
_RECENT_JOBS = 256
"""Finished jobs kept in memory for late watchers (older ones are read from the store)."""

RECONNECT_GRACE = 15.0
"""Seconds after start before an agency never heard from counts as gone."""

T = TypeVar("T")
Code = grpc.StatusCode


class StatusError(Exception):
    """A refusal with its gRPC status; the servicers turn it into ``context.abort``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- configuration ----------------------------------------------------------------------------
@dataclass
class CoordinatorConfig:
    """Everything :func:`serve` needs.

    Attributes
    ----------
    listen : str
        ``host:port``; port 0 picks a free port (see :attr:`CoordinatorServer.port`).
    db : path
        The SQLite file (created if missing).
    federation : path
        ``federation-public.json``.
    credentials : path
        The credentials file (token hashes and roles).
    tls_cert, tls_key : path, optional
        PEM server certificate and key. Required unless ``insecure``.
    tls_client_ca : path, optional
        With it, clients must present a certificate signed by this CA (mutual TLS).
    insecure : bool
        Plaintext gRPC; refused unless ``listen`` is a loopback address.
    metrics_port : int
        Prometheus metrics on ``metrics_host:metrics_port``; 0 turns them off.
    heartbeat_interval : float
        Seconds between agents' heartbeats (told to agents at registration).
    liveness_timeout : float, optional
        An agency silent for longer is dropped from its running jobs (default three
        heartbeat intervals).
    collect_timeout : float
        A round closes with the contributions that arrived this long after it opened.
    decrypt_timeout : float
        An agency asked to partially decrypt has this long before others are asked; when
        every share holder was asked and none of the missing answered in time, the job fails.
    max_wait : float
        Cap on a FetchWork long poll.
    tick_interval : float
        How often timeouts are checked.
    max_workers : int
        gRPC worker threads (each long poll holds one).
    max_upload_bytes : int
        Largest payload an upload may announce.
    """

    listen: str = "127.0.0.1:50051"
    db: str | os.PathLike[str] = "coordinator.sqlite"
    federation: str | os.PathLike[str] = "federation-public.json"
    credentials: str | os.PathLike[str] = "credentials.json"
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    tls_client_ca: str | os.PathLike[str] | None = None
    insecure: bool = False
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    heartbeat_interval: float = 5.0
    liveness_timeout: float | None = None
    collect_timeout: float = 60.0
    decrypt_timeout: float = 60.0
    max_wait: float = 10.0
    tick_interval: float = 0.5
    max_workers: int = 64
    max_upload_bytes: int = messages.MAX_PAYLOAD_BYTES

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "collect_timeout", "decrypt_timeout", "tick_interval"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.liveness_timeout is None:
            self.liveness_timeout = 3.0 * self.heartbeat_interval
        elif not self.liveness_timeout > 0:
            raise ValueError(f"liveness_timeout must be positive, got {self.liveness_timeout}")
        if not self.max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {self.max_wait}")
        if self.max_workers < 4:
            raise ValueError(f"max_workers must be at least 4, got {self.max_workers}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must lie in [0, 65535], got {self.metrics_port}")
        if not 0 < self.max_upload_bytes <= messages.MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"max_upload_bytes must lie in [1, {messages.MAX_PAYLOAD_BYTES}], "
                f"got {self.max_upload_bytes}"
            )

    @property
    def liveness(self) -> float:
        """The effective liveness timeout in seconds."""
        assert self.liveness_timeout is not None
        return float(self.liveness_timeout)


# -- metrics ----------------------------------------------------------------------------------
class CoordinatorMetrics:
    """Prometheus metrics of one coordinator, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_released = Counter(
            "fedcity_rounds_released", "Aggregates released (rounds finished)", registry=r
        )
        self.bytes_received = Counter(
            "fedcity_upload_bytes", "Payload bytes of accepted uploads", ["kind"], registry=r
        )
        self.uploads_refused = Counter(
            "fedcity_uploads_refused", "Uploads refused, by status code", ["code"], registry=r
        )
        self.round_seconds = Histogram(
            "fedcity_round_seconds",
            "Seconds from a round opening to its release",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, float("inf")),
            registry=r,
        )
        self.connected_agencies = Gauge(
            "fedcity_connected_agencies",
            "Agencies heard from within the liveness timeout",
            registry=r,
        )
        self.running_jobs = Gauge("fedcity_running_jobs", "Jobs running", registry=r)


# -- per-job runtime state --------------------------------------------------------------------
@dataclass
class _Runtime:
    """A job as the coordinator holds it in memory."""

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

    @property
    def running(self) -> bool:
        return self.state == "running" and self.driver is not None

    def status(self) -> fpb.JobStatus:
        label = ""
        if self.driver is not None and self.driver.task is not None:
            label = self.driver.task.request.label or self.driver.task.request.kind
        return fpb.JobStatus(
            job_id=self.id,
            state=_STATE_PROTO.get(self.state, fpb.JOB_STATE_UNSPECIFIED),
            rounds_done=self.rounds_done,
            failure=self.failure or "",
            current_round_label=label,
        )


def _record_json(record: Any) -> str:
    return json.dumps(record_to_dict(record), sort_keys=True, allow_nan=False)


def _holds(stored: Mapping[str, bytes], agency: str, payload: bytes) -> bool:
    return stored.get(agency) == payload


def _reason(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "…"


# -- the coordinator --------------------------------------------------------------------------
class Coordinator:
    """The coordinator's state and rules, independent of gRPC plumbing.

    Every public method either returns a response message or raises :class:`StatusError`.
    All state (drivers, registrations, the store's writes) is guarded by one re-entrant lock;
    long polls wait on a condition variable bound to it.

    Parameters
    ----------
    federation : Federation
    store : Store
    config : CoordinatorConfig
    metrics : CoordinatorMetrics, optional
    """

    def __init__(
        self,
        federation: Federation,
        store: Store,
        config: CoordinatorConfig,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self.federation = federation
        self.store = store
        self.scheme = federation.scheme(
            blinding_key=(
                store.secret("blinding-key", BLINDING_KEY_BYTES)
                if federation.threshold_key is None
                else None
            )
        )
        self.config = config
        self.metrics = metrics or CoordinatorMetrics()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _Runtime] = {}
        """Running jobs (and, briefly, jobs that just ended; see :meth:`_terminate`)."""
        self._recent: OrderedDict[str, _Runtime] = OrderedDict()
        self._datasets: dict[str, dict[str, FeatureSpec]] = {}
        self._last_seen: dict[str, float] = {}
        self._contact: dict[str, float] = {}
        self._started = time.monotonic()
        self._stopping = False
        self._closed = False
        self.metrics.connected_agencies.set_function(self._connected_count)
        self.metrics.running_jobs.set_function(
            lambda: sum(1 for rt in list(self._jobs.values()) if rt.running)
        )

    # -- lifecycle ------------------------------------------------------------------------
    def recover(self) -> None:
        """Load registrations and rebuild every running job by replaying its events."""
        with self._lock:
            for row in self.store.agencies():
                try:
                    declared = json.loads(row.datasets)
                    self._datasets[row.name] = {
                        name: messages.feature_spec_from_json(spec)
                        for name, spec in declared.items()
                    }
                except (ValueError, AttributeError) as exc:
                    log.error("ignoring stored registration of %r: %s", row.name, exc)
                    continue
                if row.last_seen is not None:
                    self._last_seen[row.name] = row.last_seen
            for job_row in self.store.jobs(["running"]):
                spec = json.loads(job_row.spec)
                rt = _Runtime(job_row.id, spec, "running", job_row.created)
                try:
                    self._build(rt)
                    self._replay(rt, self.store.events(rt.id))
                except Exception as exc:  # a job that cannot be rebuilt fails, others go on
                    log.exception("job %s cannot be rebuilt from the store", rt.id)
                    rt.driver = None
                    self._jobs[rt.id] = rt
                    self._fail(
                        rt, f"the coordinator could not resume the job after a restart: {exc}"
                    )
                    continue
                self._jobs[rt.id] = rt
                log.info(
                    "resumed job %s at round %s (%d events replayed)",
                    rt.id,
                    None if rt.driver is None or rt.driver.task is None else rt.driver.task.round,
                    self.store.count_events(rt.id),
                )
                self._advance(rt, time.monotonic())

    def stop(self) -> None:
        """Wake every long poll and refuse new work (before the server stops)."""
        with self._lock:
            self._stopping = True
            self._changed.notify_all()

    def close(self) -> None:
        """Close the store; call after the gRPC server stopped."""
        with self._lock:
            self._stopping = True
            self._closed = True
            self._changed.notify_all()
            self.store.close()

    # -- building and replaying jobs ------------------------------------------------------
    def _build(self, rt: _Runtime) -> None:
        """Instantiate job, algorithm, DP plan and driver from the stored spec; start it."""
        spec = rt.spec
        key_id = self.federation.key_id.hex()
        if spec["key_id"] != key_id:
            raise ValueError(
                f"the job was submitted under key {spec['key_id']}, the coordinator "
                f"now serves key {key_id}"
            )
        job = job_from_spec(spec["job_type"], spec["params"], spec["privacy"])
        feature_spec = messages.feature_spec_from_json(spec["feature_spec"])
        training = job.algorithm(feature_spec)
        algorithm: Algorithm = training
        if spec["evaluate_dataset"]:
            algorithm = Chain(training, self._evaluation_stage(rt, job, training, feature_spec))
        privacy = getattr(job, "privacy", None)
        dp = None
        if privacy is not None:
            dp = DPPlan(privacy, n_contributors_min=int(spec["min_agencies"]))
        driver = JobDriver(
            rt.id,
            algorithm,
            self.scheme,
            agencies=list(spec["agencies"]),
            min_agencies=int(spec["min_agencies"]),
            share_index_of={str(a): int(i) for a, i in spec["share_index_of"].items()},
            n_length=self.federation.public_key.n_length,
            dp=dp,
        )
        rt.job, rt.training, rt.algorithm, rt.dp = job, training, algorithm, dp
        rt.feature_spec, rt.driver = feature_spec, driver
        driver.start()
        if driver.finished:
            raise ValueError("the job's algorithm asked for no round at all")

    def _evaluation_stage(
        self, rt: _Runtime, job: Any, training: Chain, feature_spec: FeatureSpec
    ) -> Callable[[Any], Algorithm]:
        def then(_: Any) -> Algorithm:
            trained = job.result(training, feature_spec, history=[], job_id=rt.id, seconds=0.0)
            return FederatedEvaluation(
                trained.model_params_, trained.problem_, dataset=rt.spec["evaluate_dataset"]
            )

        return then

    def _replay(self, rt: _Runtime, events: Sequence[Event]) -> None:
        """Feed stored events through the fresh driver, checking they fit its rounds."""
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
                assert ev.agency is not None and ev.payload is not None
                driver.submit_contribution(ev.agency, ev.payload)
            elif ev.type == "partial":
                assert ev.agency is not None and ev.payload is not None
                # verified before it was stored: replay does not pay for the proofs again
                driver.submit_partial(ev.agency, ev.payload, verify=False)
            elif ev.type == "close":
                driver.close_collection()
            elif ev.type == "drop":
                assert ev.agency is not None
                driver.drop(ev.agency)
            elif ev.type == "cancel":
                raise ValueError(f"event {ev.seq} cancelled the job, yet it is stored as running")
        if driver.finished:
            raise ValueError("the replayed job finished, yet it is stored as running")
        now = time.monotonic()
        rt.records = [_record_json(r) for r in driver.records]
        rt.rounds_done = len(driver.records)
        if driver.task is not None:
            rt.opened[driver.task.round] = now

    # -- applying events live -------------------------------------------------------------
    def _apply(
        self,
        rt: _Runtime,
        kind: str,
        call: Callable[[], Any],
        *,
        agency: str | None = None,
        round_: int | None = None,
        payload: bytes | None = None,
        accepted: Callable[[], bool] | None = None,
    ) -> Any:
        """Run a driver call; if the driver accepted it, store the event (and the outcome).

        ``accepted`` tells, after an exception, whether the input was nevertheless stored by
        the round (a partial decryption whose release then failed the job); without it any
        :class:`ProtocolError` is a refusal and anything else happened after acceptance.
        Must be called with the lock held.
        """
        driver = rt.driver
        assert driver is not None
        before = len(driver.records)
        failure: str | None = None
        out: Any = None
        try:
            out = call()
        except ProtocolError:
            if accepted is None or not accepted():
                raise
            failure = driver.failure or "the job failed after this upload"
        except JobFailed as exc:
            failure = str(exc)
        except Exception as exc:
            if accepted is not None and not accepted():
                raise
            log.exception("job %s failed on a %s event", rt.id, kind)
            failure = f"{type(exc).__name__}: {exc}"
        result = None
        if failure is None and driver.finished:
            try:
                result = self._result_json(rt)
            except Exception as exc:
                log.exception("job %s: building the result failed", rt.id)
                failure = f"building the result failed: {type(exc).__name__}: {exc}"
        state = "failed" if failure is not None else "succeeded" if result is not None else None
        update = JobUpdate(
            state=state or "running",
            failure=failure,
            result=result,
            rounds_done=len(driver.records),
        )
        try:
            self.store.append_event(
                rt.id, kind, agency=agency, round=round_, payload=payload, update=update
            )
        except Exception as exc:
            log.exception("job %s: storing a %s event failed; reloading the job", rt.id, kind)
            self._reload(rt)
            raise StatusError(
                Code.UNAVAILABLE, f"the coordinator could not store the {kind}; retry later"
            ) from exc
        self._after_change(rt, before)
        if state is not None:
            self._terminate(rt, state, failure=failure, result=result)
        return out

    def _after_change(self, rt: _Runtime, before: int) -> None:
        """Metrics, records and round bookkeeping after the driver moved."""
        driver = rt.driver
        assert driver is not None
        now = time.monotonic()
        for record in driver.records[before:]:
            rt.records.append(_record_json(record))
            self.metrics.rounds_released.inc()
            opened = rt.opened.pop(record.round, None)
            if opened is not None:
                self.metrics.round_seconds.observe(now - opened)
        rt.rounds_done = len(driver.records)
        task = driver.task
        if task is not None:
            rt.opened.setdefault(task.round, now)
            for book in (rt.opened, rt.handed, rt.asked, rt.decrypt_handed):
                for r in [r for r in book if r < task.round]:
                    del book[r]
        self._changed.notify_all()

    def _reload(self, rt: _Runtime) -> None:
        """Rebuild a job from the store after a failed write (memory and disk agree again)."""
        fresh = _Runtime(rt.id, rt.spec, "running", rt.created)
        try:
            self._build(fresh)
            self._replay(fresh, self.store.events(rt.id))
        except Exception:
            log.exception("job %s cannot be reloaded; it stays paused until a restart", rt.id)
            rt.driver = None
            rt.failure = "paused: the coordinator's storage failed (restart to resume)"
            return
        rt.driver = None  # whoever still holds the stale runtime sees it stopped
        self._jobs[rt.id] = fresh

    def _terminate(
        self, rt: _Runtime, state: str, *, failure: str | None = None, result: str | None = None
    ) -> None:
        rt.state, rt.failure, rt.result = state, failure, result
        rt.driver = rt.job = rt.training = rt.algorithm = rt.dp = None
        rt.handed.clear()
        rt.asked.clear()
        rt.decrypt_handed.clear()
        # callers may be iterating over a copy of the running jobs; the move is safe for them
        if self._jobs.get(rt.id) is rt:
            del self._jobs[rt.id]
        self._recent[rt.id] = rt
        while len(self._recent) > _RECENT_JOBS:
            self._recent.popitem(last=False)
        log.info("job %s %s%s", rt.id, state, f": {failure}" if failure else "")
        self._changed.notify_all()

    def _fail(self, rt: _Runtime, reason: str) -> None:
        """Mark a job failed outside an event (e.g. decryption timed out)."""
        try:
            self.store.update_job(
                rt.id, JobUpdate("failed", failure=reason, rounds_done=rt.rounds_done)
            )
        except Exception:
            log.exception("job %s: storing its failure failed", rt.id)
        self._terminate(rt, "failed", failure=reason)

    def _result_json(self, rt: _Runtime) -> str:
        driver, job = rt.driver, rt.job
        assert driver is not None and rt.training is not None and rt.feature_spec is not None
        metrics = None
        if isinstance(rt.algorithm, Chain) and rt.algorithm is not rt.training:
            evaluation = rt.algorithm.second
            assert isinstance(evaluation, FederatedEvaluation)
            metrics = evaluation.metrics_
        history = [r for r in driver.records if r.kind != _EVAL_KIND]
        result = job.result(
            rt.training,
            rt.feature_spec,
            history=history,
            job_id=rt.id,
            seconds=max(time.time() - rt.created, 0.0),
            dp=rt.dp,
        )
        spec = rt.spec
        return result_to_json(
            result,
            metrics,
            job={
                "job_type": spec["job_type"],
                "params": spec["params"],
                "privacy": spec["privacy"],
                "dataset": spec["dataset"],
                "evaluate_dataset": spec["evaluate_dataset"],
                "agencies": spec["agencies"],
                "min_agencies": spec["min_agencies"],
            },
        )

    # -- progress: closing rounds, asking decryptors, timeouts -----------------------------
    def _advance(self, rt: _Runtime, now: float) -> None:
        """Take every step the job can take now (close a complete round, ask decryptors)."""
        while rt.running:
            driver = rt.driver
            assert driver is not None
            rnd = driver.round
            if rnd is None:
                return
            r = rnd.task.round
            opened = rt.opened.setdefault(r, now)
            if rnd.phase is RoundPhase.COLLECTING:
                complete = not driver.awaiting_contributions()
                if complete or now - opened >= self.config.collect_timeout:
                    if not complete:
                        log.info(
                            "job %s round %d: collect deadline passed; closing with %s",
                            rt.id,
                            r,
                            rnd.contributors,
                        )
                    self._apply(rt, "close", driver.close_collection, round_=r)
                    continue
                return
            if rnd.phase is RoundPhase.DECRYPTING:
                self._ask_decryptors(rt, rnd, now)
                return
            return

    def _advance_quietly(self, rt: _Runtime) -> None:
        """:meth:`_advance` after an input was stored; a failure is left to the next tick."""
        try:
            self._advance(rt, time.monotonic())
        except StatusError as exc:
            log.warning("job %s: could not advance now (%s); the ticker retries", rt.id, exc)

    def _ask_decryptors(self, rt: _Runtime, rnd: AggregationRound, now: float) -> list[str]:
        """Agencies to ask for a partial decryption now; fails the job if none can answer.

        The first ``t`` candidates (connected ones first) are asked; another is asked for each
        one that dropped out, sent an invalid partial, or stayed silent ``decrypt_timeout``.
        """
        driver = rt.driver
        assert driver is not None
        r = rnd.task.round
        asked = rt.asked.setdefault(r, {})
        candidates = sorted(driver.decryption_candidates(), key=lambda a: not self._alive(a, now))
        need = self.scheme.threshold - len(rnd.partials)
        fresh = [
            a for a in candidates if a in asked and now - asked[a] < self.config.decrypt_timeout
        ]
        for a in candidates:
            if len(fresh) >= need:
                break
            if a not in asked:
                asked[a] = now
                fresh.append(a)
                self._changed.notify_all()
        if len(fresh) < need and (len(candidates) < need or all(a in asked for a in candidates)):
            try:
                driver.fail_decryption()
            except JobFailed as exc:
                self._fail(rt, str(exc))
            return []
        return fresh

    def tick(self, now: float | None = None) -> None:
        """Drop silent agencies, close rounds past their deadline, re-ask decryptors."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._closed:
                return
            for rt in [rt for rt in self._jobs.values() if rt.running]:
                try:
                    self._tick_job(rt, now)
                except StatusError as exc:  # storage trouble: the other jobs still move
                    log.warning("job %s: tick failed: %s", rt.id, exc)

    def _tick_job(self, rt: _Runtime, now: float) -> None:
        """One job's timeouts: drop silent agencies, then take every step it can."""
        driver = rt.driver
        assert driver is not None
        for agency in driver.active:
            if not rt.running:
                return
            if self._alive(agency, now):
                continue
            silent = now - self._contact.get(agency, self._started)
            reason = f"no heartbeat for {silent:.1f} s"
            log.warning("job %s: dropping %s (%s)", rt.id, agency, reason)
            self._apply(
                rt,
                "drop",
                partial(driver.drop, agency),
                agency=agency,
                round_=None if driver.task is None else driver.task.round,
                payload=reason.encode(),
            )
        if rt.running:
            self._advance(rt, now)

    # -- agencies -------------------------------------------------------------------------
    def _touch(self, agency: str) -> None:
        self._contact[agency] = time.monotonic()
        self._last_seen[agency] = time.time()

    def _alive(self, agency: str, now: float) -> bool:
        last = self._contact.get(agency)
        if last is None:
            # not heard from since this coordinator started (e.g. after a restart): agents need
            # their retry and reconnect backoff (up to ~10 s) to come back
            return now - self._started <= max(self.config.liveness, RECONNECT_GRACE)
        return now - last <= self.config.liveness

    def _connected_count(self) -> int:
        now = time.monotonic()
        limit = self.config.liveness
        return sum(1 for t in list(self._contact.values()) if now - t <= limit)

    def _check_open(self) -> None:
        if self._closed or self._stopping:
            raise StatusError(Code.UNAVAILABLE, "the coordinator is shutting down")

    @staticmethod
    def _require_role(principal: Principal, role: str) -> None:
        if principal.role != role:
            raise StatusError(
                Code.PERMISSION_DENIED, f"{principal.role} {principal.name!r} is not a {role}"
            )

    def _require_self(self, principal: Principal, agency: str) -> None:
        self._require_role(principal, "agency")
        if agency != principal.name:
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"authenticated as {principal.name!r}, the request names agency {agency!r}; "
                "an agency can only act as itself",
            )

    def register(self, principal: Principal, req: fpb.RegisterRequest) -> fpb.RegisterResponse:
        """Record the datasets an agency offers (replacing an earlier registration)."""
        self._require_self(principal, req.agency)
        if req.agency not in self.federation.agencies:
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"agency {req.agency!r} holds no share of this federation's key "
                "(it is not listed in federation-public.json)",
            )
        declared: dict[str, FeatureSpec] = {}
        for i, ds in enumerate(req.datasets):
            if not ds.name or ds.name != ds.name.strip():
                raise StatusError(
                    Code.INVALID_ARGUMENT, f"datasets[{i}]: name must be non-empty, no blanks"
                )
            if ds.name in declared:
                raise StatusError(Code.INVALID_ARGUMENT, f"dataset {ds.name!r} declared twice")
            try:
                declared[ds.name] = messages.feature_spec_from_json(ds.feature_spec_json)
            except messages.MessageError as exc:
                raise StatusError(Code.INVALID_ARGUMENT, f"dataset {ds.name!r}: {exc}") from exc
        text = json.dumps(
            {n: messages.feature_spec_to_json(s) for n, s in declared.items()}, sort_keys=True
        )
        with self._lock:
            self._check_open()
            self.store.register_agency(req.agency, text, time.time())
            self._datasets[req.agency] = declared
            self._touch(req.agency)
            for rt in list(self._jobs.values()):  # a restarted agent gets its assignments again
                for given in (*rt.handed.values(), *rt.decrypt_handed.values()):
                    given.discard(req.agency)
            self._changed.notify_all()
        log.info(
            "agency %s registered (software %r, datasets %s, steps %s)",
            req.agency,
            req.software_version,
            sorted(declared),
            list(req.task_kinds),
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
            self._touch(req.agency)
            self.store.touch_agency(req.agency, self._last_seen[req.agency])
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
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                self._check_open()
                self._touch(req.agency)
                now = time.monotonic()
                assignment = self._work_for(req.agency, now)
                if assignment is not None:
                    return fpb.FetchWorkResponse(assignment=assignment)
                remaining = deadline - now
                if remaining <= 0 or not is_active():
                    retry = 0 if wait > 0 else min(self._heartbeat_ms(), 1000)
                    return fpb.FetchWorkResponse(retry_after_ms=retry)
                self._changed.wait(timeout=min(remaining, 1.0))

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
            if action is not None:
                assignment = messages.task_to_assignment(
                    rnd.task, action, summands_min=int(rt.spec["min_agencies"])
                )
                assignment.dataset = rt.spec["dataset"]
                log.debug("job %s round %d: %s → %s", rt.id, r, fpb.Action.Name(action), agency)
                return assignment
        return None

    def _running_job(self, job_id: str) -> _Runtime:
        """The job an agent refers to; stale or unknown references are FAILED_PRECONDITION."""
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
    def _require_participant(rt: _Runtime, agency: str) -> None:
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
        if header.total_bytes > self.config.max_upload_bytes:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"payload of {header.total_bytes} bytes exceeds the limit of "
                f"{self.config.max_upload_bytes}",
            )
        with self._lock:  # refuse stale uploads before reading a possibly large stream
            self._check_open()
            self._touch(agency)
            rt = self._running_job(header.job_id)
            self._require_participant(rt, agency)
            if self._stored(rt, kind, header.round, agency) is None:
                self._require_open_round(rt, kind, header.round, agency)
        try:
            _, payload = messages.assemble(
                itertools.chain([first], stream), max_bytes=self.config.max_upload_bytes
            )
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        with self._lock:
            self._check_open()
            rt = self._running_job(header.job_id)
            previous = self._stored(rt, kind, header.round, agency)
            if previous is not None:
                if previous == payload:
                    return fpb.UploadResponse(stored=False)
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
                accepted = partial(_holds, rnd.contributions, agency, payload)
            else:
                call = partial(driver.submit_partial, agency, payload)
                accepted = partial(_holds, rnd.partials, agency, payload)
            try:
                self._apply(
                    rt,
                    kind,
                    call,
                    agency=agency,
                    round_=header.round,
                    payload=payload,
                    accepted=accepted,
                )
            except RejectedContribution as exc:
                asked = rt.asked.get(header.round)
                if kind == "partial" and asked is not None and agency in asked:
                    asked[agency] = -math.inf  # ask someone else at once
                raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
            except ProtocolError as exc:
                raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
            self.metrics.bytes_received.labels(kind=kind).inc(len(payload))
            self._advance_quietly(rt)  # the upload is stored: acknowledge it whatever follows
            return fpb.UploadResponse(stored=True)

    @staticmethod
    def _stored(rt: _Runtime, kind: str, round_: int, agency: str) -> bytes | None:
        """What this agency already uploaded of this kind for this round, if anything."""
        assert rt.driver is not None
        rounds = rt.driver.rounds
        if round_ >= len(rounds):
            return None
        rnd = rounds[round_]
        return (rnd.contributions if kind == "contribution" else rnd.partials).get(agency)

    @staticmethod
    def _require_open_round(rt: _Runtime, kind: str, round_: int, agency: str) -> AggregationRound:
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

    def decline(self, principal: Principal, req: fpb.DeclineRequest) -> fpb.DeclineResponse:
        """The agency leaves the job (it will not run the assignment)."""
        self._require_self(principal, req.agency)
        reason = _reason(req.reason or "declined without a reason")
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
                reason,
            )
            self._apply(
                rt,
                "drop",
                partial(driver.drop, req.agency),
                agency=req.agency,
                round_=None if driver.task is None else driver.task.round,
                payload=f"declined round {req.round}: {reason}".encode(),
            )
            self._advance_quietly(rt)
        return fpb.DeclineResponse()

    # -- data scientists ------------------------------------------------------------------
    def submit_job(self, principal: Principal, req: fpb.JobSpec) -> fpb.JobStatus:
        """Validate a job, store it and open its first round."""
        self._require_role(principal, "scientist")
        if req.job_type not in JOB_TYPES:
            raise StatusError(
                Code.INVALID_ARGUMENT,
                f"unknown job type {req.job_type!r}; known types: {sorted(JOB_TYPES)}",
            )
        try:
            params = messages.parse_json_object(req.params_json, "params_json")
            privacy = (
                messages.parse_json_object(req.privacy_json, "privacy_json")
                if req.privacy_json
                else None
            )
            job_from_spec(req.job_type, params, privacy)  # validates before anything else
        except ValueError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        if not req.dataset:
            raise StatusError(Code.INVALID_ARGUMENT, "dataset is required")
        if len(set(req.agencies)) != len(req.agencies):
            repeated = sorted({a for a in req.agencies if list(req.agencies).count(a) > 1})
            raise StatusError(Code.INVALID_ARGUMENT, f"agencies listed twice: {repeated}")
        with self._lock:
            self._check_open()
            spec = self._job_spec(req, params, privacy, principal)
            job_id = uuid.uuid4().hex[:12]
            rt = _Runtime(job_id, spec, "running", time.time())
            try:
                self._build(rt)
            except JobFailed as exc:
                raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
            except ValueError as exc:
                raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
            row = self.store.create_job(job_id, json.dumps(spec, sort_keys=True))
            rt.created = row.created
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

    def _job_spec(
        self,
        req: fpb.JobSpec,
        params: dict[str, Any],
        privacy: dict[str, Any] | None,
        principal: Principal,
    ) -> dict[str, Any]:
        """Resolve participants and check they can run the job together (lock held)."""
        order = list(self.federation.agencies)
        holders = [a for a in order if req.dataset in self._datasets.get(a, {})]
        if not holders:
            raise StatusError(
                Code.NOT_FOUND, f"no registered agency offers dataset {req.dataset!r}"
            )
        unknown = [a for a in req.agencies if a not in self.federation.agencies]
        if unknown:
            raise StatusError(
                Code.NOT_FOUND, f"unknown agencies {unknown}; the federation has {order}"
            )
        participants = list(req.agencies) or holders
        lacking = [a for a in participants if a not in holders]
        if lacking:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agencies {lacking} have not registered dataset {req.dataset!r} "
                f"(it is offered by {holders})",
            )
        t = self.federation.threshold
        holder = self.federation.key_holder
        if holder is not None and holder not in participants:
            raise StatusError(
                Code.FAILED_PRECONDITION,
                f"agency {holder!r} holds the federation's decryption key and must take part "
                f"in every job; the job names {participants}",
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
        return {
            "job_type": req.job_type,
            "params": params,
            "privacy": privacy,
            "dataset": req.dataset,
            "evaluate_dataset": req.evaluate_dataset,
            "agencies": participants,
            "min_agencies": min_agencies,
            "share_index_of": self.federation.share_index_of(participants),
            "feature_spec": messages.feature_spec_to_json(spec),
            "key_id": self.federation.key_id.hex(),
            "submitted_by": principal.name,
        }

    def _lookup(self, job_id: str) -> _Runtime:
        """A running or recently finished job, or one loaded from the store; else NOT_FOUND."""
        rt = self._jobs.get(job_id) or self._recent.get(job_id)
        if rt is not None:
            return rt
        row = self.store.job(job_id) if job_id else None
        if row is None:
            raise StatusError(Code.NOT_FOUND, f"no job {job_id!r}")
        rt = _Runtime(
            row.id,
            json.loads(row.spec),
            row.state,
            row.created,
            row.failure,
            row.result,
            row.rounds_done,
        )
        if row.result:
            history = json.loads(row.result).get("history", [])
            rt.records = [json.dumps(r, sort_keys=True) for r in history]
        return rt

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
            status = rt.status()
        yield fpb.JobEvent(status=status)
        sent = 0
        while True:
            with self._lock:
                while True:
                    rt = self._jobs.get(ref.job_id) or self._recent.get(ref.job_id) or rt
                    new = rt.records[sent:]
                    done = rt.state in TERMINAL_STATES
                    if new or done or self._stopping or not is_active():
                        break
                    self._changed.wait(timeout=1.0)
                status = rt.status()
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
        self._require_role(principal, "scientist")
        with self._lock:
            now = time.monotonic()
            names = list(self.federation.agencies)
            names += sorted(a for a in self._datasets if a not in self.federation.agencies)
            out = fpb.ListAgenciesResponse()
            for name in names:
                info = out.agencies.add(
                    name=name,
                    connected=name in self._contact and self._alive(name, now),
                    last_seen_unix=self._last_seen.get(name, 0.0),
                )
                for ds, spec in sorted(self._datasets.get(name, {}).items()):
                    info.datasets.add(
                        name=ds, feature_spec_json=messages.feature_spec_to_json(spec)
                    )
            return out

    def cancel(self, principal: Principal, ref: fpb.JobRef) -> fpb.JobStatus:
        """Stop a running job for good."""
        self._require_role(principal, "scientist")
        with self._lock:
            self._check_open()
            rt = self._lookup(ref.job_id)
            if rt.state == "cancelled":
                return rt.status()
            if not rt.running:
                raise StatusError(
                    Code.FAILED_PRECONDITION, f"job {rt.id} already {rt.state}; nothing to cancel"
                )
            reason = f"cancelled by {principal.name}"
            self.store.append_event(
                rt.id,
                "cancel",
                payload=reason.encode(),
                update=JobUpdate("cancelled", failure=reason, rounds_done=rt.rounds_done),
            )
            self._terminate(rt, "cancelled", failure=reason)
            return rt.status()


# -- gRPC plumbing ----------------------------------------------------------------------------
def _unary(context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
    """Run a handler body; StatusError and unexpected errors become the call's status."""
    try:
        return fn()
    except StatusError as exc:
        error = exc
    except grpc.RpcError as exc:  # the client's request stream broke (cancelled, too large)
        error = StatusError(Code.CANCELLED, f"the request stream ended abnormally: {exc}")
    except Exception:
        log.exception("unexpected error in a coordinator call")
        error = StatusError(Code.INTERNAL, "internal coordinator error; see its log")
    context.abort(error.code, error.message)
    raise AssertionError("unreachable")  # context.abort raises


def _streaming(context: grpc.ServicerContext, gen: Iterator[T]) -> Iterator[T]:
    """Like :func:`_unary` for server-streaming handlers."""
    try:
        yield from gen
        return
    except StatusError as exc:
        error = exc
    except Exception:
        log.exception("unexpected error in a coordinator stream")
        error = StatusError(Code.INTERNAL, "internal coordinator error; see its log")
    context.abort(error.code, error.message)


class _Servicers(fpb_grpc.AgentServiceServicer, fpb_grpc.JobServiceServicer):
    """Both services over one :class:`Coordinator` (each method is a thin wrapper)."""

    def __init__(self, core: Coordinator, auth: Authenticator) -> None:
        self.core = core
        self.auth = auth

    def _who(self, context: grpc.ServicerContext) -> Principal:
        principal = self.auth.lookup(context.invocation_metadata())
        if principal is None:
            raise StatusError(Code.UNAUTHENTICATED, "missing or unknown bearer token")
        return principal

    # AgentService
    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.register(self._who(context), request))

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.heartbeat(self._who(context), request))

    def FetchWork(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(
            context,
            lambda: self.core.fetch_work(self._who(context), request, context.is_active),
        )

    def FetchAggregate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def gen() -> Iterator[fpb.Chunk]:
            principal = self._who(context)
            payload = self.core.aggregate(principal, request)
            yield from messages.chunks(
                payload,
                job_id=request.job_id,
                round=request.round,
                agency=principal.name,
                kind=fpb.PAYLOAD_KIND_AGGREGATE,
            )

        return _streaming(context, gen())

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.upload(self._who(context), iter(request_iterator)))

    def Decline(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.decline(self._who(context), request))

    # JobService
    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.submit_job(self._who(context), request))

    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def gen() -> Iterator[fpb.JobEvent]:
            yield from self.core.watch(self._who(context), request, context.is_active)

        return _streaming(context, gen())

    def GetResult(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.result(self._who(context), request))

    def ListAgencies(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.list_agencies(self._who(context)))

    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.cancel(self._who(context), request))


class _Malformed:
    """Stands for a request whose bytes are not a valid protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Answer undecodable requests with ``INVALID_ARGUMENT`` (gRPC itself says ``INTERNAL``)."""

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Wrap the handler's deserializer and behaviour."""
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = handler_call_details.method

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as exc:
                return _Malformed(exc)

        message = f"the request to {method} is not a valid protobuf message"
        kwargs = {
            "request_deserializer": safe_decode,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming:
            behavior = handler.stream_unary or handler.stream_stream

            def checked(requests: Iterator[Any]) -> Iterator[Any]:
                for r in requests:
                    if isinstance(r, _Malformed):
                        raise StatusError(Code.INVALID_ARGUMENT, message)
                    yield r

            def stream_behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return behavior(checked(requests), context)

            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(stream_behavior, **kwargs)
            return grpc.stream_unary_rpc_method_handler(stream_behavior, **kwargs)
        behavior = handler.unary_unary or handler.unary_stream

        def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                context.abort(Code.INVALID_ARGUMENT, message)
            return behavior(request, context)

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_behavior, **kwargs)
        return grpc.unary_unary_rpc_method_handler(unary_behavior, **kwargs)


class CoordinatorServer:
    """A running coordinator: gRPC server, ticker thread, metrics endpoint, store.

    Build it with :func:`serve`. Attributes: ``port`` (the bound port), ``metrics_port``
    (the bound metrics port, 0 if off), ``coordinator`` (the :class:`Coordinator`),
    ``store`` and ``metrics``.
    """

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        host, port = check_listen_address(config.listen, insecure=config.insecure)
        if config.insecure and (config.tls_cert or config.tls_key):
            raise AuthError("give either --insecure or --tls-cert/--tls-key, not both")
        credentials = None
        if not config.insecure:
            if not (config.tls_cert and config.tls_key):
                raise AuthError(
                    "TLS is required: give --tls-cert and --tls-key (or --insecure on a "
                    "loopback address for local tests)"
                )
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        self.federation = load_federation(config.federation)
        self.auth = Authenticator(load_credentials(config.credentials))
        for p in self.auth.principals:
            if p.role == "agency" and p.name not in self.federation.agencies:
                log.warning("credentials name agency %r, which holds no key share", p.name)
        self.metrics = CoordinatorMetrics()
        self.store = Store(config.db)
        try:
            self.coordinator = Coordinator(self.federation, self.store, config, self.metrics)
            self.coordinator.recover()
            self.health = health.HealthServicer()
            interceptors = [  # authentication first: strangers learn nothing about requests
                AuthInterceptor(self.auth, {AGENT_SERVICE: "agency", JOB_SERVICE: "scientist"}),
                DecodeInterceptor(),
            ]
            self._server = grpc.server(
                ThreadPoolExecutor(
                    max_workers=config.max_workers, thread_name_prefix="fedcity-rpc"
                ),
                interceptors=interceptors,
                options=[
                    ("grpc.max_receive_message_length", messages.MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", messages.MAX_MESSAGE_BYTES),
                    ("grpc.so_reuseport", 0),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ],
            )
            servicers = _Servicers(self.coordinator, self.auth)
            fpb_grpc.add_AgentServiceServicer_to_server(servicers, self._server)  # type: ignore[no-untyped-call]
            fpb_grpc.add_JobServiceServicer_to_server(servicers, self._server)  # type: ignore[no-untyped-call]
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                if credentials is None:
                    bound = self._server.add_insecure_port(address)
                else:
                    bound = self._server.add_secure_port(address, credentials)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {config.listen}: {exc}") from exc
            if not bound:
                raise OSError(f"cannot listen on {config.listen}")
        except BaseException:
            self.store.close()
            raise
        self.port: int = bound
        self.metrics_port = 0
        self._httpd: Any = None
        self._ticker = threading.Thread(target=self._tick_loop, name="fedcity-ticker", daemon=True)
        self._stop_ticker = threading.Event()
        self._stopped = False

    def start(self) -> CoordinatorServer:
        """Start serving (gRPC, ticker, metrics); on failure everything is stopped again."""
        try:
            if self.config.metrics_port:
                self._httpd, _ = start_http_server(
                    self.config.metrics_port,
                    addr=self.config.metrics_host,
                    registry=self.metrics.registry,
                )
                self.metrics_port = int(self._httpd.server_port)
            self._server.start()
            self._ticker.start()
        except BaseException:
            self.stop(grace=0)
            raise
        for service in ("", AGENT_SERVICE, JOB_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "coordinator listening on %s (port %d, %s), federation key %s",
            self.config.listen,
            self.port,
            "plaintext" if self.config.insecure else "TLS",
            self.federation.key_id.hex(),
        )
        return self

    def _tick_loop(self) -> None:
        while not self._stop_ticker.wait(self.config.tick_interval):
            try:
                self.coordinator.tick()
            except Exception:
                log.exception("coordinator tick failed")

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop gracefully: refuse new calls, end long polls, wait ``grace`` s, close the store."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.coordinator.stop()
        self._server.stop(grace).wait()
        self._stop_ticker.set()
        if self._ticker.is_alive():
            self._ticker.join()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        self.coordinator.close()
        log.info("coordinator stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it stopped."""
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: CoordinatorConfig) -> CoordinatorServer:
    """Build and start a coordinator.

    Raises
    ------
    AuthError, CeremonyError, StoreError, OSError
        Bad TLS/credentials/listen address, federation file, database, or a busy port.
    """
    return CoordinatorServer(config).start()


# -- command line -----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedcity coordinator serve",
        description="Run the fedcity coordinator (gRPC AgentService and JobService).",
    )
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (default %(default)s)")
    p.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    p.add_argument("--federation", required=True, help="federation-public.json")
    p.add_argument("--credentials", required=True, help="credentials.json (token hashes)")
    p.add_argument("--tls-cert", help="PEM server certificate")
    p.add_argument("--tls-key", help="PEM server private key")
    p.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    p.add_argument("--insecure", action="store_true", help="plaintext; only on a loopback address")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus bind address")
    p.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="S")
    p.add_argument("--liveness-timeout", type=float, default=None, metavar="S")
    p.add_argument("--collect-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--decrypt-timeout", type=float, default=60.0, metavar="S")
    p.add_argument("--max-workers", type=int, default=64)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``fedcity coordinator serve --listen ... --db ... --federation ... --credentials ...``.

    ``argv`` may start with ``coordinator`` and/or ``serve`` (both are skipped). Serves until
    SIGTERM or SIGINT, then stops gracefully. Returns the exit status (2: bad configuration).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    for word in ("coordinator", "serve"):
        if args_list and args_list[0] == word:
            args_list.pop(0)
    args = _parser().parse_args(args_list)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    else:
        logging.getLogger("fedcity").setLevel(args.log_level)
    try:
        config = CoordinatorConfig(
            listen=args.listen,
            db=args.db,
            federation=args.federation,
            credentials=args.credentials,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            insecure=args.insecure,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            heartbeat_interval=args.heartbeat_interval,
            liveness_timeout=args.liveness_timeout,
            collect_timeout=args.collect_timeout,
            decrypt_timeout=args.decrypt_timeout,
            max_workers=args.max_workers,
        )
        server = serve(config)
    except (AuthError, CeremonyError, StoreError, OSError, ValueError) as exc:
        print(f"fedcity coordinator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
