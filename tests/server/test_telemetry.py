"""Telemetry of a real in-process server: /metrics after real jobs and calls, traces through
an in-process OTLP collector, JSON log lines, the interceptor chain, InferenceService health.

Metrics are scraped over HTTP and parsed with prometheus_client's own parser; each check
compares two scrapes of the same server, so only what the test itself did is counted.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from synapse_client import (
    Client,
    LogEvent,
    NotFoundError,
    SynapseClientError,
    UnauthenticatedError,
)
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.grpc._auth import AuthInterceptor
from synapse_server.grpc._server import server_interceptors
from synapse_server.grpc._telemetry import (
    AccessLogInterceptor,
    RpcMetricsInterceptor,
    TracingInterceptor,
)
from synapse_server.settings import ServerSettings
from synapse_server.telemetry import ACCESS_LOGGER, Telemetry, log_handler

from tests._otlp import OtlpCollector
from tests.conftest import RunningServer, make_settings

pytestmark = pytest.mark.timeout(180)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
INFERENCE = "synapse.plugin.v1.InferenceService"
SPAN_SERVER = 2  # OTLP SpanKind.SPAN_KIND_SERVER


def scrape(server: RunningServer, path: str = "/metrics") -> str:
    address = server.server.telemetry.metrics_address
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as answer:
        return str(answer.read().decode())


def samples(server: RunningServer) -> Samples:
    """Every sample of a scrape, by (name, sorted labels)."""
    found: Samples = {}
    for family in text_string_to_metric_families(scrape(server)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def rpc(service: str, method: str, kind: str = "unary") -> dict[str, str]:
    return {
        "grpc_service": f"synapse.plugin.v1.{service}",
        "grpc_method": method,
        "grpc_type": kind,
    }


@pytest.fixture
def metrics_server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory(metrics_listen="127.0.0.1:0", tokens={"tok": "acme"})


# Metrics ------------------------------------------------------------------------------------


def test_metrics_count_jobs_rpcs_and_refused_calls(metrics_server: RunningServer) -> None:
    before = samples(metrics_server)
    with Client(metrics_server.address, token="tok", timeout=60) as client:
        for label in ("a", "b"):
            assert client.run_action("toy", "quick", {"label": label, "count": 1}).result(
                timeout=60
            )
        failed = client.run_action("toy", "fail", {})
        with pytest.raises(Exception, match="toy failure"):
            failed.result(timeout=60)
        with pytest.raises(NotFoundError):
            client.get_job("0" * 32)
    with (
        Client(metrics_server.address, token="wrong", timeout=10) as stranger,
        pytest.raises(UnauthenticatedError),
    ):
        stranger.get_job("0" * 32)
    after = samples(metrics_server)

    run = rpc("ActionService", "RunAction")
    get = rpc("ActionService", "GetJob")
    assert moved(before, after, "grpc_server_started_total", **run) == 3
    assert moved(before, after, "grpc_server_handled_total", **run, grpc_code="OK") == 3
    assert moved(before, after, "grpc_server_handling_seconds_count", **run) == 3
    # A failed RPC is counted under its code; so is a call authentication refused.
    assert moved(before, after, "grpc_server_handled_total", **get, grpc_code="NOT_FOUND") == 1
    assert (
        moved(before, after, "grpc_server_handled_total", **get, grpc_code="UNAUTHENTICATED") == 1
    )
    stream = rpc("WorkerService", "ReportEvents", "bidi_stream")
    assert moved(before, after, "grpc_server_handled_total", **stream, grpc_code="OK") == 3

    quick = {"plugin": "toy", "action": "quick", "mode": "local"}
    fail = {"plugin": "toy", "action": "fail", "mode": "local"}
    assert moved(before, after, "synapse_jobs_submitted_total", **quick) == 2
    assert moved(before, after, "synapse_jobs_submitted_total", **fail) == 1
    assert moved(before, after, "synapse_jobs_finished_total", **quick, state="SUCCEEDED") == 2
    assert moved(before, after, "synapse_jobs_finished_total", **fail, state="FAILED") == 1
    assert (
        moved(before, after, "synapse_job_duration_seconds_count", **quick, state="SUCCEEDED") == 2
    )
    assert moved(before, after, "synapse_job_queue_wait_seconds_count", **quick) == 2
    # Each job: PENDING and RUNNING state events and a terminal one; quick also logs once.
    assert moved(before, after, "synapse_job_events_stored_total", kind="terminal") == 3
    assert moved(before, after, "synapse_job_events_stored_total", kind="state") == 6
    assert moved(before, after, "synapse_job_events_stored_total", kind="log") == 2
    # Nothing the callers chose (job ids, tokens) is a label.
    labels = {v for _, pairs in after for _, v in pairs}
    assert not any("0" * 32 in v or v == "tok" or v == "wrong" for v in labels)


def test_gauges_are_read_at_scrape_time(metrics_server: RunningServer, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with Client(metrics_server.address, token="tok", timeout=60) as client:
        job = client.run_action("toy", "gated", {"gate": str(gate)})
        events = job.events()
        # The job runs (it logged), and this is its one subscriber.
        assert next(e for e in events if isinstance(e.payload, LogEvent))
        running = samples(metrics_server)
        assert value(running, "synapse_jobs_running", mode="local") == 1
        assert value(running, "synapse_jobs_pending", mode="local") == 0
        assert value(running, "synapse_progress_subscribers") == 1
        assert value(running, "synapse_worker_processes", kind="job") == 1
        assert value(running, "synapse_worker_processes", kind="fork_server") == 1
        gate.touch()
        assert job.result(timeout=60) == {"gate": "opened"}
        events.close()

        archive = _model_archive(tmp_path)
        client.register_model(archive, "weights")
        # The job's worker may still be exiting; running and subscribers are back to 0.
        done = samples(metrics_server)
        assert value(done, "synapse_jobs_running", mode="local") == 0
        assert value(done, "synapse_progress_subscribers") == 0
        assert value(done, "synapse_store_bytes", store="models") == archive.stat().st_size
        assert value(done, "synapse_store_bytes", store="datasets") == 0
        # A dataset's file counts for datasets only, and leaves the gauge when deleted.
        rows = tmp_path / "rows.jsonl"
        rows.write_text('{"a": 1}\n{"a": 2}\n')
        dataset = client.upload_dataset(rows, "rows")
        uploaded = samples(metrics_server)
        assert value(uploaded, "synapse_store_bytes", store="datasets") == rows.stat().st_size
        assert value(uploaded, "synapse_store_bytes", store="models") == archive.stat().st_size
        client.delete_dataset(dataset.id)
        assert value(samples(metrics_server), "synapse_store_bytes", store="datasets") == 0


def _model_archive(tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(bytes(range(256)) * 64)
    return Path(shutil.make_archive(str(tmp_path / "model"), "zip", model_dir))


def test_infer_calls_are_counted_with_bounded_labels(metrics_server: RunningServer) -> None:
    before = samples(metrics_server)
    with Client(metrics_server.address, token="tok", timeout=30) as client:
        for name in ("free-text-application-1", "free-text-application-2"):
            with pytest.raises(NotFoundError):
                client.infer(application=name, json={})
    after = samples(metrics_server)
    # No deployment was resolved: the caller's application name is never a label value.
    assert moved(before, after, "synapse_infer_requests_total", application="", model="") == 2
    assert (
        moved(
            before,
            after,
            "synapse_infer_errors_total",
            application="",
            model="",
            error="not_found",
        )
        == 2
    )
    assert (
        moved(before, after, "synapse_infer_duration_seconds_count", application="", model="") == 2
    )
    infer = rpc("InferenceService", "Infer")
    assert moved(before, after, "grpc_server_handled_total", **infer, grpc_code="NOT_FOUND") == 2
    assert not any("free-text" in v for _, pairs in after for _, v in pairs)


def test_text_a_caller_chooses_never_becomes_a_label(metrics_server: RunningServer) -> None:
    """Unknown plugins, actions, modes, methods and services, each with a fresh name: no
    label value of the scrape contains any of them, and nothing was counted as a job."""
    import grpc

    before = samples(metrics_server)
    marker = "hostile-label-text"
    with Client(metrics_server.address, token="tok", timeout=30) as client:
        with pytest.raises(NotFoundError):
            client.run_action(f"{marker}-plugin", "quick", {})
        with pytest.raises(NotFoundError):
            client.run_action("toy", f"{marker}-action", {})
        with pytest.raises(SynapseClientError):
            client.run_action("toy", "quick", {"label": "x", "count": 1}, mode=f"{marker}-mode")
    with grpc.insecure_channel(metrics_server.address) as channel:
        for method in (
            f"/synapse.plugin.v1.ActionService/{marker}Method",
            f"/{marker}.Service/Call",
        ):
            call = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", metadata=(("authorization", "Bearer tok"),), timeout=10)
            assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    after = samples(metrics_server)
    values = {v for _, pairs in after for _, v in pairs}
    assert not any(marker in v for v in values), sorted(v for v in values if marker in v)
    run = rpc("ActionService", "RunAction")
    assert moved(before, after, "grpc_server_handled_total", **run, grpc_code="NOT_FOUND") == 2
    submitted = [k for k in after if k[0] == "synapse_jobs_submitted_total"]
    assert all(moved(before, after, name, **dict(labels)) == 0 for name, labels in submitted)


def test_metrics_endpoint_serves_only_metrics_and_servers_keep_their_own(
    server_factory: Callable[..., RunningServer],
) -> None:
    first = server_factory(metrics_listen="127.0.0.1:0")
    second = server_factory(metrics_listen="127.0.0.1:0")
    with pytest.raises(urllib.error.HTTPError) as missing:
        scrape(first, "/other")
    assert missing.value.code == 404
    with Client(first.address, timeout=60) as client:
        client.run_action("toy", "quick", {"count": 1, "label": "one"}).result(timeout=60)
    quick = {"plugin": "toy", "action": "quick", "mode": "local"}
    assert value(samples(first), "synapse_jobs_submitted_total", **quick) == 1
    # Each server has a registry of its own: the other counted nothing.
    assert value(samples(second), "synapse_jobs_submitted_total", **quick) == 0


def test_a_metrics_address_in_use_stops_the_start(
    server_factory: Callable[..., RunningServer],
) -> None:
    from synapse_server.app import ServerStartError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            server_factory(metrics_listen=f"127.0.0.1:{port}")


# The interceptor chain -------------------------------------------------------------------------


def _chain(settings: ServerSettings, environ: dict[str, str]) -> list[type]:
    telemetry = Telemetry.from_settings(settings, environ)
    chain = server_interceptors(settings, WorkerCredentialIssuer(b"s" * 32), telemetry=telemetry)
    return [type(entry) for entry in chain]


def test_telemetry_that_is_off_adds_nothing_to_the_chain(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert _chain(settings, {}) == [AuthInterceptor]
    # An OTEL variable that configures no exporter is no tracing either.
    assert _chain(settings, {"OTEL_SERVICE_NAME": "x"}) == [AuthInterceptor]
    assert _chain(settings, {"OTEL_TRACES_EXPORTER": "none"}) == [AuthInterceptor]
    on = make_settings(tmp_path, metrics_listen="127.0.0.1:0")
    assert _chain(on, {}) == [RpcMetricsInterceptor, AuthInterceptor]
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    assert _chain(on, traced) == [RpcMetricsInterceptor, TracingInterceptor, AuthInterceptor]
    # The access log joins only when its logger writes at its level.
    access = logging.getLogger(ACCESS_LOGGER)
    old_level = access.level
    try:
        access.setLevel(logging.INFO)
        assert _chain(make_settings(tmp_path, access_log="info"), {}) == [
            AccessLogInterceptor,
            AuthInterceptor,
        ]
        assert _chain(make_settings(tmp_path, access_log="debug"), {}) == [AuthInterceptor]
        assert _chain(make_settings(tmp_path, access_log="off"), {}) == [AuthInterceptor]
    finally:
        access.setLevel(old_level)


_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


@pytest.mark.parametrize(
    ("sampler", "traceparent", "state"),
    [
        # The everyday setting: untraced unless the caller samples.
        ("parentbased_always_off", None, "none"),
        ("parentbased_always_off", _UNSAMPLED, "caller's"),
        ("parentbased_always_off", _SAMPLED, "recorded"),
        ("parentbased_always_on", None, "recorded"),
        # The caller's decision is carried on (a job under it is not sampled either).
        ("parentbased_always_on", _UNSAMPLED, "caller's"),
        # Decided per process by the trace id: a span, so that its context travels on.
        ("traceidratio", _UNSAMPLED, "unsampled span"),
        ("always_off", None, "none"),
    ],
)
def test_a_call_gets_a_span_only_when_some_process_could_record_it(
    tmp_path: Path, sampler: str, traceparent: str | None, state: str
) -> None:
    from opentelemetry import trace

    # A ratio of 0 (read by the ratio samplers only): a ratio's span is started unsampled.
    environ = {
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_TRACES_SAMPLER_ARG": "0",
    }
    telemetry = Telemetry.from_settings(make_settings(tmp_path), environ)
    assert telemetry.tracer is not None and telemetry.tracer_provider is not None
    interceptor = TracingInterceptor(telemetry.tracer, telemetry.tracing)
    metadata = (("traceparent", traceparent),) if traceparent else ()
    call = interceptor.start_call("/synapse.plugin.v1.InferenceService/Infer", metadata)
    if call is None:
        found = "none"
    elif isinstance(call, trace.NonRecordingSpan) and call.get_span_context().is_remote:
        found = "caller's"
    else:
        found = "recorded" if call.is_recording() else "unsampled span"
    assert found == state
    if traceparent is not None and call is not None:
        assert call.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    telemetry.tracer_provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1",
                "OTEL_TRACES_SAMPLER": "traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "2",
            },
            "OTEL_TRACES_SAMPLER_ARG",
        ),
    ],
)
def test_unusable_otel_variables_are_settings_errors(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    from synapse_server.app import SynapseServer
    from synapse_server.settings import SettingsError

    server = SynapseServer(make_settings(tmp_path), environ=environ)
    with pytest.raises(SettingsError, match=message):
        asyncio.run(server.start())


# Traces -------------------------------------------------------------------------------------


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    running = OtlpCollector()
    yield running
    running.stop()


def test_one_trace_covers_client_server_job_and_worker(
    server_factory: Callable[..., RunningServer],
    collector: OtlpCollector,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    server = server_factory()
    # The caller's own tracing (not the process-global provider: other tests share it).
    caller = TracerProvider(resource=Resource.create({"service.name": "test-caller"}))
    caller.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector.endpoint)))
    try:
        with (
            caller.get_tracer("test").start_as_current_span("caller") as root,
            Client(server.address, timeout=60) as client,
        ):
            job = client.run_action("toy", "quick", {"label": "traced", "count": 1})
            assert job.result(timeout=60)["label"] == "traced"
            with server.channel() as channel:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        caller.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"

    def complete(spans: list[Any]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {
            "job toy/quick",
            "run toy/quick",
            "synapse.plugin.v1.WorkerService/ReportEvents",
        } <= names

    spans = collector.wait_for(complete)
    by_name = {s.name: s for s in spans if s.trace_id == trace_id}
    caller_span = by_name["caller"]
    run_action = by_name["synapse.plugin.v1.ActionService/RunAction"]
    job_span = by_name["job toy/quick"]
    worker = by_name["run toy/quick"]
    reports = by_name["synapse.plugin.v1.WorkerService/ReportEvents"]
    assert run_action.parent_span_id == caller_span.span_id
    assert run_action.kind == SPAN_SERVER and run_action.service == "synapse-server"
    assert job_span.parent_span_id == run_action.span_id
    assert worker.parent_span_id == job_span.span_id
    assert worker.service == "synapse-worker"
    assert reports.parent_span_id == worker.span_id
    expected = {
        "synapse.job.id": job.id,
        "synapse.plugin": "toy",
        "synapse.action": "quick",
        "synapse.job.mode": "local",
    }
    for span in (job_span, worker):
        assert expected.items() <= span.attributes.items(), span
    assert job_span.attributes["synapse.job.state"] == "SUCCEEDED"
    # The client's other calls of the job (streaming its events) are in the trace too.
    assert "synapse.plugin.v1.ActionService/StreamProgress" in by_name
    assert not any(s.name.startswith("grpc.health") for s in collector.spans)


# Logs ---------------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger also writes JSON lines at INFO into a buffer (removed afterwards)."""
    buffer = io.StringIO()
    handler = log_handler("json", buffer)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_json_log_lines_carry_the_job_id(
    platform_server: RunningServer, json_log: io.StringIO
) -> None:
    with Client(platform_server.address, timeout=60) as client:
        job = client.run_action("toy", "quick", {"label": "json", "count": 1})
        job.result(timeout=60)
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        mine = [line for line in lines if line.get("job_id") == job.id]
        forwarded = [line for line in mine if line["logger"] == "synapse_server.job_log"]
        if forwarded and any("SUCCEEDED" in line["message"] for line in mine):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    for line in mine:
        assert {"time", "level", "logger", "message", "job_id"} <= line.keys()
    # The job's own log event, forwarded with its job id, plugin and action.
    assert forwarded[0]["message"].startswith(f"job {job.id}: done")
    assert forwarded[0]["plugin"] == "toy" and forwarded[0]["action"] == "quick"
    # Lines logged by the job's RPCs (worker reports) carry it too, not only its own task's.
    assert {line["logger"] for line in mine} >= {"synapse_server.core._jobs"}


