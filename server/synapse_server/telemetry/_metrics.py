"""The platform's metrics: one facade for the code that counts, one registry per server.

Core services and the gRPC interceptors report what happened through
:class:`PlatformMetrics` (a job was submitted, an Infer call ended, events were stored) and
never touch a metrics library. The base class does nothing, so a server without
``--metrics-listen`` pays one empty method call per report; :class:`PrometheusMetrics` keeps
Prometheus metrics in a ``CollectorRegistry`` of its own (several servers in one process,
tests among them, never share or collide).

Gauges of things that exist (running jobs, stream subscribers, worker processes, stored
bytes) are read when ``/metrics`` is scraped, from sources the composition root hands in with
the ``watch_*`` methods: no event has to keep them up to date, so they cannot drift.

Labels are bounded: plugin, action and mode come from the loaded plugin catalog, application
and model only from a deployment that exists (``""`` and ``"other"`` otherwise), codes and
states from fixed sets. No job id, tenant or caller text becomes a label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

__all__ = [
    "JobCountSource",
    "PlatformMetrics",
    "PrometheusMetrics",
]

logger = logging.getLogger(__name__)

# Buckets (seconds). RPCs include the long streams (StreamProgress, worker reports).
_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_JOB_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Requests per batch: powers of two up to past any max_batch_size a replica is likely to use.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class JobCountSource(Protocol):
    """What the jobs gauges read at scrape time (the job service)."""

    def job_counts(self) -> Mapping[tuple[str, str], int]:
        """Jobs not yet finished in this process, by ``(mode, state)``."""
        ...


class PlatformMetrics:
    """The metrics facade; this base records nothing (metrics off).

    Every method is cheap and never raises: counting must not fail a request or a job.
    """

    #: True when the reports are recorded somewhere.
    enabled = False

    # gRPC (the metrics interceptor) ---------------------------------------------------------

    def rpc_started(self, method: str) -> None:
        """An RPC of ``method`` (``/package.Service/Method``) started."""

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        """An RPC ended with status ``code`` (``OK``, ``NOT_FOUND``…) after ``seconds``."""

    # Jobs -------------------------------------------------------------------------------------

    def job_submitted(self, plugin: str, action: str, mode: str) -> None:
        """A new job was stored (PENDING)."""

    def job_started(self, plugin: str, action: str, mode: str, queue_seconds: float) -> None:
        """A job's worker opened its stream (RUNNING), ``queue_seconds`` after submission."""

    def job_finished(
        self, plugin: str, action: str, mode: str, state: str, run_seconds: float | None
    ) -> None:
        """A job reached its final ``state``; ``run_seconds`` from RUNNING (None: never ran)."""

    def events_stored(self, kinds: Iterable[str]) -> None:
        """Job events of these kinds were stored (one entry per event)."""

    # Inference --------------------------------------------------------------------------------

    def infer_finished(self, application: str, model: str, error: str, seconds: float) -> None:
        """An Infer call ended; ``error`` is ``""`` on success, else a fixed error kind."""

    def infer_batched(self, application: str, model: str, batch_size: int) -> None:
        """An Infer call was answered by a model call that answered ``batch_size`` requests
        together (the replica's dynamic batching; reported once per request)."""

    # Gauges read at scrape time ----------------------------------------------------------------

    def watch_jobs(self, source: JobCountSource, modes: Iterable[str]) -> None:
        """Read running and pending jobs from ``source`` (every mode in ``modes`` reported)."""

    def watch_subscribers(self, count: Callable[[], int]) -> None:
        """Read the number of open StreamProgress subscriptions."""

    def watch_worker_processes(self, count: Callable[[], Mapping[str, int]]) -> None:
        """Read the live worker processes by kind (``job``, ``fork_server``)."""

    def watch_store_bytes(self, store: str, size: Callable[[], int]) -> None:
        """Read the bytes held by ``store`` (``models``, ``datasets``)."""

    def watch_infer_routes(self, count: Callable[[], Mapping[str, int]]) -> None:
        """Read the unary replica calls so far by route: ``direct`` (a replica's own endpoint)
        and ``serve`` (handed to Serve's handle by the direct path)."""


