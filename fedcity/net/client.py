"""The data scientist's client of the coordinator's ``JobService``.

::

    from fedcity.net.client import Client

    with Client("coordinator.city.gov:50051", token, ca_file="tls/ca.pem") as client:
        job_id = client.submit("logistic_regression", {"C": 1.0}, "inspections")
        for event in client.watch(job_id, console=rich.console.Console()):
            pass                                   # a progress display while it runs
        result = client.result(job_id)             # history, model, preprocessing, metrics
        model = client.estimator(job_id, spec)     # a scikit-learn Pipeline

Every gRPC failure surfaces as a :class:`ClientError` carrying the status code and the
coordinator's message.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fedcity.net.channel import RETRYABLE_CODES, bearer_metadata, open_channel
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

if TYPE_CHECKING:
    from rich.console import Console

    from fedcity.data.dataset import FeatureSpec

__all__ = ["AgencyInfo", "Client", "ClientError", "JobEvent"]

T = TypeVar("T")

_STATES: dict[int, str] = {
    int(fpb.JOB_STATE_UNSPECIFIED): "unspecified",
    int(fpb.JOB_STATE_QUEUED): "queued",
    int(fpb.JOB_STATE_RUNNING): "running",
    int(fpb.JOB_STATE_SUCCEEDED): "succeeded",
    int(fpb.JOB_STATE_FAILED): "failed",
    int(fpb.JOB_STATE_CANCELLED): "cancelled",
}
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
"""Job states after which nothing changes."""


class ClientError(Exception):
    """A call to the coordinator failed.

    Parameters
    ----------
    message : str
        One line, for people.
    code : grpc.StatusCode, optional
        The gRPC status (None for failures detected by the client itself).
    details : str, default ""
        The coordinator's own message.
    """

    def __init__(self, message: str, *, code: Any = None, details: str = "") -> None:
        super().__init__(" ".join(message.split()))
        self.code = code
        self.details = details

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"NOT_FOUND"`` (``""`` when there is none)."""
        return str(getattr(self.code, "name", "")) if self.code is not None else ""


@dataclass(frozen=True)
class JobEvent:
    """A job's status, as reported while watching it.

    Attributes
    ----------
    job_id : str
    state : str
        ``"queued"``, ``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
    rounds_done : int
    failure : str
        Why the job failed (empty otherwise).
    round_label : str
        The round in progress.
    round_record : dict or None
        A round that just finished (kind, contributors, bytes, seconds, loss, ...).
    notice : str
        Something the data scientist should know now, e.g. which agency left and why.
    departures : dict of str to str
        Every agency that left the job so far, with its reason.
    waiting : dict of str to str
        Agencies holding the job until a person approves it there, and why.
    submitted_unix : float
    job_type : str
    dataset : str
    participants : int
        Agencies the job started with.
    """

    job_id: str
    state: str
    rounds_done: int
    failure: str = ""
    round_label: str = ""
    round_record: dict[str, Any] | None = None
    notice: str = ""
    departures: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)
    submitted_unix: float = 0.0
    job_type: str = ""
    dataset: str = ""
    participants: int = 0

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINAL_STATES

    @property
    def summary(self) -> str:
        """One line: state, rounds and, if agencies left, how many took part to the end."""
        line = f"job {self.job_id} {self.state} after {self.rounds_done} rounds"
        if self.departures and self.participants:
            kept = self.participants - len(self.departures)
            line += (
                f" with {kept} of {self.participants} agencies ({', '.join(self.departures)} left)"
            )
        return line

    @classmethod
    def from_status(
        cls, status: fpb.JobStatus, record: dict[str, Any] | None = None, notice: str = ""
    ) -> JobEvent:
        """Build from a ``JobStatus`` message (and a parsed round record or a notice)."""
        return cls(
            job_id=status.job_id,
            state=_STATES.get(int(status.state), f"state {int(status.state)}"),
            rounds_done=int(status.rounds_done),
            failure=status.failure,
            round_label=status.current_round_label,
            round_record=record,
            notice=notice,
            departures={d.agency: d.reason for d in status.departures},
            waiting={w.agency: w.reason for w in status.waiting},
            submitted_unix=float(status.submitted_unix),
            job_type=status.job_type,
            dataset=status.dataset,
            participants=int(status.participants),
        )


