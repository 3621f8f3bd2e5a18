"""What one server observes with, built once from its settings and the ``OTEL_*`` variables.

:class:`Telemetry` is made by the composition root and handed to each component that
reports: the metrics facade (``PrometheusMetrics`` with ``metrics_listen``, the silent base
otherwise), the tracer (the server's own provider with ``OTEL_*`` tracing, a no-op tracer
otherwise; never the process-global provider, so servers in one process keep theirs apart)
and the variables that carry the same configuration to job workers. Off, it adds nothing to
the gRPC interceptor chain and each report is one empty method call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from synapse_sdk.tracing import TracingConfig, TracingConfigError

from synapse_server.telemetry._endpoint import MetricsEndpoint
from synapse_server.telemetry._metrics import PlatformMetrics, PrometheusMetrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = ["ACCESS_LOGGER", "Telemetry", "TelemetryConfigError"]

logger = logging.getLogger(__name__)

#: The logger of the per-RPC access log lines.
ACCESS_LOGGER = "synapse_server.access"
_ACCESS_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}


class TelemetryConfigError(ValueError):
    """Telemetry settings or ``OTEL_*`` variables that cannot work; the message says which."""


class _JobEnvironment(Protocol):
    async def environment(self, job: Any) -> Mapping[str, str]: ...


class _WithVariables:
    """A job environment hook that adds fixed variables to another hook's."""

    def __init__(self, inner: _JobEnvironment | None, variables: Mapping[str, str]) -> None:
        self._inner = inner
        self._variables = dict(variables)

    async def environment(self, job: Any) -> Mapping[str, str]:
        env = dict(self._variables)
        if self._inner is not None:
            env.update(await self._inner.environment(job))
        return env


class Telemetry:
    """A server's metrics, tracer, access log level and worker variables (see the module)."""

    def __init__(
        self,
        metrics: PlatformMetrics | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        metrics_listen: str | None = None,
        access_log_level: int | None = None,
        worker_variables: Mapping[str, str] | None = None,
        tracing: TracingConfig | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else PlatformMetrics()
        self.tracer_provider = tracer_provider
        self.access_log_level = access_log_level
        self.worker_variables = dict(worker_variables or {})
        #: The tracing configuration (its sampler); None when tracing is off.
        self.tracing = tracing
        self._metrics_listen = metrics_listen
        self._endpoint: MetricsEndpoint | None = None
        #: The server's tracer; None when tracing is off (nothing to start spans with).
        self.tracer: Tracer | None = (
            tracer_provider.get_tracer("synapse_server") if tracer_provider is not None else None
        )

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str]) -> Telemetry:
        """The telemetry ``settings`` (``metrics_listen``, ``log_format``, ``access_log``) and
        the ``OTEL_*`` variables of ``environ`` ask for.

        Raises :class:`TelemetryConfigError` for ``OTEL_*`` values tracing cannot use, or
        tracing asked for without the OpenTelemetry SDK installed.
        """
        try:
            tracing = TracingConfig.from_environ(environ)
            provider = tracing.build_provider("server") if tracing is not None else None
        except TracingConfigError as exc:
            raise TelemetryConfigError(str(exc)) from None
        metrics_listen = getattr(settings, "metrics_listen", None)
        metrics = PrometheusMetrics() if metrics_listen else None
        variables: dict[str, str] = {}
        if tracing is not None:
            # Workers (local, forked or on Ray) export their spans as the server does.
            variables.update({k: v for k, v in environ.items() if k.startswith("OTEL_")})
        log_format = getattr(settings, "log_format", "text")
        if log_format != "text":
            variables["SYNAPSE_LOG_FORMAT"] = log_format
        access = _ACCESS_LEVELS.get(str(getattr(settings, "access_log", "debug")))
        return cls(
            metrics,
            provider,
            metrics_listen=metrics_listen,
            access_log_level=access,
            worker_variables=variables,
            tracing=tracing,
        )

    @property
    def tracing_enabled(self) -> bool:
        """True when this server exports spans."""
        return self.tracer_provider is not None

    @property
    def metrics_address(self) -> str:
        """Where ``/metrics`` is served (``host:port``; empty when not serving)."""
        return self._endpoint.address if self._endpoint is not None else ""

    def access_log_active(self) -> bool:
        """True when an access log line per RPC would be written at all (a logger at its
        level): only then does the access log interceptor join the chain."""
        level = self.access_log_level
        return level is not None and logging.getLogger(ACCESS_LOGGER).isEnabledFor(level)

    def job_environment(self, inner: _JobEnvironment | None) -> _JobEnvironment | None:
        """``inner`` (the job environment hook) with the worker variables added."""
        if not self.worker_variables:
            return inner
        return _WithVariables(inner, self.worker_variables)

    def start(self) -> str:
        """Serve ``/metrics`` when configured; the bound address (``""`` when not).

        Raises ``MetricsEndpointError`` (an OSError) when the address cannot be bound.
        """
        if not self._metrics_listen or not isinstance(self.metrics, PrometheusMetrics):
            return ""
        endpoint = MetricsEndpoint(self.metrics.registry, self._metrics_listen)
        address = endpoint.start()
        self._endpoint = endpoint
        return address

    async def close(self) -> None:
        """Stop serving metrics and export the spans still buffered.

        Off the event loop: an unreachable collector holds the export for its timeout.
        """
        endpoint, self._endpoint = self._endpoint, None
        provider, self.tracer_provider = self.tracer_provider, None
        if endpoint is not None:
            await asyncio.to_thread(endpoint.stop)
        if provider is not None:
            try:
                await asyncio.to_thread(provider.shutdown)
            except Exception:
                logger.exception("exporting the last spans failed")
