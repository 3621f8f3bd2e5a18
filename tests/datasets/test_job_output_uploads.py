"""WorkerService.UploadJobOutput through a real grpc.aio server with the auth interceptor: only
the job's own worker, only while its job runs; a job that ends during the upload keeps
nothing; a file named by ``local_file`` is read only from that job's own scratch directory."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import worker_service_pb2, worker_service_pb2_grpc
from synapse_server.core import FailedPreconditionError, Job, PermissionDeniedError
from synapse_server.core._credentials import WorkerClaims, WorkerCredentialIssuer
from synapse_server.core.datasets import DatasetRegistryService
from synapse_server.core.models import ModelRegistryService
from synapse_server.grpc._auth import AuthInterceptor
from synapse_server.grpc._server import GrpcServer, ServiceRegistration, service_name
from synapse_server.grpc._servicers import WorkerServicer
from synapse_server.stores import SqliteDatabase, SqliteDatasetStore, SqliteModelStore

from tests.datasets._files import write_parquet

pytestmark = pytest.mark.timeout(60)


class FakeJobs:
    """The two calls the servicer makes of the job service; ``ended`` jobs are over, and
    ``end_during_upload`` ones end while their file comes in."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.end_during_upload: set[str] = set()

    def running_job(self, claims: WorkerClaims, job_id: str) -> Job:
        if claims.job_id != job_id:
            raise PermissionDeniedError("this worker credential is for another job")
        if job_id in self.ended:
            raise FailedPreconditionError(f"job {job_id!r} has already finished")
        return Job(id=job_id, tenant=claims.tenant, plugin="p", action="a")

    def is_running(self, job_id: str) -> bool:
        return job_id not in self.ended and job_id not in self.end_during_upload


class Server:
    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.issuer = WorkerCredentialIssuer(secrets.token_bytes(32))
        self.jobs = FakeJobs()
        # Jobs whose worker this server "launched" on its machine: their scratch directory.
        self.scratch: dict[str, Path] = {}
        ready = threading.Event()

        async def start() -> None:
            database = SqliteDatabase(root / "synapse.db")
            models_store, self.store = SqliteModelStore(database), SqliteDatasetStore(database)
            await models_store.open()
            await self.store.open()
            models = ModelRegistryService.for_data_dir(models_store, root)
            self.registry = DatasetRegistryService(self.store, models.artifacts)
            await models.open()
            servicer = WorkerServicer(
                self.jobs,  # type: ignore[arg-type]
                self.registry,
                self.scratch.get,
            )
            self.grpc = GrpcServer(
                [
                    ServiceRegistration(
                        servicer,
                        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server,
                        service_name(worker_service_pb2, "WorkerService"),
                    )
                ],
                interceptors=[AuthInterceptor({}, self.issuer)],
            )
            self.port = self.grpc.add_port("127.0.0.1:0")
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
        self.stub = worker_service_pb2_grpc.WorkerServiceStub(self.channel)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.channel.close()
        self.call(self.grpc.stop(None))
        self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("uploads"))
    yield srv
    srv.close()


def _upload(server: Server, token: str, job_id: str, name: str, data: bytes) -> Any:
    def requests() -> Iterator[worker_service_pb2.UploadJobOutputRequest]:
        yield worker_service_pb2.UploadJobOutputRequest(
            info=worker_service_pb2.JobOutputInfo(job_id=job_id, name=name)
        )
        yield worker_service_pb2.UploadJobOutputRequest(chunk=data)

    return server.stub.UploadJobOutput(
        requests(), metadata=[("authorization", f"Bearer {token}")], timeout=20
    ).output


def _code(err: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return err.value.code()  # type: ignore[attr-defined,no-any-return]


def test_the_jobs_worker_stages_its_output(server: Server, tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "o.parquet", 30).read_bytes()
    token = server.issuer.mint("job-ok", "tenant-a")
    output = _upload(server, token, "job-ok", "predictions", data)
    assert output.job_id == "job-ok" and output.num_rows == 30 and output.name == "predictions"
    assert server.call(server.store.staged_jobs()) >= {"job-ok"}
    server.call(server.registry.commit_outputs("job-ok"))
    [stored] = server.call(server.registry.job_outputs("tenant-a", "job-ok"))
    assert stored.id == output.id


def test_who_may_upload_and_when(server: Server, tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "w.parquet", 5).read_bytes()
    token = server.issuer.mint("job-1", "tenant-a")
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, token, "job-2", "out", data)  # another job's id
    assert _code(err) is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, "", "job-1", "out", data)  # no worker credential
    assert _code(err) is grpc.StatusCode.UNAUTHENTICATED
    server.jobs.ended.add("job-1")
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, token, "job-1", "out", data)
    assert _code(err) is grpc.StatusCode.FAILED_PRECONDITION
    bad = server.issuer.mint("job-3", "tenant-a")
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, bad, "job-3", "out", b"not parquet")
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, bad, "job-3", "", data)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert not {"job-1", "job-2", "job-3"} & server.call(server.store.staged_jobs())


def test_a_job_that_ends_during_the_upload_keeps_nothing(server: Server, tmp_path: Path) -> None:
    data = write_parquet(tmp_path / "e.parquet", 7).read_bytes()
    token = server.issuer.mint("job-late", "tenant-a")
    server.jobs.end_during_upload.add("job-late")
    with pytest.raises(grpc.RpcError) as err:
        _upload(server, token, "job-late", "out", data)
    assert _code(err) is grpc.StatusCode.FAILED_PRECONDITION
    assert "job-late" not in server.call(server.store.staged_jobs())