def test_access_log_lines_name_method_code_duration_and_peer(
    server_factory: Callable[..., RunningServer], json_log: io.StringIO
) -> None:
    access = logging.getLogger(ACCESS_LOGGER)
    server = server_factory(access_log="info")
    with Client(server.address, timeout=30) as client, pytest.raises(NotFoundError):
        client.get_job("f" * 32)
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    access_lines = [line for line in lines if line["logger"] == access.name]
    failed = [line for line in access_lines if line["rpc_method"].endswith("/GetJob")]
    assert len(failed) == 1, access_lines
    assert failed[0]["grpc_code"] == "NOT_FOUND"
    assert failed[0]["level"] == "INFO"
    assert failed[0]["duration_ms"] >= 0
    assert failed[0]["peer"].startswith("ipv4:127.0.0.1:")


# Health -------------------------------------------------------------------------------------


def _health(server: RunningServer, service: str) -> int:
    with server.channel() as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return int(answer.status)


def _wait_health(server: RunningServer, service: str, status: int) -> None:
    deadline = time.monotonic() + 30
    while _health(server, service) != status:
        assert time.monotonic() < deadline, f"{service} never became {status}"
        time.sleep(0.1)


def test_inference_health_follows_whether_ray_can_be_reached(
    server_factory: Callable[..., RunningServer],
) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    cluster = socket.socket()
    cluster.bind(("127.0.0.1", 0))
    port = cluster.getsockname()[1]
    # A configured cluster that is down: Infer cannot work, the rest of the platform can.
    server = server_factory(ray_address=f"127.0.0.1:{port}", health_check_seconds=0.1)
    try:
        assert _health(server, INFERENCE) == not_serving
        assert _health(server, "synapse.plugin.v1.ActionService") == serving
        assert _health(server, "") == serving
        cluster.listen()  # the cluster's address accepts connections again
        _wait_health(server, INFERENCE, serving)
        cluster.close()
        _wait_health(server, INFERENCE, not_serving)
    finally:
        cluster.close()


def test_inference_is_serving_before_the_local_ray_is_needed(
    platform_server: RunningServer,
) -> None:
    # The embedded Ray starts on the first call that needs it.
    assert _health(platform_server, INFERENCE) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("variables", "imported"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({}, False),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
            False,
        ),
    ],
)
def test_fork_servers_preload_the_tracing_their_workers_install(
    variables: dict[str, str], imported: bool
) -> None:
    """What a fork server preloads: the SDK and exporter when tracing is on (each forked
    worker then installs its tracing without those imports), nothing when it is off."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys, synapse_server.worker._zygote as z; from synapse_sdk.tracing import "
        "preload_tracing; before = 'opentelemetry.sdk.trace' in sys.modules; "
        "preload_tracing(); print(before, "
        "'opentelemetry.exporter.otlp.proto.grpc.trace_exporter' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, **variables},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == ["False", str(imported)]
