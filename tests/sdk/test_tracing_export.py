"""A process starts its span export (thread, channel) only once it records a span."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from synapse_sdk._tracing_export import ExportOnFirstSpan
from synapse_sdk.tracing import TracingConfig


class _Counting:
    """Builds the real pipeline (into memory) and counts how often it is asked to."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.made = 0

    def __call__(self) -> SpanProcessor:
        self.made += 1
        return SimpleSpanProcessor(self.exporter)


def _provider(make: _Counting, sampler: object) -> TracerProvider:
    provider = TracerProvider(sampler=sampler)  # type: ignore[arg-type]
    provider.add_span_processor(ExportOnFirstSpan(make))
    return provider


def test_unsampled_spans_start_no_pipeline() -> None:
    make = _Counting()
    tracer = _provider(make, ParentBased(ALWAYS_OFF)).get_tracer("t")
    for _ in range(50):
        with tracer.start_as_current_span("call"), tracer.start_as_current_span("inner"):
            pass
    assert make.made == 0
    assert make.exporter.get_finished_spans() == ()


def test_the_first_recorded_span_starts_it_once_and_every_span_is_exported() -> None:
    make = _Counting()
    provider = _provider(make, ParentBased(ALWAYS_ON))
    tracer = provider.get_tracer("t")

    def one(index: int) -> None:
        with tracer.start_as_current_span(f"call-{index}"):
            pass

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(64)))
    assert make.made == 1
    assert len(make.exporter.get_finished_spans()) == 64
    assert provider.force_flush()


def test_an_unsampled_caller_then_a_sampled_one() -> None:
    make = _Counting()
    tracer = _provider(make, ParentBased(ALWAYS_OFF)).get_tracer("t")
    with tracer.start_as_current_span("unsampled"):
        pass
    assert make.made == 0
    sampled = trace.SpanContext(
        trace_id=0x1234,
        span_id=0x5678,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    parent = trace.set_span_in_context(trace.NonRecordingSpan(sampled))
    with tracer.start_as_current_span("server", context=parent):
        pass
    (span,) = make.exporter.get_finished_spans()
    assert span.name == "server" and span.context.trace_id == 0x1234
    assert make.made == 1


def test_a_pipeline_that_cannot_start_drops_spans_without_failing_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def broken() -> SpanProcessor:
        nonlocal calls
        calls += 1
        raise RuntimeError("no route to the collector")

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(ExportOnFirstSpan(broken))
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with tracer.start_as_current_span("call"):
                pass
    assert calls == 1  # tried once, not on every span
    assert "spans are not exported: no route to the collector" in caplog.text
    assert provider.force_flush()
    provider.shutdown()


def test_nothing_to_flush_or_shut_down_before_the_first_span() -> None:
    make = _Counting()
    provider = _provider(make, ALWAYS_ON)
    assert provider.force_flush()
    provider.shutdown()
    assert make.made == 0


def test_a_configured_provider_starts_no_thread_until_a_span_is_recorded() -> None:
    config = TracingConfig.from_environ(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "parentbased_always_off"}
    )
    assert config is not None
    before = set(threading.enumerate())
    provider = config.build_provider("server")
    tracer = provider.get_tracer("t")
    for _ in range(10):
        with tracer.start_as_current_span("call"):
            pass
    assert set(threading.enumerate()) == before
    # A sampled caller's span starts the batching processor's thread.
    sampled = trace.SpanContext(
        trace_id=0x42,
        span_id=0x43,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    with tracer.start_as_current_span(
        "server", context=trace.set_span_in_context(trace.NonRecordingSpan(sampled))
    ):
        pass
    assert len(set(threading.enumerate()) - before) >= 1
    provider.shutdown()


@pytest.mark.parametrize(
    ("sampler", "absent", "sampled", "unsampled"),
    [
        ("parentbased_always_on", True, True, False),
        ("parentbased_always_off", False, True, False),
        ("parentbased_traceidratio", True, True, False),
        ("always_on", True, True, True),
        # A ratio without the parent: each process decides by the trace id, so the trace
        # context must travel even under an unsampled parent.
        ("traceidratio", True, True, True),
        ("always_off", False, False, False),
    ],
)
def test_which_calls_could_be_recorded_anywhere(
    sampler: str, absent: bool, sampled: bool, unsampled: bool
) -> None:
    config = TracingConfig.from_environ(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": sampler}
    )
    assert config is not None
    assert (config.records(None), config.records(True), config.records(False)) == (
        absent,
        sampled,
        unsampled,
    )


def _context(sampled: bool) -> Context:
    """A remote parent's context, sampled or not."""

    span = NonRecordingSpan(
        SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0x00F067AA0BA902B7,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        )
    )
    return trace.set_span_in_context(span)


_OFF = {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "parentbased_always_off"}


@pytest.mark.parametrize("parent", ["none", "unsampled"])
def test_a_worker_whose_spans_nobody_records_installs_no_tracing(
    parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synapse_sdk.tracing import install_global_tracing, sampled_flag

    def build_provider(self: TracingConfig, component: str) -> TracerProvider:
        raise AssertionError("a provider was built")

    # Not built at all (a provider installed earlier in this process would also make the
    # call return None, so the answer alone would prove nothing).
    monkeypatch.setattr(TracingConfig, "build_provider", build_provider)
    before = trace.get_tracer_provider()
    context = None if parent == "none" else _context(sampled=False)
    assert sampled_flag(context) is (None if parent == "none" else False)
    assert install_global_tracing("worker", _OFF, only_under=context) is None
    assert trace.get_tracer_provider() is before


@pytest.mark.parametrize("case", ["sampled parent", "replica (no known parent)"])
def test_tracing_is_installed_where_a_span_could_be_recorded(case: str) -> None:
    # In a process of its own: a process installs its global provider once.
    only_under = "only_under=ctx" if case == "sampled parent" else ""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_tracing_export import _OFF, _context
from synapse_sdk.tracing import install_global_tracing
ctx = _context(sampled=True)
provider = install_global_tracing("worker", _OFF, {only_under})
print(type(provider).__name__)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "TracerProvider", out.stderr[-2000:]
