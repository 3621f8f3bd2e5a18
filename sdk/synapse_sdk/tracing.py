"""Tracing shared by every process of the platform: configuration from ``OTEL_*``, W3C headers.

The server, its job workers and the serve replicas are separate processes (on Ray, separate
machines) that each export their own spans. They read the same standard OpenTelemetry
environment variables, which the server hands on to its workers and a deployment hands on to
its replicas, so one configuration covers them all:

* tracing is **on** when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``)
  or, without it, when ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
  says where to send spans; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn
  it off, and so does leaving everything unset;
* ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` choose the sampler (default
  ``parentbased_always_on``); ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the
  service (default ``synapse-server``, ``synapse-worker`` or ``synapse-replica``);
* the exporter's own variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``..._CERTIFICATE``,
  ``..._TIMEOUT``, ``..._COMPRESSION``, ``OTEL_BSP_*``) are read by the OpenTelemetry SDK.

Trace context crosses process boundaries as W3C ``traceparent``/``tracestate`` entries of a
string map: gRPC metadata, the worker's assignment, the serve request's ``headers``.

Plugin code runs in a process set up this way: its own spans (``opentelemetry.trace``
API) join the job's or the request's trace, and :func:`inject_headers` hands the current
context on to services it calls. A public module because a replica may run another SDK
version than the server: what crosses versions must be stable.

The OpenTelemetry SDK and exporter are the ``otel`` extra; the API alone (always installed)
makes every span a no-op. Everything here imports OpenTelemetry lazily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import EllipsisType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "ATTR_ACTION",
    "ATTR_APPLICATION",
    "ATTR_JOB_ID",
    "ATTR_JOB_MODE",
    "ATTR_JOB_STATE",
    "ATTR_MODEL",
    "ATTR_PLUGIN",
    "TRACE_HEADERS",
    "TracingConfig",
    "TracingConfigError",
    "extract_context",
    "inject_headers",
    "install_global_tracing",
    "preload_tracing",
    "sampled_flag",
    "trace_headers",
]

logger = logging.getLogger(__name__)

# Span attributes of the platform's spans (the server's, the worker's and the replica's).
ATTR_JOB_ID = "synapse.job.id"
ATTR_JOB_MODE = "synapse.job.mode"
ATTR_JOB_STATE = "synapse.job.state"
ATTR_PLUGIN = "synapse.plugin"
ATTR_ACTION = "synapse.action"
ATTR_APPLICATION = "synapse.application"
ATTR_MODEL = "synapse.model.id"

#: The header names that carry trace context (W3C trace context and baggage).
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_EXPORTERS = ("otlp", "console", "none")
# Longest header value taken from a caller: a traceparent is 55 characters; tracestate may
# have 32 entries (W3C caps it at 512 characters in practice).
_MAX_HEADER_CHARS = 1024


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable has a value tracing cannot use; the message names it."""


@dataclass(frozen=True)
class TracingConfig:
    """The tracing a process does, as the ``OTEL_*`` variables describe it."""

    exporter: str = "otlp"
    endpoint: str | None = None
    sampler: str = "parentbased_always_on"
    sampler_ratio: float = 1.0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TracingConfig | None:
        """The configuration ``environ`` asks for; None when tracing is off.

        Raises :class:`TracingConfigError` for an unknown exporter or sampler, or a sampler
        ratio that is not a number between 0 and 1.
        """
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        endpoint = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
            or None
        )
        exporters = [
            name.strip().lower()
            for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
            if name.strip()
        ]
        for name in exporters:
            if name not in _EXPORTERS:
                raise TracingConfigError(
                    f"OTEL_TRACES_EXPORTER: {name[:40]!r} is not one of {', '.join(_EXPORTERS)}"
                )
        if len(exporters) > 1:
            raise TracingConfigError("OTEL_TRACES_EXPORTER: name one exporter")
        exporter = exporters[0] if exporters else ("otlp" if endpoint else "none")
        if exporter == "none":
            return None
        sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or (
            "parentbased_always_on"
        )
        if sampler not in _SAMPLERS:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER: {sampler[:40]!r} is not one of {', '.join(_SAMPLERS)}"
            )
        ratio = 1.0
        raw_ratio = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if sampler.endswith("traceidratio") and raw_ratio:
            try:
                ratio = float(raw_ratio)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise TracingConfigError(
                    f"OTEL_TRACES_SAMPLER_ARG: {raw_ratio[:40]!r} is not a ratio between 0 and 1"
                )
        return cls(exporter=exporter, endpoint=endpoint, sampler=sampler, sampler_ratio=ratio)

    def records(self, parent_sampled: bool | None) -> bool:
        """Whether a span under a parent that is sampled (True), unsampled (False) or absent
        (None) could be recorded, here or in any process the trace reaches.

        Every process reads the same sampler. ``always_off`` records nothing anywhere; the
        ``parentbased_`` samplers follow a parent's decision, and ``parentbased_always_off``
        records no trace that starts here. False means starting and propagating the span
        would only cost time: nobody exports any of it.
        """
        if self.sampler == "always_off":
            return False
        if parent_sampled is not None and self.sampler.startswith("parentbased_"):
            return parent_sampled
        return self.sampler != "parentbased_always_off"

    def _sampler(self) -> Any:
        from opentelemetry.sdk.trace import sampling

        root: Any = {
            "always_on": sampling.ALWAYS_ON,
            "always_off": sampling.ALWAYS_OFF,
            "traceidratio": sampling.TraceIdRatioBased(self.sampler_ratio),
        }[self.sampler.removeprefix("parentbased_")]
        return sampling.ParentBased(root) if self.sampler.startswith("parentbased_") else root

    def build_provider(self, component: str) -> TracerProvider:
        """A tracer provider exporting this process's spans (``component``: server, worker,
        replica; it names the service unless ``OTEL_SERVICE_NAME`` does).

        Raises :class:`TracingConfigError` when the OpenTelemetry SDK or the OTLP exporter
        (the ``otel`` extra) is not installed.
        """
        try:
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as exc:
            raise TracingConfigError(
                "tracing is configured (OTEL_*) but the OpenTelemetry SDK is not installed; "
                "install the otel extra (pip install 'synapse-platform[otel]')"
            ) from exc
        if self.exporter == "otlp":
            try:
                import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
            except ImportError as exc:
                raise TracingConfigError(
                    "OTLP tracing is configured but its exporter is not installed; install the "
                    "otel extra (pip install 'synapse-platform[otel]')"
                ) from exc
        resource = Resource.create({"synapse.component": component})
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: f"synapse-{component}"}))
        provider = TracerProvider(resource=resource, sampler=self._sampler())
        # Imported here: the module subclasses the SDK's span processor.
        from synapse_sdk._tracing_export import ExportOnFirstSpan

        provider.add_span_processor(ExportOnFirstSpan(self._export_processor))
        return provider

    def _export_processor(self) -> Any:
        """The batching processor and exporter that send this process's spans."""
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        exporter: Any
        if self.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = (
                OTLPSpanExporter(endpoint=self.endpoint) if self.endpoint else OTLPSpanExporter()
            )
        return BatchSpanProcessor(exporter)