def _hand_over(
    server: Server,
    token: str,
    job_id: str,
    local_file: str,
    *extra: bytes,
    name: str = "predictions",
) -> Any:
    def requests() -> Iterator[worker_service_pb2.UploadJobOutputRequest]:
        yield worker_service_pb2.UploadJobOutputRequest(
            info=worker_service_pb2.JobOutputInfo(job_id=job_id, name=name, local_file=local_file)
        )
        for chunk in extra:
            yield worker_service_pb2.UploadJobOutputRequest(chunk=chunk)

    return server.stub.UploadJobOutput(
        requests(), metadata=[("authorization", f"Bearer {token}")], timeout=20
    ).output


def _scratch(server: Server, root: Path, job_id: str) -> Path:
    scratch = root / f"synapse-job-{job_id}"
    scratch.mkdir()
    server.scratch[job_id] = scratch
    return scratch


def test_a_file_in_the_jobs_scratch_directory_is_copied(server: Server, tmp_path: Path) -> None:
    scratch = _scratch(server, tmp_path, "job-local")
    data = write_parquet(scratch / "output-1.parquet", 12).read_bytes()
    token = server.issuer.mint("job-local", "tenant-a")
    output = _hand_over(server, token, "job-local", "output-1.parquet")
    assert output.num_rows == 12 and output.size_bytes == len(data)
    assert (scratch / "output-1.parquet").read_bytes() == data  # the worker's file stays
    server.call(server.registry.commit_outputs("job-local"))
    [stored] = server.call(server.registry.job_outputs("tenant-a", "job-local"))
    assert stored.id == output.id


def test_a_hand_over_the_server_cannot_take_is_refused_with_nothing_staged(
    server: Server, tmp_path: Path
) -> None:
    token = server.issuer.mint("job-far", "tenant-a")
    # No scratch directory of this job on the server's machine (a Ray worker, say).
    with pytest.raises(grpc.RpcError) as err:
        _hand_over(server, token, "job-far", "output.parquet")
    assert _code(err) is grpc.StatusCode.FAILED_PRECONDITION
    scratch = _scratch(server, tmp_path, "job-odd")
    data = write_parquet(scratch / "out.parquet", 3).read_bytes()
    odd = server.issuer.mint("job-odd", "tenant-a")
    with pytest.raises(grpc.RpcError) as err:  # both a file name and the bytes
        _hand_over(server, odd, "job-odd", "out.parquet", data)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    (scratch / "junk").write_bytes(b"not parquet")
    os.mkfifo(scratch / "pipe")
    for name in ("missing.parquet", "../out.parquet", "pipe", "junk", "x" * 100_000):
        with pytest.raises(grpc.RpcError) as err:
            _hand_over(server, odd, "job-odd", name)
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT, name
        assert len(err.value.details()) < 300  # type: ignore[attr-defined]
    assert not {"job-far", "job-odd"} & server.call(server.store.staged_jobs())


def test_no_refused_hand_over_leaves_a_descriptor_open(server: Server, tmp_path: Path) -> None:
    """The server runs in this process: its open files are this process's."""
    scratch = _scratch(server, tmp_path, "job-fds")
    write_parquet(scratch / "out.parquet", 3)
    (scratch / "junk").write_bytes(b"not parquet")
    token = server.issuer.mint("job-fds", "tenant-a")
    _hand_over(server, token, "job-fds", "out.parquet")  # warm: the channel's own files
    before = len(os.listdir("/proc/self/fd"))
    # Refused before the file is read (bad output names), and after (not Parquet).
    cases = (
        ("out.parquet", " "),
        ("out.parquet", "ds-0123"),
        ("out.parquet", "a\x01"),
        ("junk", "out"),
    )
    for _ in range(20):
        for local_file, name in cases:
            with pytest.raises(grpc.RpcError) as err:
                _hand_over(server, token, "job-fds", local_file, name=name)
            assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert len(os.listdir("/proc/self/fd")) <= before


def test_a_worker_cannot_name_another_jobs_file(server: Server, tmp_path: Path) -> None:
    """Tenant b's worker names tenant a's output file: the name is looked up only in the
    scratch directory of the job b's credential is for, and naming a's job is refused as
    before. (Both workers run as the server's user: moving a's file into b's directory
    would pass, as docs/contract.md says; the check is where the server looks.)"""
    a = _scratch(server, tmp_path, "job-tenant-a")
    write_parquet(a / "output-a.parquet", 4)
    _scratch(server, tmp_path, "job-tenant-b")
    token_b = server.issuer.mint("job-tenant-b", "tenant-b")
    with pytest.raises(grpc.RpcError) as err:
        _hand_over(server, token_b, "job-tenant-b", "output-a.parquet")
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        _hand_over(server, token_b, "job-tenant-b", "../synapse-job-job-tenant-a/output-a.parquet")
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        _hand_over(server, token_b, "job-tenant-a", "output-a.parquet")
    assert _code(err) is grpc.StatusCode.PERMISSION_DENIED
    assert not {"job-tenant-a", "job-tenant-b"} & server.call(server.store.staged_jobs())
