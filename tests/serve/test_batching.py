"""Dynamic batching through real replicas: concurrent Infer calls become one model call.

The batch probe (tests/serve/plugins/batch_probe) records every call of its batched
endpoints; its batches wait 60 s to fill (``batch_wait_timeout_s``), so a batch runs exactly
when its 4 requests are there and the counts below are exact, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from synapse_server.core._errors import InvalidArgumentError, ResourceExhaustedError
from synapse_server.core.deployments import DeploymentService
from synapse_server.core.inference import (
    InferDeadlineExceededError,
    InferenceFailedError,
    InferenceService,
    InferRequestData,
    ServeKeyring,
)
from synapse_server.ray import RayRuntime, ServeDeploymentBackend, ServeRouter
from synapse_server.stores import SqliteDeploymentStore
from synapse_server.telemetry import PlatformMetrics, PrometheusMetrics

from tests.serve._support import PLUGINS, SECRET, TENANT, deploy_plugin, scale_models

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="session")]

APP = "batch-app"
TIGHT_APP = "batch-tight-app"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scale_models(tmp_path_factory.mktemp("batch-models"), ("1", "2", "3", "5", "7"))


@pytest.fixture(scope="module")
def deployed(ray_session: str, models_root: Path) -> Iterator[None]:
    from ray import serve

    deploy_plugin(PLUGINS / "batch_probe", "deploy_batch_probe", {"model": 2}, APP, models_root)
    yield
    serve.delete(APP)


@contextlib.asynccontextmanager
async def _service(
    tmp_path: Path,
    transport: str,
    names: tuple[str, ...] = (APP,),
    metrics: PlatformMetrics | None = None,
) -> AsyncIterator[InferenceService]:
    """The inference service over the batch probe's applications ``names``."""
    runtime = RayRuntime()
    router = ServeRouter(runtime, transport=transport)
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ServeDeploymentBackend(runtime, router))
    await runtime.ensure_started()
    for name in names:
        await deployments.register(
            TENANT,
            name=name,
            plugin="batch-probe",
            action="deploy_batch_probe",
            model_ids=[2],
            endpoint_action="batch_probe",
        )
    try:
        yield InferenceService(deployments, router, ServeKeyring(SECRET), metrics=metrics)
    finally:
        await router.close()
        await store.close()


@pytest.fixture(params=["direct", "grpc", "ray"])
async def inference(
    deployed: None, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[InferenceService]:
    """The inference service over the batch probe, once per router transport."""
    # The tight application is deployed only for the test that asks for it.
    names = (APP, TIGHT_APP) if "tight_app" in request.fixturenames else (APP,)
    async with _service(tmp_path, request.param, names) as service:
        yield service


def _call(path: str, model: str = "2", **json: Any) -> InferRequestData:
    # A deadline on every call: a request that is never answered fails its test, naming
    # the call, rather than hang the suite.
    return InferRequestData(
        application=APP, model_id=model, path=path, json=json, has_json=True, timeout_s=120
    )


async def _calls(inference: InferenceService, tag: str) -> list[dict[str, Any]]:
    """The model calls the replica recorded for requests tagged ``tag`` or ``tag-*``."""
    result = await inference.infer(TENANT, _call("/calls", tag=tag))
    return list(result.json)


async def test_concurrent_calls_are_grouped_into_one_model_call(
    inference: InferenceService,
) -> None:
    tag = f"group-{uuid.uuid4().hex}"
    requests = [_call("/", x=float(i), tag=f"{tag}-{i}") for i in range(8)]
    results = await asyncio.gather(*(inference.infer(TENANT, r) for r in requests))
    assert [r.json["y"] for r in results] == [2.0 * i for i in range(8)]  # model 2 scales by 2
    # Each answer says how many requests its call answered: what a metric counts.
    assert [r.batch_size for r in results] == [4] * 8
    calls = await _calls(inference, tag)
    assert [c["size"] for c in calls] == [4, 4], calls
    assert {c["model"] for c in calls} == {"2"}
    assert sorted(t for c in calls for t in c["tags"]) == sorted(f"{tag}-{i}" for i in range(8))


async def test_batch_sizes_are_observed_per_request_under_bounded_labels(
    deployed: None, tmp_path: Path
) -> None:
    """Each request a batching deployment answered is observed once, with the size of the
    model call that answered it, under the call's application and model labels (a model
    the deployment was not deployed with is "other"); calls of an endpoint that does not
    batch are not observed."""
    metrics = PrometheusMetrics(process_metrics=False)
    tag = f"metrics-{uuid.uuid4().hex}"
    async with _service(tmp_path, "grpc", metrics=metrics) as inference:
        mine = [_call("/", x=float(i), tag=f"{tag}-{i}") for i in range(8)]
        other = [_call("/", model="3", x=float(i), tag=f"{tag}-o{i}") for i in range(4)]
        results = await asyncio.gather(*(inference.infer(TENANT, r) for r in mine + other))
        assert [r.batch_size for r in results] == [4] * 12
        assert len(await _calls(inference, tag)) == 3  # not batched: no observation
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for sample in family.samples
        if sample.name.startswith("synapse_infer_")
    }

    def value(name: str, model: str, **labels: str) -> float:
        key = tuple(sorted({"application": APP, "model": model, **labels}.items()))
        return found.get((f"synapse_infer_{name}", key), 0.0)

    assert value("batch_size_count", "2") == 8
    assert value("batch_size_sum", "2") == 32
    assert value("batch_size_bucket", "2", le="2.0") == 0
    assert value("batch_size_bucket", "2", le="4.0") == 8
    assert value("batch_size_count", "other") == 4
    assert value("batch_size_sum", "other") == 16
    # Every call is counted; only the batched ones have a batch size.
    assert value("requests_total", "2") == 9
    labels = {v for _, pairs in found for _, v in pairs}
    assert "3" not in labels and not any(tag in v for v in labels)


