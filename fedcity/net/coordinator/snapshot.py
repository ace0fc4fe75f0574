"""A read-only snapshot of the coordinator's state, for its dashboard (:mod:`fedcity.dashboard`).

Each method takes the coordinator's lock briefly, copies what it needs into plain frozen
dataclasses and returns them: nothing returned is shared with the running jobs. The same
roles as the gRPC API apply (checked here, not in the web layer): data scientists see the
federation's health, its agencies and their own jobs with their rounds and results;
operators see health, agencies and the list of every job (state and progress, as
``ListJobs`` gives them) but no job's rounds or result; agencies see nothing.

What a snapshot holds: names, states, round numbers, released round records (kind, label,
how many agencies contributed and decrypted, seconds per stage, bytes moved, the released
loss), the reasons agencies gave for leaving, and a succeeded job's released result. It
never holds a contribution, a partial decryption, an aggregate or any figure of a single
agency (round records count contributors; they carry no per-agency value).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedcity.net import messages
from fedcity.net.auth import Principal
from fedcity.net.coordinator.config import Code, StatusError
from fedcity.net.coordinator.runtime import JobRuntime
from fedcity.net.coordinator.state import CoordinatorState

__all__ = [
    "MAX_SNAPSHOT_JOBS",
    "MAX_SNAPSHOT_ROUNDS",
    "AgencyInfo",
    "FederationHealth",
    "JobDetail",
    "JobInfo",
    "RoundInfo",
    "SnapshotCalls",
]

MAX_SNAPSHOT_JOBS = 200
"""Most jobs one snapshot lists (the newest)."""
MAX_SNAPSHOT_ROUNDS = 500
"""Most round records one job snapshot holds (the newest)."""
_HEALTH_ROLES = ("scientist", "operator")
_LIST_ROLES = ("scientist", "operator")
_JOB_ROLES = ("scientist",)
_MAX_REASON_CHARS = 500
_MAX_NAMES = 200


@dataclass(frozen=True)
class AgencyInfo:
    """One federation member or registered agency, as the dashboard shows it.

    Attributes
    ----------
    name : str
    member : bool
        Whether the agency is listed in the federation file (holds a share or the key).
    registered : bool
        Whether it has registered datasets or tables with this coordinator.
    connected : bool
        Heard from within the liveness timeout.
    last_seen_unix : float or None
        Wall-clock time of its last call (heartbeat, poll, upload), if any.
    datasets, tables : tuple of str
        Names of the datasets and query tables it declared.
    steps : tuple of str or None
        The steps its policy allows, as it registered them (None: not recorded).
    """

    name: str
    member: bool
    registered: bool
    connected: bool
    last_seen_unix: float | None
    datasets: tuple[str, ...]
    tables: tuple[str, ...]
    steps: tuple[str, ...] | None


@dataclass(frozen=True)
class FederationHealth:
    """The federation as the coordinator sees it now.

    Attributes
    ----------
    key_id : str
        The federation key's id (hex).
    threshold : int
        Agencies needed to decrypt an aggregate.
    key_holder : str or None
        The single key holder, in that mode.
    members, registered, connected : int
        Agencies in the federation file, registered, heard from within the timeout.
    running_jobs : int
    storage_ok : bool
        False while a failed write keeps every job paused.
    accepting : bool
        False once the coordinator is shutting down.
    min_cell_count : int
        The federation's floor for query cells.
    heartbeat_interval, liveness_timeout : float
        Seconds.
    now_unix : float
        When the snapshot was taken.
    agencies : tuple of AgencyInfo
    """

    key_id: str
    threshold: int
    key_holder: str | None
    members: int
    registered: int
    connected: int
    running_jobs: int
    storage_ok: bool
    accepting: bool
    min_cell_count: int
    heartbeat_interval: float
    liveness_timeout: float
    now_unix: float
    agencies: tuple[AgencyInfo, ...]


@dataclass(frozen=True)
class RoundInfo:
    """One released round, numbered from 1.

    Attributes
    ----------
    number : int
    kind, label : str
        The step and its label.
    contributors, decryptors : int
        How many agencies contributed, and partially decrypted.
    seconds : dict of str to float
        Seconds per stage (agency stages: the slowest agency's).
    upload_bytes : int
        Ciphertext bytes all contributors uploaded together.
    decrypt_bytes : int
        Aggregate bytes sent to the decryptors together.
    loss : float or None
        The released loss, when the step computes one.
    """

    number: int
    kind: str
    label: str
    contributors: int
    decryptors: int
    seconds: dict[str, float]
    upload_bytes: int
    decrypt_bytes: int
    loss: float | None


@dataclass(frozen=True)
class JobInfo:
    """A job's state and progress.

    Attributes
    ----------
    id, owner, job_type, dataset, state : str
    submitted_unix : float
    rounds_done : int
    participants : tuple of str
    min_agencies : int
    current_label : str
        The open round's step ("" when none).
    failure : str or None
        Why it failed or was cancelled (with the agencies' reasons).
    departures : tuple of (str, str)
        Each agency that left the job, with its reason, in order.
    """

    id: str
    owner: str
    job_type: str
    dataset: str
    state: str
    submitted_unix: float
    rounds_done: int
    participants: tuple[str, ...]
    min_agencies: int
    current_label: str
    failure: str | None
    departures: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class JobDetail:
    """A job with its released rounds.

    Attributes
    ----------
    job : JobInfo
    rounds : tuple of RoundInfo
        The newest :data:`MAX_SNAPSHOT_ROUNDS` released rounds, in order.
    rounds_omitted : int
        Older rounds left out.
    has_result : bool
        Whether a released result can be read (:meth:`SnapshotCalls.snapshot_result`).
    """

    job: JobInfo
    rounds: tuple[RoundInfo, ...]
    rounds_omitted: int
    has_result: bool


def _require(principal: Principal, roles: tuple[str, ...]) -> None:
    if principal.role not in roles:
        raise StatusError(
            Code.PERMISSION_DENIED, f"{principal.role} {principal.name!r} may not read this"
        )


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def round_info(record: dict[str, Any]) -> RoundInfo:
    """A released round record (as stored) reduced to what the dashboard shows."""
    contributors = record.get("contributors") or []
    decryptors = record.get("decryptors") or []
    seconds_in = record.get("seconds") or {}
    seconds = {
        str(k)[: messages.MAX_NAME_CHARS]: _number(v)
        for k, v in list(seconds_in.items())[:32]
        if isinstance(seconds_in, dict)
    }
    loss = record.get("loss")
    return RoundInfo(
        number=int(_number(record.get("round"))) + 1,
        kind=str(record.get("kind", ""))[: messages.MAX_NAME_CHARS],
        label=str(record.get("label", ""))[: messages.MAX_NAME_CHARS],
        contributors=len(contributors),
        decryptors=len(decryptors),
        seconds=seconds,
        upload_bytes=round(_number(record.get("bytes_per_agency")) * len(contributors)),
        decrypt_bytes=int(_number(record.get("bytes_to_decryptors"))),
        loss=float(loss) if isinstance(loss, int | float) and not isinstance(loss, bool) else None,
    )


def _job_info(rt: JobRuntime) -> JobInfo:
    spec = rt.spec
    label = ""
    driver = rt.driver
    if driver is not None and driver.task is not None:
        label = driver.task.request.label or driver.task.request.kind
    return JobInfo(
        id=rt.id,
        owner=rt.owner,
        job_type=str(spec.get("job_type", "")),
        dataset=str(spec.get("dataset", "")),
        state=rt.state,
        submitted_unix=float(rt.created),
        rounds_done=int(rt.rounds_done),
        participants=tuple(str(a) for a in spec.get("agencies", ()))[:_MAX_NAMES],
        min_agencies=int(spec.get("min_agencies", 0)),
        current_label=label if rt.state == "running" else "",
        failure=None if rt.failure is None else messages.clipped(rt.failure, 1500),
        departures=tuple(
            (a, messages.clipped(r, _MAX_REASON_CHARS)) for a, r in list(rt.left.items())
        )[:_MAX_NAMES],
    )


class SnapshotCalls(CoordinatorState):
    """Read-only snapshots of the coordinator's state (see the module's docstring)."""

    if TYPE_CHECKING:  # provided by ScientistCalls in the combined Coordinator

        def _lookup(self, job_id: str) -> JobRuntime: ...

    def snapshot_health(self, principal: Principal) -> FederationHealth:
        """The federation's health and every member or registered agency.

        Raises
        ------
        StatusError
            ``PERMISSION_DENIED`` for an agency.
        """
        _require(principal, _HEALTH_ROLES)
        with self._lock:
            now = self.clock()
            kinds = self._kinds
            names = list(self.federation.agencies)
            names += sorted(a for a in self._datasets if a not in self.federation.agencies)
            agencies = []
            for name in names[:_MAX_NAMES]:
                allowed = kinds.get(name)
                registered = name in self._datasets or name in self._tables
                agencies.append(
                    AgencyInfo(
                        name=name,
                        member=name in self.federation.agencies,
                        registered=registered,
                        connected=self.liveness.heard(name) and self._alive(name, now),
                        last_seen_unix=self.liveness.last_seen.get(name),
                        datasets=tuple(sorted(self._datasets.get(name, {})))[:_MAX_NAMES],
                        tables=tuple(sorted(self._tables.get(name, {})))[:_MAX_NAMES],
                        steps=None if allowed is None else tuple(sorted(allowed))[:_MAX_NAMES],
                    )
                )
            return FederationHealth(
                key_id=self.federation.key_id.hex(),
                threshold=int(self.federation.threshold),
                key_holder=self.federation.key_holder,
                members=len(self.federation.agencies),
                registered=sum(1 for a in agencies if a.registered),
                connected=sum(1 for a in agencies if a.connected),
                running_jobs=sum(1 for rt in self._jobs.values() if rt.running),
                storage_ok=self._storage_fault is None,
                accepting=not (self._stopping or self._closed),
                min_cell_count=int(self.config.min_cell_count),
                heartbeat_interval=float(self.config.heartbeat_interval),
                liveness_timeout=float(self.config.liveness),
                now_unix=time.time(),
                agencies=tuple(agencies),
            )

    def snapshot_jobs(self, principal: Principal, limit: int) -> list[JobInfo]:
        """The caller's newest ``limit`` jobs (an operator's: everyone's), newest first.

        Raises
        ------
        StatusError
            ``PERMISSION_DENIED`` for an agency; ``INVALID_ARGUMENT`` for a limit outside
            ``[1, MAX_SNAPSHOT_JOBS]``.
        """
        _require(principal, _LIST_ROLES)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise StatusError(Code.INVALID_ARGUMENT, "limit must be an integer")
        if not 1 <= limit <= MAX_SNAPSHOT_JOBS:
            raise StatusError(
                Code.INVALID_ARGUMENT, f"limit must lie in [1, {MAX_SNAPSHOT_JOBS}], got {limit}"
            )
        with self._lock:
            out = []
            owner = None if principal.role == "operator" else principal.name
            for row in self.store.jobs_of(owner, limit):
                rt = self._stored_job(row)
                out.append(_job_info(rt))
            return out

    def _own_job(self, principal: Principal, job_id: str) -> JobRuntime:
        """One of the caller's jobs (lock held); NOT_FOUND or PERMISSION_DENIED otherwise."""
        _require(principal, _JOB_ROLES)
        rt = self._lookup(job_id)
        if rt.owner != principal.name:
            raise StatusError(
                Code.PERMISSION_DENIED, "the job was submitted by another data scientist"
            )
        return rt

    def snapshot_job(self, principal: Principal, job_id: str) -> JobDetail:
        """One of the caller's jobs with its released rounds.

        Raises
        ------
        StatusError
            ``INVALID_ARGUMENT`` (malformed id), ``NOT_FOUND``, ``PERMISSION_DENIED``.
        """
        with self._lock:
            rt = self._own_job(principal, job_id)
            info = _job_info(rt)
            texts = list(rt.records[-MAX_SNAPSHOT_ROUNDS:])
            omitted = len(rt.records) - len(texts)
            has_result = rt.state == "succeeded" and rt.result is not None
        rounds = []
        for text in texts:
            try:
                record = json.loads(text)
            except ValueError:
                continue
            if isinstance(record, dict):
                rounds.append(round_info(record))
        return JobDetail(info, tuple(rounds), omitted, has_result)

    def snapshot_result(self, principal: Principal, job_id: str) -> str:
        """The released result JSON of one of the caller's succeeded jobs.

        Raises
        ------
        StatusError
            As :meth:`snapshot_job`, and ``FAILED_PRECONDITION`` when the job has no result.
        """
        with self._lock:
            rt = self._own_job(principal, job_id)
            if rt.state != "succeeded" or rt.result is None:
                raise StatusError(Code.FAILED_PRECONDITION, f"job {rt.id} has no result")
            return rt.result
