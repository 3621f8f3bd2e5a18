"""InferStream and exact JSON through a real gRPC server, the real clients and a real replica.

The serve probe (tests/serve/plugins/serve_probe) records, per tag, how many items its
generators produced and which generators were closed, so that a test sees the caller's
deadline or cancellation reach the replica and stop the endpoint's generator.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from synapse_server.core._errors import JobNotFoundError
from synapse_server.core.deployments import DeploymentService
from synapse_server.core.inference import InferenceService, ServeKeyring
from synapse_server.ray import RayRuntime, ServeDeploymentBackend, ServeRouter
from synapse_server.stores import SqliteDeploymentStore

from tests.serve._support import PLUGINS, SECRET, TENANT, deploy_plugin, scale_models

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="session")]

APP = "stream-probe-app"
TOKEN = "tok-stream"


@pytest.fixture(scope="module")
def deployed(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from ray import serve

    root = scale_models(tmp_path_factory.mktemp("stream-models"), ("2", "3"))
    deploy_plugin(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, APP, root)
    yield
    serve.delete(APP)


async def _no_jobs(tenant: str, job_id: str) -> Any:
    raise JobNotFoundError(job_id)


@pytest.fixture(scope="module")
async def address(deployed: None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A gRPC server with the inference and deployment services over the probe (default
    router transport), with one bearer token for the tenant."""
    from synapse.plugin.v1 import (
        deployment_service_pb2,
        deployment_service_pb2_grpc,
        inference_service_pb2,
        inference_service_pb2_grpc,
    )
    from synapse_server.core._credentials import WorkerCredentialIssuer
    from synapse_server.grpc._auth import AuthInterceptor
    from synapse_server.grpc._deployment_servicer import DeploymentServicer
    from synapse_server.grpc._inference_servicer import InferenceServicer
    from synapse_server.grpc._server import GrpcServer, ServiceRegistration, service_name

    runtime = RayRuntime()
    router = ServeRouter(runtime)
    store = SqliteDeploymentStore(tmp_path_factory.mktemp("stream-db") / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ServeDeploymentBackend(runtime, router))
    await runtime.ensure_started()
    await deployments.register(
        TENANT,
        name=APP,
        plugin="serve-probe",
        action="deploy_probe",
        model_ids=[2],
        endpoint_action="probe",
    )
    inference = InferenceService(deployments, router, ServeKeyring(SECRET))
    server = GrpcServer(
        [
            ServiceRegistration(
                InferenceServicer(inference),
                inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
                service_name(inference_service_pb2, "InferenceService"),
            ),
            ServiceRegistration(
                DeploymentServicer(deployments, _no_jobs),
                deployment_service_pb2_grpc.add_DeploymentServiceServicer_to_server,
                service_name(deployment_service_pb2, "DeploymentService"),
            ),
        ],
        interceptors=[AuthInterceptor({TOKEN: TENANT}, WorkerCredentialIssuer(SECRET))],
    )
    port = server.add_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await router.close()
    await store.close()


def _closed_and_produced(client: Any, tag: str) -> tuple[bool, int]:
    closed = tag in client.infer(APP, path="/streams_closed").json
    produced = client.infer(APP, path="/produced", json={"tag": tag}).json
    return closed, produced


def _wait_closed(client: Any, tag: str) -> int:
    """Waits until the replica closed the generator tagged ``tag``; how many items it made."""
    deadline = time.monotonic() + 60
    while True:
        closed, produced = _closed_and_produced(client, tag)
        if closed:
            return produced
        assert time.monotonic() < deadline, f"the generator {tag!r} was never closed"
        time.sleep(0.1)


def _tag() -> str:
    return f"s-{uuid.uuid4().hex}"


async def test_items_arrive_in_order_and_the_generator_ends(address: str) -> None:
    import synapse_client as sc

    def _calls() -> None:
        tag = _tag()
        with sc.Client(address, token=TOKEN, timeout=60) as client:
            items = list(
                client.infer_stream(APP, model=3, path="/count", json={"n": 5, "tag": tag})
            )
            assert [i.json["i"] for i in items] == [0, 1, 2, 3, 4]
            assert {(i.model_id, i.json["model"], i.application) for i in items} == {
                ("3", "3", APP)
            }
            assert _wait_closed(client, tag) == 5
            # A blocking generator streams the same way.
            blocking = client.infer_stream(APP, path="/count_blocking", json={"n": 3})
            assert [i.json for i in blocking] == [0, 1, 2]
            # An endpoint that returns answers one item.
            assert [i.json for i in client.infer_stream(APP, path="/double", json={"x": 4})] == [8]

    await asyncio.to_thread(_calls)


