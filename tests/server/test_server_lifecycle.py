"""Server lifecycle: worker credentials end with their job, SIGTERM keeps pending jobs and
gives running ones the grace period, one server per data directory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from synapse.plugin.v1 import (
    action_service_pb2,
    action_service_pb2_grpc,
    dataset_service_pb2,
    deployment_service_pb2,
    inference_service_pb2,
    job_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from synapse_client import Client
from synapse_server._data_dir_lock import (
    DataDirectoryInUseError,
    DataDirectoryLock,
    DataDirectoryLockError,
)
from synapse_server.app import SynapseServer
from synapse_server.core import EventHub, JobState, UnauthenticatedError
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._credentials import EXPIRED_MESSAGE, WorkerCredentialIssuer
from synapse_server.core._executor import WorkerExit
from synapse_server.core._jobs import JobService, WorkerFinished, WorkerReport
from synapse_server.core._models import Job
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.grpc._auth import WORKER_METHODS
from synapse_server.stores import SqliteJobStore
from synapse_server.worker._runner import run_worker

from tests.conftest import TOY_PLUGINS_DIR, RunningServer, make_settings
from tests.models._archives import make_zip

pytestmark = pytest.mark.timeout(120)

pb = action_service_pb2


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _run(stub: Any, action: str, params: dict[str, Any] | None = None) -> str:
    request = pb.RunActionRequest(plugin="toy", action=action)
    if params is not None:
        request.params.update(params)
    return str(stub.RunAction(request, timeout=10).job.id)


def _terminal(stub: Any, job_id: str) -> Any:
    events = [
        m.event
        for m in stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=90)
        if m.HasField("event")
    ]
    return events[-1].terminal


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    # A deadline for something that must happen, never a measurement.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _state(stub: Any, job_id: str, token: str | None = None) -> int:
    metadata = _md(token) if token else None
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10).job
    return int(job.state)


def _running(stub: Any, job_id: str, events: int = 3) -> Callable[[], bool]:
    def check() -> bool:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
        return bool(job.state == job_pb2.JOB_STATE_RUNNING and job.last_seq >= events)

    return check


# Worker credentials ---------------------------------------------------------------------------


def _worker_rpcs() -> list[tuple[str, bool, bool]]:
    """Every method a worker credential may call: (path, client streaming, server streaming)."""
    methods: dict[str, tuple[bool, bool]] = {}
    for module in (
        worker_service_pb2,
        model_service_pb2,
        dataset_service_pb2,
        deployment_service_pb2,
        inference_service_pb2,
    ):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = (
                    method.client_streaming,
                    method.server_streaming,
                )
    allowed = {path for path in methods if path.startswith("/synapse.plugin.v1.WorkerService/")}
    allowed |= set(WORKER_METHODS)
    assert allowed <= set(methods), allowed - set(methods)
    return sorted((path, *methods[path]) for path in allowed)


def _call_raw(channel: grpc.Channel, path: str, streams: tuple[bool, bool], token: str) -> None:
    """Call ``path`` with an empty request (the credential is checked before the request)."""
    client_streaming, server_streaming = streams
    metadata = _md(token)
    if client_streaming and server_streaming:
        list(channel.stream_stream(path)(iter([b""]), metadata=metadata, timeout=10))
    elif client_streaming:
        channel.stream_unary(path)(iter([b""]), metadata=metadata, timeout=10)
    elif server_streaming:
        list(channel.unary_stream(path)(b"", metadata=metadata, timeout=10))
    else:
        channel.unary_unary(path)(b"", metadata=metadata, timeout=10)


def test_issuer_credentials_live_from_mint_to_revoke() -> None:
    issuer = WorkerCredentialIssuer(b"a server secret of enough length")
    first = issuer.mint("job-1", "alice")
    assert issuer.verify(first).job_id == "job-1"
    # A new launch of the same job (after a restart) replaces the earlier credential.
    second = issuer.mint("job-1", "alice")
    with pytest.raises(UnauthenticatedError, match="no longer valid"):
        issuer.verify(first)
    assert issuer.verify(second).tenant == "alice"
    issuer.revoke("job-1")
    with pytest.raises(UnauthenticatedError, match="no longer valid"):
        issuer.verify(second)
    assert issuer.live_count == 0
    # Another issuer with the same secret (a restarted server) knows no live credential.
    restarted = WorkerCredentialIssuer(b"a server secret of enough length")
    with pytest.raises(UnauthenticatedError, match="no longer valid"):
        restarted.verify(issuer.mint("job-2", "alice"))


class _LingeringExecutor:
    """Unit-test executor: hands out the credential and keeps its "worker" alive until told."""

    def __init__(self) -> None:
        self.credentials: dict[str, str] = {}
        self.launched = asyncio.Event()
        self.exit = asyncio.Event()

    async def run(self, job: Job, credential: str, trace_context: Any = None) -> WorkerExit:
        self.credentials[job.id] = credential
        self.launched.set()
        await self.exit.wait()
        return WorkerExit(exit_code=0)

    async def kill(self, job_id: str) -> None:
        self.exit.set()

    async def close(self) -> None:
        self.exit.set()


async def test_credential_ends_with_the_job_even_while_its_worker_lingers(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    catalog = PluginCatalog(
        [TOY_PLUGINS_DIR],
        supported_modes=["local"],
        code_store=PluginCodeStore(tmp_path / "plugins"),
    )
    catalog.reload()
    issuer = WorkerCredentialIssuer(b"a server secret of enough length")
    executor = _LingeringExecutor()
    jobs = JobService(store, EventHub(store), catalog, {"local": executor}, issuer)
    try:
        job, _ = await jobs.submit("default", "toy", "quick", '{"count": 0, "label": "x"}')
        await asyncio.wait_for(executor.launched.wait(), 30)
        credential = executor.credentials[job.id]
        claims = issuer.verify(credential)
        await jobs.open_worker_stream(claims, job.id, "worker-1")
        finished = WorkerReport(1, WorkerFinished(JobState.SUCCEEDED, result_size=0))
        _, done = await jobs.report(claims, job.id, [finished])
        assert done and (await jobs.get(None, job.id)).state is JobState.SUCCEEDED
        # The worker process has not exited yet; its credential is already dead.
        assert not executor.exit.is_set()
        with pytest.raises(UnauthenticatedError, match="no longer valid"):
            issuer.verify(credential)
    finally:
        await jobs.close()
        await store.close()
    assert issuer.live_count == 0


def test_worker_credential_stops_working_when_its_job_ends(
    server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(tokens="tok-a=alice")
    token_file = tmp_path / "credential"
    with server.channel() as channel, Client(server.address, token="tok-a", timeout=30) as client:
        actions = action_service_pb2_grpc.ActionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
        request = pb.RunActionRequest(plugin="toy", action="hold_credential")
        request.params.update({"path": str(token_file)})
        job_id = actions.RunAction(request, metadata=_md("tok-a"), timeout=10).job.id
        _wait_for(token_file.exists, "the job to hand out its credential")
        token = token_file.read_text()
        before = client.register_model(make_zip(tmp_path / "a.zip", [("w", b"1")]), "before")

        # While the job runs, its credential works for what a worker may do.
        assignment = workers.GetAssignment(
            worker_service_pb2.GetAssignmentRequest(job_id=job_id), metadata=_md(token), timeout=10
        )
        assert assignment.job_id == job_id
        got = models.GetModel(
            model_service_pb2.GetModelRequest(model_id=before.id), metadata=_md(token), timeout=10
        )
        assert got.model.name == "before"

        actions.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=_md("tok-a"), timeout=10)
        _wait_for(
            lambda: _state(actions, job_id, "tok-a") == job_pb2.JOB_STATE_CANCELLED,
            "the job to be cancelled",
        )
        after = client.register_model(make_zip(tmp_path / "b.zip", [("w", b"2")]), "after")

        # Once the job has ended, the credential opens nothing: not the model registered
        # since, not the one it could read before, not any other worker method.
        for model_id in (after.id, before.id):
            with pytest.raises(grpc.RpcError) as info:
                list(
                    models.DownloadModel(
                        model_service_pb2.DownloadModelRequest(model_id=model_id),
                        metadata=_md(token),
                        timeout=10,
                    )
                )
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert info.value.details() == EXPIRED_MESSAGE
        for path, client_streaming, server_streaming in _worker_rpcs():
            with pytest.raises(grpc.RpcError) as info:
                _call_raw(channel, path, (client_streaming, server_streaming), token)
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED, path
            assert info.value.details() == EXPIRED_MESSAGE, path


def test_worker_credential_of_a_finished_job_is_refused_after_a_restart(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "credential"
    settings = make_settings(tmp_path / "data")
    first = RunningServer(settings)
    try:
        with first.channel() as channel:
            actions = action_service_pb2_grpc.ActionServiceStub(channel)
            job_id = _run(actions, "hold_credential", {"path": str(token_file)})
            _wait_for(token_file.exists, "the job to hand out its credential")
    finally:
        first.stop()  # the job fails as the server stops
    token = token_file.read_text()
    second = RunningServer(settings)
    try:
        with second.channel() as channel:
            workers = worker_service_pb2_grpc.WorkerServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                workers.GetAssignment(
                    worker_service_pb2.GetAssignmentRequest(job_id=job_id),
                    metadata=_md(token),
                    timeout=10,
                )
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        second.stop()


class _RefusingWorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    """Hands out a hold_credential job, then refuses the worker's event stream.

    It refuses once the action has written its file (so without the check the test fails
    at once) or after a deadline: the stream is never accepted, so the action must not run.
    """

    def __init__(self, action_file: Path) -> None:
        self.action_file = action_file
        self.opened = threading.Event()

    def GetAssignment(self, request: Any, context: Any) -> Any:
        params = json.dumps({"path": str(self.action_file)}).encode()
        return worker_service_pb2.GetAssignmentResponse(
            job_id=request.job_id,
            plugin="toy",
            plugin_version="1.0.0",
            action="hold_credential",
            params_json=params,
        )

    def ReportEvents(self, request_iterator: Any, context: Any) -> Any:
        first = next(request_iterator)
        assert first.WhichOneof("kind") == "open"
        self.opened.set()
        deadline = time.monotonic() + 5
        while not self.action_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server does not take the job")
        yield  # pragma: no cover


def test_the_action_waits_until_the_server_accepts_its_stream(tmp_path: Path) -> None:
    service = _RefusingWorkerService(tmp_path / "ran")
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        code = run_worker(f"127.0.0.1:{port}", "job-1", "credential", plugin_dirs=[TOY_PLUGINS_DIR])
    finally:
        server.stop(None)
    assert service.opened.is_set()
    assert code != 0
    assert not service.action_file.exists(), "the action ran although the server refused the job"


class _NoJobWorkerService(worker_service_pb2_grpc.WorkerServiceServicer):
    def GetAssignment(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such job")


def test_a_channel_handed_to_the_worker_stays_its_callers(tmp_path: Path) -> None:
    # A fork server's spare hands in the channel it opened ahead of its job and exits
    # without closing it (closing waits for grpc's connectivity watch, with the job's slot
    # still taken); the worker must not close it either.
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(_NoJobWorkerService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        code = run_worker(
            f"127.0.0.1:{port}", "job-1", "credential", plugin_dirs=[TOY_PLUGINS_DIR],
            channel=channel,
        )  # fmt: skip
        assert code != 0  # refused: no assignment
        # Still open: a call reaches the server (a closed channel raises ValueError).
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.GetAssignment(worker_service_pb2.GetAssignmentRequest(job_id="job-1"), timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        server.stop(None)


# One server per data directory ----------------------------------------------------------------


def test_data_directory_lock_names_its_holder(tmp_path: Path) -> None:
    first = DataDirectoryLock(tmp_path)
    first.acquire()
    first.record("127.0.0.1:5555")
    second = DataDirectoryLock(tmp_path)
    with pytest.raises(DataDirectoryInUseError) as info:
        second.acquire()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "127.0.0.1:5555" in message
    assert "\n" not in message
    first.release()
    second.acquire()  # released: the next server takes it
    second.release()


def test_a_data_directory_that_cannot_be_locked_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(DataDirectoryLockError, match="cannot lock data directory"):
        DataDirectoryLock(blocker / "data").acquire()
    served = subprocess.run(
        [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(blocker / "data"), "--plugin-dir", str(TOY_PLUGINS_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert served.returncode == 1
    assert served.stderr.strip().splitlines() == [
        f"synapse serve: cannot lock data directory {blocker / 'data'}: Not a directory"
    ], served.stderr


def test_a_second_server_in_process_cannot_start_on_the_same_data_dir(
    server_factory: Any, tmp_path: Path
) -> None:
    running = server_factory(data_dir=tmp_path / "shared")
    other = SynapseServer(make_settings(tmp_path / "shared"))
    with pytest.raises(DataDirectoryInUseError, match=running.address):
        running.call(other.start())


class _Process:
    """``python -m synapse_server`` on port 0 with its log in a file (never a full pipe)."""

    def __init__(self, data_dir: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(TOY_PLUGINS_DIR),
                "--log-level", "WARNING", *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(f"server did not start: {log.read_text()}")
        self.address = line.rsplit(" ", 1)[1].strip()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = action_service_pb2_grpc.ActionServiceStub(self.channel)

    def terminate(self, timeout: float = 90) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., _Process]]:
    started: list[_Process] = []

    def start(*extra: str) -> _Process:
        server = _Process(tmp_path / "data", tmp_path / f"server{len(started)}.log", *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.mark.e2e
def test_a_second_server_process_exits_at_once_naming_the_first(
    processes: Callable[..., _Process], tmp_path: Path
) -> None:
    first = processes("--shutdown-grace", "3")
    running = _run(first.stub, "slow")
    _wait_for(_running(first.stub, running), "the job to run")
    second = subprocess.run(
        [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "data"), "--plugin-dir", str(TOY_PLUGINS_DIR),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert "listening" not in second.stdout
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert "in use by another synapse server" in lines[0]
    assert f"pid {first.process.pid}" in lines[0] and first.address in lines[0]
    # The first server is untouched: it serves and still runs its job.
    health = health_pb2_grpc.HealthStub(first.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert _state(first.stub, running) == job_pb2.JOB_STATE_RUNNING
    # ... and stops normally; then the data directory is free again.
    assert first.terminate() == 0
    third = processes()
    final = _terminal(third.stub, running)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.error.message == "server shut down before the job finished (grace 3 s)"


@pytest.mark.e2e
def test_a_killed_server_leaves_no_lock_behind(processes: Callable[..., _Process]) -> None:
    first = processes()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(30)
    second = processes()  # the kernel dropped the lock with the process
    assert second.stub.ListJobs(pb.ListJobsRequest(), timeout=10) is not None


# SIGTERM ----------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_keeps_pending_jobs_and_lets_running_ones_finish(
    processes: Callable[..., _Process],
) -> None:
    first = processes("--max-concurrent-jobs", "1", "--shutdown-grace", "60")
    # Three seconds of work against a 60 s grace period: it finishes during the drain.
    napping = _run(first.stub, "nap", {"seconds": 3})
    _wait_for(_running(first.stub, napping), "the nap to run")
    pending = [_run(first.stub, "quick", {"count": 2, "label": f"p{i}"}) for i in range(3)]
    assert {_state(first.stub, job_id) for job_id in pending} == {job_pb2.JOB_STATE_PENDING}
    assert first.terminate() == 0

    second = processes("--max-concurrent-jobs", "1")
    finished = _terminal(second.stub, napping)
    assert finished.state == job_pb2.JOB_STATE_SUCCEEDED, finished
    assert json.loads(finished.result_json) == {"slept": 3.0}
    for index, job_id in enumerate(pending):
        final = _terminal(second.stub, job_id)
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED, final
        assert json.loads(final.result_json)["label"] == f"p{index}"
        # Each ran exactly once: one PENDING, one RUNNING, one terminal.
        history = [
            m.event
            for m in second.stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=30)
            if m.HasField("event")
        ]
        states = [e.state_changed.state for e in history if e.HasField("state_changed")]
        assert states == [job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING], history