def install_global_tracing(
    component: str,
    environ: Mapping[str, str] | None = None,
    *,
    only_under: Context | EllipsisType | None = ...,
) -> TracerProvider | None:
    """Make this process's global tracer provider export as ``OTEL_*`` says; None when off.

    For the processes that run one thing (a job worker, a serve replica): their code, the
    plugin's included, then traces through the OpenTelemetry API. Never raises: a problem is
    logged and the process runs untraced. A provider installed before is left in place.

    ``only_under``: for a process whose every span descends from one known parent (a job
    worker: the trace context of its assignment, or None when it came with none). Where the
    sampler would record no span under it (``parentbased_always_off`` with no parent or an
    unsampled one, ``always_off``), nothing is installed (None): the spans would all be
    unsampled, and building the provider costs the job's start 5-6 ms (a forked worker with
    the SDK preloaded, quiet 2-CPU machine). Left out (a
    replica, whose calls bring parents of their own), the provider is installed whenever
    tracing is on.
    """
    try:
        config = TracingConfig.from_environ(os.environ if environ is None else environ)
        if config is None:
            return None
        if only_under is not ... and not config.records(sampled_flag(only_under)):
            return None
        from opentelemetry import trace

        provider = config.build_provider(component)
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            provider.shutdown()
            return None
        return provider
    except Exception as exc:
        logger.warning("tracing is off in this %s: %s", component, exc)
        return None


def preload_tracing(environ: Mapping[str, str] | None = None) -> None:
    """Import the OpenTelemetry SDK and exporter that ``OTEL_*`` asks for, nothing else.

    For a process that forks workers: importing them takes a good part of a second, which
    each forked worker would otherwise pay again when it installs its tracing. No provider
    and no thread is started here (a thread would not survive the fork). Never raises: a
    problem is reported by the worker that installs its tracing.
    """
    try:
        config = TracingConfig.from_environ(os.environ if environ is None else environ)
        if config is None:
            return
        import opentelemetry.sdk.trace
        import opentelemetry.sdk.trace.export

        if config.exporter == "otlp":
            import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except Exception:
        logger.debug("tracing modules not preloaded", exc_info=True)


def trace_headers(metadata: Any) -> dict[str, str]:
    """The trace context entries of gRPC metadata (or any ``(key, value)`` pairs), bounded."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if key in TRACE_HEADERS and isinstance(value, str) and len(value) <= _MAX_HEADER_CHARS:
            found[key] = value
    return found


def sampled_flag(context: Context | None) -> bool | None:
    """Whether the span that ``context`` carries is sampled; None when it carries none."""
    if context is None:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span(context).get_span_context()
    return bool(span_context.trace_flags.sampled) if span_context.is_valid else None


def extract_context(headers: Mapping[str, str]) -> Context | None:
    """The trace context that ``headers`` carry, or None when they carry none."""
    if not any(name in headers for name in TRACE_HEADERS):
        return None
    from opentelemetry import propagate

    return propagate.extract(
        {k: v for k, v in headers.items() if isinstance(v, str) and len(v) <= _MAX_HEADER_CHARS}
    )


def inject_headers(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's context to ``carrier`` (nothing when there is no span)."""
    from opentelemetry import propagate, trace

    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return carrier
