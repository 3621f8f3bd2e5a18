"""``interceptors=``: every call of either client goes through them, on a real server.

The server requires a bearer token and the clients are given none: an interceptor adds it to
each call's metadata. A call that bypassed the interceptor would fail UNAUTHENTICATED, and
the server files what the calls create under the interceptor token's tenant.
"""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import (
    action_service_pb2,
    deployment_service_pb2,
    inference_service_pb2,
    model_service_pb2,
)
from synapse_client import (
    AsyncClient,
    Client,
    ClientConfigError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)

from tests.models._archives import make_zip

TOKENS = {"tok-i": "tenant-i", "tok-o": "tenant-o"}
AUTH = ("authorization", "Bearer tok-i")
CHUNK = 50_000
RESULT_TIMEOUT = 60
BIG_RESULT = (1 << 20) + 100  # over the server's inline limit: fetched with GetJobResult


def _every_rpc() -> set[str]:
    """The full method names of the four services the clients cover."""
    services = [
        action_service_pb2.DESCRIPTOR.services_by_name["ActionService"],
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
        deployment_service_pb2.DESCRIPTOR.services_by_name["DeploymentService"],
        inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    ]
    return {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}


def _archive(tmp_path: Path) -> Path:
    data = random.Random(3).randbytes(4 * CHUNK)
    return make_zip(tmp_path / "m.zip", [("model.bin", data)])


