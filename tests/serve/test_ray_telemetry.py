"""Telemetry of Infer on a real deployment: metrics by application and model, and one trace
from the caller's span through the server's Infer span into the replica's span.

The server owns its Ray (started by the deployment job); the replica learns the tracing
configuration from the deployment's runtime environment (the server's OTEL_* variables,
handed to the deployment job and from there to the replicas).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from synapse_client import Client

from tests._otlp import OtlpCollector

RunningServer = Any  # tests/conftest.py's RunningServer (conftest modules are not importable)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"
BATCH_PROBE = Path(__file__).resolve().parent / "plugins" / "batch_probe"
SECRET = "serve-telemetry-tests-secret-0123456789"
SPAN_SERVER = 2  # OTLP SpanKind.SPAN_KIND_SERVER


def _register_model(client: Client, tmp_path: Path, seed: int) -> int:
    pytest.importorskip("torch")
    from examples.models import MLPConfig, build_model_dir

    model_dir = tmp_path / f"model-{seed}"
    build_model_dir(model_dir, MLPConfig(hidden=8, seed=seed))
    archive = shutil.make_archive(str(tmp_path / f"model-{seed}"), "zip", model_dir)
    return client.register_model(archive, f"mlp-{seed}", framework="torch").id


def _infer_samples(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("synapse_infer_")
    }


@pytest.fixture
def collector() -> Iterator[OtlpCollector]:
    running = OtlpCollector()
    yield running
    running.stop()


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_infer_metrics_and_trace_reach_the_replica(
    server_factory: Callable[..., RunningServer],
    collector: OtlpCollector,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    server = server_factory(
        plugin_dirs=[EXAMPLES],
        server_secret=SECRET,
        worker_memory_limit_mb=None,
        metrics_listen="127.0.0.1:0",
    )
    metrics_address = server.server.telemetry.metrics_address
    caller = TracerProvider()
    caller.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector.endpoint)))
    with Client(server.address, timeout=120) as client:
        model_id = _register_model(client, tmp_path, seed=7)
        other_model = _register_model(client, tmp_path, seed=8)
        deployment = client.run_action(
            "torch-serve",
            "deployment",
            {"model": model_id, "num_gpus": 0, "num_cpus": 0},
            mode="local",
        ).result(timeout=360)["serve_application"]
        application = client.get_deployment(deployment).name
        payload = {"inputs": [{"data": [1.0, 2.0, 3.0]}]}
        # The first calls go through Serve's handle while the server reads the replicas'
        # registrations; the calls below then take the direct path (and are traced there).
        route = ("synapse_infer_replica_calls_total", (("route", "direct"),))
        deadline = time.monotonic() + 60
        while not _infer_samples(metrics_address).get(route):
            assert time.monotonic() < deadline, "no call took the direct path"
            client.infer(plugin="torch-serve", action="inference", model=model_id, json=payload)
            time.sleep(0.1)
        before = _infer_samples(metrics_address)
        try:
            with caller.get_tracer("test").start_as_current_span("caller") as root:
                answer = client.infer(
                    plugin="torch-serve", action="inference", model=model_id, json=payload
                )
        finally:
            caller.shutdown()
        client.infer(plugin="torch-serve", action="inference", model=model_id, json=payload)
        # A model the deployment was not deployed with is labelled "other", never its id.
        client.infer(plugin="torch-serve", action="inference", model=other_model, json=payload)
        after = _infer_samples(metrics_address)
    assert answer.application == application

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    mine = {"application": application, "model": str(model_id)}
    assert moved("synapse_infer_requests_total", **mine) == 2
    assert moved("synapse_infer_duration_seconds_count", **mine) == 2
    assert not any(name == "synapse_infer_errors_total" for name, _ in after)
    assert moved("synapse_infer_requests_total", application=application, model="other") == 1
    assert not any(str(other_model) == v for _, labels in after for _, v in labels)
    assert moved("synapse_infer_replica_calls_total", route="direct") == 3
    assert moved("synapse_infer_replica_calls_total", route="serve") == 0

    trace_id = f"{root.get_span_context().trace_id:032x}"

    def all_three_in(spans: list[Any]) -> bool:
        # Three processes export on their own schedules: the replica's span often arrives
        # before the server's (which ends later), so wait for each of them.
        names = {(s.service, s.name) for s in spans if s.trace_id == trace_id}
        services = {service for service, _ in names}
        return (
            "synapse-replica" in services
            and any(name == "synapse.plugin.v1.InferenceService/Infer" for _, name in names)
            and any(name == "caller" for _, name in names)
        )

    spans = [s for s in collector.wait_for(all_three_in, timeout=120) if s.trace_id == trace_id]
    by_service = {s.service: s for s in spans}
    infer = next(s for s in spans if s.name == "synapse.plugin.v1.InferenceService/Infer")
    replica = by_service["synapse-replica"]
    assert infer.parent_span_id == next(s for s in spans if s.name == "caller").span_id
    assert infer.kind == SPAN_SERVER
    assert infer.attributes["synapse.application"] == application
    assert infer.attributes["synapse.model.id"] == str(model_id)
    assert replica.parent_span_id == infer.span_id
    assert replica.kind == SPAN_SERVER
    assert replica.attributes["synapse.application"] == application
    assert replica.attributes["synapse.model.id"] == str(model_id)


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_batch_sizes_of_concurrent_infer_calls_in_one_scrape(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Concurrent Infer calls to a deployment that batches (the batch probe: a batch runs
    when 4 requests of a model wait) are answered in batches of 4, and the server's one
    /metrics scrape has each call's batch size under its application and model."""
    server = server_factory(
        plugin_dirs=[BATCH_PROBE],
        server_secret=SECRET,
        worker_memory_limit_mb=None,
        metrics_listen="127.0.0.1:0",
    )
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "w.bin").write_bytes(b"w" * 64)
    archive = shutil.make_archive(str(tmp_path / "weights"), "zip", weights)
    with Client(server.address, timeout=120) as client:
        model_id = client.register_model(archive, "probe-weights").id
        deployment = client.run_action(
            "batch-probe", "deploy_batch_probe", {"model": model_id}, mode="local"
        ).result(timeout=360)["serve_application"]
        application = client.get_deployment(deployment).name
        tag = f"scrape-{uuid.uuid4().hex}"

        def infer(i: int) -> Any:
            return client.infer(
                plugin="batch-probe",
                action="batch_probe",
                model=model_id,
                json={"x": float(i), "tag": f"{tag}-{i}"},
            ).json

        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(infer, range(8)))
            after = _infer_samples(server.server.telemetry.metrics_address)
        finally:
            client.delete_deployment(deployment)
    assert [a["batch"] for a in answers] == [4] * 8, answers

    def sample(name: str, **labels: str) -> float:
        key = {"application": application, "model": str(model_id), **labels}
        return after.get((name, tuple(sorted(key.items()))), 0.0)

    assert sample("synapse_infer_requests_total") == 8
    assert sample("synapse_infer_batch_size_count") == 8
    assert sample("synapse_infer_batch_size_sum") == 32
    assert sample("synapse_infer_batch_size_bucket", le="2.0") == 0
    assert sample("synapse_infer_batch_size_bucket", le="4.0") == 8


