"""DatasetService over a real grpc.aio server on port 0 (SQLite store, shared artifacts)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from synapse.plugin.v1 import (
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
)
from synapse_server.core import JobNotFoundError
from synapse_server.core.datasets import DatasetRegistryLimits, DatasetRegistryService
from synapse_server.core.models import ModelRegistryService
from synapse_server.grpc._dataset_servicer import DatasetServicer
from synapse_server.grpc._errors import MAX_MESSAGE_BYTES
from synapse_server.stores import SqliteDatasetStore, SqliteModelStore

from tests.datasets._files import corrupt_middle, write_jsonl, write_npy, write_parquet

MAX_BYTES = 2_000_000
JOB_OF_A = "job-of-a"


class Server:
    """The servicer on its own loop; ``registry``/``store`` for looking behind the wire."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.new_event_loop()
        self.registry: DatasetRegistryService
        self.store: SqliteDatasetStore
        ready = threading.Event()

        async def start() -> None:
            models = SqliteModelStore(root / "synapse.db")
            self.store = SqliteDatasetStore(root / "synapse.db")
            await models.open()
            await self.store.open()
            model_registry = ModelRegistryService.for_data_dir(models, root)
            self.registry = DatasetRegistryService(
                self.store, model_registry.artifacts, DatasetRegistryLimits(MAX_BYTES)
            )
            await model_registry.open()

            async def job_check(tenant: str, job_id: str) -> None:
                if (tenant, job_id) != ("tenant-a", JOB_OF_A):
                    raise JobNotFoundError(job_id)

            def tenant_of(context: grpc.aio.ServicerContext) -> str:
                return dict(context.invocation_metadata() or ()).get("x-tenant", "tenant-a")

            self.grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(
                DatasetServicer(self.registry, job_check, tenant_of=tenant_of), self.grpc
            )
            self.port = self.grpc.add_insecure_port("127.0.0.1:0")
            await self.grpc.start()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = dataset_service_pb2_grpc.DatasetServiceStub(self.channel)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def blobs(self) -> list[Path]:
        """The artifact files stored (and uploads in progress)."""
        return [p for p in (self.root / "models").rglob("*") if p.is_file()]

    def close(self) -> None:
        self.channel.close()

        async def stop() -> None:
            await self.grpc.stop(None)
            await self.store.close()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("data"))
    yield srv
    srv.close()


def _tenant(name: str) -> list[tuple[str, str]]:
    return [("x-tenant", name)]


def upload(
    stub: Any,
    path: Path | None,
    name: str,
    fmt: int = dataset_pb2.DATASET_FORMAT_UNSPECIFIED,
    *,
    tenant: str = "tenant-a",
    data: bytes | None = None,
    chunk: int = 65536,
) -> dataset_pb2.Dataset:
    payload = path.read_bytes() if data is None and path is not None else (data or b"")

    def messages() -> Iterator[dataset_service_pb2.UploadDatasetRequest]:
        yield dataset_service_pb2.UploadDatasetRequest(
            info=dataset_service_pb2.DatasetUploadInfo(name=name, format=fmt)  # type: ignore[arg-type]
        )
        for i in range(0, len(payload), chunk):
            yield dataset_service_pb2.UploadDatasetRequest(chunk=payload[i : i + chunk])

    response = stub.UploadDataset(messages(), metadata=_tenant(tenant), timeout=30)
    return response.dataset


def download(stub: Any, dataset_id: str, tenant: str = "tenant-a") -> tuple[Any, bytes]:
    first: Any = None
    data = bytearray()
    for message in stub.DownloadDataset(
        dataset_service_pb2.DownloadDatasetRequest(dataset_id=dataset_id, chunk_size_bytes=10_000),
        metadata=_tenant(tenant),
        timeout=30,
    ):
        if message.WhichOneof("kind") == "dataset":
            assert first is None
            first = message.dataset
        else:
            data.extend(message.chunk)
    return first, bytes(data)


