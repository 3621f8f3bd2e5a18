"""Deployments and Infer through the transport-neutral services, on a real local Ray."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.plugins import load_plugin, run_action
from synapse_sdk.plugins._models import LocalModelBackend
from synapse_sdk.runtime import RunContext
from synapse_sdk.serving import (
    INFER_METHOD,
    PROTOCOL_VERSION,
    ServeModelIdSigner,
    ServeReply,
    ServeRequest,
    TensorPayload,
    derive_app_key,
    format_version,
    unverified_claims,
)
from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    PermissionDeniedError,
)
from synapse_server.core.deployments import (
    DeploymentNotFoundError,
    DeploymentService,
    DeploymentStatus,
    ReplicaState,
)
from synapse_server.core.inference import (
    EndpointNotFoundError,
    InferDeadlineExceededError,
    InferenceFailedError,
    InferenceService,
    InferRequestData,
    ServeKeyring,
)
from synapse_server.ray import RayRuntime, ServeDeploymentBackend, ServeRouter
from synapse_server.ray._serve import _cancel
from synapse_server.stores import SqliteDeploymentStore

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="session")]

PLUGINS = Path(__file__).resolve().parent / "plugins"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plugins"

SECRET = b"serve-tests-secret-0123456789abcdef"
TENANT = "acme"


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from examples.models import MLPConfig, build_model_dir

    root = tmp_path_factory.mktemp("models")
    build_model_dir(root / "1", MLPConfig(hidden=8, seed=1))
    # 3, 5 and 7 are loaded first by the concurrent-load test (one per transport), whatever
    # the order the tests run in; 6 is the gRPC client test's own.
    for probe_id in ("2", "3", "4", "5", "6", "7"):
        (root / probe_id).mkdir()
    return root


def _deploy(
    plugin_dir: Path, action: str, params: dict[str, Any], app: str, models_root: Path
) -> dict[str, Any]:
    keyring = ServeKeyring(SECRET)
    plugin = load_plugin(plugin_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYNAPSE_SERVE_SIGNING_KEY", keyring.tenant_key(TENANT).hex())
        patch.setenv("SYNAPSE_TENANT", TENANT)
        patch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", app)
        ctx = RunContext(
            plugin_code=plugin.code,
            action_name=action,
            model_backend=LocalModelBackend(root=models_root),
        )
        return run_action(plugin.get_action_class(action), params, ctx)


@pytest.fixture(scope="module")
def deployed(ray_session: str, models_root: Path) -> Iterator[None]:
    from ray import serve

    result = _deploy(
        EXAMPLES / "torch_serve", "deployment", {"model": 1, "num_cpus": 0}, "mlp-app", models_root
    )
    assert result == {"serve_application": None}  # no platform to register with
    _deploy(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, "probe-app", models_root)
    yield
    for name in ("mlp-app", "probe-app"):
        serve.delete(name)


@pytest.fixture(params=["direct", "grpc", "ray"])
async def services(deployed: None, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """The deployment and inference services, once per router transport."""
    runtime = RayRuntime()
    router = ServeRouter(runtime, transport=request.param)
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ServeDeploymentBackend(runtime, router))
    # Registration never starts Ray; the session's Ray is this runtime's once it is asked.
    await runtime.ensure_started()
    await deployments.register(
        TENANT,
        name="mlp-app",
        plugin="torch-serve",
        action="deployment",
        model_ids=[1],
        endpoint_action="inference",
    )
    await deployments.register(
        TENANT,
        name="probe-app",
        plugin="serve-probe",
        action="deploy_probe",
        model_ids=[2],
        endpoint_action="probe",
    )
    inference = InferenceService(deployments, router, ServeKeyring(SECRET))
    yield deployments, inference
    await router.close()
    await store.close()


async def test_document_example_serves_the_model(services: Any, models_root: Path) -> None:
    from examples.models import reference_outputs

    _deployments, inference = services
    request = InferRequestData(
        application="mlp-app",
        model_id="1",
        json={"inputs": [{"data": [1.0, 2.0, 3.0]}, {"data": [0.5, 0.0, -1.0]}]},
        has_json=True,
    )
    result = await inference.infer(TENANT, request)
    expected = reference_outputs(models_root / "1", [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
    got = [r["prediction"] for r in result.json]
    assert len(got) == len(expected)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, rel=1e-5)
    assert (result.application, result.model_id) == ("mlp-app", "1")
    # By plugin + action, and with the deployment's default model.
    by_action = await inference.infer(
        TENANT,
        InferRequestData(
            plugin="torch-serve", action="inference", json=request.json, has_json=True
        ),
    )
    assert by_action.json == result.json


async def test_concurrent_first_requests_load_a_model_once(services: Any) -> None:
    deployments, inference = services
    # A model no earlier test loaded, one per transport (the replica outlives the fixture).
    router = inference._backend
    model = "7" if router.direct is not None else "3" if router._transport_options else "5"
    request = InferRequestData(
        application="probe-app", model_id=model, json={"x": [1, 2]}, has_json=True
    )
    results = await asyncio.gather(*(inference.infer(TENANT, request) for _ in range(8)))
    assert all(r.json == {"model": model, "y": [int(model), 2.0 * int(model)]} for r in results)
    record = await deployments.resolve(TENANT, "probe-app", None, None)
    # The replicas' loaded models are asked for with a short deadline and left out when the
    # answer is late (a loaded machine): ask again until the replica's answer is in.
    deadline = time.monotonic() + 60
    while True:
        fresh = await deployments.get(TENANT, record.id)
        if any(model in r.loaded_model_ids for r in fresh.replicas):
            break
        assert time.monotonic() < deadline, fresh
        await asyncio.sleep(0.5)
    assert fresh.status == DeploymentStatus.RUNNING
    assert len(fresh.replicas) == 1
    assert model in fresh.replicas[0].loaded_model_ids
    assert fresh.replicas[0].loaded_models_known
    # Read from Ray's own objects: Ray's enum is normalised, not str()-ed.
    assert fresh.replicas[0].state is ReplicaState.RUNNING
    from ray import serve

    info = (
        await serve.get_app_handle("probe-app")
        .options(method_name="_synapse_replica_info")
        .remote()
    )
    assert info["load_counts"][model] == 1


async def test_tensors_in_and_out(services: Any) -> None:
    import numpy as np

    _, inference = services
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = await inference.infer(
        TENANT,
        InferRequestData(
            application="probe-app",
            model_id="4",
            path="/double",
            tensors=(TensorPayload("x", "float32", (2, 3), x.tobytes()),),
        ),
    )
    (out,) = result.tensors
    assert (out.name, out.dtype, out.shape) == ("output", "float32", (2, 3))
    assert np.frombuffer(out.data, np.float32).reshape(2, 3).tolist() == (x * 4).tolist()


async def test_failures_are_typed(services: Any) -> None:
    _, inference = services
    with pytest.raises(DeploymentNotFoundError):
        await inference.infer(TENANT, InferRequestData(application="nope", model_id="1"))
    with pytest.raises(DeploymentNotFoundError):
        await inference.infer("other-tenant", InferRequestData(application="mlp-app", model_id="1"))
    with pytest.raises(InvalidArgumentError, match="inputs"):
        await inference.infer(
            TENANT,
            InferRequestData(
                application="mlp-app", model_id="1", json={"inputs": 5}, has_json=True
            ),
        )
    with pytest.raises(InvalidArgumentError, match="model_id"):
        await inference.infer(TENANT, InferRequestData(application="mlp-app", model_id="x"))
    with pytest.raises(EndpointNotFoundError):
        await inference.infer(TENANT, InferRequestData(application="probe-app", path="/missing"))
    with pytest.raises(InferenceFailedError) as failed:
        await inference.infer(
            TENANT, InferRequestData(application="probe-app", path="/boom", request_id="corr-1")
        )
    assert "corr-1" in str(failed.value) and "secret internal detail" not in str(failed.value)
    with pytest.raises(InferDeadlineExceededError):
        await inference.infer(
            TENANT,
            InferRequestData(
                application="probe-app",
                path="/sleep",
                json={"seconds": 5},
                has_json=True,
                timeout_s=0.3,
            ),
        )


async def test_replica_rejects_forged_expired_and_foreign_ids(services: Any) -> None:
    from ray import serve

    handle = serve.get_app_handle("probe-app").options(method_name="_synapse_infer")
    request = ServeRequest(json={"x": [1.0]}, has_json=True)
    tenant_key = ServeKeyring(SECRET).tenant_key(TENANT)
    good_key = derive_app_key(tenant_key, "probe-app")
    forged = ServeModelIdSigner(b"https://api.example.com", "probe-app", TENANT).mint(2)
    expired = ServeModelIdSigner(good_key, "probe-app", TENANT).mint(2, ttl_s=1, now=1000.0)
    foreign_key = derive_app_key(ServeKeyring(SECRET).tenant_key("evil"), "probe-app")
    foreign = ServeModelIdSigner(foreign_key, "probe-app", "evil").mint(2)
    for token in (forged, expired, foreign, "2"):
        answer = await handle.options(multiplexed_model_id=token).remote(request.to_wire())
        assert ServeReply.from_wire(answer).error_kind == "permission_denied", token
    ok = ServeModelIdSigner(good_key, "probe-app", TENANT).mint(2)
    reply = ServeReply.from_wire(
        await handle.options(multiplexed_model_id=ok).remote(request.to_wire())
    )
    assert reply.error_kind is None and reply.json == {"model": "2", "y": [2.0]}
    with pytest.raises(PermissionDeniedError):
        raise InferenceService._error(reply.__class__(error_kind="permission_denied"), None, "")  # type: ignore[arg-type]


async def test_replica_speaks_the_versioned_protocol(services: Any) -> None:
    from ray import serve

    key = derive_app_key(ServeKeyring(SECRET).tenant_key(TENANT), "probe-app")
    token = ServeModelIdSigner(key, "probe-app", TENANT).mint(2)
    handle = serve.get_app_handle("probe-app").options(
        method_name=INFER_METHOD, multiplexed_model_id=token
    )
    request = ServeRequest(json={"x": [1.0]}, has_json=True, headers={"traceparent": "t"})
    # A newer minor with fields this replica does not know: read, the unknown ones ignored.
    newer_minor = {**request.to_wire(), "v": (PROTOCOL_VERSION[0], 99), "priority": 1}
    reply = ServeReply.from_wire(await handle.remote(newer_minor))
    assert reply.error_kind is None and reply.json == {"model": "2", "y": [2.0]}
    # Another major: refused with a typed answer naming both versions; the endpoint never ran.
    newer_major = {**request.to_wire(), "v": (PROTOCOL_VERSION[0] + 1, 0)}
    answer = await handle.remote(newer_major)
    assert answer["error_kind"] == "unsupported_protocol"
    assert f"{PROTOCOL_VERSION[0] + 1}.0" in answer["error_message"]
    assert format_version(PROTOCOL_VERSION) in answer["error_message"]
    # The pre-versioning form (a pickled dataclass) is not a message of any version.
    assert (await handle.remote(request))["error_kind"] == "unsupported_protocol"


async def test_delete_undeploys(services: Any, models_root: Path) -> None:
    deployments, inference = services
    _deploy(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, "probe-tmp", models_root)
    record, created = await deployments.register(
        TENANT,
        name="probe-tmp",
        plugin="serve-probe",
        action="deploy_probe",
        model_ids=[2],
        endpoint_action="probe-tmp",
    )
    assert created
    # Infer's target is cached after the first call (no store query for the next ones) ...
    store = deployments._store
    real_find = store.find_by_endpoint
    lookups: list[tuple[str, str, str]] = []

    async def counting_find(tenant: str, plugin: str, action: str) -> Any:
        lookups.append((tenant, plugin, action))
        return await real_find(tenant, plugin, action)

    store.find_by_endpoint = counting_find
    by_action = InferRequestData(
        plugin="serve-probe", action="probe-tmp", json={"x": [1.0]}, has_json=True
    )
    by_name = InferRequestData(application="probe-tmp", json={"x": [1.0]}, has_json=True)
    for _ in range(3):
        assert (await inference.infer(TENANT, by_action)).json == {"model": "2", "y": [2.0]}
    await inference.infer(TENANT, by_name)
    assert len(lookups) == 1
    deleted = await deployments.delete(TENANT, record.id)
    assert deleted.status == DeploymentStatus.DELETED
    # ... and a delete through the service drops it at once: no call reaches a stale target.
    with pytest.raises(DeploymentNotFoundError):
        await inference.infer(TENANT, by_action)
    with pytest.raises(FailedPreconditionError, match="deleted"):
        await inference.infer(TENANT, by_name)
    assert len(lookups) == 2
    from ray import serve

    assert "probe-tmp" not in serve.status().applications
    page = await deployments.list(TENANT, statuses=[DeploymentStatus.DELETED])
    assert [r.name for r in page.deployments] == ["probe-tmp"]


async def test_replica_refuses_a_remembered_id_once_it_expires(services: Any) -> None:
    from ray import serve

    handle = serve.get_app_handle("probe-app").options(method_name="_synapse_infer")
    request = ServeRequest(json={"x": [1.0]}, has_json=True)
    key = derive_app_key(ServeKeyring(SECRET).tenant_key(TENANT), "probe-app")
    # exp is whole seconds: a 4 s ttl leaves over 3 s for the calls that see it valid.
    token = ServeModelIdSigner(key, "probe-app", TENANT).mint(2, ttl_s=4)
    expires_at = float(unverified_claims(token)["exp"])
    bound = handle.options(multiplexed_model_id=token)
    answered_in_time = 0
    for _ in range(2):
        reply = ServeReply.from_wire(await bound.remote(request.to_wire()))
        # A reply back before expiry was checked while the id was valid (then remembered).
        if time.time() < expires_at - 0.2:
            assert reply.error_kind is None, reply
            answered_in_time += 1
    assert answered_in_time, "no call came back before the id expired: nothing was remembered"
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.1)
    reply = ServeReply.from_wire(await bound.remote(request.to_wire()))
    assert reply.error_kind == "permission_denied" and "expired" in reply.error_message


async def test_router_handles_route_on_the_calling_loop(services: Any) -> None:
    _, inference = services
    await inference.infer(
        TENANT, InferRequestData(application="probe-app", json={"x": [1.0]}, has_json=True)
    )
    router: ServeRouter = inference._backend
    app_handle = router._apps["probe-app"]
    assert app_handle._is_router_running_in_separate_loop() is False
    assert app_handle._router._asyncio_loop is asyncio.get_running_loop()


async def test_router_transport_is_the_configured_one(services: Any) -> None:
    _, inference = services
    router: ServeRouter = inference._backend
    request = ServeRequest(json={"x": [1.0]}, has_json=True, request_id="transport-check")
    token = ServeKeyring(SECRET).model_id_for(TENANT, "probe-app", "2")
    _, handle = await router._handle("probe-app", token)
    response = handle.remote(request.to_wire())
    reply = ServeReply.from_wire(await response)
    assert reply.error_kind is None and reply.json == {"model": "2", "y": [2.0]}
    # by_reference: Ray actor calls (object refs); otherwise Serve's gRPC channel.
    grpc_transport = "_by_reference" in router._transport_options
    assert response.by_reference is not grpc_transport


async def test_router_rejects_an_unknown_transport() -> None:
    with pytest.raises(ValueError, match="transport"):
        ServeRouter(RayRuntime(), transport="carrier-pigeon")


async def _no_jobs(tenant: str, job_id: str) -> Any:
    raise JobNotFoundError(job_id)


@pytest.fixture
async def grpc_address(services: Any) -> Any:
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

    deployments, inference = services
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
        interceptors=[AuthInterceptor({"tok-acme": TENANT}, WorkerCredentialIssuer(SECRET))],
    )
    port = server.add_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_client_infer_over_grpc(grpc_address: str, models_root: Path) -> None:
    import numpy as np
    import synapse_client as sc

    from examples.models import reference_outputs

    def _calls() -> None:
        with sc.Client(grpc_address, token="tok-acme", timeout=20) as client:
            result = client.infer("mlp-app", model=1, json={"inputs": [{"data": [1, 2, 3]}]})
            want = reference_outputs(models_root / "1", [[1.0, 2.0, 3.0]])[0]
            assert result.json[0]["prediction"] == pytest.approx(want, rel=1e-5)
            x = np.ones((2, 2), dtype=np.float64)
            doubled = client.infer("probe-app", model=6, path="/double", tensors={"x": x})
            assert doubled.tensors["output"].tolist() == (x * 6).tolist()
            deployments = client.list_deployments()
            assert {d.name for d in deployments} >= {"mlp-app", "probe-app"}
            # Over the wire too: a RUNNING replica is REPLICA_STATE_RUNNING, never UNSPECIFIED.
            probe = next(d for d in deployments if d.name == "probe-app")
            assert [r["state"] for r in client.get_deployment(probe.id).replicas] == ["RUNNING"]
            with pytest.raises(sc.NotFoundError):
                client.infer("nope", model=1, json={})
            with pytest.raises(sc.InvalidArgumentError):
                client.infer("mlp-app", model=1, json={"inputs": 5})
            with pytest.raises(sc.InternalError, match="correlation id"):
                client.infer("probe-app", path="/boom")
            with pytest.raises(sc.DeadlineExceededError):
                client.infer("probe-app", path="/sleep", json={"seconds": 5}, timeout=0.5)
        with (
            sc.Client(grpc_address, token="wrong") as client,
            pytest.raises(sc.UnauthenticatedError),
        ):
            client.infer("mlp-app", model=1, json={})

    await asyncio.to_thread(_calls)


async def test_async_client_infer_over_grpc(grpc_address: str, models_root: Path) -> None:
    import numpy as np
    import synapse_client as sc

    from examples.models import reference_outputs

    async with sc.AsyncClient(grpc_address, token="tok-acme", timeout=20) as client:
        # JSON in and out, by application name and by plugin + endpoint action.
        body = {"inputs": [{"data": [1, 2, 3]}]}
        want = reference_outputs(models_root / "1", [[1.0, 2.0, 3.0]])[0]
        by_name = await client.infer("mlp-app", model=1, json=body)
        by_action = await client.infer(plugin="torch-serve", action="inference", model=1, json=body)
        for result in (by_name, by_action):
            assert result.json[0]["prediction"] == pytest.approx(want, rel=1e-5)
            assert (result.application, result.model_id) == ("mlp-app", "1")
        # Binary tensors in and out, kept as float32 numpy arrays.
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        doubled = await client.infer("probe-app", model=6, path="/double", tensors={"x": x})
        output = doubled.tensors["output"]
        assert output.dtype == np.float32 and output.tolist() == (x * 6).tolist()
        assert doubled.json is None
        # The deployments the answers came from, as the blocking client sees them.
        deployments = await client.list_deployments()
        probe = next(d for d in deployments if d.name == "probe-app")
        assert [r["state"] for r in (await client.get_deployment(probe.id)).replicas] == ["RUNNING"]
        with pytest.raises(sc.NotFoundError):
            await client.infer("nope", model=1, json={})
        with pytest.raises(sc.InvalidArgumentError):
            await client.infer("mlp-app", model=1, json={"inputs": 5})
        with pytest.raises(sc.DeadlineExceededError):
            await client.infer("probe-app", path="/sleep", json={"seconds": 5}, timeout=0.5)
        with pytest.raises(sc.ClientConfigError):
            await client.infer("probe-app", tensors={"x": np.array(["text"])})


def _serve_tasks(tasks: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """The pending tasks whose coroutine is Ray Serve's (its routers' background work)."""
    found = set()
    for task in tasks:
        code = getattr(task.get_coro(), "cr_code", None)
        if not task.done() and code is not None and "ray/serve" in code.co_filename:
            found.add(task)
    return found


async def test_closing_the_router_stops_its_handles_tasks(deployed: None) -> None:
    before = asyncio.all_tasks()
    router = ServeRouter(RayRuntime())
    token = ServeKeyring(SECRET).model_id_for(TENANT, "probe-app", "2")
    request = ServeRequest(json={"x": [1.0]}, has_json=True)
    reply = await router.call("probe-app", token, request, timeout_s=30)
    assert reply.json == {"model": "2", "y": [2.0]}
    started = _serve_tasks(asyncio.all_tasks() - before)
    assert started, "the handle's router runs no task on this loop: nothing to check"
    await router.close()
    await asyncio.sleep(0)
    assert not _serve_tasks(started), _serve_tasks(started)


async def _probe_tags(inference: InferenceService, path: str) -> list[str]:
    reply = await inference.infer(TENANT, InferRequestData(application="probe-app", path=path))
    return list(reply.json)


async def _wait_cancelled(inference: InferenceService, tag: str) -> None:
    deadline = time.monotonic() + 30
    while tag not in await _probe_tags(inference, "/cancelled"):
        assert time.monotonic() < deadline, f"the replica never saw {tag!r} cancelled"
        await asyncio.sleep(0.1)


async def _wait_started(inference: InferenceService, tag: str) -> None:
    deadline = time.monotonic() + 60
    while tag not in await _probe_tags(inference, "/started"):
        assert time.monotonic() < deadline, f"the call {tag!r} never reached the replica"
        await asyncio.sleep(0.1)


async def test_deadline_cancels_the_request_in_the_replica(services: Any) -> None:
    _, inference = services
    tag = f"deadline-{uuid.uuid4().hex}"
    sleep = InferRequestData(
        application="probe-app",
        path="/sleep",
        json={"seconds": 60, "tag": tag},
        has_json=True,
        timeout_s=0.5,
    )
    with pytest.raises(InferDeadlineExceededError):
        await inference.infer(TENANT, sleep)
    await _wait_cancelled(inference, tag)


async def test_a_caller_going_away_cancels_the_request_in_the_replica(services: Any) -> None:
    _, inference = services
    tag = f"gone-{uuid.uuid4().hex}"
    sleep = InferRequestData(
        application="probe-app", path="/sleep", json={"seconds": 60, "tag": tag}, has_json=True
    )
    call = asyncio.ensure_future(inference.infer(TENANT, sleep))
    await _wait_started(inference, tag)  # the call reached the replica
    assert not call.done()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await _wait_cancelled(inference, tag)


async def test_a_deadline_in_the_turn_of_the_assignment_still_cancels_in_the_replica(
    services: Any,
) -> None:
    """The state a deadline leaves when it lands in the same loop turn as the replica
    assignment: the assignment is done, but the awaiting call never took its result. Ray's
    own cancel() then reaches no replica; the router's cancel must."""
    _, inference = services
    router: ServeRouter = inference._backend
    if "_by_reference" in router._transport_options:
        # Over Serve's gRPC channel the assignment settles only with the replica's answer:
        # a deadline can never find it assigned and unanswered.
        pytest.skip("the state arises on the Ray actor-call transport only")
    tag = f"assigned-{uuid.uuid4().hex}"
    token = ServeKeyring(SECRET).model_id_for(TENANT, "probe-app", "2")
    _, handle = await router._handle("probe-app", token)
    request = ServeRequest(json={"seconds": 60, "tag": tag}, has_json=True, path="/sleep")
    response = handle.remote(request.to_wire())
    await asyncio.wait_for(asyncio.shield(response._replica_result_future), 30)
    assert response._replica_result is None  # nobody awaited the response itself
    await _wait_started(inference, tag)
    _cancel(response)
    await _wait_cancelled(inference, tag)