@pytest.mark.ray
@pytest.mark.timeout(480)
@pytest.mark.parametrize("mode", ["task", "job"])
def test_a_job_on_ray_joins_the_callers_trace(
    server_factory: Callable[..., RunningServer],
    collector: OtlpCollector,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """The job's worker running on Ray (a Ray task, or in job mode an actor process of its
    own with the plugin's runtime environment) exports its span into the caller's trace,
    the child of the server's job span, with the job's attributes and mode.

    The tracing configuration is the server's only (not this process's environment, which
    the Ray the server starts would inherit): the worker learns it from the job."""
    from opentelemetry.sdk.trace import TracerProvider

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = server_factory(worker_memory_limit_mb=None, environ=environ)
    caller = TracerProvider()
    try:
        with (
            caller.get_tracer("test").start_as_current_span("caller") as root,
            Client(server.address, timeout=120) as client,
        ):
            job = client.run_action("toy", "quick", {"count": 1, "label": "ray"}, mode=mode)
            assert job.result(timeout=300)["label"] == "ray"
    finally:
        caller.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"

    def worker_span_in(spans: list[Any]) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"job toy/quick", "run toy/quick"} <= names

    spans = [s for s in collector.wait_for(worker_span_in, timeout=120) if s.trace_id == trace_id]
    by_name = {s.name: s for s in spans}
    job_span, worker = by_name["job toy/quick"], by_name["run toy/quick"]
    # Caller (not exported here) -> the server's RunAction span -> job span -> Ray worker.
    run_action = by_name["synapse.plugin.v1.ActionService/RunAction"]
    assert run_action.parent_span_id == f"{root.get_span_context().span_id:016x}"
    assert run_action.service == "synapse-server"
    assert job_span.parent_span_id == run_action.span_id
    assert worker.parent_span_id == job_span.span_id
    assert worker.service == "synapse-worker"
    expected = {"synapse.job.id": job.id, "synapse.plugin": "toy", "synapse.job.mode": mode}
    for span in (job_span, worker):
        assert expected.items() <= span.attributes.items(), span
