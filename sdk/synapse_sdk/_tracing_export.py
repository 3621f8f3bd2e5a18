"""The span processor that starts a process's span export when the first span is recorded.

Imported only where tracing is configured: it needs the OpenTelemetry SDK (the ``otel`` extra).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

__all__ = ["ExportOnFirstSpan"]

logger = logging.getLogger(__name__)


class ExportOnFirstSpan(SpanProcessor):
    """Hands spans to the processor ``make()`` builds, built when the first span is recorded.

    That processor is the export pipeline: a thread (the batching processor's) and, for OTLP,
    a gRPC channel to the collector. A process whose spans are never sampled
    (``parentbased_always_off`` with unsampled callers, the everyday setting) records none,
    since the SDK hands only recorded spans to processors: it never starts them, and its calls
    run beside no idle export thread and no channel. The first recorded span pays the start,
    a few milliseconds, once.
    """

    def __init__(self, make: Callable[[], SpanProcessor]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._processor: SpanProcessor | None = None

    def _pipeline(self) -> SpanProcessor:
        processor = self._processor
        if processor is None:
            with self._lock:
                if self._processor is None:
                    try:
                        self._processor = self._make()
                    except Exception as exc:
                        # Tracing must never fail the call that records the span.
                        logger.warning("spans are not exported: %s", exc)
                        self._processor = SpanProcessor()  # drops every span
                processor = self._processor
        return processor

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._pipeline().on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        self._pipeline()._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        self._pipeline().on_end(span)

    def shutdown(self) -> None:
        if self._processor is not None:
            self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._processor is None:
            return True  # nothing was recorded, so nothing waits for export
        return self._processor.force_flush(timeout_millis)
