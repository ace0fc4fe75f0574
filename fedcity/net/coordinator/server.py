"""The running coordinator process: gRPC server, ticker thread, metrics, and its CLI."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from fedcity.net import messages
from fedcity.net.auth import (
    Authenticator,
    AuthError,
    AuthInterceptor,
    CertificateCheck,
    check_listen_address,
    load_credentials,
    server_credentials,
)
from fedcity.net.ceremony import CeremonyError, load_federation
from fedcity.net.coordinator.config import (
    AGENT_SERVICE,
    JOB_SERVICE,
    CoordinatorConfig,
    CoordinatorMetrics,
)
from fedcity.net.coordinator.core import Coordinator
from fedcity.net.coordinator.enroll import EnrollmentServicer
from fedcity.net.coordinator.limits import DEFAULT_RATES, RateLimiter, StreamLimiter, parse_rate
from fedcity.net.coordinator.servicers import (
    DecodeInterceptor,
    HealthServicer,
    RateLimitInterceptor,
    _Servicers,
)
from fedcity.net.store import Store, StoreError
from fedcity.secretfiles import SecretFileError, check_private
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = ["CoordinatorServer", "main", "serve"]

log = logging.getLogger("fedcity.net.coordinator")

MAX_STREAMS_PER_CONNECTION = 128
"""HTTP/2 streams one client connection may hold open at once."""


class CoordinatorServer:
    """A running coordinator: gRPC server, ticker thread, metrics endpoint, store.

    Build it with :func:`serve`. Attributes: ``port`` (the bound port), ``metrics_port``
    (the bound metrics port, 0 if off), ``dashboard_port`` (the bound dashboard port, 0 if
    off), ``coordinator`` (the :class:`Coordinator`), ``store`` and ``metrics``.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] | None = None,
        rate_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        _check_files(config)  # one sentence for a swapped TLS pair or a missing --db folder
        host, port = check_listen_address(config.listen, insecure=config.insecure)
        if config.insecure and (config.tls_cert or config.tls_key):
            raise AuthError("give either --insecure or --tls-cert/--tls-key, not both")
        credentials = enroll_credentials = None
        self._enrollment: tuple[Any, Any] | None = None
        self._tls_files: tuple[Any, Any] = (config.tls_cert, config.tls_key)
        """The server certificate and key in use (the dashboard serves HTTPS with them)."""
        if config.ca_dir is not None:
            credentials, enroll_credentials = self._mutual_tls(config)
        elif not config.insecure:
            if not (config.tls_cert and config.tls_key):
                raise AuthError(
                    "TLS is required: give --tls-cert and --tls-key (or --insecure on a "
                    "loopback address for local tests)"
                )
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        self.federation = load_federation(config.federation)
        self.auth: Authenticator
        if self._enrollment is not None:
            ca, registry = self._enrollment
            tokens = (
                load_credentials(config.credentials)
                if config.credentials and Path(config.credentials).is_file()
                else []
            )
            checker = CertificateCheck(registry.is_revoked)
            self.auth = Authenticator(tokens, certificates=checker)
        else:
            self.auth = Authenticator(load_credentials(config.credentials))
        for p in self.auth.principals:
            if p.role == "agency" and p.name not in self.federation.agencies:
                log.warning("credentials name agency %r, which holds no key share", p.name)
        self.metrics = CoordinatorMetrics()
        self.store = Store(config.db)
        try:
            self.coordinator = Coordinator(
                self.federation, self.store, config, self.metrics, clock=clock
            )
            self.coordinator.recover()
            self.health = HealthServicer()
            interceptors: list[Any] = [DecodeInterceptor()]
            if self.auth.certificates is None:  # tokens: authentication first, strangers
                # learn nothing about requests (under mutual TLS the handshake does that)
                interceptors.insert(
                    0,
                    AuthInterceptor(
                        self.auth,
                        {AGENT_SERVICE: "agency", JOB_SERVICE: ("scientist", "operator")},
                    ),
                )
            # outermost: every call, authenticated or not, takes a token of its caller first
            self.rate_limiter = RateLimiter(config.rate_limits, clock=rate_clock or _monotonic)
            interceptors.insert(0, RateLimitInterceptor(self.auth, self.rate_limiter, self.metrics))
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
                    # streams one connection may open at once (health watches included)
                    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                ],
            )
            self.limiter = StreamLimiter(*config.stream_limits)
            servicers = _Servicers(self.coordinator, self.auth, self.limiter)
            fpb_grpc.add_AgentServiceServicer_to_server(servicers, self._server)  # type: ignore[no-untyped-call]
            fpb_grpc.add_JobServiceServicer_to_server(servicers, self._server)  # type: ignore[no-untyped-call]
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
            if self._enrollment is not None:
                assert self.auth.certificates is not None
                ca, registry = self._enrollment
                fpb_grpc.add_EnrollmentServiceServicer_to_server(
                    EnrollmentServicer(
                        ca,
                        registry,
                        self.auth.certificates,
                        days=config.certificate_days,
                        audit=self.coordinator._audit,
                    ),
                    self._server,
                )
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
            self.enroll_port = 0
            if enroll_credentials is not None and config.enroll_listen:
                ehost, eport = check_listen_address(config.enroll_listen, insecure=False)
                eaddress = f"[{ehost}]:{eport}" if ":" in ehost else f"{ehost}:{eport}"
                try:
                    self.enroll_port = self._server.add_secure_port(eaddress, enroll_credentials)
                except RuntimeError as exc:
                    raise OSError(f"cannot listen on {config.enroll_listen}: {exc}") from exc
        except BaseException:
            self.store.close()
            if self._enrollment is not None:
                self._enrollment[1].close()
            raise
        self.port: int = bound
        self.metrics_port = 0
        self._httpd: Any = None
        self.dashboard_port = 0
        self._dashboard: Any = None
        self._ticker = threading.Thread(target=self._tick_loop, name="fedcity-ticker", daemon=True)
        self._stop_ticker = threading.Event()
        self._stopped = False

    def _mutual_tls(self, config: CoordinatorConfig) -> tuple[Any, Any]:
        """Credentials of the main port (mutual TLS) and the enrollment port (server TLS).

        Loads the CA and its enrollment registry from the CA folder.
        """
        from fedcity.governance.ca import CAError
        from fedcity.governance.enrollment import CADirectory, EnrollmentRegistry

        if config.insecure:
            raise AuthError("--ca-dir (mutual TLS) and --insecure exclude each other")
        folder = CADirectory(Path(config.ca_dir))  # type: ignore[arg-type]
        try:
            ca = folder.authority()
        except CAError as exc:
            raise AuthError(str(exc)) from exc
        cert = config.tls_cert or folder.server_cert
        key = config.tls_key or folder.server_key
        self._tls_files = (cert, key)
        if Path(key).exists():
            _check_secret(key, "TLS key file")
        self._enrollment = (ca, EnrollmentRegistry(folder.registry))
        return server_credentials(cert, key, folder.ca_cert), server_credentials(cert, key)

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
            if self.config.dashboard_port is not None:
                from fedcity.dashboard import DashboardServer  # the web stack only when asked

                self._dashboard = DashboardServer(
                    self.coordinator,
                    self.auth,
                    host=self.config.dashboard_host,
                    port=self.config.dashboard_port,
                    tls=None if self.config.insecure else self._tls_files,
                ).start()
                self.dashboard_port = self._dashboard.port
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
            "plaintext"
            if self.config.insecure
            else "mutual TLS"
            if self._enrollment is not None
            else "TLS",
            self.federation.key_id.hex(),
        )
        return self

    def _tick_loop(self) -> None:
        while not self._stop_ticker.wait(self.config.tick_interval):
            try:
                self.limiter.expire()
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
        if self._dashboard is not None:
            self._dashboard.stop()
        self.coordinator.close()
        if self._enrollment is not None:
            self._enrollment[1].close()
        log.info("coordinator stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True if it stopped."""
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> CoordinatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_secret(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a secret its group or others may read or write (the coordinator does not start)."""
    try:
        check_private(path, what)
    except SecretFileError as exc:
        raise AuthError(str(exc)) from exc


def _check_files(config: CoordinatorConfig) -> None:
    """Refuse, in one sentence each, a swapped or mismatched TLS pair and a missing --db folder."""
    import contextlib
    from pathlib import Path as _Path

    from fedcity.net.channel import check_tls_pair

    if not config.insecure and config.tls_cert and config.tls_key:
        with contextlib.suppress(OSError):  # server_credentials names an unreadable file
            check_tls_pair(config.tls_cert, config.tls_key)
    if not config.insecure and config.tls_key and _Path(config.tls_key).exists():
        _check_secret(config.tls_key, "TLS key file (--tls-key)")
    db = _Path(config.db)
    if db.is_file():
        try:
            check_private(db, "--db")
        except SecretFileError as exc:
            raise StoreError(
                f"{exc}; the database holds the coordinator's secrets (its audit signing key, "
                "the key-holder mode's blinding key)"
            ) from exc
    folder = db.absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise StoreError(
            f"--db {config.db}: its folder {folder} {what}; create it (mkdir -p {folder}) or "
            "give another path (the database file itself is created at the first start)"
        )


def serve(
    config: CoordinatorConfig,
    *,
    clock: Callable[[], float] | None = None,
    rate_clock: Callable[[], float] | None = None,
) -> CoordinatorServer:
    """Build and start a coordinator.

    ``clock`` replaces the coordinator's progress clock (tests pass a
    :class:`~fedcity.net.coordinator.liveness.ManualClock`); ``rate_clock`` the clock of its
    rate limits (default :func:`time.monotonic`).

    Raises
    ------
    AuthError, CeremonyError, StoreError, OSError
        Bad TLS/credentials/listen address, federation file, database, or a busy port.
    """
    return CoordinatorServer(config, clock=clock, rate_clock=rate_clock).start()


# -- command line -----------------------------------------------------------------------------
def _rate_arg(text: str) -> tuple[str, float, int]:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedcity coordinator serve",
        description="Run the fedcity coordinator (gRPC AgentService and JobService).",
    )
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (default %(default)s)")
    p.add_argument(
        "--db", required=True, help="SQLite database file, created if missing (required)"
    )
    p.add_argument(
        "--federation", required=True, help="federation-public.json of the ceremony (required)"
    )
    p.add_argument(
        "--credentials",
        default=None,
        help="credentials.json (token hashes); required unless --ca-dir (mutual TLS)",
    )
    p.add_argument(
        "--tls-cert", help="PEM server certificate, coordinator/server.pem (required for TLS)"
    )
    p.add_argument(
        "--tls-key", help="PEM server private key, coordinator/server.key (required for TLS)"
    )
    p.add_argument(
        "--tls-client-ca",
        help="require client certificates signed by this CA (default: bearer tokens only)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, only on a loopback address (default: TLS)",
    )
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (default 0: off)")
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="Prometheus bind address (default %(default)s)"
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        metavar="N",
        help="serve the read-only web dashboard on this port (default: off; HTTPS with "
        "--tls-cert/--tls-key, plain HTTP only with --insecure on loopback)",
    )
    p.add_argument(
        "--dashboard-host", default="127.0.0.1", help="dashboard bind address (default %(default)s)"
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between agents' heartbeats (default %(default)s)",
    )
    p.add_argument(
        "--liveness-timeout",
        type=float,
        default=None,
        metavar="S",
        help="an agency silent this long is dropped from its jobs (default: 3 heartbeats)",
    )
    p.add_argument(
        "--collect-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a round closes with the contributions it has after this (default %(default)s)",
    )
    p.add_argument(
        "--decrypt-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="other share holders are asked to decrypt after this (default %(default)s)",
    )
    p.add_argument(
        "--audit-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="contributors have this long to answer a range audit (default %(default)s)",
    )
    p.add_argument(
        "--max-workers",
        type=int,
        default=64,
        help="gRPC worker threads (default %(default)s)",
    )
    p.add_argument(
        "--max-streams",
        type=int,
        default=None,
        help="long-lived calls served at once (default: half of --max-workers)",
    )
    p.add_argument(
        "--max-streams-per-principal",
        type=int,
        default=None,
        help="long-lived calls one agency or scientist may hold (default: min(8, max-streams))",
    )
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="an upload or download not finished by then is cancelled (default %(default)s)",
    )
    p.add_argument(
        "--stall-threshold",
        type=float,
        default=None,
        metavar="S",
        help="a longer gap in the coordinator's own clock is its stall, left out of deadlines "
        "(default: 4 tick intervals, at least 1 s)",
    )
    p.add_argument(
        "--min-cell-count",
        type=int,
        default=10,
        metavar="N",
        help="smallest cell (rows) a federated query may release (default: 10)",
    )
    p.add_argument(
        "--ca-dir",
        default=None,
        metavar="DIR",
        help="the federation's CA folder (fedcity ca init): mutual TLS, identities from "
        "certificates, revocation on the next call (default: bearer tokens)",
    )
    p.add_argument(
        "--enroll-listen",
        default=None,
        metavar="HOST:PORT",
        help="with --ca-dir: the enrollment port (server TLS; invited principals enroll there)",
    )
    p.add_argument(
        "--certificate-days",
        type=int,
        default=90,
        metavar="N",
        help="lifetime of the certificates the coordinator issues (default: 90)",
    )
    p.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        type=_rate_arg,
        metavar="CLASS=RATE/BURST",
        help="calls per second and burst one principal may make in a rate class "
        "(repeatable); classes and defaults: "
        + ", ".join(f"{k}={r:g}/{b}" for k, (r, b) in DEFAULT_RATES.items())
        + " (heartbeat: Heartbeat; transfer: uploads and downloads; submit: SubmitJob and "
        "Renew; anonymous: calls without credentials and Enroll, per peer address; call: "
        "every other call)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="least severe messages logged (default %(default)s)",
    )
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
    if args.credentials is None and args.ca_dir is None:
        print(
            "fedcity coordinator: --credentials is required (or --ca-dir for mutual TLS)",
            file=sys.stderr,
        )
        return 2
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
            credentials=args.credentials or "",
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
            audit_timeout=args.audit_timeout,
            max_workers=args.max_workers,
            max_streams=args.max_streams,
            max_streams_per_principal=args.max_streams_per_principal,
            upload_timeout=args.upload_timeout,
            stall_threshold=args.stall_threshold,
            min_cell_count=args.min_cell_count,
            ca_dir=args.ca_dir,
            enroll_listen=args.enroll_listen,
            certificate_days=args.certificate_days,
            dashboard_port=args.dashboard_port,
            dashboard_host=args.dashboard_host,
            rate_limits={name: (rate, burst) for name, rate, burst in args.rate_limit} or None,
        )
        server = serve(config)
    except (AuthError, CeremonyError, StoreError, OSError, ValueError) as exc:
        print(f"fedcity coordinator: {exc}", file=sys.stderr)
        return 2
    for what, value in (
        ("database", args.db),
        ("federation", args.federation),
        ("credentials", args.credentials),
        ("TLS certificate", args.tls_cert),
        ("TLS key", args.tls_key),
    ):
        if value:  # the files it uses, resolved (relative paths are relative to the cwd)
            log.info("  %-16s %s", what, Path(value).resolve())
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
