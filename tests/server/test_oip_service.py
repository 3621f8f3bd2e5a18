"""The Open Inference Protocol service on a real grpc.aio server, over the real inference core.

The server here has the platform's interceptor chain (authentication with two tenants, the
request guard) and the OIP servicer over real ``InferenceService``, ``DeploymentService``
(SQLite) and ``ServedModelService``; only Ray Serve is stood in for (a backend that records
what the core sends and answers set replies, an observer with a settable status) and the
model registry (a table of visible models). tests/serve/test_oip_clients.py runs the same
service with real replicas and third-party clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from synapse_client.codec import TensorPayload
from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.serving import ErrorKind, ServeReply, ServeRequest
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._served_models import ServedModelService
from synapse_server.core.deployments import AppObservation, DeploymentService, DeploymentStatus
from synapse_server.core.inference import InferenceService, ServeKeyring
from synapse_server.core.models import ModelRecord
from synapse_server.grpc._auth import AuthInterceptor
from synapse_server.grpc._requests import RequestGuard
from synapse_server.grpc._server import GrpcServer
from synapse_server.grpc.oip import OpenInferenceServicer, registration
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2 as pb
from synapse_server.grpc.oip._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from synapse_server.stores import SqliteDeploymentStore

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = b"oip-service-tests-secret-0123456789"
TOKENS = {"tok-acme": "acme", "tok-other": "other"}
ACME = (("authorization", "Bearer tok-acme"),)
OTHER = (("authorization", "Bearer tok-other"),)
#: Models each tenant can see: id -> framework.
VISIBLE = {"acme": {3: "torch", 4: "onnx"}, "other": {9: "torch"}}


class _Ray:
    """Ray Serve stood in for: application status by name, replies to requests."""

    def __init__(self) -> None:
        self.status: dict[str, DeploymentStatus] = {}
        self.requests: list[tuple[str, ServeRequest, float | None]] = []
        self.reply: ServeReply = ServeReply(json={"ok": True})
        self.delay_s = 0.0

    async def observe(
        self, app_name: str, *, start: bool = True, replica_timeout_s: float = 5.0
    ) -> AppObservation | None:
        status = self.status.get(app_name)
        return None if status is None else AppObservation(status)

    async def delete(self, app_name: str) -> None:
        self.status.pop(app_name, None)

    async def call(
        self, app_name: str, token: str, request: ServeRequest, timeout_s: float | None
    ) -> ServeReply:
        self.requests.append((app_name, request, timeout_s))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.reply


class _Registry:
    async def get(self, tenant: str, model_id: int) -> ModelRecord:
        framework = VISIBLE.get(tenant, {}).get(model_id)
        if framework is None:
            raise ModelNotFoundError(model_id)
        return ModelRecord(
            id=model_id,
            tenant=tenant,
            name=f"m{model_id}",
            description="",
            framework=framework,
            metadata={},
            sha256="0" * 64,
            size_bytes=1,
            archive_format="zip",  # type: ignore[arg-type]
        )


class _World:
    def __init__(self, ray: _Ray, server: GrpcServer, channel: grpc.aio.Channel) -> None:
        self.ray = ray
        self.server = server
        self.stub = pb_grpc.GRPCInferenceServiceStub(channel)
        self.channel = channel


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[_World]:
    ray = _Ray()
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ray)
    for tenant, name, models in (
        ("acme", "acme-app", [3]),
        ("acme", "multi", [3, 4]),
        ("acme", "bare", []),
        ("other", "other-app", [9]),
    ):
        ray.status[name] = DeploymentStatus.RUNNING
        await deployments.register(tenant, name=name, plugin="p", action="a", model_ids=models)
    inference = InferenceService(deployments, ray, ServeKeyring(SECRET))
    servicer = OpenInferenceServicer(
        inference,
        ServedModelService(deployments, _Registry()),
        ready=lambda: server.serving,
        version="9.9.9",
        max_message_bytes=1 << 20,
    )
    issuer = WorkerCredentialIssuer(SECRET)
    server = GrpcServer(
        [registration(servicer)],
        interceptors=[AuthInterceptor(TOKENS, issuer)],
        guard=RequestGuard(1 << 20),
    )
    port = server.add_port("127.0.0.1:0")
    await server.start()
    await server.set_serving()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    world = _World(ray, server, channel)
    world.issuer = issuer  # type: ignore[attr-defined]
    yield world
    await channel.close()
    await server.stop(0)
    await store.close()


async def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


def _infer(model: str = "acme-app", **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    request.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    request.raw_input_contents.append(array.tobytes())
    return request


# Health, metadata, auth ----------------------------------------------------------------------


async def test_liveness_and_readiness_need_no_token_and_follow_the_shutdown(world: _World) -> None:
    assert (await world.stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await world.stub.ServerReady(pb.ServerReadyRequest())).ready
    await world.server.enter_graceful_shutdown()
    assert not (await world.stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await world.stub.ServerLive(pb.ServerLiveRequest())).live


async def test_every_other_rpc_takes_the_platforms_tokens(world: _World) -> None:
    calls = [
        (world.stub.ServerMetadata, pb.ServerMetadataRequest()),
        (world.stub.ModelReady, pb.ModelReadyRequest(name="acme-app")),
        (world.stub.ModelMetadata, pb.ModelMetadataRequest(name="acme-app")),
        (world.stub.ModelInfer, _infer()),
    ]
    worker = world.issuer.mint("job-1", "acme")  # type: ignore[attr-defined]
    for rpc, request in calls:
        assert (await _code(rpc(request)))[0] == grpc.StatusCode.UNAUTHENTICATED
        bad = rpc(request, metadata=(("authorization", "Bearer nope"),))
        assert (await _code(bad))[0] == grpc.StatusCode.UNAUTHENTICATED
        # A job's worker credential is for the job's own calls, not for this API.
        as_worker = rpc(request, metadata=(("authorization", f"Bearer {worker}"),))
        assert (await _code(as_worker))[0] == grpc.StatusCode.PERMISSION_DENIED
    stream = world.stub.ModelStreamInfer(iter([_infer()]))
    assert (await _code(stream.read()))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert not world.ray.requests
    metadata = await world.stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=ACME)
    assert (metadata.name, metadata.version, list(metadata.extensions)) == (
        "synapse",
        "9.9.9",
        ["parameters"],
    )


async def test_another_tenants_application_is_not_found(world: _World) -> None:
    for rpc, request in (
        (world.stub.ModelReady, pb.ModelReadyRequest(name="other-app")),
        (world.stub.ModelMetadata, pb.ModelMetadataRequest(name="other-app")),
        (world.stub.ModelInfer, _infer("other-app")),
    ):
        code, details = await _code(rpc(request, metadata=ACME))
        assert code == grpc.StatusCode.NOT_FOUND and "'other-app'" in details
    ready = await world.stub.ModelReady(pb.ModelReadyRequest(name="other-app"), metadata=OTHER)
    assert ready.ready
    assert not world.ray.requests


# Readiness and metadata ----------------------------------------------------------------------


async def _ready(world: _World, name: str, version: str = "") -> bool:
    request = pb.ModelReadyRequest(name=name, version=version)
    return (await world.stub.ModelReady(request, metadata=ACME)).ready


async def test_ready_means_running_now_with_a_visible_model(world: _World) -> None:
    assert await _ready(world, "acme-app")
    assert await _ready(world, "acme-app", "4")  # any visible model can be asked for
    # Without a version: the only declared model, as for an Infer without a model id; an
    # application that declared none or several needs the version.
    assert not await _ready(world, "bare")
    assert not await _ready(world, "multi")
    assert await _ready(world, "multi", "3") and await _ready(world, "bare", "4")
    # Ray Serve's status now, not the recorded one.
    world.ray.status["acme-app"] = DeploymentStatus.UNHEALTHY
    assert not await _ready(world, "acme-app")
    world.ray.status["acme-app"] = DeploymentStatus.RUNNING
    assert await _ready(world, "acme-app")
    # Gone from Ray Serve: the record is marked deleted, and stays not ready.
    del world.ray.status["acme-app"]
    assert not await _ready(world, "acme-app")
    world.ray.status["acme-app"] = DeploymentStatus.RUNNING
    assert not await _ready(world, "acme-app")
    for version, code in (
        ("9", grpc.StatusCode.NOT_FOUND),
        ("x1", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        request = pb.ModelReadyRequest(name="multi", version=version)
        assert (await _code(world.stub.ModelReady(request, metadata=ACME)))[0] == code


async def test_metadata_names_versions_platform_and_status(world: _World) -> None:
    described = await world.stub.ModelMetadata(
        pb.ModelMetadataRequest(name="multi", version="4"), metadata=ACME
    )
    assert (described.name, list(described.versions), described.platform) == (
        "multi",
        ["3", "4"],
        "onnx",
    )
    assert described.properties["status"] == "RUNNING"
    assert described.properties["version"] == "4"
    default = await world.stub.ModelMetadata(
        pb.ModelMetadataRequest(name="acme-app"), metadata=ACME
    )
    assert (default.platform, default.properties["version"]) == ("torch", "3")


# Inference -----------------------------------------------------------------------------------


async def test_model_infer_sends_tensors_and_parameters_to_the_root_route(world: _World) -> None:
    output = TensorPayload.from_array("output", np.array([[0.5, 1.5]], dtype=np.float32))
    world.ray.reply = ServeReply(tensors=(output,))
    request = _infer(model_version="4", id="req-1")
    request.parameters["scale"].double_param = 2.0
    response = await world.stub.ModelInfer(request, metadata=ACME, timeout=30)
    assert (response.model_name, response.model_version, response.id) == ("acme-app", "4", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("output", "FP32", [1, 2])
    ]
    assert list(response.raw_output_contents) == [output.data]
    ((app, sent, timeout_s),) = world.ray.requests
    assert app == "acme-app"
    assert (sent.method, sent.path, sent.json, sent.has_json) == ("POST", "/", {"scale": 2.0}, True)
    assert sent.request_id == "req-1"
    (tensor,) = sent.tensors
    assert (tensor.name, tensor.dtype, tensor.shape) == ("input", "float32", (2, 3))
    assert tensor.data == np.arange(6, dtype=np.float32).tobytes()
    # grpc sends a deadline with a few significant digits, rounded up (30 s may arrive as 30.1).
    assert timeout_s is not None and 0 < timeout_s <= 31


async def test_model_infer_errors_use_the_one_error_mapping(world: _World) -> None:
    world.ray.reply = ServeReply(error_kind=ErrorKind.INVALID_ARGUMENT, error_message="bad rows")
    code, details = await _code(world.stub.ModelInfer(_infer(), metadata=ACME))
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "bad rows")
    world.ray.reply = ServeReply(error_kind=ErrorKind.INTERNAL, error_message="boom")
    code, details = await _code(world.stub.ModelInfer(_infer(), metadata=ACME))
    assert code == grpc.StatusCode.INTERNAL
    # Several declared models and no version: the caller must say which.
    code, details = await _code(world.stub.ModelInfer(_infer("multi"), metadata=ACME))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_id is required" in details
    world.ray.delay_s = 5.0
    code, _ = await _code(world.stub.ModelInfer(_infer(), metadata=ACME, timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_an_answer_over_the_message_limit_is_resource_exhausted(world: _World) -> None:
    big = TensorPayload("output", "uint8", (2 << 20,), bytes(2 << 20))
    world.ray.reply = ServeReply(tensors=(big,))
    code, details = await _code(world.stub.ModelInfer(_infer(), metadata=ACME))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1048576 bytes (1 MiB)" in details


async def test_the_guard_bounds_names_and_sizes_of_oip_requests(world: _World) -> None:
    long_name = pb.ModelInferRequest(model_name="a" * 300)
    code, details = await _code(world.stub.ModelInfer(long_name, metadata=ACME))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_name is 300 characters" in details
    long_key = _infer()
    long_key.parameters["k" * 300].bool_param = True
    code, details = await _code(world.stub.ModelInfer(long_key, metadata=ACME))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "a key of parameters" in details
    # ModelInfer carries tensors: it takes messages up to the server's limit (not the 64 KiB
    # of requests made of names), and says the limit past it.
    world.ray.reply = ServeReply(json=None)
    large = pb.ModelInferRequest(model_name="acme-app")
    large.inputs.add(name="x", datatype="UINT8", shape=[512 << 10])
    large.raw_input_contents.append(bytes(512 << 10))
    response = await world.stub.ModelInfer(large, metadata=ACME)
    assert json.loads(response.raw_output_contents[0][4:]) is None
    large.inputs[0].shape[:] = [2 << 20]
    large.raw_input_contents[0] = bytes(2 << 20)
    code, details = await _code(world.stub.ModelInfer(large, metadata=ACME))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1048576 bytes" in details
    small = pb.ModelReadyRequest(name="acme-app", version="1" * 70_000)
    code, details = await _code(world.stub.ModelReady(small, metadata=ACME))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "ModelReady" in details


async def test_the_stream_answers_each_request_and_goes_on_after_a_failure(world: _World) -> None:
    world.ray.reply = ServeReply(json={"ok": 1})
    bad = _infer(id="two")
    bad.inputs[0].datatype = "UINT64"

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        yield _infer(id="one")
        yield bad
        yield _infer("other-app", id="three")
        yield _infer(id="four")

    answers = [a async for a in world.stub.ModelStreamInfer(requests(), metadata=ACME)]
    assert [a.infer_response.id for a in answers] == ["one", "", "", "four"]
    assert answers[0].error_message == "" and answers[3].error_message == ""
    assert answers[1].error_message.startswith("INVALID_ARGUMENT: input 'input'")
    assert "UINT64" in answers[1].error_message
    assert answers[2].error_message.startswith("NOT_FOUND: deployment named 'other-app'")
    assert len(world.ray.requests) == 2


async def test_a_message_that_is_not_a_request_ends_the_stream_with_its_status(
    world: _World,
) -> None:
    call = world.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    world.ray.reply = ServeReply(json=1)
    stream = call(iter([_infer().SerializeToString(), b"\xff\xff\xff"]), metadata=ACME)
    first = await stream.read()
    assert first.infer_response.model_name == "acme-app"
    code, details = await _code(stream.read())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid ModelStreamInfer" in details