def _split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _rpc_type(method: str) -> str:
    """The grpc_type label of ``method``, from the protobuf descriptor of its service."""
    from google.protobuf import descriptor_pool

    service, name = _split_method(method)
    try:
        descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
    except KeyError:
        descriptor = None
    if descriptor is None:
        return "unknown"  # not a method of a service whose descriptors this process loaded
    if descriptor.client_streaming:
        return "bidi_stream" if descriptor.server_streaming else "client_stream"
    return "server_stream" if descriptor.server_streaming else "unary"


class _ScrapeCollector:
    """A custom collector: runs ``read`` at every scrape (on the HTTP server's thread)."""

    def __init__(self, read: Callable[[], Iterator[Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        try:
            yield from self._read()
        except Exception:
            # A source that fails (a store being closed) must not fail the whole scrape.
            logger.exception("a metrics source failed during a scrape")

    def describe(self) -> list[Any]:
        # Described as nothing: the registry then never calls collect() at registration.
        return []


class PrometheusMetrics(PlatformMetrics):
    """The facade over Prometheus metrics in a registry of this server's own.

    The metric names and labels are listed in ``docs/operations.md``.
    """

    enabled = True

    def __init__(self, registry: Any = None, *, process_metrics: bool = True) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            PlatformCollector,
            ProcessCollector,
        )

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        rpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self._rpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", rpc_labels, registry=r
        )
        self._rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*rpc_labels, "grpc_code"),
            registry=r,
        )
        self._rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            rpc_labels,
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        job_labels = ("plugin", "action", "mode")
        self._jobs_submitted = Counter(
            "synapse_jobs_submitted", "Jobs submitted (stored PENDING).", job_labels, registry=r
        )
        self._jobs_finished = Counter(
            "synapse_jobs_finished",
            "Jobs that reached a final state.",
            (*job_labels, "state"),
            registry=r,
        )
        self._job_seconds = Histogram(
            "synapse_job_duration_seconds",
            "Time from RUNNING to the final state of jobs that ran, in seconds.",
            (*job_labels, "state"),
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self._job_wait = Histogram(
            "synapse_job_queue_wait_seconds",
            "Time from submission to RUNNING, in seconds.",
            job_labels,
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self._events = Counter(
            "synapse_job_events_stored", "Job events stored, by kind.", ("kind",), registry=r
        )
        infer_labels = ("application", "model")
        self._infer_calls = Counter(
            "synapse_infer_requests",
            "Infer calls, by application and model.",
            infer_labels,
            registry=r,
        )
        self._infer_errors = Counter(
            "synapse_infer_errors",
            "Infer calls that failed, by error kind.",
            (*infer_labels, "error"),
            registry=r,
        )
        self._infer_seconds = Histogram(
            "synapse_infer_duration_seconds",
            "Time the server spent on an Infer call, in seconds.",
            infer_labels,
            buckets=_INFER_BUCKETS,
            registry=r,
        )
        self._infer_batch = Histogram(
            "synapse_infer_batch_size",
            "Requests answered by the model call that answered an Infer call (one "
            "observation per request of a batching deployment).",
            infer_labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # The RPC children per method: label lookups (a lock and a dict each) once per method.
        self._rpc_children: dict[str, tuple[Any, Any, tuple[str, str, str]]] = {}
        # Stores whose size is read at scrape time (one metric family for all of them).
        self._store_sizes: dict[str, Callable[[], int]] = {}

    def _rpc(self, method: str) -> tuple[Any, Any, tuple[str, str, str]]:
        children = self._rpc_children.get(method)
        if children is None:
            labels = (_rpc_type(method), *_split_method(method))
            children = (
                self._rpc_started.labels(*labels),
                self._rpc_seconds.labels(*labels),
                labels,
            )
            self._rpc_children[method] = children
        return children

    def rpc_started(self, method: str) -> None:
        self._rpc(method)[0].inc()

    def rpc_handled(self, method: str, code: str, seconds: float) -> None:
        _, histogram, labels = self._rpc(method)
        self._rpc_handled.labels(*labels, code).inc()
        histogram.observe(seconds)

    def job_submitted(self, plugin: str, action: str, mode: str) -> None:
        self._jobs_submitted.labels(plugin, action, mode).inc()

    def job_started(self, plugin: str, action: str, mode: str, queue_seconds: float) -> None:
        self._job_wait.labels(plugin, action, mode).observe(max(queue_seconds, 0.0))

    def job_finished(
        self, plugin: str, action: str, mode: str, state: str, run_seconds: float | None
    ) -> None:
        self._jobs_finished.labels(plugin, action, mode, state).inc()
        if run_seconds is not None:
            self._job_seconds.labels(plugin, action, mode, state).observe(max(run_seconds, 0.0))

    def events_stored(self, kinds: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for kind in kinds:
            counts[kind] = counts.get(kind, 0) + 1
        for kind, count in counts.items():
            self._events.labels(kind).inc(count)

    def infer_finished(self, application: str, model: str, error: str, seconds: float) -> None:
        self._infer_calls.labels(application, model).inc()
        if error:
            self._infer_errors.labels(application, model, error).inc()
        self._infer_seconds.labels(application, model).observe(seconds)

    def infer_batched(self, application: str, model: str, batch_size: int) -> None:
        self._infer_batch.labels(application, model).observe(batch_size)

    def _watch(self, read: Callable[[], Iterator[Any]]) -> None:
        self.registry.register(_ScrapeCollector(read))

    def watch_jobs(self, source: JobCountSource, modes: Iterable[str]) -> None:
        from prometheus_client.core import GaugeMetricFamily

        known = tuple(modes)

        def read() -> Iterator[Any]:
            counts = source.job_counts()
            running = GaugeMetricFamily(
                "synapse_jobs_running", "Jobs RUNNING on this server.", labels=["mode"]
            )
            pending = GaugeMetricFamily(
                "synapse_jobs_pending", "Jobs PENDING on this server.", labels=["mode"]
            )
            for mode in sorted({*known, *(m for m, _ in counts)}):
                running.add_metric([mode], counts.get((mode, "RUNNING"), 0))
                pending.add_metric([mode], counts.get((mode, "PENDING"), 0))
            yield running
            yield pending

        self._watch(read)

    def watch_subscribers(self, count: Callable[[], int]) -> None:
        from prometheus_client.core import GaugeMetricFamily

        def read() -> Iterator[Any]:
            yield GaugeMetricFamily(
                "synapse_progress_subscribers",
                "Open StreamProgress subscriptions.",
                value=count(),
            )

        self._watch(read)

    def watch_worker_processes(self, count: Callable[[], Mapping[str, int]]) -> None:
        from prometheus_client.core import GaugeMetricFamily

        def read() -> Iterator[Any]:
            family = GaugeMetricFamily(
                "synapse_worker_processes", "Live local worker processes.", labels=["kind"]
            )
            for kind, value in sorted(count().items()):
                family.add_metric([kind], value)
            yield family

        self._watch(read)

    def watch_infer_routes(self, count: Callable[[], Mapping[str, int]]) -> None:
        from prometheus_client.core import CounterMetricFamily

        def read() -> Iterator[Any]:
            family = CounterMetricFamily(
                "synapse_infer_replica_calls",
                "Unary replica calls of the direct Infer path, by route (direct: the "
                "replica's own endpoint; serve: handed to Serve's handle).",
                labels=["route"],
            )
            for route, value in sorted(count().items()):
                family.add_metric([route], value)
            yield family

        self._watch(read)

    def watch_store_bytes(self, store: str, size: Callable[[], int]) -> None:
        from prometheus_client.core import GaugeMetricFamily

        first = not self._store_sizes
        self._store_sizes[store] = size
        if not first:
            return

        def read() -> Iterator[Any]:
            family = GaugeMetricFamily(
                "synapse_store_bytes", "Bytes held by an artifact store.", labels=["store"]
            )
            for name, read_size in sorted(self._store_sizes.items()):
                family.add_metric([name], read_size())
            yield family

        self._watch(read)