def _code(exc_info: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc_info.value.code()  # type: ignore[attr-defined,no-any-return]


def test_upload_parquet_get_download_delete(server: Server, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "a.parquet", 5000, row_group_size=1000)
    ds = upload(server.stub, path, "features")
    assert ds.id.startswith("ds-") and ds.name == "features" and not ds.job_id
    assert ds.format == dataset_pb2.DATASET_FORMAT_PARQUET
    assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ds.size_bytes == path.stat().st_size and ds.num_rows == 5000
    assert [(c.name, c.type) for c in ds.columns] == [
        ("id", "int64"),
        ("x", "double"),
        ("label", "string"),
        ("vec", "fixed_size_list<element: float>[3]"),
    ]
    assert ds.create_time.seconds > 0
    got = server.stub.GetDataset(
        dataset_service_pb2.GetDatasetRequest(dataset_id=ds.id), metadata=_tenant("tenant-a")
    ).dataset
    assert got == ds
    first, data = download(server.stub, ds.id)
    assert first == ds and data == path.read_bytes()
    server.stub.DeleteDataset(
        dataset_service_pb2.DeleteDatasetRequest(dataset_id=ds.id), metadata=_tenant("tenant-a")
    )
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetDataset(
            dataset_service_pb2.GetDatasetRequest(dataset_id=ds.id), metadata=_tenant("tenant-a")
        )
    assert _code(err) is grpc.StatusCode.NOT_FOUND and ds.id in err.value.details()  # type: ignore[attr-defined]
    assert not [p for p in server.blobs() if p.name == ds.sha256]


def test_jsonl_and_npy_schemas(server: Server, tmp_path: Path) -> None:
    jl = upload(
        server.stub, write_jsonl(tmp_path / "a.jsonl", 7), "rows", dataset_pb2.DATASET_FORMAT_JSONL
    )
    assert jl.format == dataset_pb2.DATASET_FORMAT_JSONL and jl.num_rows == 7
    assert [(c.name, c.type) for c in jl.columns] == [
        ("id", "int64"),
        ("text", "string"),
        ("score", "double"),
    ]
    arr = upload(
        server.stub,
        write_npy(tmp_path / "a.npy", (30, 4), "float64"),
        "matrix",
        dataset_pb2.DATASET_FORMAT_NPY,
    )
    assert arr.num_rows == 30
    assert [(c.name, c.type) for c in arr.columns] == [("data", "fixed_size_list<item: double>[4]")]
    vec = upload(
        server.stub,
        write_npy(tmp_path / "v.npy", (9,), "int32"),
        "v",
        dataset_pb2.DATASET_FORMAT_NPY,
    )
    assert vec.num_rows == 9 and [(c.name, c.type) for c in vec.columns] == [("data", "int32")]


def test_list_pages_newest_first_and_by_name(server: Server, tmp_path: Path) -> None:
    tenant = "tenant-pages"
    ids = [
        upload(
            server.stub,
            write_parquet(tmp_path / f"p{i}.parquet", 10 + i),
            "same" if i % 2 else "other",
            tenant=tenant,
        ).id
        for i in range(5)
    ]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = server.stub.ListDatasets(
            dataset_service_pb2.ListDatasetsRequest(page_size=2, page_token=token),
            metadata=_tenant(tenant),
        )
        seen += [d.id for d in page.datasets]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1] and pages == 3
    named = server.stub.ListDatasets(
        dataset_service_pb2.ListDatasetsRequest(name="same"), metadata=_tenant(tenant)
    )
    assert [d.id for d in named.datasets] == [ids[3], ids[1]]
    for bad in (
        dataset_service_pb2.ListDatasetsRequest(page_token="garbage"),
        dataset_service_pb2.ListDatasetsRequest(page_size=5000),
    ):
        with pytest.raises(grpc.RpcError) as err:
            server.stub.ListDatasets(bad, metadata=_tenant(tenant))
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT


def test_identical_files_share_one_blob_until_the_last_is_deleted(
    server: Server, tmp_path: Path
) -> None:
    path = write_parquet(tmp_path / "s.parquet", 77)
    one = upload(server.stub, path, "one")
    two = upload(server.stub, path, "two", tenant="tenant-b")
    assert one.sha256 == two.sha256 and one.id != two.id
    blob = [p for p in server.blobs() if p.name == one.sha256]
    assert len(blob) == 1
    server.stub.DeleteDataset(
        dataset_service_pb2.DeleteDatasetRequest(dataset_id=one.id), metadata=_tenant("tenant-a")
    )
    assert blob[0].exists()
    assert download(server.stub, two.id, tenant="tenant-b")[1] == path.read_bytes()
    server.stub.DeleteDataset(
        dataset_service_pb2.DeleteDatasetRequest(dataset_id=two.id), metadata=_tenant("tenant-b")
    )
    assert not blob[0].exists()


def test_another_tenants_dataset_is_not_found(server: Server, tmp_path: Path) -> None:
    ds = upload(server.stub, write_parquet(tmp_path / "t.parquet", 12), "private")
    for call, request in (
        (server.stub.GetDataset, dataset_service_pb2.GetDatasetRequest(dataset_id=ds.id)),
        (server.stub.DeleteDataset, dataset_service_pb2.DeleteDatasetRequest(dataset_id=ds.id)),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=_tenant("tenant-other"))
        assert _code(err) is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        download(server.stub, ds.id, tenant="tenant-other")
    assert _code(err) is grpc.StatusCode.NOT_FOUND
    listed = server.stub.ListDatasets(
        dataset_service_pb2.ListDatasetsRequest(), metadata=_tenant("tenant-other")
    )
    assert ds.id not in [d.id for d in listed.datasets]
    # Still there for its owner.
    assert download(server.stub, ds.id)[0].id == ds.id


