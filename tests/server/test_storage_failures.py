"""Storage failures: a full disk, a locked database. No job stays RUNNING, nothing is lost.

The data directory lives on a small tmpfs that the tests fill with a file (mounting needs
root, which this project's test machines and CI have). A storage failure answers
RESOURCE_EXHAUSTED (full) or UNAVAILABLE (locked, I/O) and never INTERNAL; a job that ends
while the disk is full shows its outcome at once and stores it by itself once space returns.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import (
    action_service_pb2_grpc,
    job_pb2,
    model_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
)
from synapse_sdk.models import ArchiveFormat
from synapse_server.core import (
    EventHub,
    EventKind,
    Job,
    JobEvent,
    JobState,
    StorageFullError,
    StorageUnavailableError,
)
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._hub import NewEvent
from synapse_server.core._jobs import JobService, ResultChunk, WorkerFinished, WorkerReport
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.core.deployments import DeploymentRecord
from synapse_server.core.models._records import ModelRecord
from synapse_server.grpc._errors import status_for
from synapse_server.stores import SqliteDeploymentStore, SqliteJobStore, SqliteModelStore
from synapse_server.stores._sqlite import release_transaction, sqlite_storage_error

from tests.conftest import TOY_PLUGINS_DIR, RunningServer

pytestmark = pytest.mark.timeout(180)

DISK_SIZE = "16m"
RUNNING = job_pb2.JOB_STATE_RUNNING
PENDING = job_pb2.JOB_STATE_PENDING
_TERMINAL = (
    job_pb2.JOB_STATE_SUCCEEDED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELLED,
)


class DiskFiller:
    """Fills a file system with one file until the kernel says ENOSPC; frees it again."""

    def __init__(self, root: Path) -> None:
        self.path = root / "filler"

    def fill(self) -> None:
        block = b"\0" * (1 << 16)
        with open(self.path, "ab", buffering=0) as fh:
            try:
                while True:
                    fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            # Whatever is left is smaller than a block: take it too.
            for size in (4096, 512, 1):
                try:
                    while True:
                        fh.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


def _mount_tmpfs(mount_point: Path, options: str) -> Iterator[Path]:
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.strip()}")
    yield mount_point
    # Lazy: a process of a failed test may still hold a file open there.
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs of ``DISK_SIZE``, unmounted after the test."""
    yield from _mount_tmpfs(tmp_path / "disk", f"size={DISK_SIZE}")


@pytest.fixture
def few_inodes_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh tmpfs with room for data but for only a few hundred files."""
    yield from _mount_tmpfs(tmp_path / "disk", f"size={DISK_SIZE},nr_inodes=400")


@pytest.fixture
def filler(small_disk: Path) -> Iterator[DiskFiller]:
    """Fills the small disk on demand; frees it after the test in any case."""
    disk = DiskFiller(small_disk)
    yield disk
    disk.free()


@pytest.fixture
def full_disk_server(
    small_disk: Path, filler: DiskFiller, server_factory: Callable[..., RunningServer]
) -> Callable[..., RunningServer]:
    """Servers with their data directory on the small disk (stopped before it is freed)."""

    def start(**overrides: Any) -> RunningServer:
        return server_factory(data_dir=small_disk / "data", **overrides)

    return start


def _stub(server: RunningServer) -> Any:
    return action_service_pb2_grpc.ActionServiceStub(server.channel())


def _run(stub: Any, action: str, params: dict[str, Any] | None = None) -> str:
    request = pb.RunActionRequest(plugin="toy", action=action)
    if params:
        request.params.update(params)
    return str(stub.RunAction(request, timeout=30).job.id)


def _wait_for(
    stub: Any, job_id: str, predicate: Callable[[job_pb2.Job], bool], timeout: float = 90
) -> job_pb2.Job:
    """Poll GetJob until ``predicate`` holds (the timeout is a deadline, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
        if predicate(job):
            return job
        assert time.monotonic() < deadline, f"job never got there; last seen: {job}"
        time.sleep(0.05)


def _stored_state(db: Path, job_id: str) -> str:
    """The job's state as the database holds it (not the server's memory)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    conn.close()
    return str(row[0])


def _wait_stored(db: Path, job_id: str, state: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (found := _stored_state(db, job_id)) != state:
        assert time.monotonic() < deadline, f"stored state stayed {found}, expected {state}"
        time.sleep(0.05)


class _Follower(threading.Thread):
    """Collects a job's StreamProgress events in the background."""

    def __init__(self, stub: Any, job_id: str) -> None:
        super().__init__(daemon=True)
        self.events: list[Any] = []
        self._stream = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=150)
        self.start()

    def run(self) -> None:
        for message in self._stream:
            if message.HasField("event"):
                self.events.append(message.event)

    def result(self) -> list[Any]:
        self.join(150)
        assert not self.is_alive(), "the stream did not end"
        return self.events