async def test_a_forgotten_app_keeps_its_router_until_its_calls_end(deployed: None) -> None:
    before = asyncio.all_tasks()
    router = ServeRouter(RayRuntime())
    token = ServeKeyring(SECRET).model_id_for(TENANT, "probe-app", "2")
    tag = f"forgotten-{uuid.uuid4().hex}"
    # Long enough to stay in flight from the moment the replica has it until the checks below.
    sleep = ServeRequest(path="/sleep", json={"seconds": 4, "tag": tag}, has_json=True)
    call = asyncio.ensure_future(router.call("probe-app", token, sleep, timeout_s=60))
    # The call is in flight on the app's router once the replica has it. Asked through Serve's
    # process-wide handle, whose router runs on Serve's own loop: nothing is added to the
    # tasks of this loop, and the router under test serves only the call under test.
    from ray import serve

    probe = serve.get_app_handle("probe-app").options(
        method_name="_synapse_infer", multiplexed_model_id=token
    )
    deadline = time.monotonic() + 60
    while (
        tag
        not in ServeReply.from_wire(
            await probe.remote(ServeRequest(path="/started").to_wire())
        ).json
    ):
        assert time.monotonic() < deadline, f"the call {tag!r} never reached the replica"
        await asyncio.sleep(0.1)
    started = _serve_tasks(asyncio.all_tasks() - before)
    assert started and not call.done()
    router.forget("probe-app")  # as after a failed call or a delete
    await asyncio.sleep(0.2)
    assert _serve_tasks(started) == started, "the router was shut down under a live call"
    assert not call.done(), "the call ended before the check: it proved nothing"
    reply = await call
    assert reply.error_kind is None and reply.json == "awake"
    deadline = time.monotonic() + 30
    while _serve_tasks(started):
        assert time.monotonic() < deadline, _serve_tasks(started)
        await asyncio.sleep(0.1)
    await router.close()


