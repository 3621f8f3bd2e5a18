"""The Infer router's direct path: calls to the replicas' own endpoints, beside Serve's handle.

Real replicas of the serve probe (tests/serve/plugins/serve_probe) register their endpoints;
the tests check that calls take the direct path once the server has read the registrations,
that the answers are those of the handle path (exact integers included), that deadlines
and cancels reach the replica, that a replica refuses what is not its application's, and
that a killed replica or a deleted application leaves no call lost and no entry behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse_sdk.serving import ServeModelIdSigner
from synapse_sdk.serving._direct import (
    DIRECT_APP_METADATA,
    DIRECT_INFER,
    DIRECT_INFER_GROUP,
    DIRECT_MODEL_METADATA,
    pack_direct_message,
    unpack_direct_message,
)
from synapse_server.core._errors import ServiceUnavailableError
from synapse_server.core.deployments import DeploymentService
from synapse_server.core.inference import (
    InferDeadlineExceededError,
    InferenceService,
    InferRequestData,
    ServeKeyring,
)
from synapse_server.ray import RayRuntime, ServeDeploymentBackend, ServeRouter
from synapse_server.ray._direct import _read_registry
from synapse_server.stores import SqliteDeploymentStore

from tests.serve._support import PLUGINS, SECRET, TENANT, deploy_plugin, scale_models

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="session")]

APP = "direct-app"


# Real replicas ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from ray import serve

    root = scale_models(tmp_path_factory.mktemp("direct-models"), ("2", "3"))
    deploy_plugin(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, APP, root)
    yield root
    with contextlib.suppress(Exception):
        serve.delete(APP)


@contextlib.asynccontextmanager
async def _service(
    tmp_path: Path, name: str = APP
) -> AsyncIterator[tuple[InferenceService, ServeRouter]]:
    runtime = RayRuntime()
    router = ServeRouter(runtime, transport="direct")
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    deployments = DeploymentService(store, ServeDeploymentBackend(runtime, router))
    await runtime.ensure_started()
    await deployments.register(
        TENANT,
        name=name,
        plugin="serve-probe",
        action="deploy_probe",
        model_ids=[2, 3],
        endpoint_action="probe",
    )
    try:
        yield InferenceService(deployments, router, ServeKeyring(SECRET)), router
    finally:
        await router.close()
        await store.close()


@pytest.fixture
async def service(
    deployed: Path, tmp_path: Path
) -> AsyncIterator[tuple[InferenceService, ServeRouter]]:
    async with _service(tmp_path) as pair:
        yield pair


def _call(
    path: str = "/", model: str = "2", timeout_s: float = 60, app: str = APP, **json: Any
) -> InferRequestData:
    return InferRequestData(
        application=app, model_id=model, path=path, json=json, has_json=True, timeout_s=timeout_s
    )


async def _warm(inference: InferenceService, router: ServeRouter, app: str = APP) -> None:
    """Call until a call took the direct path (the first ones go through Serve's handle
    while the server reads the registrations)."""
    assert router.direct is not None
    deadline = time.monotonic() + 30
    while router.direct.direct_calls == 0:
        assert time.monotonic() < deadline, "no call took the direct path"
        answer = await inference.infer(TENANT, _call(x=[1.0], app=app))
        assert answer.json == {"model": "2", "y": [2.0]}
        await asyncio.sleep(0.05)


async def test_calls_take_the_direct_path_and_answer_as_the_handle_does(
    service: tuple[InferenceService, ServeRouter],
) -> None:
    inference, router = service
    assert router.direct is not None
    await _warm(inference, router)
    before = router.direct.direct_calls
    for model, scale in (("2", 2.0), ("3", 3.0), ("2", 2.0)):
        answer = await inference.infer(TENANT, _call(model=model, x=[1.5, -2.0]))
        assert answer.json == {"model": model, "y": [1.5 * scale, -2.0 * scale]}
    # Integers stay integers, of any size, both ways.
    value = {"ids": [1, 2**60 + 1, 2**70], "name": "x"}
    echoed = await inference.infer(TENANT, _call("/echo", value=value))
    assert echoed.json["value"] == value
    # Failures are the endpoint's typed errors, as on the handle path.
    with pytest.raises(Exception) as caught:
        await inference.infer(TENANT, _call("/boom"))
    assert type(caught.value).__name__ == "InferenceFailedError"
    assert router.direct.direct_calls - before == 5


async def test_a_deadline_and_a_cancel_reach_the_replica(
    service: tuple[InferenceService, ServeRouter],
) -> None:
    inference, router = service
    await _warm(inference, router)
    late, gone = f"late-{uuid.uuid4().hex[:8]}", f"gone-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InferDeadlineExceededError):
        await inference.infer(TENANT, _call("/sleep", timeout_s=0.5, seconds=30, tag=late))
    task = asyncio.ensure_future(inference.infer(TENANT, _call("/sleep", seconds=30, tag=gone)))
    deadline = time.monotonic() + 20
    while gone not in (await inference.infer(TENANT, _call("/started"))).json:
        assert time.monotonic() < deadline, "the sleep never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 20
    while not {late, gone} <= set((await inference.infer(TENANT, _call("/cancelled"))).json):
        assert time.monotonic() < deadline, "the replica's endpoint was not cancelled"
        await asyncio.sleep(0.1)


def _entry() -> dict[str, Any]:
    entries = _read_registry(APP)
    assert len(entries) == 1, entries
    return entries[0]


async def test_the_endpoint_refuses_other_applications_bad_bytes_and_forged_ids(
    deployed: Path,
) -> None:
    entry = _entry()
    good = ServeKeyring(SECRET).model_id_for(TENANT, APP, "2")
    request = pack_direct_message(
        {"v": [1, 2], "method": "POST", "path": "/", "json": {"x": [1.0]}}
    )
    async with grpc.aio.insecure_channel(entry["address"]) as channel:
        infer = channel.unary_unary(DIRECT_INFER)
        group = channel.unary_unary(DIRECT_INFER_GROUP)
        answer = unpack_direct_message(
            await infer(
                request,
                metadata=((DIRECT_APP_METADATA, APP), (DIRECT_MODEL_METADATA, good)),
                timeout=30,
            )
        )
        assert answer["json"] == {"model": "2", "y": [2.0]}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await infer(
                request, metadata=((DIRECT_APP_METADATA, "other"), (DIRECT_MODEL_METADATA, good))
            )
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        for data in (os.urandom(256), b"\xc1", b"\xd5\x07\x00\x00"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await infer(
                    data, metadata=((DIRECT_APP_METADATA, APP), (DIRECT_MODEL_METADATA, good))
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await group(
                pack_direct_message([1, 2, 3]),
                metadata=((DIRECT_APP_METADATA, APP), (DIRECT_MODEL_METADATA, good)),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A well-formed message the replica cannot read is answered as a typed error reply,
        # as on the handle path.
        odd = unpack_direct_message(
            await infer(
                pack_direct_message({"v": 3}),
                metadata=((DIRECT_APP_METADATA, APP), (DIRECT_MODEL_METADATA, good)),
            )
        )
        assert odd["error_kind"] == "unsupported_protocol"
        # Without a model id signed for this application nothing is decoded or run.
        forged = ServeModelIdSigner(b"k" * 32, APP, TENANT).mint("2")
        for metadata in (
            ((DIRECT_APP_METADATA, APP), (DIRECT_MODEL_METADATA, forged)),
            ((DIRECT_APP_METADATA, APP),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await infer(os.urandom(64), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_killed_replica_loses_no_call_and_its_successor_is_called_directly(
    service: tuple[InferenceService, ServeRouter],
) -> None:
    import ray
    from ray import serve

    inference, router = service
    assert router.direct is not None
    await _warm(inference, router)
    handed_back = router.direct.not_routed
    first = _entry()
    details = serve.status().applications[APP].deployments
    (deployment_name,) = details
    victim = ray.get_actor(
        f"SERVE_REPLICA::{APP}#{deployment_name}#{first['replica']}", namespace="serve"
    )
    ray.kill(victim, no_restart=True)
    # Calls go on: through Serve's handle while the killed replica's endpoint is left out,
    # then directly to the replica Serve started in its place. None is lost to the kill
    # except as UNAVAILABLE while Serve has no replica at all.
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "no replica took the direct path again"
        try:
            answer = await inference.infer(TENANT, _call(x=[2.0], timeout_s=30))
        except ServiceUnavailableError:
            await asyncio.sleep(0.2)
            continue
        assert answer.json == {"model": "2", "y": [4.0]}
        entries = _read_registry(APP)
        fresh = [e for e in entries if e["replica"] != first["replica"]]
        if fresh and _served_by_fresh(router, fresh):
            break
        await asyncio.sleep(0.2)
    # The killed replica's call was handed back to Serve, and its registration (which it
    # could not remove itself) was removed once Serve no longer listed it.
    assert router.direct.not_routed > handed_back
    deadline = time.monotonic() + 30
    while any(e["replica"] == first["replica"] for e in _read_registry(APP)):
        assert time.monotonic() < deadline, "the killed replica's registration stayed"
        await inference.infer(TENANT, _call(x=[2.0], timeout_s=30))
        await asyncio.sleep(0.2)
    calls = router.direct.direct_calls
    for _ in range(5):
        await inference.infer(TENANT, _call(x=[2.0], timeout_s=30))
    assert router.direct.direct_calls == calls + 5


def _served_by_fresh(router: ServeRouter, fresh: list[dict[str, Any]]) -> bool:
    assert router.direct is not None
    app = router.direct._apps.get(APP)
    return app is not None and any(e["replica"] in app.replicas for e in fresh)


async def test_a_deleted_application_leaves_no_registration_of_a_killed_replica(
    ray_session: str, deployed: Path, tmp_path: Path
) -> None:
    import ray
    from ray import serve

    name = "direct-tmp"
    deploy_plugin(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, name, deployed)
    try:
        deadline = time.monotonic() + 30
        while not _read_registry(name):
            assert time.monotonic() < deadline, "the replica did not register its endpoint"
            await asyncio.sleep(0.1)
        # Killed, the replica cannot remove its registration: deleting the application does.
        (entry,) = _read_registry(name)
        (deployment_name,) = serve.status().applications[name].deployments
        ray.kill(
            ray.get_actor(
                f"SERVE_REPLICA::{name}#{deployment_name}#{entry['replica']}", namespace="serve"
            ),
            no_restart=True,
        )
        assert _read_registry(name)
    finally:
        runtime = RayRuntime()
        await runtime.ensure_started()
        await ServeDeploymentBackend(runtime, ServeRouter(runtime)).delete(name)
    assert _read_registry(name) == []
    assert name not in serve.status().applications


async def test_a_call_in_flight_finishes_while_serve_stops_its_replica(
    ray_session: str, deployed: Path, tmp_path: Path
) -> None:
    from ray import serve

    name = "direct-drain"
    deploy_plugin(PLUGINS / "serve_probe", "deploy_probe", {"model": 2}, name, deployed)
    try:
        async with _service(tmp_path, name) as (inference, router):
            await _warm(inference, router, name)
            calls = router.direct.direct_calls if router.direct is not None else 0
            sleeping = asyncio.ensure_future(
                inference.infer(TENANT, _call("/sleep", app=name, seconds=2, tag="drain"))
            )
            await asyncio.sleep(0.5)
            # Serve stops the replica: its endpoint is unregistered at once, and closed once
            # the call in flight has its answer.
            await asyncio.to_thread(serve.delete, name)
            assert (await sleeping).json == "awake"
            assert router.direct is not None and router.direct.direct_calls == calls + 1
            assert _read_registry(name) == []
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)


async def test_a_plain_deployment_is_called_directly_and_drained_on_delete(
    ray_session: str, deployed: Path, tmp_path: Path
) -> None:
    """No FastAPI app: Serve runs the class as it is and awaits its own __del__ (not the
    ingress wrapper's), which must unregister and drain the endpoint all the same."""
    from ray import serve

    name = "direct-plain"
    deploy_plugin(PLUGINS / "plain_probe", "deploy_plain", {"model": 2}, name, deployed)
    try:
        async with _service(tmp_path, name) as (inference, router):
            assert router.direct is not None
            call = InferRequestData(
                application=name, model_id="3", json={"seconds": 0}, has_json=True, timeout_s=60
            )
            deadline = time.monotonic() + 30
            while router.direct.direct_calls == 0:
                assert time.monotonic() < deadline, "no call took the direct path"
                answer = await inference.infer(TENANT, call)
                assert answer.json == {"model": "3", "slept": 0}
                await asyncio.sleep(0.05)
            calls = router.direct.direct_calls
            sleeping = asyncio.ensure_future(
                inference.infer(TENANT, dataclasses.replace(call, json={"seconds": 2}))
            )
            await asyncio.sleep(0.5)
            await asyncio.to_thread(serve.delete, name)
            assert (await sleeping).json == {"model": "3", "slept": 2}
            assert router.direct.direct_calls == calls + 1
            assert _read_registry(name) == []
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)


