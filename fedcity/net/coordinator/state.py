"""The coordinator's state: jobs, events, progress, liveness and storage faults.

:class:`CoordinatorState` holds everything the coordinator knows and every rule that moves a
job forward (storing accepted events, closing rounds, asking decryptors, dropping silent
agencies, pausing on storage failure). The calls agencies and data scientists make are
layered on it in :mod:`.agencies` and :mod:`.scientists`; :class:`.core.Coordinator` combines
them. Time comes from an injected progress clock (:mod:`.liveness`), so timeouts are tested
without sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from fedcity.core.aggregation import PaillierScheme
from fedcity.core.errors import JobFailed, ProtocolError
from fedcity.core.rounds import AggregationRound, RoundPhase
from fedcity.crypto import BLINDING_KEY_BYTES
from fedcity.crypto.signing import SigningKey
from fedcity.data.dataset import FeatureSpec
from fedcity.governance.audit import COORDINATOR, Anchor, AuditError
from fedcity.governance.auditlog import AuditLog, coordinator_log_path
from fedcity.learn.driver import Chain, JobDriver
from fedcity.learn.evaluation import FederatedEvaluation
from fedcity.learn.jobs import result_to_json
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
    QUERY_JOB_TYPE,
    JobRuntime,
    build,
    record_json,
    replay,
)
from fedcity.net.store import JobRow, JobUpdate, Store, StoreError

__all__ = ["STORAGE_ERRORS", "CoordinatorState"]

log = logging.getLogger("fedcity.net.coordinator")

_SPARE_DECRYPTORS = 1
"""Share holders kept out of the decryption groups to replace a failing decryptor."""

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


class CoordinatorState:
    """The coordinator's state and the rules that move jobs, independent of gRPC plumbing.

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
        self.audit: AuditLog | None = AuditLog(  # its key is a store secret, like the others
            coordinator_log_path(store.path),
            COORDINATOR,
            SigningKey(store.secret("audit-signing-key", 32)),
        )
        """The coordinator's signed, hash-chained audit log (:mod:`fedcity.governance`)."""
        self._audit_held: list[tuple[str, dict[str, Any]]] | None = None
        """Job-end records held back while an upload that ended the job is recorded."""
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
        self._tables: dict[str, dict[str, dict[str, str]]] = {}
        self._kinds: dict[str, frozenset[str]] = {}
        self._min_difference: dict[str, int] = {}
        """Agency → its policy's min_set_difference (differencing), as registered."""
        self._polls: dict[str, int] = {}  # work long polls in progress, per agency
        """Agency → the task kinds its policy allows, as registered."""
        """Agency → query table → column types, as registered."""
        self.clock: Callable[[], float] = clock or ProgressClock(config.stall)
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
        """Load registrations and rebuild every running job by replaying its events.

        Refuses (StoreError) a database that belongs to another federation's key.
        """
        self.store.bind_federation(self.federation.key_id.hex(), "--federation")
        with self._lock:
            for row in self.store.agencies():
                try:  # today's limits: an older, oversized registration waits for a new one
                    declared, tables, kinds = messages.registration_from_json(row.datasets)
                    self._datasets[row.name], self._tables[row.name] = declared, tables
                    if kinds is not None:
                        self._kinds[row.name] = frozenset(kinds)
                    self._min_difference[row.name] = messages.stored_min_set_difference(
                        row.datasets
                    )
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
                    build(rt, self.federation, self.scheme, audit_seconds=self.config.audit_timeout)
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
            if self.audit is not None:
                self.audit.close()

    @contextmanager
    def _audit_upload(self) -> Iterator[None]:
        """Hold job-end records until the upload that ended the job is recorded before them."""
        self._audit_held = []
        try:
            yield
        finally:
            held, self._audit_held = self._audit_held, None
            for type_, fields in held:
                self._audit(type_, **fields)

    def _audit(self, type_: str, **fields: Any) -> Anchor | None:
        """Append to the audit log; the signed head after it, or None if it failed (logged)."""
        if self.audit is None:
            return None
        if type_ == "result" and self._audit_held is not None:
            self._audit_held.append((type_, fields))
            return None
        try:
            return self.audit.append_and_anchor(type_, **fields)[1]
        except AuditError as exc:
            log.error("audit log %s: cannot record a %s: %s", self.audit.path, type_, exc)
            return None

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
        if kind == "drop" and agency is not None and payload is not None:
            rt.left[agency] = payload.decode(errors="replace")
            rt.waiting.pop(agency, None)
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
        if failure is not None:
            failure = rt.with_reasons(failure)
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
            build(fresh, self.federation, self.scheme, audit_seconds=self.config.audit_timeout)
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
        self._audit(
            "result",
            job=rt.id,
            body={
                "state": state,
                "failure": (failure or "")[:_MAX_REASON],
                "sha256": None if result is None else hashlib.sha256(result.encode()).hexdigest(),
            },
        )
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
        reason = rt.with_reasons(reason)
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
        assert driver is not None
        seconds = max(time.time() - rt.created, 0.0)
        if rt.spec["job_type"] == QUERY_JOB_TYPE:
            result = job.result(rt.algorithm, history=driver.records, job_id=rt.id, seconds=seconds)
            return str(result.to_json())
        assert rt.training is not None and rt.feature_spec is not None
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
            seconds=seconds,
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
                "feature_spec": json.loads(spec["feature_spec"]),
                "left": dict(rt.left),
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
                awaited = driver.awaiting_contributions()
                complete = not awaited
                if not complete and any(a in rt.waiting for a in awaited):
                    return  # a person is deciding at an agency: the round waits for it
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
            if rnd.phase is RoundPhase.AUDITING:
                if self._advance_audit(rt, now):
                    continue
                return
            return

    # -- range audits (fedcity.core.audit) ------------------------------------------------
    def _advance_audit(self, rt: JobRuntime, now: float) -> bool:
        """Close the open range audit once its deadline passed; True if the job moved on.

        An audit every contributor answered closed when the last answer was stored.
        """
        driver = rt.driver
        assert driver is not None
        audit = driver.auditing
        if audit is None:
            return False
        r = audit.task.round
        opened = rt.audit_opened.setdefault(r, now)
        if now - opened < self.config.audit_timeout:
            return False
        log.warning(
            "job %s round %d: range-audit deadline passed; %s did not answer",
            rt.id,
            r,
            ", ".join(audit.awaiting),
        )
        before = len(driver.exclusions)
        # stored as the audited round's "close" (the schema's event types are fixed); replay
        # tells it from the collection's close by the round's phase
        self._apply(rt, "close", driver.close_audit, round_=r, payload=b"range audit closed")
        self._after_audit(rt, driver, r, before)
        return rt.running

    def _after_audit(self, rt: JobRuntime, driver: JobDriver, r: int, before: int) -> None:
        """Record an audit's outcome once it closed: exclusions leave the job, with reasons.

        ``driver`` is the job's driver when the audit closed (a failed job no longer holds
        it); ``before`` is how many exclusions it held before.
        """
        audit = driver.audits.get(r)
        outcome = None if audit is None else audit.outcome
        if outcome is None:
            return
        exclusions = driver.exclusions[before:]
        self._audit(
            "exclusion",
            job=rt.id,
            round=r,
            body={
                "excluded": {e.agency: e.how for e in exclusions},
                "silent": list(outcome.silent),
                "failure": (outcome.failure or "")[:_MAX_REASON],
            },
        )
        for e in exclusions:
            log.warning("job %s: %s", rt.id, e.reason)
            if not rt.running:
                rt.left.setdefault(e.agency, e.reason)
                continue
            assert rt.driver is not None
            self._apply(
                rt,
                "drop",
                partial(rt.driver.drop, e.agency),
                agency=e.agency,
                round_=r,
                payload=e.reason.encode(),
            )
        # the re-aggregated round is decrypted afresh: ask decryptors again
        rt.asked.pop(r, None)
        rt.decrypt_handed.pop(r, None)

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
        if self._split(rnd, [a for a in candidates if self._alive(a, now)]):
            return self._ask_groups(rt, rnd, candidates, now)
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

    def _split(self, rnd: AggregationRound, alive: list[str]) -> bool:
        """Whether ``rnd`` is decrypted by disjoint groups (planned now if possible).

        A threshold round is split when, as decryption starts, at least ``2t + 1`` share
        holders are connected (:meth:`AggregationRound.plan_decryption`): ``g = ⌊(ℓ-1)/t⌋``
        groups of ``t`` each decrypt ``1/g`` of the ciphertexts, and at least one holder
        stays in reserve for a decryptor that fails. With fewer, the round is decrypted
        whole by any ``t`` of them, as before.
        """
        if len(rnd.parts) > 1:
            return True
        t = self.scheme.threshold
        if (
            not isinstance(self.scheme, PaillierScheme)
            or rnd.parts
            or rnd.partials
            or t < 1
            or len(alive) < 2 * t + _SPARE_DECRYPTORS
        ):
            return False
        rnd.plan_decryption(alive, spares=_SPARE_DECRYPTORS)
        return len(rnd.parts) > 1

    def _ask_groups(
        self, rt: JobRuntime, rnd: AggregationRound, candidates: list[str], now: float
    ) -> list[str]:
        """Decryption groups: fill every part to ``t`` decryptors, replacing stale ones.

        A decryptor that dropped out, was named a cheater, sent an invalid partial or stayed
        silent ``decrypt_timeout`` loses its part to a holder not asked yet; the job fails
        when a part cannot be filled.
        """
        driver = rt.driver
        assert driver is not None
        asked = rt.asked.setdefault(rnd.task.round, {})
        live = set(candidates)
        for a in list(rnd.part_of):
            if a in rnd.partials:
                continue
            stale = a not in live or (a in asked and now - asked[a] >= self.config.decrypt_timeout)
            if stale:
                rnd.unassign(a)
        spares = [a for a in candidates if a not in asked]
        for p in rnd.parts:
            while len(rnd.assigned(p.index)) < self.scheme.threshold:
                if rnd.assign_spare(p.index, spares) is None:
                    try:
                        driver.fail_decryption()
                    except JobFailed as exc:
                        self._fail(rt, str(exc))
                    return []
        fresh = []
        for a, _ in sorted(rnd.part_of.items()):
            if a in rnd.partials:
                continue
            if a not in asked:
                asked[a] = now
                self._changed.notify_all()
            fresh.append(a)
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
            reason = (
                "its agent stopped earlier and has not come back"
                if self.liveness.departed(agency)
                else f"stopped answering (no heartbeat for {silent:.1f} s)"
            )
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

    def _stored_job(self, row: JobRow, *, with_history: bool = False) -> JobRuntime:
        """The running or recent job of a stored row, or a read-only view of the row."""
        rt = self._jobs.get(row.id) or self._recent.get(row.id)
        if rt is not None:
            return rt
        rt = JobRuntime(
            row.id,
            json.loads(row.spec),
            row.state,
            row.created,
            row.failure,
            row.result,
            row.rounds_done,
        )
        if with_history and row.result:
            history = json.loads(row.result).get("history", [])
            rt.records = [json.dumps(r, sort_keys=True) for r in history]
        rt.left = self.store.departures(row.id)
        return rt

    @staticmethod
    def _require_role(principal: Principal, role: str, *also: str) -> None:
        """The caller must hold ``role`` (or one of ``also``); the refusal names the rule."""
        if principal.role != role and principal.role not in also:
            allowed = " or ".join((role, *also))
            raise StatusError(
                Code.PERMISSION_DENIED,
                f"{principal.role} {principal.name!r} may not do this: reserved to the "
                f"{allowed} role",
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
