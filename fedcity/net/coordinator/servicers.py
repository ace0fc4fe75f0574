"""gRPC plumbing: the servicers (thin wrappers over :class:`Coordinator`) and interceptors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from fedcity.net import messages
from fedcity.net.auth import Authenticator, Principal
from fedcity.net.coordinator.config import Code, StatusError
from fedcity.net.coordinator.core import Coordinator
from fedcity.net.coordinator.limits import StreamLimiter
from fedcity.v1 import federation_pb2 as fpb
from fedcity.v1 import federation_pb2_grpc as fpb_grpc

__all__ = ["DecodeInterceptor"]

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
        def call() -> Any:
            principal = self._who(context)
            if not request.wait_ms:
                return self.core.fetch_work(principal, request, context.is_active)
            with self.limiter.hold(principal.name, "work long poll"):
                return self.core.fetch_work(principal, request, context.is_active)

        return _unary(context, call)

    def FetchAggregate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def gen() -> Iterator[fpb.Chunk]:
            principal = self._who(context)
            with self.limiter.hold(
                principal.name,
                "aggregate download",
                deadline=self.transfer_timeout,
                cancel=context.cancel,
            ):
                payload = self.core.aggregate(principal, request)
                yield from messages.chunks(
                    payload,
                    job_id=request.job_id,
                    round=request.round,
                    agency=principal.name,
                    kind=fpb.PAYLOAD_KIND_AGGREGATE,
                )

        return _streaming(context, gen())

    def FetchContributions(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def gen() -> Iterator[fpb.Chunk]:
            principal = self._who(context)
            with self.limiter.hold(
                principal.name,
                "contributions download",
                deadline=self.transfer_timeout,
                cancel=context.cancel,
            ):
                payload = self.core.contributions(principal, request)
                yield from messages.chunks(
                    payload,
                    job_id=request.job_id,
                    round=request.round,
                    agency=principal.name,
                    kind=fpb.PAYLOAD_KIND_EVIDENCE,
                )

        return _streaming(context, gen())

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
