"""RPC metrics, server spans and access log lines: three entries of the interceptor chain.

Each is one :class:`CallInterceptor` and joins the chain only when it is configured (see
``_server.server_interceptors``), so a server without metrics, tracing or an access log runs
no code of theirs at all. They sit before authentication in the chain: a refused call is
still counted, traced and logged with its status (the chain enters and exits interceptors
before a refusing one around the refusal).

* :class:`RpcMetricsInterceptor`: ``grpc_server_started_total`` when the call starts,
  ``grpc_server_handled_total`` and ``grpc_server_handling_seconds`` when it ends.
* :class:`TracingInterceptor`: a SERVER span per call (health checks and reflection
  excepted), the child of the caller's W3C trace context from the metadata; it is the current
  span while the handler runs, so the core's spans and log lines belong to it.
* :class:`AccessLogInterceptor`: one line per call (method, code, duration, peer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from synapse_sdk.tracing import TracingConfig, extract_context, sampled_flag, trace_headers

from synapse_server.grpc._interceptors import CallInterceptor, Metadata
from synapse_server.telemetry import ACCESS_LOGGER, PlatformMetrics

__all__ = [
    "AccessLogInterceptor",
    "RpcMetricsInterceptor",
    "TracingInterceptor",
    "final_code",
]

logger = logging.getLogger(__name__)

# Health checks and reflection: no spans (a load balancer's probes would drown the traces).
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Statuses that mean the server failed (OpenTelemetry's rule for gRPC server spans); the
# others are the caller's business and leave the span's status unset.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def final_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    """The status a call ended with, as a CallInterceptor's ``exit`` sees it.

    A code set on the context wins (a refusal, a mapped error, an abort); a cancellation is
    CANCELLED; any other error escaping the handler is UNKNOWN, as grpc answers it; else OK.
    """
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


@dataclass(slots=True)
class _TimedCall:
    method: str
    start: float


class RpcMetricsInterceptor(CallInterceptor[_TimedCall]):
    """Counts and times every RPC through the metrics facade."""

    def __init__(self, metrics: PlatformMetrics) -> None:
        self._metrics = metrics

    def start_call(self, method: str, metadata: Metadata) -> _TimedCall:
        """Count the start; the state keeps the start time."""
        self._metrics.rpc_started(method)
        return _TimedCall(method, time.perf_counter())

    def exit(self, call: _TimedCall, context: Any, error: BaseException | None) -> None:
        """Count the end with its status code and duration."""
        try:
            code = final_code(context, error)
            self._metrics.rpc_handled(call.method, code.name, time.perf_counter() - call.start)
        except Exception:
            logger.exception("recording the metrics of %s failed", call.method)


class TracingInterceptor(CallInterceptor[Any]):
    """A SERVER span per RPC with ``tracer``, continuing the caller's trace context.

    With ``config``, a call whose span no process would record (the sampler off and no
    sampled caller) gets no span of its own, which every process it reaches would only
    spend time on: without a caller's context it runs untraced, and a caller's unsampled
    context is made current as it came (its span does nothing when ended).
    """

    def __init__(self, tracer: Any, config: TracingConfig | None = None) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        self._tracer = tracer
        self._config = config
        self._trace = trace
        self._context = otel_context
        self._server_kind = trace.SpanKind.SERVER

    def start_call(self, method: str, metadata: Metadata) -> Any:
        """Start the call's span (None for health checks and reflection)."""
        if method.startswith(_UNTRACED):
            return None
        service, _, name = method.lstrip("/").rpartition("/")
        parent = extract_context(trace_headers(metadata))
        if self._config is not None and not self._config.records(sampled_flag(parent)):
            # Nothing to start. A caller's unsampled context still becomes the call's, so
            # that what the call starts (a job's span) follows its decision.
            return None if parent is None else self._trace.get_current_span(parent)
        return self._tracer.start_span(
            f"{service}/{name}",
            context=parent,
            kind=self._server_kind,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )

    def enter(self, call: Any) -> None:
        """Make the span current in the call's task (its own context: nothing to undo)."""
        self._context.attach(self._trace.set_span_in_context(call))

    def exit(self, call: Any, context: Any, error: BaseException | None) -> None:
        """End the span with the call's status."""
        try:
            code = final_code(context, error)
            call.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAULTS:
                call.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code.name))
            call.end()
        except Exception:
            logger.exception("ending the span of an RPC failed")


@dataclass(slots=True)
class _LoggedCall:
    method: str
    start: float
    trace_id: str = ""


class AccessLogInterceptor(CallInterceptor[_LoggedCall]):
    """One log line per RPC at ``level`` (health checks always at DEBUG)."""

    def __init__(self, level: int = logging.INFO) -> None:
        self._level = level
        self._log = logging.getLogger(ACCESS_LOGGER)

    def start_call(self, method: str, metadata: Metadata) -> _LoggedCall:
        """The call's method and start time."""
        return _LoggedCall(method, time.perf_counter())

    def enter(self, call: _LoggedCall) -> None:
        """Note the trace id (the tracing interceptor, earlier in the chain, set the span)."""
        from opentelemetry import trace

        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            call.trace_id = f"{span_context.trace_id:032x}"

    def exit(self, call: _LoggedCall, context: Any, error: BaseException | None) -> None:
        """Write the line."""
        try:
            level = logging.DEBUG if call.method.startswith(_UNTRACED[0]) else self._level
            if not self._log.isEnabledFor(level):
                return
            code = final_code(context, error).name
            millis = (time.perf_counter() - call.start) * 1000.0
            peer = _peer(context)
            extra: dict[str, Any] = {
                "rpc_method": call.method,
                "grpc_code": code,
                "duration_ms": round(millis, 3),
                "peer": peer,
            }
            if call.trace_id:
                extra["trace_id"] = call.trace_id
            self._log.log(
                level, "%s %s %.1f ms peer=%s", call.method, code, millis, peer, extra=extra
            )
        except Exception:
            logger.exception("writing the access log line of %s failed", call.method)


def _peer(context: Any) -> str:
    try:
        peer = context.peer()
    except Exception:
        return ""
    if isinstance(peer, bytes):
        peer = peer.decode("utf-8", "replace")
    return str(peer or "")
