"""The server as a process: SIGKILL durability and restart recovery, SIGTERM drain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2

TOY = Path(__file__).parent.parent / "plugins"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


class ServerProcess:
    """``python -m synapse_server`` on port 0; reads the bound address from stdout."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data_dir), "--plugin-dir", str(TOY),
                "--shutdown-grace", "3", "--log-level", "WARNING",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("synapse server listening on "):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.process.communicate()[1]}")
        self.address = line.rsplit(" ", 1)[1].strip()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = action_service_pb2_grpc.ActionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        server = ServerProcess(tmp_path / "data")
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def _run(stub: Any, action: str, params: dict[str, Any] | None = None) -> str:
    request = pb.RunActionRequest(plugin="toy", action=action)
    if params:
        request.params.update(params)
    return str(stub.RunAction(request, timeout=10).job.id)


def _history(stub: Any, job_id: str) -> list[Any]:
    return [
        m.event
        for m in stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=30)
        if m.HasField("event")
    ]


def _wait_running(stub: Any, job_id: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).job
        if job.state == job_pb2.JOB_STATE_RUNNING and job.last_seq >= 3:
            return
        time.sleep(0.05)
    raise AssertionError("job never started")


def _live_processes() -> dict[int, int]:
    """Pid -> parent pid of every process that is not a zombie."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone while listing
                continue
            if fields[0] != "Z":
                found[int(entry)] = int(fields[1])
    return found


def _descendants(pid: int) -> set[int]:
    parents = _live_processes()
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def test_sigkill_keeps_history_and_fails_running_jobs(spawn: Any) -> None:
    first = spawn()
    done = _run(first.stub, "quick", {"count": 5, "label": "kept"})
    done_history = _history(first.stub, done)
    running = _run(first.stub, "slow")
    _wait_running(first.stub, running)
    workers = _descendants(first.process.pid)
    assert workers, "the running job has no worker process under the server"
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    # The old workers die with the server (no orphan keeps running plugin code); the kill
    # reaches them asynchronously, so they get a deadline rather than one look.
    deadline = time.monotonic() + 30
    while left := workers & set(_live_processes()):
        assert time.monotonic() < deadline, f"worker processes outlived the server: {left}"
        time.sleep(0.1)

    second = spawn()
    again = _history(second.stub, done)
    assert [e.SerializeToString() for e in again] == [e.SerializeToString() for e in done_history]
    assert json.loads(again[-1].terminal.result_json)["label"] == "kept"
    interrupted = _history(second.stub, running)
    assert [e.seq for e in interrupted] == list(range(1, len(interrupted) + 1))
    final = interrupted[-1].terminal
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert "server stopped while the job was running" in final.error.message
    job = second.stub.GetJob(pb.GetJobRequest(job_id=running), timeout=5).job
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert second.stub.ListJobs(pb.ListJobsRequest(), timeout=5).jobs


def test_sigterm_drains_and_stops(spawn: Any) -> None:
    server = spawn()
    health = health_pb2_grpc.HealthStub(server.channel)
    check = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    running = _run(server.stub, "slow")
    _wait_running(server.stub, running)
    stream = server.stub.StreamProgress(pb.StreamProgressRequest(job_id=running), timeout=30)
    next(stream)
    os.kill(server.process.pid, signal.SIGTERM)
    # The in-flight stream ends (with the job's terminal event) instead of hanging: the slow
    # action waits 60 s, past the stream's 30 s deadline, unless the drain ends it.
    events = [m.event for m in stream if m.HasField("event")]
    assert events[-1].terminal.state == job_pb2.JOB_STATE_FAILED
    reason = "server shut down before the job finished (grace 3 s)"
    assert events[-1].terminal.error.message == reason
    # A drain with a 3 s grace exits by itself; the wait is a deadline, not a measurement.
    assert server.process.wait(30) == 0
