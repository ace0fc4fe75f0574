"""The dashboard's web application: a thin Starlette shell over the coordinator's snapshots.

Every request is authenticated with the coordinator's own credentials: an
``Authorization: Bearer <token>`` header (scripts, ``curl``) or a session cookie obtained by
posting the token to ``/login`` (browsers). Roles are checked by the snapshot calls
(:class:`~fedcity.net.coordinator.snapshot.SnapshotCalls`); this module maps their refusals to
HTTP: 401 without a known token, 403 for a role or job that is not the caller's, with fixed
bodies that name neither the principal nor the job's owner. Data scientists see health,
agencies and their own jobs and results; operators health, agencies and every job's state
(no rounds, no result); agencies nothing.

Pages are rendered on the server (Jinja2 templates, no script); JSON endpoints under
``/api/`` return the same snapshots. Everything is bounded: request bodies and query strings,
jobs per page, rounds per job, sessions, cached charts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import grpc
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedcity.dashboard.charts import ChartCache, result_charts, stacked_bars_svg
from fedcity.net.auth import Authenticator, Principal
from fedcity.net.coordinator.config import StatusError
from fedcity.net.coordinator.snapshot import (
    MAX_SNAPSHOT_JOBS,
    FederationHealth,
    JobDetail,
    JobInfo,
)

__all__ = [
    "DEFAULT_PAGE_JOBS",
    "MAX_BODY_BYTES",
    "MAX_PAGE_JOBS",
    "MAX_PAGE_RESULTS",
    "MAX_SESSIONS",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "Snapshots",
    "create_app",
    "result_summary",
]

MAX_BODY_BYTES = 4096
"""Largest request body (only ``/login`` takes one)."""
MAX_QUERY_CHARS = 256
"""Longest query string."""
MAX_PATH_CHARS = 256
"""Longest request path."""
DEFAULT_PAGE_JOBS = 25
"""Jobs a listing shows without ``?limit=``."""
MAX_PAGE_JOBS = min(100, MAX_SNAPSHOT_JOBS)
"""Most jobs one listing shows."""
MAX_PAGE_RESULTS = 25
"""Most jobs the results page looks through (each result is read)."""
MAX_RESULT_ROWS = 100
"""Most rows of a query result shown."""
MAX_COEFFICIENTS = 30
"""Most coefficients of a model shown (the largest)."""
MAX_SESSIONS = 1024
"""Browser sessions kept (the oldest are forgotten first)."""
SESSION_SECONDS = 8 * 3600.0
"""A browser session's lifetime."""
SESSION_COOKIE = "fedcity_dashboard"

_CODES = {
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_FIXED_BODIES = {401: "authentication required", 403: "forbidden"}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_HEALTH_ROLES = ("scientist", "operator")
_LIST_ROLES = ("scientist", "operator")
_JOB_ROLES = ("scientist",)


class Snapshots(Protocol):
    """What the dashboard reads: the coordinator's snapshot calls."""

    def snapshot_health(self, principal: Principal) -> FederationHealth:
        """See :meth:`SnapshotCalls.snapshot_health`."""

    def snapshot_jobs(self, principal: Principal, limit: int) -> list[JobInfo]:
        """See :meth:`SnapshotCalls.snapshot_jobs`."""

    def snapshot_job(self, principal: Principal, job_id: str) -> JobDetail:
        """See :meth:`SnapshotCalls.snapshot_job`."""

    def snapshot_result(self, principal: Principal, job_id: str) -> str:
        """See :meth:`SnapshotCalls.snapshot_result`."""


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = _FIXED_BODIES.get(status, message)


class _Sessions:
    """Browser sessions: random ids (kept as SHA-256) → principal, bounded and expiring."""

    def __init__(self, limit: int = MAX_SESSIONS, lifetime: float = SESSION_SECONDS) -> None:
        self.limit, self.lifetime = limit, lifetime
        self._lock = threading.Lock()
        self._by_id: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "replace")).digest()

    def open(self, principal: Principal) -> str:
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[self._key(session_id)] = (principal, time.monotonic() + self.lifetime)
            while len(self._by_id) > self.limit:
                self._by_id.popitem(last=False)
        return session_id

    def get(self, session_id: str) -> Principal | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self._key(session_id)
        with self._lock:
            entry = self._by_id.get(key)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._by_id[key]
                return None
            return entry[0]

    def close(self, session_id: str) -> None:
        with self._lock:
            self._by_id.pop(self._key(session_id), None)


