"""The coordinator's state and rules, independent of gRPC plumbing.

Every public method of :class:`Coordinator` either returns a response message or raises
:class:`~fedcity.net.coordinator.config.StatusError`. Time comes from an injected progress
clock (:mod:`fedcity.net.coordinator.liveness`), so timeouts are tested without sleeping.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

from fedcity.core.errors import JobFailed, ProtocolError, RejectedContribution
from fedcity.core.integrity import Evidence, SignedContribution, withholds_payloads
from fedcity.core.rounds import AggregationRound, RoundPhase
from fedcity.crypto import BLINDING_KEY_BYTES
from fedcity.data.dataset import FeatureSpec
from fedcity.learn.driver import Chain
from fedcity.learn.evaluation import FederatedEvaluation
from fedcity.learn.jobs import JOB_TYPES, job_from_spec, result_to_json
from fedcity.net import integrity, messages
from fedcity.net.auth import Principal
from fedcity.net.ceremony import Federation
from fedcity.net.coordinator.config import (
    RECONNECT_GRACE,
    Code,
    CoordinatorConfig,
    CoordinatorMetrics,
    StatusError,
)
from fedcity.net.coordinator.liveness import Liveness, ProgressClock
from fedcity.net.coordinator.runtime import (
    EVAL_KIND,
    JobRuntime,
    build,
    holds,
    record_json,
    replay,
)
from fedcity.net.store import TERMINAL_STATES, JobUpdate, Store, StoreError
from fedcity.v1 import federation_pb2 as fpb

__all__ = ["Coordinator"]

log = logging.getLogger("fedcity.net.coordinator")

T = TypeVar("T")

STORAGE_ERRORS = (sqlite3.Error, OSError, StoreError)
"""What a failing store raises (disk full, I/O error, read-only file system, ...)."""

_MAX_REASON = 2000
_RECENT_JOBS = 256
"""Finished jobs kept in memory for late watchers (older ones are read from the store)."""


def _reason(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "…"


def _checked_job_id(job_id: str) -> str:
    """A client's job id, or INVALID_ARGUMENT without echoing it whole."""
    try:
        return messages.check_job_id(job_id)
    except messages.MessageError as exc:
        raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc


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
    clock : callable, optional
        The progress clock (default: a :class:`ProgressClock` over :func:`time.monotonic`
        with ``config.stall_threshold``); tests pass a manual clock.
    """

    def __init__(
        self,
        federation: Federation,
        store: Store,
        config: CoordinatorConfig,
        metrics: CoordinatorMetrics | None = None,
        *,
        clock: Callable[[], float] | None = None,
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
        self._jobs: dict[str, JobRuntime] = {}
        """Running jobs (and, briefly, jobs that just ended; see :meth:`_terminate`)."""
        self._recent: OrderedDict[str, JobRuntime] = OrderedDict()
        self._datasets: dict[str, dict[str, FeatureSpec]] = {}
        stall = float(config.stall_threshold or 1.0)
        self.clock: Callable[[], float] = clock or ProgressClock(stall)
        """The progress clock every deadline is judged on (stalls left out)."""
        self.liveness = Liveness(config.liveness, RECONNECT_GRACE, self.clock)
        self._stalls_seen = getattr(self.clock, "stalls", 0)
        self._storage_fault: str | None = None
        self._fault_since = 0.0
        self._stopping = False
        self._closed = False
        self.metrics.connected_agencies.set_function(lambda: self.liveness.connected(self.clock()))
        self.metrics.running_jobs.set_function(
            lambda: sum(1 for rt in list(self._jobs.values()) if rt.running)
        )

    # -- lifecycle ------------------------------------------------------------------------
    def recover(self) -> None:
        """Load registrations and rebuild every running job by replaying its events."""
        with self._lock:
            for row in self.store.agencies():
                try:  # today's limits: an older, oversized registration waits for a new one
                    self._datasets[row.name] = messages.registration_from_json(row.datasets)
                except (ValueError, AttributeError) as exc:
                    log.error(
                        "ignoring stored registration of %s (the agency must register again): %s",
                        messages.shown(row.name),
                        exc,
                    )
                    continue
                if row.last_seen is not None:
                    self.liveness.last_seen[row.name] = row.last_seen
            for job_row in self.store.jobs(["running"]):
                spec = json.loads(job_row.spec)
                rt = JobRuntime(job_row.id, spec, "running", job_row.created)
                try:
                    build(rt, self.federation, self.scheme)
                    replay(rt, self.store.events(rt.id), self.clock())
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
                self._advance(rt, self.clock())

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

    # -- applying events live -------------------------------------------------------------
    def _apply(
        self,
        rt: JobRuntime,
        kind: str,
        call: Callable[[], Any],
        *,
        agency: str | None = None,
        round_: int | None = None,
        payload: bytes | None = None,
        accepted: Callable[[], bool] | None = None,
        signature: bytes | None = None,
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
                rt.id,
                kind,
                agency=agency,
                round=round_,
                payload=payload,
                update=update,
                signature=signature,
            )
        except STORAGE_ERRORS as exc:
            log.error("job %s: storing a %s event failed (%s); reloading the job", rt.id, kind, exc)
            self._reload(rt)
            raise self._pause(f"the {kind}", exc) from exc
        if kind == "contribution" and signature and agency is not None and round_ is not None:
            rt.signatures.setdefault(round_, {})[agency] = signature
        self._after_change(rt, before)
        if state is not None:
            self._terminate(rt, state, failure=failure, result=result)
        return out

    def _after_change(self, rt: JobRuntime, before: int) -> None:
        """Metrics, records and round bookkeeping after the driver moved."""
        driver = rt.driver
        assert driver is not None
        now = self.clock()
        for record in driver.records[before:]:
            rt.records.append(record_json(record))
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

    def _reload(self, rt: JobRuntime) -> None:
        """Rebuild a job from the store after a failed write (memory and disk agree again)."""
        fresh = JobRuntime(rt.id, rt.spec, "running", rt.created)
        try:
            build(fresh, self.federation, self.scheme)
            replay(fresh, self.store.events(rt.id), self.clock())
        except Exception:
            log.exception("job %s cannot be reloaded; it stays paused until a restart", rt.id)
            rt.driver = None
            rt.failure = "paused: the coordinator's storage failed (restart to resume)"
            return
        rt.driver = None  # whoever still holds the stale runtime sees it stopped
        self._jobs[rt.id] = fresh

    def _terminate(
        self, rt: JobRuntime, state: str, *, failure: str | None = None, result: str | None = None
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

    def _fail(self, rt: JobRuntime, reason: str) -> None:
        """Mark a job failed outside an event (e.g. decryption timed out)."""
        try:
            self.store.update_job(
                rt.id, JobUpdate("failed", failure=reason, rounds_done=rt.rounds_done)
            )
        except STORAGE_ERRORS as exc:
            log.error("job %s: storing its failure failed: %s", rt.id, exc)
            self._pause("a job's failure", exc)
        self._terminate(rt, "failed", failure=reason)

    def _result_json(self, rt: JobRuntime) -> str:
        driver, job = rt.driver, rt.job
        assert driver is not None and rt.training is not None and rt.feature_spec is not None
        metrics = None
        if isinstance(rt.algorithm, Chain) and rt.algorithm is not rt.training:
            evaluation = rt.algorithm.second
            assert isinstance(evaluation, FederatedEvaluation)
            metrics = evaluation.metrics_
        history = [r for r in driver.records if r.kind != EVAL_KIND]
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
    def _advance(self, rt: JobRuntime, now: float) -> None:
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
                    record = integrity.close_record(rnd.contributions)
                    self._apply(rt, "close", driver.close_collection, round_=r, payload=record)
                    continue
                return
            if rnd.phase is RoundPhase.DECRYPTING:
                self._ask_decryptors(rt, rnd, now)
                return
            return

    def _advance_quietly(self, rt: JobRuntime) -> None:
        """:meth:`_advance` after an input was stored; a failure is left to the next tick."""
        try:
            self._advance(rt, self.clock())
        except StatusError as exc:
            log.warning("job %s: could not advance now (%s); the ticker retries", rt.id, exc)

    def _ask_decryptors(self, rt: JobRuntime, rnd: AggregationRound, now: float) -> list[str]:
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
        now = self.clock() if now is None else now
        with self._lock:
            if self._closed:
                return
            if self._storage_fault is not None and not self._try_resume(now):
                return  # paused: nobody is dropped and no deadline passes while storage fails
            stalls = getattr(self.clock, "stalls", 0)
            if stalls != self._stalls_seen:
                # the coordinator itself was stalled: agencies' calls queued meanwhile, so
                # count every agency as heard from now (the stall was the judge's, not theirs)
                self._stalls_seen = stalls
                log.warning(
                    "the coordinator was stalled (%.1f s left out of its deadlines so far); "
                    "every agency counts as heard from now",
                    getattr(self.clock, "skipped", 0.0),
                )
                self.liveness.forgive(now)
            for rt in [rt for rt in self._jobs.values() if rt.running]:
                try:
                    self._tick_job(rt, now)
                except StatusError as exc:  # storage trouble: the other jobs still move
                    log.warning("job %s: tick failed: %s", rt.id, exc)

    # -- storage faults -------------------------------------------------------------------
    def _write(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store write; a storage error pauses the coordinator and answers UNAVAILABLE."""
        try:
            return fn(*args, **kwargs)
        except STORAGE_ERRORS as exc:
            raise self._pause(what, exc) from exc

    def _pause(self, what: str, exc: BaseException) -> StatusError:
        """Enter (or stay in) the paused state after a failed write; the error to answer."""
        reason = f"storing {what} failed: {type(exc).__name__}: {exc}"
        if self._storage_fault is None:
            self._storage_fault = reason
            self._fault_since = self.clock()
            self.metrics.storage_paused.set(1)
            log.error(
                "storage failed (%s): every job is paused, no agency is dropped and no deadline "
                "runs until a write succeeds again; free space or fix %s",
                reason,
                self.store.path,
            )
        return StatusError(
            Code.UNAVAILABLE,
            f"the coordinator could not store {what} (its storage failed: {exc}); jobs are "
            "paused until it works again; retry later",
        )

    def _check_storage(self) -> None:
        if self._storage_fault is not None:
            raise StatusError(
                Code.UNAVAILABLE,
                f"the coordinator's storage is failing ({self._storage_fault}); jobs are paused "
                "and new ones wait until it works again; retry later",
            )

    def _try_resume(self, now: float) -> bool:
        """Probe the store; after a successful write, move every deadline past the pause."""
        try:
            self.store.probe()
        except STORAGE_ERRORS:
            return False
        paused = max(now - self._fault_since, 0.0)
        log.warning(
            "storage works again after %.1f s (%s); jobs resume, deadlines moved by the pause",
            paused,
            self._storage_fault,
        )
        self._storage_fault = None
        self.metrics.storage_paused.set(0)
        self.liveness.forgive(now)
        for rt in self._jobs.values():
            for r in rt.opened:
                rt.opened[r] += paused
            for asked in rt.asked.values():
                for agency in asked:
                    asked[agency] += paused
        self._changed.notify_all()
        return True

    def _tick_job(self, rt: JobRuntime, now: float) -> None:
        """One job's timeouts: drop silent agencies, then take every step it can."""
        driver = rt.driver
        assert driver is not None
        for agency in driver.active:
            if not rt.running:
                return
            if self._alive(agency, now):
                continue
            silent = self.liveness.silent_for(agency, now)
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
        self.liveness.touch(agency)

    def _alive(self, agency: str, now: float) -> bool:
        return self.liveness.alive(agency, now)

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
                f"authenticated as {principal.name!r}, the request names agency "
                f"{messages.shown(agency)}; "
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
        except messages.MessageError as exc:
            raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
        text = json.dumps(
            {n: messages.feature_spec_to_json(s) for n, s in declared.items()}, sort_keys=True
        )
        with self._lock:
            self._check_open()
            self._touch(req.agency)
            self._write(
                "the registration", self.store.register_agency, req.agency, text, time.time()
            )
            self._datasets[req.agency] = declared
            for rt in list(self._jobs.values()):  # a restarted agent gets its assignments again
                for given in (*rt.handed.values(), *rt.decrypt_handed.values()):
                    given.discard(req.agency)
            self._changed.notify_all()
        log.info(
            "agency %s registered (software %r, datasets %s, steps %s)",
            req.agency,
            req.software_version,
            sorted(declared),
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
            while True:
                self._check_open()
                self._touch(req.agency)
                now = self.clock()
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
            return integrity.evidence_to_bytes(evidence)

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
                limit = self.scheme.payload_limit(kind, rnd.task.spec, rnd.task.request.length)
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
                accepted = partial(holds, rnd.contributions, agency, payload)
            else:
                # verified above against this very round's aggregate (a round's aggregate
                # never changes once it is decrypting); not again under the lock
                call = partial(driver.submit_partial, agency, payload, verify=not verified)
                accepted = partial(holds, rnd.partials, agency, payload)
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
            self._advance_quietly(rt)  # the upload is stored: acknowledge it whatever follows
            return fpb.UploadResponse(stored=True)

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
            aggregate = driver.rounds[round_].aggregate
        try:
            self.scheme.open_partial(payload, aggregate, verify=True)
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
                messages.shown(reason, 200),
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
                f"unknown job type {messages.shown(req.job_type)}; known types: "
                f"{sorted(JOB_TYPES)}",
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
            spec = self._job_spec(req, params, privacy, principal)
            job_id = uuid.uuid4().hex[:12]
            rt = JobRuntime(job_id, spec, "running", time.time())
            try:
                build(rt, self.federation, self.scheme)
            except JobFailed as exc:
                raise StatusError(Code.FAILED_PRECONDITION, str(exc)) from exc
            except ValueError as exc:
                raise StatusError(Code.INVALID_ARGUMENT, str(exc)) from exc
            self._check_storage()
            row = self._write(
                "the job", self.store.create_job, job_id, json.dumps(spec, sort_keys=True)
            )
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
        rt = JobRuntime(
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
            self._require_owner(principal, rt)
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
        self._require_role(principal, "scientist")
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
                size = sum(d.ByteSize() for d in offered)
                if size > min(budget, 2 * messages.MAX_REGISTRATION_BYTES):
                    log.warning(
                        "listing agency %s without its %d datasets (%d bytes, %d left for the "
                        "listing); it must register again within the limits",
                        messages.shown(name),
                        len(offered),
                        size,
                        budget,
                    )
                    continue
                budget -= size
                info.datasets.extend(offered)
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