async def test_leaving_the_stream_early_stops_the_generator(address: str) -> None:
    import synapse_client as sc

    def _calls() -> None:
        tag = _tag()
        with sc.Client(address, token=TOKEN, timeout=60) as client:
            stream = client.infer_stream(
                APP, path="/count", json={"n": 10_000, "delay": 0.05, "tag": tag}
            )
            for item in stream:
                if item.json["i"] == 2:
                    break
            stream.close()  # type: ignore[attr-defined]
            produced = _wait_closed(client, tag)
            assert 3 <= produced < 10_000

    await asyncio.to_thread(_calls)


async def test_the_deadline_stops_the_stream_and_the_generator(address: str) -> None:
    import synapse_client as sc

    def _calls() -> None:
        tag = _tag()
        got: list[int] = []
        with sc.Client(address, token=TOKEN, timeout=60) as client:
            with pytest.raises(sc.DeadlineExceededError):
                for item in client.infer_stream(
                    APP,
                    path="/count",
                    json={"n": 10_000, "delay": 0.05, "tag": tag},
                    timeout=2.0,
                ):
                    got.append(item.json["i"])
            assert got == list(range(len(got)))
            produced = _wait_closed(client, tag)
            assert produced < 10_000

    await asyncio.to_thread(_calls)


async def test_a_failure_mid_stream_ends_it_after_the_items_before(address: str) -> None:
    import synapse_client as sc

    def _calls() -> None:
        got: list[int] = []
        with sc.Client(address, token=TOKEN, timeout=60) as client:
            with pytest.raises(sc.InternalError, match="correlation id") as raised:
                for item in client.infer_stream(APP, path="/count", json={"n": 5, "fail_at": 2}):
                    got.append(item.json["i"])
            assert got == [0, 1]
            assert "secret stream detail" not in str(raised.value)
            # A streaming endpoint through the unary Infer: the caller is told to stream.
            with pytest.raises(sc.FailedPreconditionError, match="InferStream"):
                client.infer(APP, path="/count", json={"n": 2})
            with pytest.raises(sc.InvalidArgumentError, match="n"):
                list(client.infer_stream(APP, path="/count", json={"n": "many"}))
            with pytest.raises(sc.NotFoundError):
                list(client.infer_stream(APP, path="/nowhere", json={}))
            with pytest.raises(sc.InvalidArgumentError, match="json_text"):
                list(client.infer_stream(APP, path="/count", json_text="{not json"))
        with sc.Client(address, token="wrong") as client, pytest.raises(sc.UnauthenticatedError):
            list(client.infer_stream(APP, path="/count", json={"n": 1}))

    await asyncio.to_thread(_calls)


async def test_async_client_streams_and_cancels(address: str) -> None:
    import synapse_client as sc

    tag = _tag()
    async with sc.AsyncClient(address, token=TOKEN, timeout=60) as client:
        stream = client.infer_stream(APP, path="/count", json={"n": 4})
        assert [i.json["i"] async for i in stream] == [0, 1, 2, 3]
        endless = client.infer_stream(
            APP, path="/count", json={"n": 10_000, "delay": 0.05, "tag": tag}
        )

        async def _first_two() -> list[int]:
            seen = []
            async for item in endless:
                seen.append(item.json["i"])
                if len(seen) == 2:
                    break
            return seen

        assert await _first_two() == [0, 1]
        await endless.aclose()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while tag not in (await client.infer(APP, path="/streams_closed")).json:
            assert time.monotonic() < deadline, "the async caller's stream was never closed"
            await asyncio.sleep(0.1)


BIG = 2**60 + 1


async def test_integers_and_floats_survive_the_round_trip(address: str) -> None:
    import synapse_client as sc

    value = {"ids": [1, 2, 3], "big": BIG, "neg": -(2**62), "half": 0.5, "whole": 2.0}

    def _calls() -> None:
        with sc.Client(address, token=TOKEN, timeout=60) as client:
            answer = client.infer(APP, path="/echo", json={"value": value}).json
            assert answer["value"] == value
            assert answer["types"] == {
                "ids": ["int", "int", "int"],
                "big": "int",
                "neg": "int",
                "half": "float",
                "whole": "float",
            }
            assert type(answer["value"]["big"]) is int and answer["value"]["big"] == BIG
            assert type(answer["value"]["whole"]) is float
            # JSON text the caller encoded itself travels as given.
            text = '{"value": [1, 1152921504606846977, 1.5]}'
            exact = client.infer(APP, path="/echo", json_text=text).json
            assert exact == {"value": [1, BIG, 1.5], "types": ["int", "int", "float"]}
            streamed = list(client.infer_stream(APP, path="/echo", json={"value": value}))
            assert [s.json["value"] for s in streamed] == [value]

    await asyncio.to_thread(_calls)
    async with sc.AsyncClient(address, token=TOKEN, timeout=60) as client:
        answer = (await client.infer(APP, path="/echo", json={"value": value})).json
        assert answer["value"] == value and answer["types"]["big"] == "int"
