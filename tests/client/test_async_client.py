"""AsyncClient's model and deployment calls against the real platform server (port 0).

The action and job calls are covered beside the blocking client's (test_client_e2e.py,
test_client_faults.py); Infer against a real Ray Serve deployment is in
tests/serve/test_serve_core.py.
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc
from synapse_client import (
    AsyncClient,
    Client,
    ClientConfigError,
    DataLossError,
    InvalidArgumentError,
    ModelChecksumError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
)
from synapse_client._models import ModelDownload

from tests.models._archives import make_zip

ARCHIVE_BYTES = 600_000


def _archive(tmp_path: Path, name: str = "m.zip") -> Path:
    data = random.Random(7).randbytes(ARCHIVE_BYTES)  # incompressible: the zip stays as large
    return make_zip(tmp_path / name, [("model.bin", data), ("cfg/c.json", b"{}")])


class _RecordingWriter:
    """A writable download destination that records each write and the thread it ran on."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.threads: set[int] = set()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        self.threads.add(threading.get_ident())
        return self.buffer.write(data)


async def test_models_register_get_list_download_delete(
    platform_server: Any, tmp_path: Path
) -> None:
    archive = _archive(tmp_path)
    async with AsyncClient(platform_server.address, timeout=30) as client:
        model = await client.register_model(
            archive,
            "async-mlp",
            framework="pytorch",
            description="uploaded by the asyncio client",
            metadata={"classes": ["a", "b"]},
            chunk_size=65536,
        )
        assert model.file == f"synapse://models/{model.id}" and model.archive_format == "zip"
        assert model.size_bytes == archive.stat().st_size

        got = await client.get_model(model.id)
        assert got == model and got.metadata == {"classes": ["a", "b"]}
        with Client(platform_server.address) as blocking:
            assert blocking.get_model(model.id) == got  # both clients read it the same way

        listed = [m async for m in client.list_models(name="async-mlp", page_size=1)]
        assert model.id in [m.id for m in listed]
        assert {m.name for m in listed} == {"async-mlp"}

        out = tmp_path / "dl" / "copy.zip"
        out.parent.mkdir()
        assert await client.download_model(model.id, out, chunk_size=100_000) == model
        assert out.read_bytes() == archive.read_bytes()
        assert not out.with_name("copy.zip.part").exists()

        # A writable object gets the archive chunk by chunk, written off the event loop.
        writer = _RecordingWriter()
        await client.download_model(model.id, writer, chunk_size=100_000)
        assert writer.buffer.getvalue() == archive.read_bytes()
        assert writer.writes == -(-model.size_bytes // 100_000)
        assert threading.get_ident() not in writer.threads

        assert await client.delete_model(model.id) is None
        with pytest.raises(NotFoundError, match=f"model {model.id}"):
            await client.get_model(model.id)
        gone = tmp_path / "gone.zip"
        with pytest.raises(NotFoundError):
            await client.download_model(model.id, gone)
        assert not gone.exists() and not gone.with_name("gone.zip.part").exists()


async def test_model_upload_errors_are_typed(platform_server: Any, tmp_path: Path) -> None:
    evil = make_zip(tmp_path / "evil.zip", [("../../x", b"1")])
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all")
    async with AsyncClient(platform_server.address, timeout=30) as client:
        # Refused by the server while (or after) the stream is sent: the RPC error is typed.
        with pytest.raises(InvalidArgumentError, match="escapes"):
            await client.register_model(evil, "evil")
        with pytest.raises(InvalidArgumentError, match="not a zip"):
            await client.register_model(junk, "junk", chunk_size=4)
        # Refused before anything is sent.
        with pytest.raises(ClientConfigError, match="not a file"):
            await client.register_model(tmp_path / "missing.zip", "x")
        with pytest.raises(ClientConfigError, match="chunk_size"):
            await client.register_model(junk, "x", chunk_size=0)
        with pytest.raises(ClientConfigError, match="archive format"):
            await client.register_model(junk, "x", archive_format="rar")
        with pytest.raises(InvalidArgumentError, match="model_id"):
            await client.get_model(0)


# --- downloads that do not check out -----------------------------------------------------------


class _LyingModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """DownloadModel answers with a header whose sha256 the bytes do not match."""

    def DownloadModel(
        self, request: model_service_pb2.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[model_service_pb2.DownloadModelResponse]:
        data = b"not the archive the header describes"
        header = model_pb2.Model(
            id=request.model_id, name="liar", sha256="0" * 64, size_bytes=len(data)
        )
        yield model_service_pb2.DownloadModelResponse(model=header)
        yield model_service_pb2.DownloadModelResponse(chunk=data)


@pytest.fixture
def lying_server() -> Iterator[str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_LyingModelServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


async def test_checksum_mismatch_leaves_no_file_in_either_client(
    lying_server: str, tmp_path: Path
) -> None:
    target = tmp_path / "model.zip"
    with Client(lying_server) as client, pytest.raises(ModelChecksumError):
        client.download_model(1, target)
    assert os.listdir(tmp_path) == []
    async with AsyncClient(lying_server) as aclient:
        with pytest.raises(ModelChecksumError) as info:
            await aclient.download_model(1, target)
    assert isinstance(info.value, DataLossError)
    assert os.listdir(tmp_path) == []


def _header(model_id: int = 1) -> model_service_pb2.DownloadModelResponse:
    return model_service_pb2.DownloadModelResponse(
        model=model_pb2.Model(id=model_id, sha256="0" * 64, size_bytes=0)
    )


def test_download_stream_order_is_checked() -> None:
    chunk = model_service_pb2.DownloadModelResponse(chunk=b"x")
    early = ModelDownload(1)
    with pytest.raises(ProtocolError, match="chunk before the header"):
        early.accept(chunk)
    twice = ModelDownload(1)
    assert twice.accept(_header()) is None
    with pytest.raises(ProtocolError, match="second model header"):
        twice.accept(_header())
    with pytest.raises(ProtocolError, match="carried no model"):
        ModelDownload(1).finish()


# --- deployments (no Ray: records the server already holds) ------------------------------------


def _held_deployment(server: Any, tenant: str, name: str) -> int:
    """Stores a DELETED deployment record for ``tenant`` (reading one needs no Ray)."""
    from synapse_server.core.deployments import DeploymentRecord, DeploymentStatus

    store = server.server._deployment_store
    record = DeploymentRecord(
        id=0,
        tenant=tenant,
        name=name,
        plugin="serve-probe",
        action="deploy_probe",
        status=DeploymentStatus.DELETED,
        status_message="gone",
        model_ids=(3, 4),
        endpoint_action="probe",
        job_id="job-x",
    )
    stored, _ = server.call(store.upsert(record))
    return int(stored.id)


async def test_deployments_list_get_delete_register(
    server_factory: Callable[..., Any],
) -> None:
    server = server_factory(tokens={"tok-a": "team-a", "tok-b": "team-b"})
    deployment_id = _held_deployment(server, "team-a", "team-a-app")
    async with AsyncClient(server.address, token="tok-a", timeout=30) as client:
        (listed,) = await client.list_deployments(plugin="serve-probe")
        assert listed.id == deployment_id and listed.name == "team-a-app"
        assert (listed.status, listed.status_message) == ("DELETED", "gone")
        assert listed.model_ids == [3, 4] and listed.endpoint_action == "probe"
        assert listed.job_id == "job-x" and listed.replicas == []
        assert await client.list_deployments(name="no-such-app") == []
        assert await client.get_deployment(deployment_id) == listed
        with Client(server.address, token="tok-a") as blocking:
            assert blocking.get_deployment(deployment_id) == listed
        deleted = await client.delete_deployment(deployment_id)
        assert deleted.id == deployment_id and deleted.status == "DELETED"
        with pytest.raises(InvalidArgumentError):
            await client.get_deployment(0)
        # A client token never registers an application: only a deployment job's worker does.
        with pytest.raises(PermissionDeniedError, match="deployment job"):
            await client.register_deployment(
                "team-a-app", "serve-probe", "deploy_probe", model_ids=[3]
            )
    async with AsyncClient(server.address, token="tok-b", timeout=30) as other:
        assert await other.list_deployments() == []
        with pytest.raises(NotFoundError):
            await other.get_deployment(deployment_id)
        with pytest.raises(NotFoundError):
            await other.delete_deployment(deployment_id)
