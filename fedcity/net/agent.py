"""The agency daemon: dials out to the coordinator and serves vetted tasks on local data.

An agent is a thin shell over :class:`~fedcity.core.nodes.AgencyNode`. It registers its
datasets (names and declared columns only), sends heartbeats from a background thread and
long-polls for work:

- ``ACTION_CONTRIBUTE``: rebuild the task (:func:`~fedcity.net.messages.assignment_to_task`,
  which refuses unvetted kinds), run it with :meth:`AgencyNode.contribute` and upload the
  sealed vector in chunks. The assignment's ``dataset`` (the job's dataset) is the table the
  step reads as ``"train"``; a step naming another declared dataset in its parameters (an
  evaluation) reads that one. Without a ``dataset`` the first configured table is used;
- ``ACTION_PARTIAL_DECRYPT``: download the encrypted aggregate and the signed contributions
  it was built from (``FetchContributions``), check that it is the product of at least
  ``max(summands_min, policy.min_summands)`` distinct agencies' contributions, each signed
  for this job and round under ``federation-public.json``'s keys
  (:class:`~fedcity.core.integrity.ContributionVerifier`), and upload this agency's partial
  decryption (:meth:`AgencyNode.decrypt_share`); a mismatch is declined, naming it;
- a kind outside the policy (for either action), an unvetted kind, an unknown dataset or a
  failing local step: ``Decline`` with the reason (for unexpected failures only the exception
  type is sent; details stay in the local log, since they may quote data).

Every upload carries the agency's Ed25519 signature of (job, round, kind, agency, federation
key id, SHA-256 of the payload) (:mod:`fedcity.crypto.signing`); the coordinator refuses an
upload without it.

Every job first seen, budget charge or refusal, contribution and partial decryption (its
SHA-256, recorded before it is sent) and refusal goes into the agency's signed, hash-chained
audit log (``audit_file``, :mod:`fedcity.governance.auditlog`), and so does the coordinator's
signed audit chain head that comes back with each upload's acknowledgement (an anchor: the
coordinator cannot rewrite its history later without this log showing it). With a
``[policy] budget`` a job with differential privacy is charged its stated (ε, δ) in the
agency's ledger (``ledger_file``, :mod:`fedcity.governance.ledger`) before its first
contribution is computed, or refused (declined, naming the budget) with the ledger unchanged.

When the coordinator is unreachable the agent retries with exponential backoff and jitter,
registers again, then re-sends what it had not delivered. Every payload is kept (a few
rounds back) and re-sent byte for byte if the same assignment comes again, so a retry never
produces a second, different ciphertext or fresh differential-privacy noise for one round.

Encryption randomness is precomputed while the agent is idle (``randomness_pool`` in
agency.toml, :class:`~fedcity.crypto.pool.RandomnessPool`): while a FetchWork long poll waits,
a background thread at the lowest CPU priority (Linux ``nice`` 19 for that thread) tops the
pool up to the ciphertext count of the agency's uploads of the last ten minutes, at most
``randomness_pool`` pairs, so sealing the next contribution costs a multiplication per
ciphertext. It stops computing the moment work arrives or the agent stops (checked between
pairs, about 0.5 ms each at 2048 bits), runs beside the heartbeat thread without waiting for
it, holds its pairs in memory only, hands each out once and drops the pool on shutdown.
A contribution is sealed whole before its upload starts, on purpose: the first chunk's header
carries the payload's size, SHA-256 and the agency's signature of it (the coordinator checks
the signature before it reads on), the audit log records that SHA-256 before anything is sent,
and a retry re-sends the same bytes. Streaming chunks while sealing would move the digest and
signature into a trailer (another wire format); with a warm pool sealing is a few
milliseconds (``benchmarks/bench_pool.py``), all that streaming could overlap.

The configuration file is described in :mod:`fedcity.net.agentconfig`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

import fedcity
from fedcity.core.aggregation import (
    DecryptionKey,
    KeyHolderScheme,
    PaillierScheme,
)
from fedcity.core.audit import Justification, OutOfRange
from fedcity.core.errors import RejectedContribution
from fedcity.core.integrity import ContributionVerifier, Evidence
from fedcity.core.nodes import AgencyNode
from fedcity.core.tasks import Task
from fedcity.crypto import (
    CryptoError,
    KeyShare,
    PrivateKey,
    PublicKey,
    ThresholdPublicKey,
    WorkerPool,
)
from fedcity.crypto.keys import read_json_file
from fedcity.crypto.pool import RandomnessPool
from fedcity.crypto.signing import SigningKey
from fedcity.data.dataset import AgencyDataset, DataError
from fedcity.governance.approvals import ApprovalBook
from fedcity.governance.audit import AuditError
from fedcity.governance.auditlog import AuditLog
from fedcity.governance.ledger import (
    Ledger,
    LedgerError,
)
from fedcity.governance.policy import JobFacts
from fedcity.net import rangeaudit
from fedcity.net.agentconfig import (
    MAX_CRYPTO_WORKERS,
    AgentConfig,
    ConfigError,
    DatasetConfig,
    TableConfig,
)
from fedcity.net.agentgov import AgentGovernance, _Outgoing
from fedcity.net.ceremony import CeremonyError, Federation, load_federation, read_token
from fedcity.net.channel import (
    RETRYABLE_CODES,
    bearer_metadata,
    diagnose_connection,
    open_channel,
)
from fedcity.net.integrity import evidence_bound, evidence_from_bytes, sign_upload
from fedcity.net.messages import (
    MessageError,
    assemble,
    assignment_to_task,
    chunks,
    feature_spec_to_json,
    table_schema_to_json,
)
from fedcity.secretfiles import SecretFileError, check_private
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = [
    "MAX_CRYPTO_WORKERS",
    "Agent",
    "AgentConfig",
    "AgentError",
    "ConfigError",
    "DatasetConfig",
    "TableConfig",
]

log = logging.getLogger(__name__)

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Status codes after which retrying cannot help: wrong token, wrong identity, wrong server."""
REJECTION_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
    }
)
"""Answers to an upload or refusal that mean the coordinator will not take it: drop it."""
MAX_DELIVERY_ATTEMPTS = 5
"""Tries for a payload the coordinator keeps failing on with other errors (INTERNAL, ...)."""
POOL_HORIZON_S = 600.0
"""Uploads of the last this many seconds set the randomness pool's target size."""
_POOL_JOBS = 64
"""Jobs whose last upload size the agent remembers for the pool's target."""