async def test_a_replica_killed_during_a_direct_call_runs_it_again_through_serve(
    service: tuple[InferenceService, ServeRouter],
) -> None:
    import ray
    from ray import serve

    inference, router = service
    assert router.direct is not None
    await _warm(inference, router)
    handed_back, calls = router.direct.not_routed, router.direct.direct_calls
    victim = _entry()
    tag = f"killed-{uuid.uuid4().hex[:8]}"
    sleeping = asyncio.ensure_future(
        inference.infer(TENANT, _call("/sleep", timeout_s=120, seconds=2, tag=tag))
    )
    deadline = time.monotonic() + 20
    while tag not in (await inference.infer(TENANT, _call("/started"))).json:
        assert time.monotonic() < deadline, "the sleep never started"
        await asyncio.sleep(0.05)
    (deployment_name,) = serve.status().applications[APP].deployments
    ray.kill(
        ray.get_actor(
            f"SERVE_REPLICA::{APP}#{deployment_name}#{victim['replica']}", namespace="serve"
        ),
        no_restart=True,
    )
    # The direct call fails with the replica; it is run again through Serve's handle, which
    # waits for the replica Serve starts in its place.
    assert (await sleeping).json == "awake"
    assert router.direct.not_routed > handed_back
    assert router.direct.direct_calls - calls >= 1  # the /started polls
