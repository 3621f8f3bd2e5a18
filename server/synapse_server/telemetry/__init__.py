"""Telemetry of the platform: metrics, traces and log formatting, owned here in one place.

* **Metrics**: :class:`PlatformMetrics` is the facade core services and gRPC interceptors
  report through; :class:`PrometheusMetrics` records into a registry per server, served at
  ``/metrics`` (``--metrics-listen``) by :class:`MetricsEndpoint`.
* **Traces**: OpenTelemetry, configured by the standard ``OTEL_*`` variables (see
  ``synapse_sdk.tracing``); core code uses the OpenTelemetry API with the tracer it is
  given, never an exporter.
* **Logs**: :func:`configure_logging` (text or JSON lines), :func:`log_context` and
  :func:`bind_log_context` for the ids a line is about, :func:`forward_job_logs`.

:class:`Telemetry` bundles what one server uses; the composition root builds it.
"""

from synapse_server.telemetry._endpoint import MetricsEndpoint, MetricsEndpointError
from synapse_server.telemetry._logging import (
    JOB_LOG_LOGGER,
    LOG_FORMATS,
    LOG_LEVELS,
    JsonFormatter,
    bind_log_context,
    configure_logging,
    forward_job_logs,
    log_context,
    log_handler,
)
from synapse_server.telemetry._metrics import JobCountSource, PlatformMetrics, PrometheusMetrics
from synapse_server.telemetry._setup import ACCESS_LOGGER, Telemetry, TelemetryConfigError

__all__ = [
    "ACCESS_LOGGER",
    "JOB_LOG_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JobCountSource",
    "JsonFormatter",
    "MetricsEndpoint",
    "MetricsEndpointError",
    "PlatformMetrics",
    "PrometheusMetrics",
    "Telemetry",
    "TelemetryConfigError",
    "bind_log_context",
    "configure_logging",
    "forward_job_logs",
    "log_context",
    "log_handler",
]