def _upload_messages(archive: Path) -> int:
    """Header plus one message per chunk: what a streamed upload of ``archive`` sends."""
    return 1 + -(-archive.stat().st_size // CHUNK)


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class _SyncAuth(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call; records the methods and the upload messages."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.upload_messages = 0

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        self.methods.append(details.method)
        metadata = (*(details.metadata or ()), AUTH)
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def _count(self, requests: Iterator[Any]) -> Iterator[Any]:
        for request in requests:
            self.upload_messages += 1
            yield request

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), self._count(requests))

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _AsyncAuth(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
):
    """The grpc.aio twin of :class:`_SyncAuth`."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.upload_messages = 0

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = details.method
        self.methods.append(method.decode() if isinstance(method, bytes) else method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()), AUTH)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )

    async def _count(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            self.upload_messages += 1
            yield request

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), self._count(requests))


@pytest.fixture
def auth_server(server_factory: Callable[..., Any]) -> Any:
    return server_factory(tokens=TOKENS)


def test_sync_interceptor_sees_every_call(auth_server: Any, tmp_path: Path) -> None:
    address = auth_server.address
    with Client(address, timeout=30) as bare, pytest.raises(UnauthenticatedError):
        bare.list_actions()  # the server does require the token the interceptor adds

    auth = _SyncAuth()
    with Client(address, timeout=30, interceptors=[auth]) as client:
        assert "toy" in {p.code for p in client.list_actions()}
        handle = client.run_action("toy", "quick", {"count": 1, "label": "icpt"})
        assert list(handle.events())[-1].is_terminal
        assert handle.result(timeout=RESULT_TIMEOUT) == {"label": "icpt", "count": 1}
        big = client.run_action("toy", "quick", {"count": 1, "label": "b", "big": BIG_RESULT})
        assert len(big.result(timeout=RESULT_TIMEOUT)["blob"]) == BIG_RESULT
        assert handle.id in {j.id for j in client.list_jobs(plugin="toy")}
        assert client.cancel_job(handle.id).id == handle.id

        archive = _archive(tmp_path)
        model = client.register_model(archive, "icpt", chunk_size=CHUNK)
        assert auth.upload_messages == _upload_messages(archive)
        assert client.get_model(model.id).id == model.id
        assert model.id in {m.id for m in client.list_models()}
        client.download_model(model.id, tmp_path / "copy.zip")
        assert (tmp_path / "copy.zip").read_bytes() == archive.read_bytes()
        client.delete_model(model.id)

        # Past authentication, each of these gets the server's real answer.
        assert client.list_deployments() == []
        with pytest.raises(NotFoundError):
            client.get_deployment(999)
        with pytest.raises(NotFoundError):
            client.delete_deployment(999)
        with pytest.raises(PermissionDeniedError):
            client.register_deployment("app", "toy", "quick")
        with pytest.raises(NotFoundError):
            client.infer("no-such-app", json={})
        with pytest.raises(NotFoundError):
            list(client.infer_stream("no-such-app", json={}))

    assert set(auth.methods) == _every_rpc()
    # The job is the interceptor token's tenant's: another tenant does not see it.
    with Client(address, token="tok-i") as owner, Client(address, token="tok-o") as other:
        assert owner.get_job(handle.id).state.is_terminal
        with pytest.raises(NotFoundError):
            other.get_job(handle.id)


async def test_async_interceptor_sees_every_call(auth_server: Any, tmp_path: Path) -> None:
    address = auth_server.address
    async with AsyncClient(address, timeout=30) as bare:
        with pytest.raises(UnauthenticatedError):
            await bare.list_actions()

    auth = _AsyncAuth()
    async with AsyncClient(address, timeout=30, interceptors=[auth]) as client:
        assert "toy" in {p.code for p in await client.list_actions()}
        handle = await client.run_action("toy", "quick", {"count": 1, "label": "icpt"})
        assert [e async for e in handle.events()][-1].is_terminal
        assert await handle.result(timeout=RESULT_TIMEOUT) == {"label": "icpt", "count": 1}
        big = await client.run_action("toy", "quick", {"count": 1, "label": "b", "big": BIG_RESULT})
        assert len((await big.result(timeout=RESULT_TIMEOUT))["blob"]) == BIG_RESULT
        assert handle.id in {j.id async for j in client.list_jobs(plugin="toy")}
        assert (await client.cancel_job(handle.id)).id == handle.id

        archive = _archive(tmp_path)
        model = await client.register_model(archive, "icpt", chunk_size=CHUNK)
        assert auth.upload_messages == _upload_messages(archive)  # streamed chunk by chunk
        assert (await client.get_model(model.id)).id == model.id
        assert model.id in {m.id async for m in client.list_models()}
        await client.download_model(model.id, tmp_path / "copy.zip")
        assert (tmp_path / "copy.zip").read_bytes() == archive.read_bytes()
        await client.delete_model(model.id)

        assert await client.list_deployments() == []
        with pytest.raises(NotFoundError):
            await client.get_deployment(999)
        with pytest.raises(NotFoundError):
            await client.delete_deployment(999)
        with pytest.raises(PermissionDeniedError):
            await client.register_deployment("app", "toy", "quick")
        with pytest.raises(NotFoundError):
            await client.infer("no-such-app", json={})
        with pytest.raises(NotFoundError):
            [item async for item in client.infer_stream("no-such-app", json={})]

    assert set(auth.methods) == _every_rpc()
    with Client(address, token="tok-i") as owner, Client(address, token="tok-o") as other:
        assert owner.get_job(handle.id).state.is_terminal
        with pytest.raises(NotFoundError):
            other.get_job(handle.id)


async def test_interceptors_of_the_wrong_kind_are_refused() -> None:
    with pytest.raises(ClientConfigError, match=r"grpc\.aio ones go to AsyncClient"):
        Client("127.0.0.1:1", interceptors=[_AsyncAuth()])  # type: ignore[list-item]
    with pytest.raises(ClientConfigError, match="blocking grpc ones go to Client"):
        AsyncClient("127.0.0.1:1", interceptors=[_SyncAuth()])  # type: ignore[list-item]
    with pytest.raises(ClientConfigError, match="got a str"):
        Client("127.0.0.1:1", interceptors=["not an interceptor"])  # type: ignore[list-item]
    with pytest.raises(ClientConfigError, match="must be a list"):
        Client("127.0.0.1:1", interceptors=_SyncAuth())  # type: ignore[arg-type]