async def test_a_router_that_missed_its_first_poll_is_replaced(
    deployed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve stops a new router's own first poll once the process's shared poller sends the
    router an update, and drops an answer that comes after the stop; when the shared poller
    already followed the deployment, it does not send the config, and the router holds its
    requests until their deadlines. Made here for the first router: its poll is stopped
    right after it is sent, and the shared poller never hears of it. Kept, that router fails
    the call with DEADLINE_EXCEEDED, as the batching tests did in CI."""
    from ray.serve._private.router import SharedRouterLongPollClient
    from synapse_server.ray import _serve as serve_module

    made: list[Any] = []
    real_handle = serve_module._loop_handle
    real_register = SharedRouterLongPollClient.register

    def register_all_but_the_first(self: Any, router: Any) -> None:
        if made:
            real_register(self, router)

    def first_one_stuck(shared: Any) -> Any:
        handle = real_handle(shared)
        if not made:
            poller = handle._router._asyncio_router.long_poll_client
            # Queued after the poll's send (queued by the handle's set-up).
            asyncio.get_running_loop().call_soon(poller.stop)
        made.append(handle)
        return handle

    monkeypatch.setattr(SharedRouterLongPollClient, "register", register_all_but_the_first)
    monkeypatch.setattr(serve_module, "_loop_handle", first_one_stuck)
    token = ServeKeyring(SECRET).model_id_for(TENANT, "probe-app", "2")
    router = ServeRouter(RayRuntime(), transport="grpc")
    try:
        reply = await router.call("probe-app", token, ServeRequest(path="/started"), timeout_s=30)
        assert reply.error_kind is None
        assert len(made) == 2, "the stuck router was kept"
        assert not made[0]._router._asyncio_router._request_router_initialized.is_set()
    finally:
        await router.close()