AgencyKey = KeyShare | PrivateKey | PublicKey | ThresholdPublicKey
_AGENCY_KEY_FORMATS: dict[str, Callable[[dict[str, Any]], AgencyKey]] = {
    "fedcity.paillier.key-share": KeyShare.from_json_dict,
    "fedcity.paillier.private-key": PrivateKey.from_json_dict,
    "fedcity.paillier.public-key": PublicKey.from_json_dict,
    "fedcity.paillier.threshold-public-key": ThresholdPublicKey.from_json_dict,
}
"""Key files an agent loads: a threshold share, the threshold public key (an agency outside
the decryption committee), or the key holder's private or public key."""


def _load_agency_key(path: Path) -> AgencyKey:
    """Read an agency's key file once and build the key its ``format`` names."""
    try:
        data = read_json_file(path)
        kind = data.get("format")
        if kind in _AGENCY_KEY_FORMATS:
            key = _AGENCY_KEY_FORMATS[kind](data)
            if isinstance(key, KeyShare | PrivateKey):  # a share or private key is a secret
                _check_secret(path, "key file")
            return key
    except CryptoError as exc:
        raise AgentError(f"key file {path}: {exc}") from exc
    found = "has no 'format' field" if kind is None else f"has format {kind!r}"
    raise AgentError(
        f"key file {path} {found}; expected a fedcity key share, private key or public key"
    )


class AgentError(RuntimeError):
    """The agent cannot go on: unreadable key material or data, wrong federation, bad token."""


def _retry_after(exc: grpc.RpcError) -> float:
    """The wait a rate-limited call was told (trailing ``retry-after-ms``), at most 60 s."""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "retry-after-ms":
            try:
                return min(60.0, max(0.0, int(value) / 1000.0))
            except (TypeError, ValueError):
                return 0.0
    return 0.0


def _lower_thread_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: per-thread ``nice`` 19).

    Elsewhere ``setpriority`` would lower the whole process, so it is left alone there.
    """
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as exc:  # e.g. a sandbox without the permission: run at normal priority
            log.debug("cannot lower the precompute thread's priority: %s", exc)


def _check_secret(path: Path, what: str) -> None:
    """Refuse a secret file its group or others may read or write (the agent does not start)."""
    try:
        check_private(path, what)
    except SecretFileError as exc:
        raise AgentError(str(exc)) from exc


def _query_tables(config: AgentConfig) -> dict[str, Any]:
    """The agency's query tables (:class:`~fedcity.analytics.LocalTable`), validated on load."""
    if not config.tables:
        return {}
    from fedcity.analytics.local import DataError as TableError
    from fedcity.analytics.local import LocalTable
    from fedcity.analytics.spec import QueryError, TableSchema

    out: dict[str, Any] = {}
    for name, tc in config.tables.items():
        try:
            out[name] = LocalTable(tc.path, TableSchema(name, tc.columns), agency=config.agency)
        except (TableError, QueryError) as exc:
            raise AgentError(f"table {name!r}: {exc}") from exc
    return out


# -- the daemon ---------------------------------------------------------------------------------
_ACTION_NAMES: dict[int, str] = {
    int(fpb.ACTION_CONTRIBUTE): "contribute",
    int(fpb.ACTION_PARTIAL_DECRYPT): "partial_decrypt",
    int(fpb.ACTION_RANGE_PROOF): "range_proof",
}


