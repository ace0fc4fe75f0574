"""gRPC plumbing: the servicers (thin wrappers over :class:`Coordinator`) and interceptors."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2

from fedcity.net import messages
from fedcity.net.auth import Authenticator, Principal, Refused
from fedcity.net.coordinator.config import Code, CoordinatorMetrics, StatusError
from fedcity.net.coordinator.core import Coordinator
from fedcity.net.coordinator.limits import (
    RateLimited,
    RateLimiter,
    StreamLimiter,
    peer_address,
)
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = ["DecodeInterceptor", "HealthServicer", "RateLimitInterceptor"]

log = logging.getLogger("fedcity.net.coordinator")

T = TypeVar("T")

_OWN_PREFIX = "/fedcity.v1."
"""Methods of fedcity's own services; the interceptor leaves all others untouched."""


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
    context.abort(error.code, messages.status_message(error.message))
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
    context.abort(error.code, messages.status_message(error.message))


class _Servicers(fpb_grpc.AgentServiceServicer, fpb_grpc.JobServiceServicer):
    """Both services over one :class:`Coordinator` (each method is a thin wrapper)."""

    def __init__(self, core: Coordinator, auth: Authenticator, limiter: StreamLimiter) -> None:
        self.core = core
        self.auth = auth
        self.limiter = limiter
        self.transfer_timeout = core.config.upload_timeout

    def _who(self, context: grpc.ServicerContext) -> Principal:
        try:
            principal = self.auth.identify(context)
        except Refused as exc:
            raise StatusError(exc.code, exc.message) from exc
        if principal is None:
            raise StatusError(
                Code.UNAUTHENTICATED,
                "no client certificate (enroll first: fedcity agent enroll / fedcity login)"
                if self.auth.certificates is not None
                else "missing or unknown bearer token",
            )
        return principal

    # AgentService
    def Register(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.register(self._who(context), request))

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.heartbeat(self._who(context), request))

    def FetchWork(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            principal = self._who(context)
            if not request.wait_ms:
                return self.core.fetch_work(principal, request, context.is_active)
            with self.limiter.hold(principal.name, "work long poll"):
                return self.core.fetch_work(principal, request, context.is_active)

        return _unary(context, call)

    def _download(
        self,
        request: Any,
        context: grpc.ServicerContext,
        what: str,
        produce: Callable[[Principal, Any], bytes],
        kind: int,
    ) -> Iterator[fpb.Chunk]:
        """Stream ``produce``'s payload in chunks, counted and bounded like an upload."""

        def gen() -> Iterator[fpb.Chunk]:
            principal = self._who(context)
            with self.limiter.hold(
                principal.name, what, deadline=self.transfer_timeout, cancel=context.cancel
            ):
                payload = produce(principal, request)
                yield from messages.chunks(
                    payload,
                    job_id=request.job_id,
                    round=request.round,
                    agency=principal.name,
                    kind=kind,
                )

        return _streaming(context, gen())

    def FetchAggregate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._download(
            request,
            context,
            "aggregate download",
            self.core.aggregate,
            fpb.PAYLOAD_KIND_AGGREGATE,
        )

    def FetchContributions(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._download(
            request,
            context,
            "contributions download",
            self.core.contributions,
            fpb.PAYLOAD_KIND_EVIDENCE,
        )

    def FetchAuditEvidence(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._download(
            request,
            context,
            "audit evidence download",
            self.core.audit_evidence,
            fpb.PAYLOAD_KIND_AUDIT_EVIDENCE,
        )

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def call() -> Any:
            principal = self._who(context)
            with self.limiter.hold(
                principal.name, "upload", deadline=self.transfer_timeout, cancel=context.cancel
            ):
                return self.core.upload(principal, iter(request_iterator))

        return _unary(context, call)

    def Decline(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.decline(self._who(context), request))

    def Leave(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.leave(self._who(context), request))

    def Defer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.defer(self._who(context), request))

    # JobService
    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.submit_job(self._who(context), request))

    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def gen() -> Iterator[fpb.JobEvent]:
            principal = self._who(context)
            with self.limiter.hold(principal.name, "job watch"):
                yield from self.core.watch(principal, request, context.is_active)

        return _streaming(context, gen())

    def GetResult(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.result(self._who(context), request))

    def ListAgencies(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.list_agencies(self._who(context)))

    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.cancel(self._who(context), request))

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.status(self._who(context), request))

    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.list_jobs(self._who(context), request))

    def JobLogs(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return _unary(context, lambda: self.core.job_logs(self._who(context), request))


class HealthServicer(health.HealthServicer):  # type: ignore[misc]
    """The standard health service, safe when a watcher leaves while its status changes.

    grpc_health's servicer sends status changes to its watchers while holding its lock; a
    send waits for gRPC's serving thread, which may at that moment run the close callback of
    a watch a client just cancelled, and that callback takes the same lock: the coordinator
    deadlocked in ``enter_graceful_shutdown``. Here the watchers are copied under the lock
    and notified outside it (and the lock is re-entrant for a close run inline).
    """

    _gracefully_shutting_down: bool

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()

    def set(self, service: str, status: Any) -> None:
        """Set ``service``'s status and tell its watchers."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            self._server_status[service] = status
            watchers = list(self._send_response_callbacks.get(service, ()))
        for send in watchers:  # outside the lock: gRPC's thread may be closing one of them
            send(health_pb2.HealthCheckResponse(status=status))

    def enter_graceful_shutdown(self) -> None:
        """Set every service NOT_SERVING for good (watchers told outside the lock)."""
        with self._lock:
            if self._gracefully_shutting_down:
                return
            services = list(self._server_status)
        for service in services:
            self.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        with self._lock:
            self._gracefully_shutting_down = True


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
        if (
            handler is None
            or handler.request_deserializer is None
            or not handler_call_details.method.startswith(_OWN_PREFIX)
        ):
            # other services (health) keep their own handlers: re-wrapping the health
            # servicer's non-blocking Watch would make every watch hold a worker thread
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


class RateLimitInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Every fedcity call takes a token of its caller's bucket (:class:`RateLimiter`) first.

    The caller is the authenticated principal (token or certificate); a call without valid
    credentials, and ``Enroll``, count per peer address in the ``anonymous`` class. A call
    past its limit ends with ``RESOURCE_EXHAUSTED`` naming the limit and when to retry (also
    in the trailing metadata ``retry-after-ms``) before any handler reads its request.
    Installed outermost, so that unauthenticated floods are slowed down too.
    """

    def __init__(
        self, auth: Authenticator, limiter: RateLimiter, metrics: CoordinatorMetrics | None = None
    ) -> None:
        self.auth = auth
        self.limiter = limiter
        self.metrics = metrics

    def _admit(self, context: grpc.ServicerContext, method: str, rate_class: str) -> None:
        name = method.rsplit("/", 1)[-1]
        caller = None
        if not method.endswith("/Enroll"):
            try:
                principal = self.auth.identify(context)
            except Refused:
                principal = None
            if principal is not None:
                caller = principal.name
        if caller is None:
            caller, rate_class = f"peer {peer_address(context.peer())}", "anonymous"
        try:
            self.limiter.admit(caller, rate_class, name)
        except RateLimited as exc:
            log.debug("%s", exc.message)
            if self.metrics is not None:
                self.metrics.rate_limited.labels(rate_class=rate_class).inc()
            retry_ms = max(1, math.ceil(exc.retry_after * 1000))
            context.set_trailing_metadata((("retry-after-ms", str(retry_ms)),))
            context.abort(exc.code, messages.status_message(exc.message))

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        """Wrap the handler of every fedcity method with the rate check."""
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(_OWN_PREFIX):
            return handler
        rate_class = self.limiter.rate_class(method)
        admit = self._admit
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming:
            stream = handler.stream_unary or handler.stream_stream

            def stream_behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                admit(context, method, rate_class)
                return stream(requests, context)

            if handler.response_streaming:
                return grpc.stream_stream_rpc_method_handler(stream_behavior, **kwargs)
            return grpc.stream_unary_rpc_method_handler(stream_behavior, **kwargs)
        unary = handler.unary_unary or handler.unary_stream

        def unary_behavior(request: Any, context: grpc.ServicerContext) -> Any:
            admit(context, method, rate_class)
            return unary(request, context)

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(unary_behavior, **kwargs)
        return grpc.unary_unary_rpc_method_handler(unary_behavior, **kwargs)
