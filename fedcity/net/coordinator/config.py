"""The coordinator's settings, status errors and Prometheus metrics."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedcity.net import messages

__all__ = [
    "AGENT_SERVICE",
    "JOB_SERVICE",
    "RECONNECT_GRACE",
    "CoordinatorConfig",
    "CoordinatorMetrics",
    "StatusError",
]

AGENT_SERVICE = "fedcity.v1.AgentService"
JOB_SERVICE = "fedcity.v1.JobService"

RECONNECT_GRACE = 15.0
"""Seconds after start before an agency never heard from counts as gone."""

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
    audit_timeout : float
        Contributors have this long to answer a range audit (a round whose aggregate decrypted
        out of range, :mod:`fedcity.core.audit`) with their signed range proof.
    max_wait : float
        Cap on a FetchWork long poll.
    tick_interval : float
        How often timeouts are checked.
    max_workers : int
        gRPC worker threads (each long poll holds one).
    max_upload_bytes : int
        Largest payload an upload may announce (a job's round allows less: see
        :func:`~fedcity.net.messages.expected_payload_bytes`).
    stall_threshold : float, optional
        A gap longer than this between two readings of the coordinator's clock is its own
        stall, left out of every deadline (default ``max(1 s, 4 tick intervals)``).
    max_streams : int, optional
        Long-lived calls (job watches, work long polls, uploads, aggregate downloads) served
        at once in total; further ones are refused with ``RESOURCE_EXHAUSTED`` so that
        heartbeats and health checks always find a worker thread (default: half of
        ``max_workers``).
    max_streams_per_principal : int, optional
        Long-lived calls one agency or data scientist may hold at once (default
        ``min(8, max_streams)``).
    upload_timeout : float
        An upload (or aggregate download) that has not finished after this many seconds is
        cancelled.
    ca_dir : path, optional
        The federation's CA folder (``fedcity ca init``). With it every connection is mutual
        TLS: callers are identified by the client certificate the CA issued them (bearer
        tokens are not accepted), revocations take effect on the next call, and invited
        principals enroll on ``enroll_listen``.
    enroll_listen : str, optional
        ``host:port`` of the enrollment port (server TLS only; only ``Enroll`` answers there).
    certificate_days : int
        Lifetime of the certificates the coordinator issues.
    min_cell_count : int
        The federation's floor for query cells: a query whose ``min_count`` is lower is
        refused at submission (each agency's policy may raise it further, never lower it).
    dashboard_port : int, optional
        Serve the read-only web dashboard (:mod:`fedcity.dashboard`) on
        ``dashboard_host:dashboard_port`` (HTTPS with the coordinator's certificate, or plain
        HTTP with ``insecure`` on loopback only); 0 picks a free port; None (default): off.
    dashboard_host : str
        The dashboard's bind address.
    rate_limits : mapping of str to (float, int), optional
        Per rate class (``heartbeat``, ``call``, ``transfer``, ``submit``, ``anonymous``):
        sustained calls per second and burst allowed to one principal (``anonymous``: to one
        peer address without credentials); classes not given keep
        :data:`~fedcity.net.coordinator.limits.DEFAULT_RATES`. Calls past the limit are
        refused with ``RESOURCE_EXHAUSTED`` naming it and when to retry.
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
    audit_timeout: float = 120.0
    max_wait: float = 10.0
    tick_interval: float = 0.5
    max_workers: int = 64
    max_upload_bytes: int = messages.MAX_PAYLOAD_BYTES
    stall_threshold: float | None = None
    max_streams: int | None = None
    max_streams_per_principal: int | None = None
    upload_timeout: float = 300.0
    min_cell_count: int = 10
    ca_dir: str | os.PathLike[str] | None = None
    enroll_listen: str | None = None
    certificate_days: int = 90
    dashboard_port: int | None = None
    dashboard_host: str = "127.0.0.1"
    rate_limits: Mapping[str, tuple[float, int]] | None = None

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_interval",
            "collect_timeout",
            "decrypt_timeout",
            "audit_timeout",
            "tick_interval",
            "upload_timeout",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.liveness_timeout is None:
            self.liveness_timeout = 3.0 * self.heartbeat_interval
        elif not self.liveness_timeout > 0:
            raise ValueError(f"liveness_timeout must be positive, got {self.liveness_timeout}")
        if not self.max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0, got {self.max_wait}")
        if isinstance(self.min_cell_count, bool) or not (
            isinstance(self.min_cell_count, int) and self.min_cell_count >= 1
        ):
            raise ValueError(
                f"min_cell_count must be a positive integer, got {self.min_cell_count!r}"
            )
        if self.max_workers < 4:
            raise ValueError(f"max_workers must be at least 4, got {self.max_workers}")
        if self.stall_threshold is None:
            self.stall_threshold = max(1.0, 4.0 * self.tick_interval)
        elif not self.stall_threshold > self.tick_interval:
            raise ValueError(
                f"stall_threshold must exceed tick_interval ({self.tick_interval}), "
                f"got {self.stall_threshold}"
            )
        if self.max_streams is None:
            self.max_streams = self.max_workers // 2
        elif not 1 <= self.max_streams <= self.max_workers - 2:
            raise ValueError(
                f"max_streams must lie in [1, max_workers - 2 = {self.max_workers - 2}] so that "
                f"short calls always find a thread, got {self.max_streams}"
            )
        if self.max_streams_per_principal is None:
            self.max_streams_per_principal = min(8, self.max_streams)
        elif not 1 <= self.max_streams_per_principal <= self.max_streams:
            raise ValueError(
                f"max_streams_per_principal must lie in [1, max_streams = {self.max_streams}], "
                f"got {self.max_streams_per_principal}"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must lie in [0, 65535], got {self.metrics_port}")
        if self.dashboard_port is not None and (
            isinstance(self.dashboard_port, bool)
            or not isinstance(self.dashboard_port, int)
            or not 0 <= self.dashboard_port <= 65535
        ):
            raise ValueError(f"dashboard_port must lie in [0, 65535], got {self.dashboard_port!r}")
        from fedcity.net.coordinator.limits import check_rate

        for name, (rate, burst) in (self.rate_limits or {}).items():
            check_rate(name, rate, burst)
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

    @property
    def stall(self) -> float:
        """The effective stall threshold in seconds."""
        assert self.stall_threshold is not None
        return float(self.stall_threshold)

    @property
    def stream_limits(self) -> tuple[int, int]:
        """The effective ``(max_streams, max_streams_per_principal)``."""
        assert self.max_streams is not None and self.max_streams_per_principal is not None
        return self.max_streams, self.max_streams_per_principal


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
        self.rate_limited = Counter(
            "fedcity_rate_limited",
            "Calls refused by a rate limit, by rate class",
            ["rate_class"],
            registry=r,
        )
        self.storage_paused = Gauge(
            "fedcity_storage_paused",
            "1 while a failed write keeps every job paused (disk full, I/O error)",
            registry=r,
        )