class Agent(AgentGovernance):
    """One agency's daemon.

    Parameters
    ----------
    config : AgentConfig
    fetch_wait_ms : int, default 20000
        How long the coordinator may hold a FetchWork long poll.
    backoff_base, backoff_cap : float, default 0.25 and 5.0
        Retry delays in seconds: ``min(cap, base·2^attempt)``, jittered to 50-100 %.
    rpc_timeout : float, default 120.0
        Deadline of uploads and downloads (seconds); short calls use at most 15 s.

    Raises
    ------
    AgentError
        The token, the key share or a dataset cannot be loaded.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        fetch_wait_ms: int = 20_000,
        backoff_base: float = 0.25,
        backoff_cap: float = 5.0,
        rpc_timeout: float = 120.0,
    ) -> None:
        import fedcity.analytics.local
        import fedcity.learn  # noqa: F401  (registers the vetted learning steps)

        self.config = config
        self.fetch_wait_ms = fetch_wait_ms
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.rpc_timeout = rpc_timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        if config.token_file is not None:
            try:
                self._metadata = tuple(bearer_metadata(read_token(config.token_file)))
            except CeremonyError as exc:
                raise AgentError(str(exc)) from exc
        key = _load_agency_key(config.share_file)
        scheme: PaillierScheme | KeyHolderScheme
        if isinstance(key, KeyShare):
            self.share: DecryptionKey | None = key
            self.key_id = key.threshold_key.key_id
            scheme = PaillierScheme(key.threshold_key)
        elif isinstance(key, PrivateKey):
            self.share, self.key_id = key, key.public_key.key_id
            scheme = KeyHolderScheme(key.public_key)
        elif isinstance(key, ThresholdPublicKey):  # outside the decryption committee
            self.share, self.key_id = None, key.key_id
            scheme = PaillierScheme(key)
        else:
            self.share, self.key_id = None, key.key_id
            scheme = KeyHolderScheme(key)
        self._scheme = scheme
        self.randomness: RandomnessPool | None = None
        """Encryption randomness precomputed while idle (``randomness_pool``; None: off)."""
        if config.randomness_pool:
            self.randomness = RandomnessPool(scheme.public_key, config.randomness_pool)
        self._idle = threading.Event()
        """Set while a FetchWork long poll waits: the time the pool is topped up."""
        self._pool_wake = threading.Event()
        """Wakes the precompute thread: idle time began, an upload was noted, or stop."""
        self._upload_sizes: OrderedDict[str, tuple[int, float]] = OrderedDict()
        """Job → (ciphertexts of its last contribution, when): the pool's target."""
        self._sizes_lock = threading.Lock()
        self.federation = self._load_federation(config)
        self._signing_key = self._load_signing_key(config)
        if config.tls_key_file is not None:
            _check_secret(config.tls_key_file, "TLS key file")
        self.audit: AuditLog | None = None
        """The agency's signed audit log (:mod:`fedcity.governance.auditlog`)."""
        self.ledger: Ledger | None = None
        """The privacy-budget ledger, with a ``[policy] budget``."""
        try:
            if config.audit_file is not None:
                self.audit = AuditLog(config.audit_file, config.agency, self._signing_key)
            if config.budget is not None and config.ledger_file is not None:
                self.ledger = Ledger(config.ledger_file)
            self.approvals = (
                ApprovalBook(config.approvals_file) if config.approvals_file is not None else None
            )
        except (AuditError, LedgerError, sqlite3.Error) as exc:
            raise AgentError(str(exc)) from exc
        self._held: dict[tuple[str, int, int], fpb.Assignment] = {}
        """Assignments held until a person approves or denies their job."""
        self._jobs_seen: set[str] = set()
        self._decided: set[str] = set()
        """Jobs whose approval or denial is in the audit log (since the agent started)."""
        tables: dict[str, AgencyDataset] = {}
        for name, dc in config.datasets.items():
            try:
                tables[name] = AgencyDataset.from_path(dc.path, dc.spec, agency=config.agency)
            except DataError as exc:
                raise AgentError(f"dataset {name!r}: {exc}") from exc
        self._tables = tables
        first = next(iter(tables.values()), None)
        self.node = AgencyNode(
            config.agency,
            first,
            scheme,
            share=self.share,
            policy=self._allows,
            verifier=ContributionVerifier(self.federation.signing_keys, self.key_id),
            tables=_query_tables(config),
            dp_floor=config.rules.dp_floor(),  # [policy] floors on each round's DP settings
            randomness=self.randomness,
        )
        if first is not None:
            self.node.datasets = {**tables, "train": first}
        self.served: list[dict[str, Any]] = []
        """Every record written to the task log (also kept when no log file is set)."""
        self.registrations = 0
        self._last_diagnosis = ""
        self._stop = threading.Event()
        self._stop_reason = "the agent was stopped"
        self._running = threading.Event()
        self._wake_heartbeat = threading.Event()
        self._registered = False
        self._heartbeat_s = 5.0
        self._pending: _Outgoing | None = None
        self._sent: OrderedDict[tuple[str, int, int, int], _Outgoing] = OrderedDict()
        self._justifications: dict[tuple[str, int], Justification] = {}
        """Range-audit justifications shown with a re-aggregated round's evidence."""
        self._stub: Any = None
        self._log_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Agent {self.config.agency!r} → {self.config.coordinator}>"

    def _load_federation(self, config: AgentConfig) -> Federation:
        """``federation-public.json``, checked against the key file and the agency's name."""
        try:
            federation = load_federation(config.federation_file)
        except CeremonyError as exc:
            raise AgentError(str(exc)) from exc
        if federation.key_id != self.key_id:
            raise AgentError(
                f"{config.federation_file} describes federation key "
                f"{federation.key_id.hex()}, but {config.share_file} belongs to key "
                f"{self.key_id.hex()}: wrong federation file or wrong key file"
            )
        if config.agency not in federation.agencies:
            raise AgentError(
                f"agency {config.agency!r} is not a member of the federation in "
                f"{config.federation_file} (members: {sorted(federation.agencies)})"
            )
        index = federation.agencies[config.agency]
        held = self.share.index if isinstance(self.share, KeyShare) else None
        if held is not None and held != index:
            owner = next((a for a, i in federation.agencies.items() if i == held), "no agency")
            raise AgentError(
                f"{config.share_file} holds key share {held}, which {config.federation_file} "
                f"assigns to {owner!r}, not to {config.agency!r}: use {config.agency}'s own "
                f"share.json (agencies/{config.agency}/ from the key ceremony)"
            )
        if isinstance(self.share, PrivateKey) and federation.key_holder != config.agency:
            raise AgentError(
                f"{config.share_file} is the federation's private key, which belongs to the key "
                f"holder {federation.key_holder!r}, not to {config.agency!r}: use "
                f"{config.agency}'s own public-key.json"
            )
        return federation

    def _load_signing_key(self, config: AgentConfig) -> SigningKey:
        """The agency's signing key; it must be the one the federation file lists for it."""
        _check_secret(config.signing_key_file, "signing-key file")
        try:
            owner, key = SigningKey.load(config.signing_key_file)
        except CryptoError as exc:
            raise AgentError(str(exc)) from exc
        if owner != config.agency:
            raise AgentError(
                f"{config.signing_key_file} is the signing key of agency {owner!r}, not of "
                f"{config.agency!r}"
            )
        if self.federation.signing_keys.get(config.agency) != key.public_key:
            raise AgentError(
                f"{config.signing_key_file} does not match the public signing key "
                f"{config.federation_file} lists for {config.agency!r}: wrong key file or "
                "wrong federation"
            )
        return key

    def _allows(self, task: Task) -> bool:
        """The agency's policy; a refusal with a specific reason raises it."""
        kind = task.request.kind
        if kind not in self.config.allowed_kinds:
            return False
        if kind.startswith("query."):
            spec = task.request.params.get("spec")
            disclosure = spec.get("disclosure") if isinstance(spec, dict) else None
            asked = disclosure.get("min_count") if isinstance(disclosure, dict) else None
            floor = self.config.min_cell_count
            if not isinstance(asked, int) or asked < floor:
                raise RejectedContribution(
                    f"agency {self.config.agency!r}: policy requires released cells of at "
                    f"least {floor} rows (min_cell_count); the query allows {asked!r}"
                )
        return True

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self, reason: str = "the agent was stopped") -> None:
        """Ask :meth:`run` to return (from any thread); an agent does not run again.

        On its way out the agent tells the coordinator (``Leave``), so that its running jobs
        go on without it at once rather than after the liveness timeout.
        """
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()
        self._wake_heartbeat.set()
        self._pool_wake.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when run in the main thread).

        Parameters
        ----------
        handle_signals : bool, default True
            In the main thread, make SIGTERM and SIGINT call :meth:`stop` while running.

        Raises
        ------
        AgentError
            The coordinator serves another threshold key, or refuses this agency's token.
        """
        with self._signals(handle_signals):
            try:
                channel = open_channel(
                    self.config.coordinator,
                    ca_file=self.config.ca_file,
                    insecure=self.config.insecure,
                    cert_file=self.config.tls_cert_file,
                    key_file=self.config.tls_key_file,
                )
            except OSError as exc:
                raise AgentError(f"cannot read CA file {self.config.ca_file}: {exc}") from exc
            except ValueError as exc:
                raise AgentError(str(exc)) from exc
            self._stub = fpb_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            pool = None
            if self.config.crypto_workers > 1:
                pool = WorkerPool(self.config.crypto_workers)
                self._scheme.pool = pool
            self._running.set()
            beat = threading.Thread(
                target=self._heartbeats, name=f"heartbeat-{self.config.agency}", daemon=True
            )
            beat.start()
            precompute = None
            if self.randomness is not None:
                precompute = threading.Thread(
                    target=self._precompute, name=f"precompute-{self.config.agency}", daemon=True
                )
                precompute.start()
            try:
                if pool is not None:  # start the workers and build their key tables now
                    pool.warm_up(self._scheme.public_key)
                    log.info("%d crypto worker processes ready", pool.workers)
                self._loop()
            finally:
                self._running.clear()
                self._wake_heartbeat.set()
                self._pool_wake.set()
                beat.join(timeout=5)  # no heartbeat may follow the goodbye
                if precompute is not None:
                    precompute.join(timeout=5)
                if self.randomness is not None:
                    self.randomness.clear()  # an agent does not run again: drop the secrets
                if self._registered and self._stop.is_set():
                    self._leave()
                self._registered = False
                channel.close()
                if pool is not None:
                    self._scheme.pool = None
                    pool.close()
                for book in (self.audit, self.ledger, self.approvals):
                    if book is not None:
                        book.close()
                log.info("agent %s stopped", self.config.agency)

    def _leave(self) -> None:
        """Tell the coordinator this agency leaves its running jobs (best effort, 2 s)."""
        try:
            reply = self._stub.Leave(
                fpb.LeaveRequest(agency=self.config.agency, reason=self._stop_reason),
                timeout=2.0,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            log.info("could not tell the coordinator that this agent stops: %s", exc.code())
            return
        if reply.jobs_left:
            log.info("left %d running job(s) on the way out", reply.jobs_left)

    @contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            # not self.stop() here: the interrupted main thread may hold the lock of the
            # very Event it would set (threading primitives are not reentrant)
            name = signal.Signals(signum).name
            threading.Thread(
                target=self.stop,
                args=(f"the agent received {name}",),
                name="agent-stop",
                daemon=True,
            ).start()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** min(attempt, 30))
        return delay * random.uniform(0.5, 1.0)

    def _loop(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if not self._registered:
                    self._register()
                if self._pending is not None:
                    self._deliver(self._pending)
                self._release_held()
                self._poll()
                attempt = 0
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code, details = exc.code(), exc.details() or ""
                if code in FATAL_CODES or code == grpc.StatusCode.ALREADY_EXISTS:
                    raise AgentError(
                        f"coordinator {self.config.coordinator} refused agency "
                        f"{self.config.agency!r}: {code.name}: {details}"
                    ) from None
                explained = self._explain(code, details)
                self._registered = False
                delay = max(self._backoff(attempt), _retry_after(exc))
                attempt += 1
                log.warning(
                    "coordinator %s: %s; retrying in %.1f s",
                    self.config.coordinator,
                    explained or f"{code.name} ({details})",
                    delay,
                )
                self._stop.wait(delay)

    def _explain(self, code: grpc.StatusCode, details: str) -> str | None:
        """A connection failure in one sentence; AgentError when retrying cannot help."""
        low = details.lower()
        if code != grpc.StatusCode.UNAVAILABLE or not any(
            m in low for m in ("failed to connect", "socket closed", "handshake", "connection")
        ):
            return None
        diagnosis = diagnose_connection(
            self.config.coordinator,
            details,
            insecure=self.config.insecure,
            ca_file=self.config.ca_file,
        )
        if diagnosis is None:
            return None
        # fatal only before the first registration, and when seen twice in a row: a
        # coordinator that is restarting must not stop an agent that had worked
        if diagnosis.fatal and not self.registrations:
            if self._last_diagnosis == diagnosis.message:
                raise AgentError(f"agency {self.config.agency!r}: {diagnosis.message}")
            self._last_diagnosis = diagnosis.message
        return diagnosis.message

    # -- calls ----------------------------------------------------------------------------------
    def _register(self) -> None:
        request = fpb.RegisterRequest(
            agency=self.config.agency,
            datasets=[
                fpb.DatasetInfo(name=name, feature_spec_json=feature_spec_to_json(dc.spec))
                for name, dc in self.config.datasets.items()
            ],
            tables=[
                fpb.TableInfo(name=name, schema_json=table_schema_to_json(name, tc.columns))
                for name, tc in self.config.tables.items()
            ],
            software_version=fedcity.__version__,
            task_kinds=sorted(self.config.allowed_kinds),
            min_set_difference=self.config.rules.min_set_difference,
        )
        response = self._stub.Register(request, timeout=15.0, metadata=self._metadata)
        ours = self.key_id
        if bytes(response.key_id) != ours:
            theirs = bytes(response.key_id).hex() or "(none)"
            raise AgentError(
                f"coordinator {self.config.coordinator} serves federation key {theirs}, but "
                f"{self.config.share_file} belongs to key {ours.hex()}: wrong federation "
                "or wrong key file"
            )
        if response.heartbeat_interval_ms:
            self._heartbeat_s = max(response.heartbeat_interval_ms / 1000.0, 0.05)
        self._registered = True
        self._wake_heartbeat.set()  # restart the heartbeat clock with the coordinator's interval
        self.registrations += 1
        log.info(
            "agency %s registered with %s (key %s, %d dataset(s), %d table(s))",
            self.config.agency,
            self.config.coordinator,
            ours.hex()[:16],
            len(self.config.datasets),
            len(self.config.tables),
        )

    def _heartbeats(self) -> None:
        while True:
            woken = self._wake_heartbeat.wait(self._heartbeat_s)
            self._wake_heartbeat.clear()
            if self._stop.is_set() or not self._running.is_set():
                return
            if woken or not self._registered:
                continue
            try:
                response = self._stub.Heartbeat(
                    fpb.HeartbeatRequest(agency=self.config.agency),
                    timeout=min(15.0, max(self._heartbeat_s, 1.0)),
                    metadata=self._metadata,
                )
            except grpc.RpcError as exc:
                log.debug("heartbeat failed: %s", exc.code())
            except ValueError:  # the channel closed under us while stopping
                return
            else:
                if response.heartbeat_interval_ms:
                    self._heartbeat_s = max(response.heartbeat_interval_ms / 1000.0, 0.05)

    def _poll(self) -> None:
        """One FetchWork long poll; serves what it returns."""
        future = self._stub.FetchWork.future(
            fpb.FetchWorkRequest(agency=self.config.agency, wait_ms=self.fetch_wait_ms),
            timeout=self.fetch_wait_ms / 1000.0 + 15.0,
            metadata=self._metadata,
        )
        done = threading.Event()

        def finished(_f: Any) -> None:
            self._idle.clear()  # work (or an answer) arrived: stop precomputing at once
            done.set()

        self._idle.set()
        self._pool_wake.set()
        future.add_done_callback(finished)
        try:
            while not done.wait(0.2):  # wakes regularly so signals and stop() are seen
                if self._stop.is_set():
                    future.cancel()
                    return
        finally:
            self._idle.clear()
        if future.cancelled():
            return
        response = future.result()  # raises grpc.RpcError on failure
        if response.HasField("assignment"):
            self._serve(response.assignment)
        elif response.retry_after_ms:
            self._stop.wait(response.retry_after_ms / 1000.0)

    def _serve(self, a: fpb.Assignment) -> None:
        key = (a.job_id, a.round, int(a.action), int(a.attempt))
        previous = self._sent.get(key)
        if previous is not None:  # the same assignment again: resend the same bytes
            log.info("job %s round %d: assignment repeated; re-sending", a.job_id, a.round)
            self._pending = previous
            self._deliver(previous)
            return
        start = time.perf_counter()
        out = _Outgoing(a.job_id, int(a.round), int(a.action), a.kind, attempt=int(a.attempt))
        try:
            self._audit_job(a)
            if self._hold_for_approval(a):
                return
            if a.action == fpb.ACTION_CONTRIBUTE:
                task = assignment_to_task(a)
                if not task.request.kind.startswith("query."):  # queries name their table
                    self._select_dataset(a.dataset)
                self.node.check_dp(task, declared_epsilon=self._declared_epsilon(a))
                self._charge(a, task)  # before anything is computed
                demand = self.randomness.requested if self.randomness is not None else 0
                out.payload = self.node.contribute(task)
                self._note_upload(a.job_id, demand)
                out.payload_kind = fpb.PAYLOAD_KIND_CONTRIBUTION
                if self.approvals is not None and a.HasField("job"):
                    self.approvals.served(JobFacts.from_proto(a.job_id, a.dataset, a.job))
            elif a.action == fpb.ACTION_PARTIAL_DECRYPT:
                task = assignment_to_task(a)
                if not self._allows(task):
                    raise RejectedContribution(
                        f"agency {self.config.agency!r}: policy refuses {a.kind!r}"
                    )
                aggregate = self._fetch_aggregate(a)
                evidence = self._fetch_evidence(a, len(aggregate))
                out.payload = self.node.decrypt_share(
                    task,
                    aggregate,
                    summands_min=max(int(a.summands_min), self.config.min_summands),
                    evidence=evidence,
                    justification=self._justifications.pop((a.job_id, int(a.round)), None),
                    # decryption groups: only this part is checked and decrypted
                    part=(int(a.part_start), int(a.part_stop)) if a.part_stop else None,
                )
                out.payload_kind = fpb.PAYLOAD_KIND_PARTIAL
                out.verified = self.node.verified.pop()[2]
            elif a.action == fpb.ACTION_RANGE_PROOF:  # a range audit (fedcity.core.audit)
                task = assignment_to_task(a)
                answer = self.node.answer_range_audit(
                    task,
                    self._fetch_audit_evidence(a),
                    signing_key=self._signing_key,
                    key_id=self.key_id,
                )
                out.payload = rangeaudit.answer_to_bytes(answer)
                out.payload_kind = fpb.PAYLOAD_KIND_RANGE_PROOF
            else:
                raise MessageError(f"unknown action {int(a.action)}")
        except grpc.RpcError:
            raise
        except (MessageError, RejectedContribution) as exc:
            out.reason = str(exc)
        except Exception as exc:  # a failing step must not take the daemon down
            log.exception("job %s round %d: %s failed", a.job_id, a.round, a.kind)
            out.reason = (
                f"agency {self.config.agency!r}: {a.kind or 'the task'} failed locally "
                f"({type(exc).__name__}); details are in the agency's log"
            )
        if not out.payload and not out.reason:
            out.reason = f"agency {self.config.agency!r}: the local step produced no payload"
        if a.action == fpb.ACTION_RANGE_PROOF and not out.payload:
            # not a departure: an audit the agency cannot justify or prove goes unanswered
            # (the coordinator's decision rule decides what silence means)
            log.warning(
                "job %s round %d: range audit not answered: %s", a.job_id, a.round, out.reason
            )
            return
        if out.payload:
            out.signature = sign_upload(
                self._signing_key,
                out.payload,
                job_id=out.job_id,
                round=out.round,
                kind=out.payload_kind,
                agency=self.config.agency,
                key_id=self.key_id,
            )
        self._audit_outgoing(out)
        out.seconds = time.perf_counter() - start
        self._remember(out)
        self._pending = out
        self._deliver(out)

    # -- precomputed randomness ----------------------------------------------------------------
    def _note_upload(self, job_id: str, demand_before: int) -> None:
        """Remember how many ciphertexts a job's contribution took (the pool's next target)."""
        if self.randomness is None:
            return
        used = self.randomness.requested - demand_before
        if used > 0:
            with self._sizes_lock:
                self._upload_sizes[job_id] = (used, time.monotonic())
                self._upload_sizes.move_to_end(job_id)
                while len(self._upload_sizes) > _POOL_JOBS:
                    self._upload_sizes.popitem(last=False)
            self._pool_wake.set()

    def pool_target(self) -> int:
        """Pairs the pool should hold: the recent uploads' ciphertexts, at most its bound."""
        if self.randomness is None:
            return 0
        horizon = time.monotonic() - POOL_HORIZON_S
        with self._sizes_lock:
            recent = sum(n for n, when in self._upload_sizes.values() if when >= horizon)
        return min(recent, self.randomness.max_size)

    def _precompute(self) -> None:
        """Top the randomness pool up while the agent waits for work (a background thread)."""
        pool = self.randomness
        if pool is None:
            return
        _lower_thread_priority()

        def interrupted() -> bool:
            return self._stop.is_set() or not self._idle.is_set()

        while not self._stop.is_set() and self._running.is_set():
            target = self.pool_target()
            if not self._idle.is_set() or len(pool) >= target:
                self._pool_wake.wait(0.5)
                self._pool_wake.clear()
                continue
            try:
                pool.fill_to(target, max_seconds=1.0, stop=interrupted)
            except Exception:  # never take the daemon down; encryption falls back to fresh
                log.exception("precomputing encryption randomness failed; stopping it")
                return

    def _select_dataset(self, name: str) -> None:
        """Make the job's dataset the node's ``"train"`` table (default: the first one)."""
        if not name and self._tables:
            name = next(iter(self._tables))
        table = self._tables.get(name)
        if table is None:
            raise RejectedContribution(
                f"agency {self.config.agency!r} offers no dataset {name!r} "
                f"(it offers {sorted(self._tables)})"
            )
        self.node.dataset = table
        self.node.datasets = {**self._tables, "train": table}

    def _fetch_aggregate(self, a: fpb.Assignment) -> bytes:
        stream = self._stub.FetchAggregate(
            fpb.AggregateRef(job_id=a.job_id, round=a.round),
            timeout=self.rpc_timeout,
            metadata=self._metadata,
        )
        header, payload = assemble(stream)
        if header.kind != fpb.PAYLOAD_KIND_AGGREGATE:
            raise MessageError(f"expected an aggregate, got payload kind {header.kind}")
        if header.job_id != a.job_id or header.round != a.round:
            raise MessageError(
                f"asked for the aggregate of job {a.job_id} round {a.round}, got job "
                f"{header.job_id} round {header.round}"
            )
        return payload

    def _fetch_audit_evidence(self, a: fpb.Assignment) -> OutOfRange:
        """The evidence that a round this agency contributed to decrypts out of range."""
        members = len(self.federation.agencies)
        task = assignment_to_task(a)
        pk = self._scheme.public_key
        aggregate = task.spec.n_ciphertexts(task.vector_length) * pk.ciphertext_bytes + 4096
        bound = rangeaudit.audit_bound(aggregate, members, rangeaudit.proof_bound(pk, task))
        stream = self._stub.FetchAuditEvidence(
            fpb.AggregateRef(job_id=a.job_id, round=a.round),
            timeout=self.rpc_timeout,
            metadata=self._metadata,
        )
        header, payload = assemble(stream, max_bytes=bound)
        if header.kind != fpb.PAYLOAD_KIND_AUDIT_EVIDENCE:
            raise MessageError(f"expected range-audit evidence, got payload kind {header.kind}")
        evidence = rangeaudit.out_of_range_from_bytes(payload, max_agencies=members)
        if evidence.job_id != a.job_id or evidence.round != a.round:
            raise MessageError(
                f"asked for the range-audit evidence of job {a.job_id} round {a.round}, got "
                f"job {evidence.job_id} round {evidence.round}"
            )
        return evidence

    def _fetch_evidence(self, a: fpb.Assignment, aggregate_bytes: int) -> Evidence:
        """The round's signed contributions, bounded by the federation's size."""
        members = len(self.federation.agencies)
        stream = self._stub.FetchContributions(
            fpb.AggregateRef(job_id=a.job_id, round=a.round),
            timeout=self.rpc_timeout,
            metadata=self._metadata,
        )
        bound = evidence_bound(aggregate_bytes, members)
        max_proof = 0
        if a.attempt:  # a re-aggregated round: its evidence carries a range-audit justification
            max_proof = rangeaudit.proof_bound(self._scheme.public_key, assignment_to_task(a))
            bound += rangeaudit.audit_bound(aggregate_bytes, members, max_proof)
        header, payload = assemble(stream, max_bytes=bound)
        if header.kind != fpb.PAYLOAD_KIND_EVIDENCE:
            raise MessageError(f"expected contribution evidence, got payload kind {header.kind}")
        if header.job_id != a.job_id or header.round != a.round:
            raise MessageError(
                f"asked for the contributions of job {a.job_id} round {a.round}, got job "
                f"{header.job_id} round {header.round}"
            )
        evidence = evidence_from_bytes(payload, max_contributions=members)
        if a.attempt:
            msg = fpb.ContributionEvidence.FromString(payload)  # parsed above: valid
            if msg.HasField("justification"):
                self._justifications[(a.job_id, int(a.round))] = (
                    rangeaudit.justification_from_proto(
                        msg.justification, max_agencies=members, max_proof=max_proof
                    )
                )
                while len(self._justifications) > 16:
                    del self._justifications[next(iter(self._justifications))]
        return evidence

    def _remember(self, out: _Outgoing) -> None:
        self._sent[out.key] = out
        while len(self._sent) > 16:
            self._sent.popitem(last=False)

    def _deliver(self, out: _Outgoing) -> None:
        """Upload or decline; keeps ``out`` pending while the coordinator is away."""
        start = time.perf_counter()
        response: Any = None
        try:
            if out.declined:
                self._stub.Decline(
                    fpb.DeclineRequest(
                        agency=self.config.agency,
                        job_id=out.job_id,
                        round=out.round,
                        reason=out.reason,
                    ),
                    timeout=15.0,
                    metadata=self._metadata,
                )
                outcome = "declined"
            else:
                response = self._stub.Upload(
                    chunks(
                        out.payload,
                        job_id=out.job_id,
                        round=out.round,
                        agency=self.config.agency,
                        kind=out.payload_kind,
                        signature=out.signature,
                    ),
                    timeout=self.rpc_timeout,
                    metadata=self._metadata,
                )
                outcome = "uploaded" if response.stored else "already_stored"
        except grpc.RpcError as exc:
            code = exc.code()
            if code in RETRYABLE_CODES or code in FATAL_CODES:
                raise  # stays pending; the main loop backs off and re-sends
            out.failures += 1
            if code not in REJECTION_CODES and out.failures < MAX_DELIVERY_ATTEMPTS:
                raise  # e.g. CANCELLED by a coordinator shutting down: try again
            self._pending = None
            log.warning(
                "job %s round %d: the coordinator rejected our %s: %s: %s",
                out.job_id,
                out.round,
                "refusal" if out.declined else "upload",
                exc.code().name,
                exc.details(),
            )
            self._record(out, "rejected", time.perf_counter() - start, error=exc.details())
            return
        self._pending = None
        self._record(out, outcome, time.perf_counter() - start)
        if not out.declined and response.HasField("audit"):
            self._audit_anchor(out, response.stored, response.audit)

    # -- task log -------------------------------------------------------------------------------
    def _record(self, out: _Outgoing, outcome: str, send_seconds: float, **extra: Any) -> None:
        entry: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "agency": self.config.agency,
            "job": out.job_id,
            "round": out.round,
            "kind": out.kind,
            "action": _ACTION_NAMES.get(out.action, str(out.action)),
            "outcome": outcome,
            "seconds": round(out.seconds + send_seconds, 6),
            "bytes": len(out.payload),
        }
        if out.reason:
            entry["reason"] = out.reason
        if out.verified:  # the contributions checked before decrypting (by SHA-256)
            entry["contributions"] = out.verified
        entry.update({k: v for k, v in extra.items() if v})
        self.served.append(entry)
        level = logging.INFO if outcome in ("uploaded", "already_stored") else logging.WARNING
        log.log(
            level,
            "job %s round %d %s %s: %s%s",
            out.job_id,
            out.round,
            entry["action"],
            out.kind,
            outcome,
            f" ({out.reason})" if out.reason else "",
        )
        if self.config.log_file is None:
            return
        line = json.dumps(entry, sort_keys=True, allow_nan=False) + "\n"
        with self._log_lock:
            try:
                self.config.log_file.parent.mkdir(parents=True, exist_ok=True)
                with self.config.log_file.open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                log.error("cannot write task log %s: %s", self.config.log_file, exc)
