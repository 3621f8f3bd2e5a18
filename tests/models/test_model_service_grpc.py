"""ModelService over a real grpc.aio server on port 0, used through the real client and SDK."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import model_service_pb2_grpc
from synapse_client import Client, InvalidArgumentError, NotFoundError
from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models import ModelCache, PlatformModelBackend
from synapse_sdk.models._client_source import ClientModelSource
from synapse_server.core.models import (
    ModelRegistryLimits,
    ModelRegistryService,
)
from synapse_server.grpc._model_servicer import ModelServicer
from synapse_server.stores import SqliteModelStore

from tests.models._archives import make_tar, make_zip


class _CountingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        name = details.method.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        return await continuation(details)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _CountingInterceptor]]:
    root = tmp_path_factory.mktemp("data")
    loop = asyncio.new_event_loop()
    counter = _CountingInterceptor()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        store = SqliteModelStore(root / "synapse.db")
        await store.open()
        registry = ModelRegistryService.for_data_dir(
            store, root, ModelRegistryLimits(max_archive_bytes=5_000_000)
        )
        await registry.open()
        srv = grpc.aio.server(interceptors=[counter], options=[("grpc.so_reuseport", 0)])
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(registry, tenant_of=lambda ctx: "tenant-a"), srv
        )
        holder["port"] = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        holder["server"], holder["store"] = srv, store

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"127.0.0.1:{holder['port']}", counter

    async def stop() -> None:
        await holder["server"].stop(None)
        await holder["store"].close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_register_list_get_download_delete(server: Any, tmp_path: Path) -> None:
    address, _ = server
    archive = make_tar(tmp_path / "m.tar.gz", [("model.pt", b"w" * 3_000_000)], gz=True)
    with Client(address, timeout=30) as client:
        model = client.register_model(
            archive, "mlp", framework="pytorch", metadata={"classes": ["a", "b"]}, chunk_size=65536
        )
        assert model.file == f"synapse://models/{model.id}" and model.archive_format == "tar_gz"
        assert client.get_model(model.id).metadata == {"classes": ["a", "b"]}
        assert model.id in [m.id for m in client.list_models(name="mlp")]
        out = tmp_path / "dl.tar.gz"
        client.download_model(model.id, out, chunk_size=100_000)
        assert out.read_bytes() == archive.read_bytes()
        client.delete_model(model.id)
        with pytest.raises(NotFoundError, match=f"model {model.id}"):
            client.get_model(model.id)
        with pytest.raises(NotFoundError):
            client.download_model(model.id, tmp_path / "gone")
        assert not (tmp_path / "gone").exists()


def test_upload_errors_map_to_invalid_argument(server: Any, tmp_path: Path) -> None:
    address, _ = server
    evil = make_zip(tmp_path / "evil.zip", [("../../x", b"1")])
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file at all")
    with Client(address, timeout=30) as client:
        with pytest.raises(InvalidArgumentError, match="escapes"):
            client.register_model(evil, "evil")
        with pytest.raises(InvalidArgumentError, match="not a zip"):
            client.register_model(junk, "junk")
        with pytest.raises(InvalidArgumentError, match="name is required"):
            client.register_model(make_zip(tmp_path / "ok.zip", [("a", b"1")]), "")
        with pytest.raises(InvalidArgumentError, match="model_id"):
            client.get_model(0)


def test_backend_loads_through_the_server_once(server: Any, tmp_path: Path) -> None:
    address, counter = server
    archive = make_zip(tmp_path / "m.zip", [("model.pt", b"weights"), ("cfg/c.json", b"{}")])
    with Client(address, timeout=30) as client:
        model = client.register_model(archive, "cached")
        backend = PlatformModelBackend(ClientModelSource(client), ModelCache(tmp_path / "cache"))
        before = counter.calls.get("DownloadModel", 0)
        first = backend.load_model(model.id)
        second = backend.load_model(f"synapse://models/{model.id}")
        assert first["path"] == second["path"]
        assert Path(first["path"], "model.pt").read_bytes() == b"weights"
        assert counter.calls["DownloadModel"] == before + 1
        target = backend.download_model(model.id, tmp_path / "explicit")
        assert (target / "cfg" / "c.json").read_text() == "{}"
        assert counter.calls["DownloadModel"] == before + 2
        with pytest.raises(ModelNotFoundError, match="model 999999 not found"):
            backend.load_model(999999)