async def test_a_batch_never_mixes_model_ids(inference: InferenceService) -> None:
    tag = f"models-{uuid.uuid4().hex}"
    requests = [
        _call("/", model=model, x=float(i), tag=f"{tag}-{model}{i}")
        for i in range(4)
        for model in ("3", "5")
    ]
    results = await asyncio.gather(*(inference.infer(TENANT, r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        assert result.json["model"] == request.model_id
        assert result.json["y"] == request.json["x"] * int(request.model_id)
    calls = await _calls(inference, tag)
    assert sorted((c["model"], c["size"]) for c in calls) == [("3", 4), ("5", 4)]
    for call in calls:
        assert all(t.startswith(f"{tag}-{call['model']}") for t in call["tags"]), call


async def test_once_replies_say_the_endpoint_batches_calls_travel_in_groups(
    inference: InferenceService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reply says the endpoint batches (protocol 1.2), the server sends concurrent
    calls as groups of the deployment's ``max_batch_size`` (one replica call each), never
    mixing models; each request still gets its own answer and error."""
    tag = f"groups-{uuid.uuid4().hex}"
    # The first calls go alone: nothing is known yet of the endpoint.
    warm = [_call("/", x=float(i), tag=f"{tag}-w{i}") for i in range(4)]
    await asyncio.gather(*(inference.infer(TENANT, r) for r in warm))
    router = inference._backend
    sent: list[list[str]] = []
    call_group = router.call_group

    async def recording(app: str, token: str, requests: Any, *args: Any) -> Any:
        sent.append([r.json["tag"] for r in requests])
        return await call_group(app, token, requests, *args)

    monkeypatch.setattr(router, "call_group", recording)
    requests = [
        _call("/", model=model, x=float(i), tag=f"{tag}-{model}{i}")
        for i in range(4)
        for model in ("2", "3")
    ]
    requests[5] = _call("/", model="3", x=-1.0, tag=f"{tag}-3bad")  # the endpoint raises
    results = await asyncio.gather(
        *(inference.infer(TENANT, r) for r in requests), return_exceptions=True
    )
    assert isinstance(results[5], InferenceFailedError)
    for request, result in zip(requests, results, strict=True):
        if request.json["x"] >= 0:
            assert not isinstance(result, BaseException), result
            assert result.json["y"] == request.json["x"] * int(request.model_id)
    # Two groups of four, one per model: two replica calls for eight requests.
    assert sorted(len(group) for group in sent) == [4, 4], sent
    for group in sent:
        assert len({t.removeprefix(f"{tag}-")[0] for t in group}) == 1, sent
    calls = await _calls(inference, tag)
    # Model 2's batch ran once; model 3's raised, then each of its requests ran alone.
    by_model = sorted((c["model"], c["size"]) for c in calls if "-w" not in c["tags"][0])
    assert by_model == [("2", 4), ("3", 1), ("3", 1), ("3", 1), ("3", 1), ("3", 4)], calls


async def test_a_bad_request_in_a_batch_fails_only_itself(inference: InferenceService) -> None:
    tag = f"bad-{uuid.uuid4().hex}"
    values: list[Any] = [1.0, -1.0, 3.0, 4.0]  # -1 makes the endpoint raise
    requests = [_call("/", x=v, tag=f"{tag}-{i}") for i, v in enumerate(values)]
    # Not a float: refused alone, before it joins a batch.
    requests.append(_call("/", x="not a number", tag=f"{tag}-invalid"))
    results = await asyncio.gather(
        *(inference.infer(TENANT, r) for r in requests), return_exceptions=True
    )
    assert [r.json["y"] for r in (results[0], results[2], results[3])] == [2.0, 6.0, 8.0]
    assert isinstance(results[1], InferenceFailedError)
    assert "ValueError" in str(results[1]) and "negative input" not in str(results[1])
    assert isinstance(results[4], InvalidArgumentError) and "x" in str(results[4])
    # The batch raised, then each request ran alone: only the bad one failed.
    calls = await _calls(inference, tag)
    assert [c["size"] for c in calls] == [4, 1, 1, 1, 1]
    assert all(c["tags"] != [f"{tag}-invalid"] for c in calls)


async def test_an_exception_output_fails_only_its_request(inference: InferenceService) -> None:
    tag = f"blocking-{uuid.uuid4().hex}"
    requests = [_call("/blocking", n=n, offset=100, tag=f"{tag}-{n}") for n in (1, 13, 3, 4)]
    results = await asyncio.gather(
        *(inference.infer(TENANT, r) for r in requests), return_exceptions=True
    )
    assert [results[i].json for i in (0, 2, 3)] == [101, 103, 104]  # type: ignore[union-attr]
    assert isinstance(results[1], InferenceFailedError)
    assert [c["size"] for c in await _calls(inference, tag)] == [4]


async def test_a_wrong_number_of_outputs_is_an_error_for_each_request(
    inference: InferenceService,
) -> None:
    tag = f"short-{uuid.uuid4().hex}"
    requests = [_call("/short", x=float(i), tag=f"{tag}-{i}") for i in range(4)]
    results = await asyncio.gather(
        *(inference.infer(TENANT, r) for r in requests), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, InferenceFailedError), result
        assert "returned 3 outputs for a batch of 4 requests" in str(result)
    assert [c["size"] for c in await _calls(inference, tag)] == [4]


async def test_serve_batch_with_its_natural_annotations(inference: InferenceService) -> None:
    # Ray Serve's @serve.batch on `serve_batched(self, x: list[float], tag: list[str],
    # scale: Any = 1.0)`: each request is validated against the element type and every
    # request passes every parameter in the same order, whatever its JSON key order.
    tag = f"serve-{uuid.uuid4().hex}"
    bodies = [
        {"x": 1.0, "tag": f"{tag}-0"},
        {"tag": f"{tag}-1", "scale": 10.0, "x": 2.0},
        {"scale": 3.0, "x": 3.0, "tag": f"{tag}-2"},
        {"x": 4, "tag": f"{tag}-3"},
    ]
    requests = [
        InferRequestData(application=APP, path="/serve_batch", json=b, has_json=True, timeout_s=120)
        for b in bodies
    ]
    results = await asyncio.gather(*(inference.infer(TENANT, r) for r in requests))
    assert [r.json for r in results] == [
        {"y": 1.0, "tag": f"{tag}-0"},
        {"y": 20.0, "tag": f"{tag}-1"},
        {"y": 9.0, "tag": f"{tag}-2"},
        {"y": 4.0, "tag": f"{tag}-3"},
    ]
    assert [c["size"] for c in await _calls(inference, tag)] == [4]
    with pytest.raises(InvalidArgumentError, match="x"):
        await inference.infer(
            TENANT,
            InferRequestData(
                application=APP, path="/serve_batch", json={"x": [1.0], "tag": "t"}, has_json=True
            ),
        )


async def _wait_none_queued(inference: InferenceService) -> None:
    deadline = time.monotonic() + 60
    while (await inference.infer(TENANT, _call("/queued"))).json != 0:
        assert time.monotonic() < deadline, "the replica kept the cancelled request queued"
        await asyncio.sleep(0.1)


def _known_ray_transport_hang(request: pytest.FixtureRequest) -> None:
    """Marks the Ray actor-call variant of a test as a known intermittent failure.

    Seen in CI (stop 22, and 2026-12-06) and in local runs: in these two tests, on the Ray
    actor-call transport, a call to the batch probe sometimes never reaches the replica (its
    log shows none of the test's requests) and every later call of that transport to the
    application in the process waits too, until its 120 s deadline. The gRPC transport showed
    the same symptom once in CI (2026-12-07), from a race in Serve's router set-up that
    ServeRouter now detects and repairs (test_serve_core's router test); whether the Ray
    transport's hang has the same cause is not known, so its mark stays.
    """
    if request.node.callspec.params.get("inference") == "ray":
        request.applymarker(
            pytest.mark.xfail(reason="known intermittent Ray transport hang", strict=False)
        )


async def test_a_request_whose_deadline_passed_leaves_its_batch(
    inference: InferenceService, request: pytest.FixtureRequest
) -> None:
    _known_ray_transport_hang(request)
    tag = f"deadline-{uuid.uuid4().hex}"
    gone = _call("/", model="7", x=1.0, tag=f"{tag}-gone")
    # The deadline passes while the request waits in the replica's queue (a batch of 4 waits
    # 60 s to fill), not while it is still on its way there: the case this test is about.
    call = asyncio.ensure_future(inference.infer(TENANT, dataclasses.replace(gone, timeout_s=5)))
    while not call.done():
        if (await inference.infer(TENANT, _call("/queued"))).json == 1:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(InferDeadlineExceededError):
        await call
    await _wait_none_queued(inference)
    # Four more fill a batch on their own: the one that timed out is not in it.
    kept = [_call("/", model="7", x=float(i), tag=f"{tag}-{i}") for i in range(4)]
    results = await asyncio.gather(*(inference.infer(TENANT, r) for r in kept))
    assert [r.json["y"] for r in results] == [0.0, 7.0, 14.0, 21.0]
    calls = await _calls(inference, tag)
    assert [c["size"] for c in calls] == [4]
    assert f"{tag}-gone" not in calls[0]["tags"]


async def test_a_caller_that_goes_away_leaves_its_batch(
    inference: InferenceService, request: pytest.FixtureRequest
) -> None:
    _known_ray_transport_hang(request)
    tag = f"gone-{uuid.uuid4().hex}"
    call = asyncio.ensure_future(
        inference.infer(TENANT, _call("/", model="7", x=1.0, tag=f"{tag}-gone"))
    )
    deadline = time.monotonic() + 60
    while (await inference.infer(TENANT, _call("/queued"))).json != 1:
        assert time.monotonic() < deadline, "the request never reached the replica's queue"
        await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _wait_none_queued(inference)
    kept = [_call("/", model="7", x=float(i), tag=f"{tag}-{i}") for i in range(4)]
    await asyncio.gather(*(inference.infer(TENANT, r) for r in kept))
    calls = await _calls(inference, tag)
    assert [c["size"] for c in calls] == [4] and f"{tag}-gone" not in calls[0]["tags"]


@pytest.fixture(scope="module")
def tight_app(deployed: None, models_root: Path) -> Iterator[None]:
    """The batch probe with room for one request in its replica and one in each caller."""
    from ray import serve

    overrides = {"max_ongoing_requests": 1, "max_queued_requests": 1}
    deploy_plugin(
        PLUGINS / "batch_probe",
        "deploy_batch_probe",
        {"model": 2, "overrides": overrides},
        TIGHT_APP,
        models_root,
    )
    yield
    serve.delete(TIGHT_APP)


async def test_an_overloaded_application_answers_resource_exhausted(
    tight_app: None, inference: InferenceService
) -> None:
    sleep = InferRequestData(
        application=TIGHT_APP, path="/sleep", json={"seconds": 3}, has_json=True, timeout_s=120
    )
    # A first call makes this server's Serve router learn the deployment's limits (until
    # then it knows no max_queued_requests and queues without bound).
    awake = dataclasses.replace(sleep, json={"seconds": 0})
    assert (await inference.infer(TENANT, awake)).json == "awake"
    results = await asyncio.gather(
        *(inference.infer(TENANT, sleep) for _ in range(4)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, ResourceExhaustedError)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and served, results
    assert "max_queued_requests" in str(refused[0])
    assert all(r.json == "awake" for r in served)


def test_batching_settings_need_a_batched_endpoint(ray_session: str) -> None:
    from synapse_sdk.plugins.actions.inference import BaseServeDeployment, batched
    from synapse_sdk.serving._batching import BatchSettings
    from synapse_sdk.serving._deploy import build_deployment_class
    from synapse_sdk.serving._replica import ServeReplicaConfig

    config = ServeReplicaConfig(app_name="a", app_key=b"k" * 32)

    class Plain(BaseServeDeployment):
        async def infer(self, x: list[float]) -> list[float]:
            return x

    with pytest.raises(ValueError, match="no endpoint of Plain is marked @batched"):
        build_deployment_class(Plain, config, 1, BatchSettings(4))
    build_deployment_class(Plain, config, 1, None)

    class Streaming(BaseServeDeployment):
        @batched
        async def infer(self, x: list[float]) -> Any:
            yield x

    with pytest.raises(TypeError, match="batches do not stream"):
        build_deployment_class(Streaming, config, 1, BatchSettings(4))

    class Kwargs(BaseServeDeployment):
        @batched
        async def infer(self, **x: Any) -> list[Any]:
            return []

    with pytest.raises(TypeError, match="named parameters only"):
        build_deployment_class(Kwargs, config, 1, None)