def _bad_files(tmp: Path) -> list[tuple[str, bytes, int, str]]:
    good = write_parquet(tmp / "good.parquet", 3000, row_group_size=500)
    npy = write_npy(tmp / "good.npy", (50, 2))
    obj = tmp / "obj.npy"
    np.save(obj, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    P, J, N = (
        dataset_pb2.DATASET_FORMAT_PARQUET,
        dataset_pb2.DATASET_FORMAT_JSONL,
        dataset_pb2.DATASET_FORMAT_NPY,
    )
    return [
        ("corrupt parquet", corrupt_middle(good, tmp / "bad.parquet").read_bytes(), P, "Parquet"),
        ("truncated parquet", good.read_bytes()[:-100], P, "Parquet"),
        ("garbage jsonl", b'{"a": 1}\n{"a": 2\nnot json\n', J, "line 2 is not JSON"),
        ("jsonl of lists", b"[1, 2]\n", J, "not an object"),
        ("jsonl of mixed types", b'{"a": 1}\n{"a": "x"}\n', J, "typed columns"),
        ("truncated npy", npy.read_bytes()[:-7], N, "header describes"),
        ("pickled npy", obj.read_bytes(), N, "Python objects"),
        ("npy header junk", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<<<}\n", N, ".npy"),
        ("parquet sent as jsonl", good.read_bytes(), J, "not JSON"),
        ("npy sent as parquet", npy.read_bytes(), P, "Parquet"),
        ("jsonl sent as npy", b'{"a": 1}\n', N, ".npy"),
        ("empty file", b"", P, "empty"),
        ("only blank lines", b"\n\n  \n", J, "no rows"),
    ]


def test_bad_files_are_invalid_argument_and_nothing_is_stored(
    server: Server, tmp_path: Path
) -> None:
    tenant = "tenant-bad"
    before = sorted(server.blobs())
    for label, data, fmt, expected in _bad_files(tmp_path):
        with pytest.raises(grpc.RpcError) as err:
            upload(server.stub, None, "bad", fmt, tenant=tenant, data=data)
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT, label
        details = err.value.details()  # type: ignore[attr-defined]
        assert expected in details, (label, details)
        assert len(details.encode()) <= MAX_MESSAGE_BYTES
        assert sorted(server.blobs()) == before, label
    listed = server.stub.ListDatasets(
        dataset_service_pb2.ListDatasetsRequest(), metadata=_tenant(tenant)
    )
    assert not listed.datasets


def test_oversize_upload_is_refused_and_nothing_is_stored(server: Server) -> None:
    before = sorted(server.blobs())
    with pytest.raises(grpc.RpcError) as err:
        upload(server.stub, None, "huge", data=b"x" * (MAX_BYTES + 1), tenant="tenant-big")
    assert _code(err) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"dataset exceeds the server limit of {MAX_BYTES} bytes" in err.value.details()  # type: ignore[attr-defined]
    assert sorted(server.blobs()) == before


def test_random_bytes_never_fail_as_unknown_or_internal(server: Server) -> None:
    rng = random.Random(12)
    prefixes = [b"", b"PAR1", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b'{"a":']
    fmts = [
        dataset_pb2.DATASET_FORMAT_PARQUET,
        dataset_pb2.DATASET_FORMAT_JSONL,
        dataset_pb2.DATASET_FORMAT_NPY,
    ]
    before = sorted(server.blobs())
    for i in range(60):
        body = rng.randbytes(rng.randint(1, 4000))
        prefix = prefixes[i % len(prefixes)]
        data = prefix + body + (b"PAR1" if prefix == b"PAR1" else b"")
        with pytest.raises(grpc.RpcError) as err:
            upload(server.stub, None, "noise", fmts[i % 3], tenant="tenant-noise", data=data)
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT, (i, err.value.details())  # type: ignore[attr-defined]
    assert sorted(server.blobs()) == before


def test_bad_requests(server: Server, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "r.parquet", 5)
    for name, expected in (
        ("", "name is required"),
        ("ds-123", "must not start"),
        ("a\x00b", "control"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            upload(server.stub, path, name)
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
        assert expected in err.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as err:
        upload(server.stub, path, "x", 99)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        server.stub.UploadDataset(
            iter([dataset_service_pb2.UploadDatasetRequest(chunk=b"PAR1")]), timeout=10
        )
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetDataset(dataset_service_pb2.GetDatasetRequest(dataset_id=""))
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetDataset(dataset_service_pb2.GetDatasetRequest(dataset_id="ds-" + "9" * 5000))
    assert _code(err) is grpc.StatusCode.NOT_FOUND
    assert len(err.value.details()) < 200  # type: ignore[attr-defined]


def test_job_outputs_are_listed_once_committed(server: Server, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "o.parquet", 40)

    async def chunks() -> Any:
        yield path.read_bytes()

    staged = server.call(
        server.registry.stage_output("tenant-a", JOB_OF_A, "predictions", chunks())
    )
    assert staged.job_id == JOB_OF_A and not staged.committed

    def outputs(tenant: str = "tenant-a") -> list[str]:
        response = server.stub.ListJobOutputs(
            dataset_service_pb2.ListJobOutputsRequest(job_id=JOB_OF_A), metadata=_tenant(tenant)
        )
        return [d.id for d in response.outputs]

    assert outputs() == []  # staged: invisible, also to Get
    with pytest.raises(grpc.RpcError) as err:
        server.stub.GetDataset(
            dataset_service_pb2.GetDatasetRequest(dataset_id=staged.id),
            metadata=_tenant("tenant-a"),
        )
    assert _code(err) is grpc.StatusCode.NOT_FOUND
    server.call(server.registry.commit_outputs(JOB_OF_A))
    assert outputs() == [staged.id]
    first, data = download(server.stub, staged.id)
    assert first.job_id == JOB_OF_A and data == path.read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        outputs("tenant-b")
    assert _code(err) is grpc.StatusCode.NOT_FOUND


def test_discarded_outputs_leave_nothing(server: Server, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "d.parquet", 41)
    before = sorted(server.blobs())

    async def chunks() -> Any:
        yield path.read_bytes()

    first = server.call(server.registry.stage_output("tenant-a", "job-x", "out", chunks()))
    second = server.call(server.registry.stage_output("tenant-a", "job-x", "out", chunks()))
    assert first.id != second.id
    server.call(server.registry.discard_outputs("job-x"))
    assert server.call(server.store.staged_jobs()) == set()
    assert sorted(server.blobs()) == before