@dataclass(frozen=True)
class AgencyInfo:
    """An agency as the coordinator knows it.

    Attributes
    ----------
    name : str
    connected : bool
    last_seen_unix : float
    datasets : dict of str to FeatureSpec
        The datasets it offers, with their declared columns.
    tables : dict of str to dict
        The tables it offers to queries: column name → type.
    """

    name: str
    connected: bool
    last_seen_unix: float
    datasets: dict[str, FeatureSpec]
    tables: dict[str, dict[str, str]] = field(default_factory=dict)


class Client:
    """A connection to the coordinator's ``JobService``.

    Parameters
    ----------
    address : str
        ``host:port`` of the coordinator.
    token : str or None
        The data scientist's bearer token (the content of ``scientists/<name>/token``); None
        with a client certificate (mutual TLS, after ``fedcity login``).
    ca_file : str or path-like, optional
        The federation's CA certificate (``tls/ca.pem``); required unless ``insecure``.
    insecure : bool, default False
        Plaintext, allowed only to a loopback address.
    timeout : float, default 30.0
        Deadline of each unary call, in seconds.
    cert_file, key_file : str or path-like, optional
        The data scientist's certificate and key from ``fedcity login``.

    Raises
    ------
    ClientError
        A malformed address, a missing CA file, or ``insecure`` to a remote host.
    """

    def __init__(
        self,
        address: str,
        token: str | None,
        ca_file: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        *,
        timeout: float = 30.0,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if token is None and cert_file is None:
            raise ClientError("give a bearer token or a client certificate (fedcity login)")
        if token is not None and (not token or any(c.isspace() for c in token)):
            raise ClientError("the token must be a single non-empty word")
        self.address = address
        self.timeout = timeout
        try:
            self._channel = open_channel(
                address, ca_file=ca_file, insecure=insecure, cert_file=cert_file, key_file=key_file
            )
        except OSError as exc:
            what = "CA file" if exc.filename in (None, str(ca_file)) else "file"
            raise ClientError(
                f"cannot read {what} {exc.filename or ca_file}: {exc.strerror or exc}"
            ) from exc
        except ValueError as exc:
            raise ClientError(str(exc)) from exc
        self._stub = fpb_grpc.JobServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = bearer_metadata(token) if token is not None else ()

    def __repr__(self) -> str:
        return f"<Client {self.address}>"

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _error(self, exc: grpc.RpcError) -> ClientError:
        code = exc.code()
        details = exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"cannot reach the coordinator at {self.address}: {details}"
        elif code == grpc.StatusCode.UNAUTHENTICATED:
            message = f"the coordinator refused the token: {details}"
        else:
            message = f"{code.name}: {details}"
        return ClientError(message, code=code, details=details)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _unary(self, method: str, request: Any) -> Any:
        rpc = getattr(self._stub, method)
        return self._call(lambda: rpc(request, timeout=self.timeout, metadata=self._metadata))

    # -- API --------------------------------------------------------------------------------------
    def submit(
        self,
        job_type: str,
        params: Mapping[str, Any],
        dataset: str,
        agencies: Sequence[str] = (),
        min_agencies: int = 0,
        evaluate_dataset: str = "",
        privacy: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit a job; returns its id.

        Parameters
        ----------
        job_type : str
            ``"logistic_regression"``, ``"ridge"``, ``"poisson_regression"`` or ``"fedavg"``.
        params : mapping
            The job's parameters, e.g. ``{"C": 1.0}`` (JSON-serialisable).
        dataset : str
            A dataset name every participating agency declared.
        agencies : sequence of str, optional
            Participants (default: every registered agency offering ``dataset``).
        min_agencies : int, default 0
            Fewest contributors per round (0: the coordinator's default).
        evaluate_dataset : str, optional
            Evaluate the trained model on this dataset afterwards.
        privacy : mapping, optional
            :class:`~fedcity.privacy.DPConfig` keywords.

        Returns
        -------
        str

        Raises
        ------
        ValueError
            Parameters that cannot be sent (not JSON-serialisable, negative ``min_agencies``).
        ClientError
        """
        if not job_type:
            raise ValueError("job_type must be given")
        if not dataset:
            raise ValueError("dataset must be given")
        if isinstance(min_agencies, bool) or not isinstance(min_agencies, int) or min_agencies < 0:
            raise ValueError(f"min_agencies must be a non-negative integer, got {min_agencies!r}")
        if isinstance(agencies, str):
            raise ValueError("agencies must be a sequence of names, not one string")
        spec = fpb.JobSpec(
            job_type=job_type,
            params_json=_to_json(params, "params"),
            dataset=dataset,
            agencies=list(agencies),
            min_agencies=min_agencies,
            evaluate_dataset=evaluate_dataset,
            privacy_json="" if privacy is None else _to_json(privacy, "privacy"),
        )
        status = self._unary("SubmitJob", spec)
        return str(status.job_id)

    def watch(
        self,
        job_id: str,
        *,
        console: Console | None = None,
        timeout: float | None = None,
    ) -> Iterator[JobEvent]:
        """Follow a job until it reaches a final state.

        Parameters
        ----------
        job_id : str
        console : rich.console.Console, optional
            Show a live progress display (rounds, current round, elapsed time) and one line
            per finished round on this console.
        timeout : float, optional
            Give up after this many seconds (:class:`ClientError` with DEADLINE_EXCEEDED).

        Yields
        ------
        JobEvent
            Every status change and finished round; the last one is final.

        Raises
        ------
        ClientError
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if console is None:
            yield from self._events(job_id, deadline)
            return
        from rich.markup import escape
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]job {task.fields[job]}[/]"),
            TextColumn("{task.fields[state]}"),
            TextColumn("{task.completed:.0f} rounds"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("", total=None, job=job_id, state="waiting")
            last: JobEvent | None = None
            for event in self._events(job_id, deadline):
                last = event
                if event.round_record is not None:
                    progress.console.print(_record_line(event.round_record))
                if event.notice:
                    progress.console.print(f"[yellow]{escape(event.notice)}[/]")
                progress.update(
                    bar,
                    completed=event.rounds_done,
                    description=event.round_label,
                    state=event.state,
                )
                if event.finished:
                    progress.update(bar, total=max(event.rounds_done, 1))
                yield event
            if last is not None and last.failure:
                progress.console.print(f"[red]job {job_id} {last.state}[/]: {escape(last.failure)}")

    def _events(self, job_id: str, deadline: float | None) -> Iterator[JobEvent]:
        attempt = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ClientError(
                    f"job {job_id} did not finish in time",
                    code=grpc.StatusCode.DEADLINE_EXCEEDED,
                )
            stream = self._stub.WatchJob(
                fpb.JobRef(job_id=job_id), timeout=remaining, metadata=self._metadata
            )
            try:
                for message in stream:
                    attempt = 0
                    record = None
                    if message.round_record_json:
                        record = _json_record(message.round_record_json)
                    event = JobEvent.from_status(message.status, record, message.notice)
                    yield event
                    if event.finished:
                        return
            except grpc.RpcError as exc:
                code = exc.code()
                expired = deadline is not None and time.monotonic() >= deadline
                if code not in RETRYABLE_CODES or expired:
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise ClientError(
                            f"job {job_id} did not finish in time", code=code
                        ) from None
                    raise self._error(exc) from None
            finally:
                stream.cancel()
            # the stream ended early or the coordinator went away: follow it again
            delay = min(5.0, 0.25 * 2.0**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            time.sleep(delay)

    def result_text(self, job_id: str) -> str:
        """The raw result JSON of a finished job.

        Raises
        ------
        ClientError
            The job has not succeeded (the message says its state and failure).
        """
        reply = self._unary("GetResult", fpb.JobRef(job_id=job_id))
        event = JobEvent.from_status(reply.status)
        if event.state != "succeeded" or not reply.result_json:
            why = f": {event.failure}" if event.failure else ""
            raise ClientError(
                f"job {job_id} has no result: it is {event.state} "
                f"({event.rounds_done} rounds done){why}",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        return str(reply.result_json)

    def submit_query(
        self,
        spec: Any,
        *,
        agencies: Sequence[str] = (),
        min_agencies: int = 0,
    ) -> str:
        """Submit a federated query (:mod:`fedcity.analytics`); returns its job id.

        Parameters
        ----------
        spec : QuerySpec, mapping or path
            The query: a :class:`~fedcity.analytics.QuerySpec`, its dict form, or a TOML file.
            It is validated here first, so a bad spec fails before anything is sent.
        agencies : sequence of str, optional
            Participants (default: every registered agency offering the query's table).
        min_agencies : int, default 0
            Fewest contributors per round (0: the coordinator's default).

        Raises
        ------
        QueryError
            An invalid spec (the message names the problem).
        ClientError
            The coordinator refused it (e.g. a column an agency's table lacks).
        """
        from fedcity.analytics.spec import QuerySpec

        if isinstance(spec, str | os.PathLike):
            spec = QuerySpec.from_toml(Path(spec))
        elif not isinstance(spec, QuerySpec):
            spec = QuerySpec.from_dict(spec)
        return self.submit(
            "query",
            json.loads(spec.to_json()),
            spec.table,
            agencies=agencies,
            min_agencies=min_agencies,
        )

    def query_result(self, job_id: str) -> Any:
        """The :class:`~fedcity.analytics.QueryResult` of a finished query.

        Raises
        ------
        ClientError
            The job has not succeeded, or it is not a query.
        """
        from fedcity.analytics.result import QueryResult
        from fedcity.analytics.spec import QueryError

        text = self.result_text(job_id)
        try:
            return QueryResult.from_json(text)
        except QueryError as exc:
            raise ClientError(f"job {job_id} did not return a query result: {exc}") from exc

    def result(self, job_id: str) -> dict[str, Any]:
        """The parsed result of a finished job: history, model, preprocessing, metrics, privacy.

        Raises
        ------
        ClientError
            The job has not succeeded, or the coordinator sent malformed JSON.
        """
        text = self.result_text(job_id)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClientError(f"the result of job {job_id} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ClientError(f"the result of job {job_id} is not a JSON object")
        return value

    def estimator(self, job_id: str, feature_spec: FeatureSpec | None = None) -> Any:
        """The trained model as a scikit-learn pipeline (preprocessing + estimator).

        Parameters
        ----------
        job_id : str
        feature_spec : FeatureSpec, optional
            The dataset's declared columns (the pipeline's input); by default the ones the
            job was trained on, as its result records them.

        Returns
        -------
        sklearn.pipeline.Pipeline

        Raises
        ------
        ClientError
            The job has not succeeded, or its result does not describe a model that fits
            ``feature_spec``.
        """
        from fedcity.learn.jobs import estimator_from_result_json
        from fedcity.net.messages import MessageError, feature_spec_from_json

        text = self.result_text(job_id)
        if feature_spec is None:
            declared = (json.loads(text).get("job") or {}).get("feature_spec")
            if not isinstance(declared, dict):
                raise ClientError(
                    f"the result of job {job_id} does not record its columns; pass feature_spec"
                )
            try:
                feature_spec = feature_spec_from_json(json.dumps(declared))
            except MessageError as exc:
                raise ClientError(f"job {job_id}: {exc}") from exc
        try:
            return estimator_from_result_json(text, feature_spec)
        except ValueError as exc:
            raise ClientError(f"cannot rebuild the model of job {job_id}: {exc}") from exc

    def agencies(self) -> list[AgencyInfo]:
        """Agencies the coordinator knows, with their datasets.

        Raises
        ------
        ClientError
        """
        from fedcity.net.messages import MessageError, feature_spec_from_json, parse_tables

        reply = self._unary("ListAgencies", fpb.ListAgenciesRequest())
        out = []
        for info in reply.agencies:
            datasets = {}
            for d in info.datasets:
                try:
                    datasets[d.name] = feature_spec_from_json(d.feature_spec_json)
                except MessageError as exc:
                    raise ClientError(f"agency {info.name!r} dataset {d.name!r}: {exc}") from exc
            try:
                tables = parse_tables(info.tables)
            except MessageError as exc:
                raise ClientError(f"agency {info.name!r}: {exc}") from exc
            out.append(AgencyInfo(info.name, info.connected, info.last_seen_unix, datasets, tables))
        return out

    def status(self, job_id: str) -> JobEvent:
        """One of your jobs: state, progress, and which agencies left and why."""
        return JobEvent.from_status(self._unary("GetStatus", fpb.JobRef(job_id=job_id)))

    def jobs(self, limit: int = 50) -> list[JobEvent]:
        """Your newest jobs (at most ``limit``, up to 500), newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise ValueError(f"limit must be an integer in [1, 500], got {limit!r}")
        reply = self._unary("ListJobs", fpb.ListJobsRequest(limit=limit))
        return [JobEvent.from_status(s) for s in reply.jobs]

    def logs(self, job_id: str) -> list[str]:
        """A job's history in words: submission, contributions, departures, releases."""
        return list(self._unary("JobLogs", fpb.JobRef(job_id=job_id)).lines)

    def cancel(self, job_id: str) -> JobEvent:
        """Cancel a job; returns its status afterwards."""
        return JobEvent.from_status(self._unary("CancelJob", fpb.JobRef(job_id=job_id)))


def _to_json(value: Mapping[str, Any], what: str) -> str:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a mapping (a JSON object), got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable: {exc}") from exc


def _json_record(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


def _record_line(record: Mapping[str, Any]) -> str:
    label = record.get("label") or record.get("kind") or "round"
    number = record.get("round")
    shown = number + 1 if isinstance(number, int) else "?"  # rounds as people count them
    parts = [f"round {shown} {label}"]
    contributors = record.get("contributors")
    if isinstance(contributors, list):
        parts.append(f"{len(contributors)} agencies")
    loss = record.get("loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.6g}")
    seconds = record.get("seconds")
    if isinstance(seconds, int | float):
        parts.append(f"{seconds:.2f} s")
    elif isinstance(seconds, Mapping):
        total = sum(v for v in seconds.values() if isinstance(v, int | float))
        parts.append(f"{total:.2f} s")
    return " · ".join(parts)


def enroll(
    address: str,
    *,
    ca_file: str | os.PathLike[str],
    token: str,
    name: str,
    out: str | os.PathLike[str],
    timeout: float = 30.0,
) -> tuple[Path, Path, str]:
    """Enroll with an invitation: a key made here, a certificate from the coordinator.

    Parameters
    ----------
    address : str
        The coordinator's enrollment port (``host:port``).
    ca_file : path-like
        The federation's CA certificate (``ca.pem`` from the operator).
    token : str
        The one-time invitation token (``fedcity ca invite``).
    name : str
        The invited name.
    out : path-like
        Folder for ``key.pem`` (owner-readable only) and ``cert.pem``.

    Returns
    -------
    (Path, Path, str)
        The key file, the certificate file and the role the certificate grants.

    Raises
    ------
    ClientError
        The coordinator refused (unknown, used or expired token; another name).
    """
    from fedcity.governance.ca import make_csr
    from fedcity.secretfiles import write_secret

    folder = Path(out)
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    if key_path.exists() or cert_path.exists():
        raise ClientError(f"{folder} already holds key.pem or cert.pem; choose another folder")
    key_pem, csr_pem = make_csr(name)
    try:
        channel = open_channel(address, ca_file=ca_file)
    except OSError as exc:
        raise ClientError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from exc
    try:
        stub = fpb_grpc.EnrollmentServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Enroll(
            fpb.EnrollRequest(token=token, name=name, csr_pem=csr_pem), timeout=timeout
        )
    except grpc.RpcError as exc:
        raise ClientError(
            f"enrollment refused: {exc.code().name}: {exc.details()}", code=exc.code()
        ) from None
    finally:
        channel.close()
    folder.mkdir(parents=True, exist_ok=True)
    write_secret(key_path, key_pem)
    cert_path.write_bytes(bytes(reply.certificate_pem))
    return key_path, cert_path, str(reply.role)


def renew(
    address: str,
    *,
    ca_file: str | os.PathLike[str],
    cert_file: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    timeout: float = 30.0,
) -> str:
    """Renew a certificate before it expires: a new key made here, the same name and role.

    Calls ``Renew`` over mutual TLS with the current certificate, then replaces ``key_file``
    and ``cert_file`` (the key owner-only). Returns the role.

    Raises
    ------
    ClientError
        The coordinator refused (a revoked certificate, no CA).
    """
    from fedcity.governance.ca import identity_of, make_csr
    from fedcity.secretfiles import write_secret

    try:
        name = identity_of(Path(cert_file).read_bytes()).name
    except OSError as exc:
        raise ClientError(f"cannot read {cert_file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ClientError(f"{cert_file}: {exc}") from exc
    key_pem, csr_pem = make_csr(name)
    channel = open_channel(address, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    try:
        stub = fpb_grpc.EnrollmentServiceStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.Renew(fpb.RenewRequest(csr_pem=csr_pem), timeout=timeout)
    except grpc.RpcError as exc:
        raise ClientError(
            f"renewal refused: {exc.code().name}: {exc.details()}", code=exc.code()
        ) from None
    finally:
        channel.close()
    write_secret(Path(key_file), key_pem)
    Path(cert_file).write_bytes(bytes(reply.certificate_pem))
    return str(reply.role)