def _history(stub: Any, job_id: str) -> list[Any]:
    return [
        m.event
        for m in stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=30)
        if m.HasField("event")
    ]


def test_calls_on_a_full_disk_answer_resource_exhausted_and_work_again_once_freed(
    full_disk_server: Callable[..., RunningServer], filler: DiskFiller
) -> None:
    server = full_disk_server()
    stub = _stub(server)
    running = _run(stub, "slow")
    _wait_for(stub, running, lambda j: j.state == RUNNING)
    filler.fill()

    with pytest.raises(grpc.RpcError) as refused:
        _run(stub, "quick", {"count": 1, "label": "x"})
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no space left on device" in str(refused.value.details())
    # A cancel still reaches the job: the request is not lost to the disk.
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=running), timeout=30).job
    assert cancelled.state in (RUNNING, job_pb2.JOB_STATE_CANCELLED)
    _wait_for(stub, running, lambda j: j.state == job_pb2.JOB_STATE_CANCELLED)
    assert _stored_state(server.settings.data_dir / "synapse.db", running) == "RUNNING"

    filler.free()
    _wait_stored(server.settings.data_dir / "synapse.db", running, "CANCELLED")
    done = _run(stub, "quick", {"count": 1, "label": "after"})
    assert _wait_for(stub, done, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    history = _history(stub, running)
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert history[-1].terminal.state == job_pb2.JOB_STATE_CANCELLED


def test_a_job_ending_on_a_full_disk_shows_its_outcome_and_stores_it_once_space_returns(
    full_disk_server: Callable[..., RunningServer], filler: DiskFiller, tmp_path: Path
) -> None:
    server = full_disk_server()
    db = server.settings.data_dir / "synapse.db"
    stub = _stub(server)
    gate = tmp_path / "gate"
    job_id = _run(stub, "gated", {"gate": str(gate)})
    # PENDING, RUNNING and the action's "waiting" log are stored.
    stored = _wait_for(stub, job_id, lambda j: j.state == RUNNING and j.last_seq >= 3).last_seq
    follower = _Follower(stub, job_id)
    filler.fill()
    gate.touch()

    # The outcome is served from memory at once; the database still says RUNNING.
    job = _wait_for(stub, job_id, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    assert job.last_seq == stored  # the newest *stored* event
    assert _stored_state(db, job_id) == "RUNNING"
    result = b"".join(
        r.data for r in stub.GetJobResult(pb.GetJobResultRequest(job_id=job_id), timeout=10)
    )
    assert json.loads(result) == {"gate": "opened"}
    listed = stub.ListJobs(pb.ListJobsRequest(states=[RUNNING]), timeout=10).jobs
    assert job_id not in [j.id for j in listed]
    # Subscribers see an event only once it is stored, so none has the outcome yet.
    assert all(not e.HasField("terminal") for e in follower.events)

    filler.free()
    _wait_stored(db, job_id, "SUCCEEDED")
    events = follower.result()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.log.event for e in events if e.HasField("log")] == ["waiting", "opened"]
    assert events[-1].terminal.state == job_pb2.JOB_STATE_SUCCEEDED
    assert json.loads(events[-1].terminal.result_json) == {"gate": "opened"}
    assert [e.SerializeToString() for e in _history(stub, job_id)] == [
        e.SerializeToString() for e in events
    ]
    assert stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job.last_seq == len(events)


def test_events_a_full_disk_refuses_are_sent_again_and_the_job_goes_on(
    full_disk_server: Callable[..., RunningServer],
    filler: DiskFiller,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = full_disk_server()
    stub = _stub(server)
    gate, then = tmp_path / "gate", tmp_path / "then"
    job_id = _run(stub, "gated", {"gate": str(gate), "then": str(then)})
    stored = _wait_for(stub, job_id, lambda j: j.state == RUNNING and j.last_seq >= 3).last_seq
    filler.fill()
    gate.touch()  # the action logs "opened", which the server cannot store, and goes on waiting
    deadline = time.monotonic() + 60
    # Nothing else writes meanwhile: the store's first refusal is of the worker's events.
    while not any("storage failure" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the worker's events never met the full disk"
        time.sleep(0.05)
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
    assert (job.state, job.last_seq) == (RUNNING, stored)

    filler.free()
    _wait_for(stub, job_id, lambda j: j.last_seq > stored)
    then.touch()
    job = _wait_for(stub, job_id, lambda j: j.state in _TERMINAL)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    history = _history(stub, job_id)
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert [e.log.event for e in history if e.HasField("log")] == ["waiting", "opened"]


def test_a_worker_the_full_disk_refuses_fails_its_job_with_the_disk_as_reason(
    full_disk_server: Callable[..., RunningServer], filler: DiskFiller, tmp_path: Path
) -> None:
    server = full_disk_server(max_concurrent_jobs=1)
    db = server.settings.data_dir / "synapse.db"
    stub = _stub(server)
    first_gate = tmp_path / "first"
    first = _run(stub, "gated", {"gate": str(first_gate)})
    _wait_for(stub, first, lambda j: j.state == RUNNING)
    # Waits for the only slot: its worker starts once the first job's has ended.
    second = _run(stub, "gated", {"gate": str(tmp_path / "never")})
    filler.fill()
    first_gate.touch()

    # The second job's worker cannot store that it runs; it gives up after its reconnect
    # budget, and the job fails naming the disk, not as a worker crash.
    job = _wait_for(stub, second, lambda j: j.state == job_pb2.JOB_STATE_FAILED)
    assert job.error.type == "StorageFull"
    assert "no space left on device" in job.error.message
    assert job.error.origin == job_pb2.ERROR_ORIGIN_PLATFORM
    assert _stored_state(db, second) == "PENDING"

    filler.free()
    _wait_stored(db, first, "SUCCEEDED")
    _wait_stored(db, second, "FAILED")
    history = _history(stub, second)
    assert [e.seq for e in history] == [1, 2]
    assert history[0].state_changed.state == PENDING
    assert "no space left on device" in history[-1].terminal.error.message


@pytest.mark.parametrize("warm_workers", [1, 0])
def test_a_worker_whose_log_file_cannot_be_created_still_runs_its_job(
    few_inodes_disk: Path, server_factory: Callable[..., RunningServer], warm_workers: int
) -> None:
    server = server_factory(data_dir=few_inodes_disk / "data", warm_workers=warm_workers)
    stub = _stub(server)
    first = _run(stub, "quick", {"count": 1, "label": "first"})
    _wait_for(stub, first, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)
    # No file can be created any more (ENOSPC), though the database still has room.
    spare = few_inodes_disk / "spare"
    spare.mkdir()
    with pytest.raises(OSError) as full:
        for n in range(100_000):
            (spare / str(n)).touch()
    assert full.value.errno == errno.ENOSPC

    second = _run(stub, "quick", {"count": 1, "label": "second"})
    job = _wait_for(stub, second, lambda j: j.state in _TERMINAL)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error.message
    assert not (server.settings.data_dir / "logs" / "jobs" / f"{second}.log").exists()


def test_model_upload_on_a_full_disk_is_resource_exhausted_and_leaves_no_partial_file(
    full_disk_server: Callable[..., RunningServer], filler: DiskFiller
) -> None:
    server = full_disk_server()
    filler.fill()
    stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
    info = model_service_pb2.ModelUploadInfo(name="m", archive_format=model_pb2.ARCHIVE_FORMAT_ZIP)
    requests = [
        model_service_pb2.RegisterModelRequest(info=info),
        *[model_service_pb2.RegisterModelRequest(chunk=b"\1" * (1 << 20)) for _ in range(4)],
    ]
    with pytest.raises(grpc.RpcError) as refused:
        stub.RegisterModel(iter(requests), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no space left on device" in str(refused.value.details())
    assert not any((server.settings.data_dir / "models" / "tmp").iterdir())


def test_a_database_locked_too_long_answers_unavailable(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory()
    stub = _stub(server)
    holder = sqlite3.connect(server.settings.data_dir / "synapse.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that does not let go
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _run(stub, "quick", {"count": 1, "label": "x"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is locked" in str(refused.value.details())
    done = _run(stub, "quick", {"count": 1, "label": "after"})
    _wait_for(stub, done, lambda j: j.state == job_pb2.JOB_STATE_SUCCEEDED)


class _ServerProcess:
    """``python -m synapse_server`` on the small disk; stderr goes to a file."""

    def __init__(self, data_dir: Path, stderr: Path) -> None:
        self.stderr_path = stderr
        with open(stderr, "w") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                    "--data-dir", str(data_dir), "--plugin-dir", str(TOY_PLUGINS_DIR),
                    "--shutdown-grace", "3", "--log-level", "WARNING",
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {stderr.read_text()}")
        self.address = line.rsplit(" ", 1)[1].strip()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = action_service_pb2_grpc.ActionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


@pytest.mark.e2e
def test_sigterm_on_a_full_disk_exits_cleanly_and_the_next_start_fails_the_job(
    small_disk: Path, filler: DiskFiller, tmp_path: Path
) -> None:
    data_dir = small_disk / "data"
    first = _ServerProcess(data_dir, tmp_path / "first.err")
    try:
        job_id = _run(first.stub, "gated", {"gate": str(tmp_path / "never")})
        _wait_for(first.stub, job_id, lambda j: j.state == RUNNING)
        filler.fill()
        first.process.send_signal(signal.SIGTERM)
        # A deadline, not a measurement: the drain must not hang on the disk.
        code = first.process.wait(60)
    finally:
        first.close()
    stderr = first.stderr_path.read_text()
    assert code == 0, stderr
    for broken in ("Traceback", "Event loop is closed", "was never awaited"):
        assert broken not in stderr, stderr
    # The operator learns which job's outcome could not be stored, and why.
    assert any(
        job_id in line and "could not be stored" in line and "no space left on device" in line
        for line in stderr.splitlines()
    ), stderr

    filler.free()
    second = _ServerProcess(data_dir, tmp_path / "second.err")
    try:
        history = _history(second.stub, job_id)
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        final = history[-1].terminal
        assert final.state == job_pb2.JOB_STATE_FAILED
        assert "server stopped while the job was running" in final.error.message
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(60) == 0
    finally:
        second.close()


def _event(job_id: str, seq: int) -> JobEvent:
    return JobEvent(job_id, seq, EventKind.STATE, {"state": "PENDING"}, time.time())


async def test_stores_on_a_full_disk_raise_storage_full_and_work_again_once_freed(
    small_disk: Path, filler: DiskFiller
) -> None:
    db = small_disk / "synapse.db"
    jobs, models, deployments = SqliteJobStore(db), SqliteModelStore(db), SqliteDeploymentStore(db)
    for store in (jobs, models, deployments):
        await store.open()
    job, _ = await jobs.create_job(Job(id="j1", tenant="t", plugin="p", action="a"))
    model = ModelRecord(0, "t", "m", "", "", {}, "0" * 64, 1, ArchiveFormat.ZIP, time.time())
    deployment = DeploymentRecord(id=0, tenant="t", name="d", plugin="p", action="a")
    try:
        filler.fill()
        with pytest.raises(StorageFullError) as full:
            await jobs.append_events([_event("j1", 1)], job.evolve(last_seq=1))
        # The real failure, not "cannot rollback - no transaction is active" over it.
        assert isinstance(full.value.__cause__, sqlite3.OperationalError)
        assert "database or disk is full" in str(full.value.__cause__)
        with pytest.raises(StorageFullError):
            await jobs.create_job(Job(id="j2", tenant="t", plugin="p", action="a"))
        with pytest.raises(StorageFullError):
            await models.insert(model)
        with pytest.raises(StorageFullError):
            await deployments.upsert(deployment)

        filler.free()
        await jobs.append_events([_event("j1", 1)], job.evolve(last_seq=1))
        assert [e.seq for e in await jobs.list_events("j1", 0, 10)] == [1]
        assert (await jobs.create_job(Job(id="j2", tenant="t", plugin="p", action="a")))[1]
        assert (await models.insert(model)).id > 0
        assert (await deployments.upsert(deployment))[1]
    finally:
        for store in (jobs, models, deployments):
            await store.close()


def test_storage_failures_are_classified_and_mapped_once() -> None:
    full = sqlite_storage_error(OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(full, StorageFullError)
    assert isinstance(sqlite_storage_error(OSError(errno.EDQUOT, "quota")), StorageFullError)
    io_error = sqlite_storage_error(OSError(errno.EIO, "Input/output error"))
    assert isinstance(io_error, StorageUnavailableError) and io_error.cause == "disk I/O error"
    assert sqlite_storage_error(FileNotFoundError(errno.ENOENT, "gone")) is None
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert isinstance(sqlite_storage_error(locked), StorageUnavailableError)
    short_write = sqlite3.OperationalError("disk I/O error")
    short_write.sqlite_errorcode = sqlite3.SQLITE_IOERR | (3 << 8)  # type: ignore[attr-defined]
    assert isinstance(sqlite_storage_error(short_write), StorageUnavailableError)
    sqlite_full = sqlite3.OperationalError("database or disk is full")
    sqlite_full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert isinstance(sqlite_storage_error(sqlite_full), StorageFullError)
    assert sqlite_storage_error(sqlite3.ProgrammingError("a bug")) is None

    status = status_for(StorageFullError())
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no space left on device" in status.details
    assert status_for(StorageUnavailableError("disk I/O error")).code == (
        grpc.StatusCode.UNAVAILABLE
    )


class _RollbackFailsConnection(sqlite3.Connection):
    """A connection whose ROLLBACK fails, as one can on a failing device."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


def test_a_connection_left_inside_a_transaction_is_closed_not_reused(tmp_path: Path) -> None:
    clean = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    assert release_transaction(clean)  # nothing open: nothing to do, no error
    clean.execute("BEGIN")
    assert release_transaction(clean) and not clean.in_transaction
    clean.close()

    stuck = sqlite3.connect(
        tmp_path / "b.db", isolation_level=None, factory=_RollbackFailsConnection
    )
    stuck.execute("BEGIN")
    stuck.execute("CREATE TABLE t (x)")
    assert not release_transaction(stuck)
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        stuck.execute("SELECT 1")
    assert not release_transaction(stuck)  # a second look at it does not raise either


class _RefusingStore(SqliteJobStore):
    """The real store, refusing appends as a full disk does while ``refuse`` is set."""

    refuse = False

    async def append_events(self, events: Any, job: Job | None = None) -> None:
        if self.refuse:
            raise StorageFullError()
        await super().append_events(events, job)


class _IdleExecutor:
    """Starts nothing: these jobs stay where the test puts them."""

    async def run(self, job: Job, credential: str, trace_context: Any = None) -> Any:
        await asyncio.Event().wait()

    async def kill(self, job_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


def _toy_catalog(data_dir: Path) -> PluginCatalog:
    """The toy plugins' catalog, keeping its code snapshots in ``data_dir``."""
    return PluginCatalog(
        [TOY_PLUGINS_DIR], ["local"], code_store=PluginCodeStore(data_dir / "plugins")
    )


def _job_service(
    store: SqliteJobStore, data_dir: Path, outputs: Any = None
) -> tuple[JobService, WorkerCredentialIssuer]:
    """A JobService over ``store`` for the toy plugins, whose workers never start."""
    catalog = _toy_catalog(data_dir)
    catalog.reload()
    credentials = WorkerCredentialIssuer(b"k" * 32)
    executors = {"local": _IdleExecutor()}
    jobs = JobService(store, EventHub(store), catalog, executors, credentials, outputs=outputs)
    return jobs, credentials


@pytest.fixture
async def refusing_jobs(tmp_path: Path) -> Any:
    """A JobService over a store that refuses appends on demand; workers never start."""
    store = _RefusingStore(tmp_path / "jobs.db")
    await store.open()
    jobs, credentials = _job_service(store, tmp_path)
    yield jobs, store, credentials
    await jobs.close()
    await store.close()


async def test_a_refused_batch_is_not_acknowledged_and_is_taken_whole_when_sent_again(
    refusing_jobs: Any,
) -> None:
    # The server may read a worker's events and the first chunks of its result as one batch
    # (a filled tmpfs cannot make it do so on purpose): refused, none of it may stay.
    jobs, store, credentials = refusing_jobs
    job, _ = await jobs.submit("t", "toy", "quick", '{"count": 1, "label": "x"}')
    claims = credentials.verify(credentials.mint(job.id, "t"))
    await jobs.open_worker_stream(claims, job.id, "w")
    batch = [
        WorkerReport(1, NewEvent(EventKind.LOG, {"event": "almost"})),
        WorkerReport(2, ResultChunk(0, b'{"label": ')),
    ]
    store.refuse = True
    with pytest.raises(StorageFullError):
        await jobs.report(claims, job.id, batch)
    store.refuse = False
    assert await jobs.report(claims, job.id, batch) == (2, False)
    rest = [
        WorkerReport(3, ResultChunk(10, b'"x"}')),
        WorkerReport(4, WorkerFinished(JobState.SUCCEEDED, result_size=14)),
    ]
    assert await jobs.report(claims, job.id, rest) == (4, True)
    assert await jobs.result_json("t", job.id) == b'{"label": "x"}'
    history = await store.list_events(job.id, 0, 10)
    assert [e.kind for e in history] == [
        EventKind.STATE,
        EventKind.STATE,
        EventKind.LOG,
        EventKind.TERMINAL,
    ]


async def test_a_job_whose_first_event_is_refused_fails_naming_the_disk(
    refusing_jobs: Any,
) -> None:
    # The narrow case a filled tmpfs cannot hit on purpose: the job's row was stored, its
    # first event was not.
    jobs, store, _ = refusing_jobs
    store.refuse = True
    with pytest.raises(StorageFullError):
        await jobs.submit("t", "toy", "quick", '{"count": 1, "label": "x"}', request_id="r")
    (job_id,) = [j.id for j in (await store.jobs_in_states([JobState.PENDING]))]
    held = await jobs.get("t", job_id)
    assert held.state is JobState.FAILED and held.error is not None
    assert held.error.type == "StorageFull"
    assert "no space left on device" in held.error.message

    store.refuse = False
    deadline = time.monotonic() + 30
    while (stored := await store.get_job(job_id)) is not None and not stored.state.is_terminal:
        assert time.monotonic() < deadline, "the held outcome was never stored"
        await asyncio.sleep(0.05)
    history = await store.list_events(job_id, 0, 10)
    assert [(e.seq, e.kind) for e in history] == [(1, EventKind.STATE), (2, EventKind.TERMINAL)]
    assert history[1].data["state"] == "FAILED"
    assert jobs.active_jobs == 0


class _Outputs:
    """Job outputs whose storing fails with ``failure`` while it is set (a database restart
    fails it with UNAVAILABLE); counts the commits that went through."""

    def __init__(self) -> None:
        self.failure: Exception | None = None
        self.committed: list[str] = []
        self.discarded: list[str] = []

    async def commit_outputs(self, job_id: str) -> None:
        if self.failure is not None:
            raise self.failure
        self.committed.append(job_id)

    async def discard_outputs(self, job_id: str) -> None:
        self.discarded.append(job_id)


@pytest.fixture
async def jobs_with_outputs(tmp_path: Path) -> Any:
    """A JobService whose job outputs can be made to fail; workers never start."""
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    outputs = _Outputs()
    jobs, credentials = _job_service(store, tmp_path, outputs)
    yield jobs, store, credentials, outputs
    await jobs.close()
    await store.close()


async def _opened_job(jobs: JobService, credentials: WorkerCredentialIssuer) -> tuple[Any, Any]:
    job, _ = await jobs.submit("t", "toy", "quick", '{"count": 1, "label": "x"}')
    claims = credentials.verify(credentials.mint(job.id, "t"))
    await jobs.open_worker_stream(claims, job.id, "w")
    return job, claims


_FINISH = [
    WorkerReport(1, NewEvent(EventKind.LOG, {"event": "done"})),
    WorkerReport(2, ResultChunk(0, b'{"label": "x"}')),
    WorkerReport(3, WorkerFinished(JobState.SUCCEEDED, result_size=14)),
]


@pytest.mark.parametrize(
    "failure", [StorageUnavailableError("the database is unreachable"), StorageFullError()]
)
async def test_a_finish_whose_outputs_cannot_be_stored_yet_is_sent_again_not_failed(
    jobs_with_outputs: Any, failure: Exception
) -> None:
    # The database restarting while a job finishes: the job waits for its outputs (RUNNING,
    # the finish unacknowledged) instead of failing a finished job's work.
    jobs, store, credentials, outputs = jobs_with_outputs
    job, claims = await _opened_job(jobs, credentials)
    outputs.failure = failure
    for _ in range(3):  # the worker sends the refused batch again, whole
        with pytest.raises(type(failure)):
            await jobs.report(claims, job.id, _FINISH)
        assert (await jobs.get("t", job.id)).state is JobState.RUNNING
        assert status_for(failure).code is not grpc.StatusCode.INTERNAL
    assert outputs.committed == [] and outputs.discarded == []

    outputs.failure = None
    assert await jobs.report(claims, job.id, _FINISH) == (3, True)
    assert outputs.committed == [job.id] and outputs.discarded == []
    assert await jobs.result_json("t", job.id) == b'{"label": "x"}'
    stored = await store.get_job(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED
    history = await store.list_events(job.id, 0, 10)
    assert [e.kind for e in history] == [
        EventKind.STATE,
        EventKind.STATE,
        EventKind.LOG,
        EventKind.TERMINAL,
    ]


async def test_outputs_that_fail_for_another_reason_fail_the_job_once(
    jobs_with_outputs: Any,
) -> None:
    # Not a storage condition that passes (a bug, a corrupt file): sending the finish again
    # cannot help, so the job fails at once, naming what could not be stored.
    jobs, store, credentials, outputs = jobs_with_outputs
    job, claims = await _opened_job(jobs, credentials)
    outputs.failure = RuntimeError("corrupt")
    assert await jobs.report(claims, job.id, _FINISH) == (3, True)
    ended = await jobs.get("t", job.id)
    assert ended.state is JobState.FAILED and ended.error is not None
    assert ended.error.type == "OutputStoreError"
    assert "corrupt" not in ended.error.message  # the server log has the details
    assert outputs.discarded == [job.id]
    stored = await store.get_job(job.id)
    assert stored is not None and stored.state is JobState.FAILED