class _Bounds:
    """ASGI middleware: refuse long paths and query strings, and bodies over the limit."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("path", "")) > MAX_PATH_CHARS:
            await PlainTextResponse("path too long", 414)(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY_CHARS:
            await PlainTextResponse("query string too long", 414)(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await PlainTextResponse("request body too large", 413)(scope, receive, send)
                return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _HTTPError(413, "request body too large")
            return message

        await self.app(scope, bounded, send)


class _Headers:
    """ASGI middleware: the security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw += [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": raw}
            await send(message)

        await self.app(scope, receive, with_headers)


def _utc(unix: float | None) -> str:
    if unix is None or not math.isfinite(unix) or unix <= 0:
        return "never"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(unix: float | None, now: float | None = None) -> str:
    if unix is None or not math.isfinite(unix) or unix <= 0:
        return ""
    seconds = max((now or time.time()) - unix, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _size(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _finite(value: Any) -> Any:
    """JSON-safe data: non-finite floats become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def result_summary(result_json: str) -> dict[str, Any]:
    """What the dashboard shows of a released result (no raw history or payload).

    A model's result: problem, model type, evaluation metrics, privacy, seconds, rounds and
    the largest coefficients with their names (GLMs). A query's: its released cells (the
    first :data:`MAX_RESULT_ROWS` rows), how many agencies took part, privacy.
    """
    data = json.loads(result_json)
    if not isinstance(data, dict):
        raise ValueError("a result is a JSON object")
    out: dict[str, Any] = {
        "format": str(data.get("format", "")),
        "charts": result_charts(result_json),
        "privacy": data.get("privacy"),
        "seconds": data.get("seconds"),
        "rounds": len(data.get("history") or []),
    }
    if data.get("format") == "fedcity.query_result":
        columns = [str(c) for c in data.get("columns") or []]
        rows = data.get("rows") or []
        out.update(
            kind="query",
            columns=columns,
            rows=[list(r) for r in rows[:MAX_RESULT_ROWS]],
            rows_total=len(rows),
            n_agencies=data.get("n_agencies"),
        )
        return _finite(out)  # type: ignore[no-any-return]
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    assert isinstance(model, dict)
    out.update(
        kind="model",
        problem=data.get("problem"),
        model_type=model.get("type"),
        family=model.get("family"),
        metrics=data.get("metrics") if isinstance(data.get("metrics"), dict) else None,
        coefficients=_coefficients(result_json, model),
    )
    return _finite(out)  # type: ignore[no-any-return]


def _coefficients(result_json: str, model: Mapping[str, Any]) -> list[list[Any]]:
    if model.get("type") != "glm":
        return []
    from fedcity.plots import result_view

    beta = [float(b) for b in model.get("beta") or []]
    try:
        names = ["intercept", *result_view(result_json).feature_names()]
    except ValueError:
        names = []
    if len(names) != len(beta):
        names = ["intercept"] + [f"x{i}" for i in range(1, len(beta))]
    pairs = list(zip(names, beta, strict=True))
    head, rest = pairs[:1], sorted(pairs[1:], key=lambda p: -abs(p[1]))
    return [[n, b] for n, b in head + rest[: MAX_COEFFICIENTS - 1]]


def create_app(
    snapshots: Snapshots, authenticator: Authenticator, *, secure_cookies: bool = True
) -> Starlette:
    """The dashboard's ASGI application.

    Parameters
    ----------
    snapshots : Snapshots
        The coordinator (its :class:`~fedcity.net.coordinator.snapshot.SnapshotCalls`).
    authenticator : Authenticator
        The coordinator's: the same tokens and roles as the gRPC API.
    secure_cookies : bool, default True
        Mark the session cookie ``Secure`` (served over HTTPS).

    Returns
    -------
    starlette.applications.Starlette
    """
    sessions = _Sessions()
    charts = ChartCache()
    env = Environment(
        loader=PackageLoader("fedcity.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )
    env.filters.update(utc=_utc, ago=_ago, size=_size)

    def caller(request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is not None:
            principal = authenticator.lookup([("authorization", header)])
        else:
            principal = sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if principal is None:
            raise _HTTPError(401, "authentication required")
        if principal.role not in (*_HEALTH_ROLES, *_JOB_ROLES):
            raise _HTTPError(403, "forbidden")
        return principal

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except StatusError as exc:
            raise _HTTPError(_CODES.get(exc.code, 500), exc.message) from exc

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        principal = context.pop("principal", None)
        html = env.get_template(template).render(
            principal=principal,
            can_list_jobs=principal is not None and principal.role in _LIST_ROLES,
            can_see_jobs=principal is not None and principal.role in _JOB_ROLES,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def limit_of(request: Request, most: int = MAX_PAGE_JOBS) -> int:
        text = request.query_params.get("limit", str(min(DEFAULT_PAGE_JOBS, most)))
        if not text.isdigit() or not 1 <= int(text) <= most:
            raise _HTTPError(400, f"limit must be an integer in [1, {most}]")
        return int(text)

    # -- pages ------------------------------------------------------------------------------
    def index(request: Request) -> Response:
        return RedirectResponse("/health", 303)

    def login_form(request: Request) -> Response:
        return page(request, "login.html")

    async def login(request: Request) -> Response:
        body = await request.body()
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:
            raise _HTTPError(400, "the login form has one field, token") from None
        token = (fields.get("token") or [""])[0].strip()
        principal = authenticator.lookup([("authorization", f"Bearer {token}")]) if token else None
        if principal is None:
            return page(request, "login.html", 401, error="That token was not accepted.")
        if principal.role not in (*_HEALTH_ROLES, *_JOB_ROLES):
            return page(request, "login.html", 403, error="This role has no dashboard access.")
        response = RedirectResponse("/health", 303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.open(principal),
            max_age=int(SESSION_SECONDS),
            httponly=True,
            secure=secure_cookies,
            samesite="strict",
            path="/",
        )
        return response

    def logout(request: Request) -> Response:
        sessions.close(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def health_page(request: Request) -> Response:
        principal = caller(request)
        health = call(snapshots.snapshot_health, principal)
        return page(request, "health.html", principal=principal, health=health)

    def agencies_page(request: Request) -> Response:
        principal = caller(request)
        health = call(snapshots.snapshot_health, principal)
        return page(request, "agencies.html", principal=principal, health=health)

    def jobs_page(request: Request) -> Response:
        principal = caller(request)
        limit = limit_of(request)
        jobs = call(snapshots.snapshot_jobs, principal, limit)
        return page(request, "jobs.html", principal=principal, jobs=jobs, limit=limit)

    def job_page(request: Request) -> Response:
        principal = caller(request)
        job_id = str(request.path_params["job_id"])
        detail: JobDetail = call(snapshots.snapshot_job, principal, job_id)
        summary = None
        if detail.has_result:
            summary = result_summary(call(snapshots.snapshot_result, principal, job_id))
        labels = [str(r.number) for r in detail.rounds]
        stages = sorted({s for r in detail.rounds for s in r.seconds})
        seconds_chart = stacked_bars_svg(
            labels,
            {s: [r.seconds.get(s, 0.0) for r in detail.rounds] for s in stages},
            title="Seconds per round, by stage",
            unit="seconds",
            element_id="chart-seconds",
        )
        bytes_chart = stacked_bars_svg(
            labels,
            {
                "uploads": [float(r.upload_bytes) for r in detail.rounds],
                "to decryptors": [float(r.decrypt_bytes) for r in detail.rounds],
            },
            title="Bytes per round",
            unit="bytes",
            element_id="chart-bytes",
        )
        return page(
            request,
            "job.html",
            principal=principal,
            detail=detail,
            job=detail.job,
            stages=stages,
            summary=summary,
            seconds_chart=seconds_chart,
            bytes_chart=bytes_chart,
        )

    def results_page(request: Request) -> Response:
        principal = caller(request)
        if principal.role not in _JOB_ROLES:  # results are their submitters' alone
            raise _HTTPError(403, "forbidden")
        limit = limit_of(request, MAX_PAGE_RESULTS)
        jobs = [
            j for j in call(snapshots.snapshot_jobs, principal, limit) if j.state == "succeeded"
        ]
        released = []
        for job in jobs:
            try:
                text = call(snapshots.snapshot_result, principal, job.id)
            except _HTTPError:
                continue  # e.g. purged since the listing
            released.append((job, result_charts(text)))
        return page(request, "results.html", principal=principal, released=released, limit=limit)

    def chart(request: Request) -> Response:
        principal = caller(request)
        job_id = str(request.path_params["job_id"])
        name = str(request.path_params["name"])
        text = call(snapshots.snapshot_result, principal, job_id)
        try:
            svg = charts.svg(job_id, name, text)
        except KeyError:
            raise _HTTPError(404, "no such chart") from None
        except ValueError as exc:
            raise _HTTPError(409, f"the chart cannot be drawn: {exc}") from exc
        return Response(svg, media_type="image/svg+xml")

    # -- JSON -------------------------------------------------------------------------------
    def api_health(request: Request) -> Response:
        health: FederationHealth = call(snapshots.snapshot_health, caller(request))
        data = asdict(health)
        data.pop("agencies")
        return JSONResponse(_finite(data))

    def api_agencies(request: Request) -> Response:
        health: FederationHealth = call(snapshots.snapshot_health, caller(request))
        return JSONResponse(_finite({"agencies": [asdict(a) for a in health.agencies]}))

    def api_jobs(request: Request) -> Response:
        principal = caller(request)
        jobs = call(snapshots.snapshot_jobs, principal, limit_of(request))
        return JSONResponse(_finite({"jobs": [asdict(j) for j in jobs]}))

    def api_job(request: Request) -> Response:
        detail = call(snapshots.snapshot_job, caller(request), str(request.path_params["job_id"]))
        return JSONResponse(_finite(asdict(detail)))

    def api_result(request: Request) -> Response:
        text = call(snapshots.snapshot_result, caller(request), str(request.path_params["job_id"]))
        return JSONResponse(result_summary(text))

    # -- errors and headers -------------------------------------------------------------------
    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _HTTPError)
        if wants_json(request):
            return JSONResponse({"error": exc.message}, exc.status)
        if exc.status == 401:
            return page(request, "login.html", 401)
        return page(request, "error.html", exc.status, code=exc.status, message=exc.message)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = int(getattr(exc, "status_code", 404))
        message = "not found" if status == 404 else "refused"
        if wants_json(request):
            return JSONResponse({"error": message}, status)
        return page(request, "error.html", status, code=status, message=message)

    routes = [
        Route("/", index),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/health", health_page),
        Route("/agencies", agencies_page),
        Route("/jobs", jobs_page),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/charts/{name}.svg", chart),
        Route("/results", results_page),
        Route("/api/health", api_health),
        Route("/api/agencies", api_agencies),
        Route("/api/jobs", api_jobs),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/jobs/{job_id}/result", api_result),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Headers), Middleware(_Bounds)],
        exception_handlers={_HTTPError: http_error, 404: not_found, 405: not_found},
    )
