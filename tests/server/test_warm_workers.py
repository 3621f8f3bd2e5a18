"""Per-plugin fork servers: a forked process per job, crash isolation, kill, exit status."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2, worker_service_pb2
from synapse_server.core._executor import LocalProcessExecutor, _assignment
from synapse_server.core._models import Job
from synapse_server.core._standby import ForkServer, ForkServerPool
from synapse_server.worker._zygote import ForkRequest, RequestError, parse_request

pytestmark = pytest.mark.timeout(90)


def _executor(running: Any) -> LocalProcessExecutor:
    executor = running.server._jobs._executors["local"]
    assert isinstance(executor, LocalProcessExecutor)
    return executor


def _pool(running: Any) -> ForkServerPool:
    pool = _executor(running).fork_servers
    assert pool is not None
    return pool


def _wait_ready(pool: ForkServerPool, plugin: str, timeout: float = 30) -> ForkServer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = pool.server(plugin)
        if server is not None and server.ready:
            return server
        time.sleep(0.05)
    raise AssertionError(f"no ready fork server for {plugin} within {timeout}s")


def _submit(stub: action_service_pb2_grpc.ActionServiceStub, action: str, params: Any) -> str:
    request = pb.RunActionRequest(
        plugin="toy", action=action, params_json=json.dumps(params).encode()
    )
    return str(stub.RunAction(request, timeout=10).job.id)


def _finish(stub: action_service_pb2_grpc.ActionServiceStub, job_id: str) -> job_pb2.Job:
    for message in stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=60):
        if message.HasField("event") and message.event.HasField("terminal"):
            break
    return stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job


def _run(channel: grpc.Channel, action: str, params: dict[str, Any]) -> job_pb2.Job:
    stub = action_service_pb2_grpc.ActionServiceStub(channel)
    return _finish(stub, _submit(stub, action, params))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return False


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def _spare(server: ForkServer, timeout: float = 10) -> int:
    """The fork server's pre-forked spare: its child that runs no job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spares = _children_of(server.pid) - set(server.children().values())
        if len(spares) == 1:
            return spares.pop()
        time.sleep(0.02)
    raise AssertionError("the fork server has no spare worker")


def test_request_lines_parse_and_bad_lines_are_refused() -> None:
    line = json.dumps(
        {
            "op": "fork",
            "job_id": "j1",
            "credential": "secret",
            "log_file": "/tmp/j1.log",
            "environment": {"RAY_ADDRESS": "x:1"},
        }
    ).encode()
    request = ForkRequest("j1", "secret", "/tmp/j1.log", {"RAY_ADDRESS": "x:1"})
    assert parse_request(line) == request
    assert parse_request(request.to_line()) == request
    assert parse_request(b'{"op": "kill", "job_id": "j1"}') == "j1"
    for bad in (
        b"nope",
        b"[1]",
        b'{"op": "fork", "job_id": "j"}',
        b'{"op": "fork", "job_id": "j", "credential": 1}',
        b'{"op": "spawn", "job_id": "j", "credential": "c"}',
        b'{"op": "kill"}',
    ):
        with pytest.raises(RequestError):
            parse_request(bad)
    with pytest.raises(RequestError, match="environment"):
        parse_request(b'{"op":"fork","job_id":"j","credential":"c","environment":{"A":1}}')


def test_assignments_in_fork_requests_parse_and_bad_ones_are_refused() -> None:
    job = Job(
        id="j1",
        tenant="t",
        plugin="toy",
        action="quick",
        params_json='{"count": 2, "big": 12345678901234567891}',
        plugin_version="1.0.0",
        plugin_sha256="ab" * 32,
        mode="local",
    )
    handed = _assignment(job, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert handed is not None
    line = json.dumps(
        {"op": "fork", "job_id": "j1", "credential": "c", "assignment": handed}
    ).encode()
    request = parse_request(line)
    assert isinstance(request, ForkRequest) and request.assignment is not None
    assert parse_request(request.to_line()) == request
    # The worker gets what GetAssignment answers for the job (params text kept exact).
    assert request.assignment.to_pb("j1") == worker_service_pb2.GetAssignmentResponse(
        job_id="j1",
        plugin="toy",
        plugin_version="1.0.0",
        plugin_sha256="ab" * 32,
        action="quick",
        params_json=job.params_json.encode(),
        mode=job_pb2.RUN_MODE_LOCAL,
        headers=handed["headers"],
    )
    # Params too large to hand over: the worker asks for them.
    assert _assignment(dataclasses.replace(job, params_json=" " * (65 << 10)), None) is None
    for bad, what in (
        ([1], "JSON object"),
        ({"action": "a", "params_json": "{}"}, "required"),
        ({**handed, "mode": "elsewhere"}, "mode"),
        ({**handed, "params_json": {"x": 1}}, "params_json"),
        ({**handed, "cancel_requested": "yes"}, "cancel_requested"),
        ({**handed, "headers": {"a": 1}}, "headers"),
    ):
        data = {"op": "fork", "job_id": "j", "credential": "c", "assignment": bad}
        with pytest.raises(RequestError, match=what):
            parse_request(json.dumps(data).encode())


def test_forked_workers_get_their_assignment_with_the_fork_request(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    _wait_ready(_pool(running), "toy")
    jobs = running.server._jobs
    asked: list[str] = []
    original = jobs.assignment

    async def assignment(claims: Any, job_id: str) -> Any:
        asked.append(job_id)
        return await original(claims, job_id)

    jobs.assignment = assignment
    big = "x" * (70 << 10)
    with running.channel() as channel:
        small_job = _run(channel, "quick", {"count": 2, "label": "small"})
        big_job = _run(channel, "quick", {"count": 2, "label": big})
        results = [
            json.loads(
                b"".join(c.data for c in stub.GetJobResult(pb.GetJobResultRequest(job_id=j.id)))
            )
            for stub in [action_service_pb2_grpc.ActionServiceStub(channel)]
            for j in (small_job, big_job)
        ]
    assert small_job.state == big_job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [r["label"] for r in results] == ["small", big]
    # Only the worker whose params were too large to hand over asked for them.
    assert asked == [big_job.id]


def test_jobs_run_in_forked_children_of_one_ready_fork_server(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    pool = _pool(running)
    server = _wait_ready(pool, "toy")
    with running.channel() as channel:
        first = _run(channel, "quick", {"count": 2, "label": "a"})
        second = _run(channel, "quick", {"count": 2, "label": "b"})
    assert first.state == second.state == job_pb2.JOB_STATE_SUCCEEDED
    # Both workers were forked by the same fork server, which still serves.
    assert pool.server("toy") is server and server.ready and _alive(server.pid)
    deadline = time.monotonic() + 10
    while server.jobs and time.monotonic() < deadline:
        time.sleep(0.02)  # the job ends before its worker process does
    assert server.jobs == 0 and server.children() == {}
    for job in (first, second):
        log = running.settings.data_dir / "logs" / "jobs" / f"{job.id}.log"
        assert log.is_file()  # each forked worker wrote to its job's own log


def test_back_to_back_jobs_run_in_forks_of_the_ready_fork_server(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        ids = [_submit(stub, "whoami", {}) for _ in range(4)]
        jobs = [_finish(stub, job_id) for job_id in ids]
        assert all(job.state == job_pb2.JOB_STATE_SUCCEEDED for job in jobs)
        seen = [
            json.loads(
                b"".join(c.data for c in stub.GetJobResult(pb.GetJobResultRequest(job_id=i)))
            )
            for i in ids
        ]
    # Each job ran in its own child forked by the fork server that had the plugin imported
    # already, not in a fresh interpreter that imports everything again.
    assert {who["ppid"] for who in seen} == {server.pid}
    assert len({who["pid"] for who in seen}) == len(seen)


def test_crash_in_a_forked_worker_fails_only_its_job(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    with running.channel() as channel:
        crashed = _run(channel, "exit", {})
        assert crashed.state == job_pb2.JOB_STATE_FAILED
        assert crashed.error.type == "WorkerCrashed"
        # The exit status came through the fork server.
        assert "exited with code" in crashed.error.message
        fine = _run(channel, "quick", {"count": 1, "label": "after"})
    assert fine.state == job_pb2.JOB_STATE_SUCCEEDED
    assert _pool(running).server("toy") is server and _alive(server.pid)


def test_a_dead_fork_server_fails_its_running_job_and_is_replaced(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    pool = _pool(running)
    server = _wait_ready(pool, "toy")
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        job_id = _submit(stub, "slow", {})
        deadline = time.monotonic() + 20
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = server.children().values()
        os.kill(server.pid, 9)
        job = _finish(stub, job_id)
        assert job.state == job_pb2.JOB_STATE_FAILED
        assert job.error.type == "WorkerCrashed"
        assert "fork server" in job.error.message
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)  # died with its fork server
        after = _run(channel, "quick", {"count": 1, "label": "after"})
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED
    replacement = pool.server("toy")
    assert replacement is not None and replacement.pid != server.pid


def test_close_leaves_no_fork_server_or_worker(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    executor = _executor(running)
    server = _wait_ready(_pool(running), "toy")
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        _submit(stub, "slow", {})
        deadline = time.monotonic() + 20
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        [child] = server.children().values()
    spare = _spare(server)
    running.call(executor.close())
    assert _pool(running).servers() == []
    for pid in (server.pid, child, spare):
        assert not _alive(pid)


def test_no_fork_server_when_disabled(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=0, preload_plugins=["toy"])
    with running.channel() as channel:
        job = _run(channel, "quick", {"count": 1, "label": "cold"})
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert _executor(running).fork_servers is None


def test_a_job_cancelled_right_after_submit_leaves_no_child(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        job_id = _submit(stub, "stubborn", {})
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="now"), timeout=10)
        job = _finish(stub, job_id)
    assert job.state == job_pb2.JOB_STATE_CANCELLED
    deadline = time.monotonic() + 15
    while (server.jobs or server.children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Whether the cancel came before or after the fork, the child (if any) is gone.
    assert server.jobs == 0 and server.children() == {}
    assert server.ready and _alive(server.pid)


def test_the_spare_child_takes_the_next_job_and_a_dead_spare_is_not_fatal(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    spare = _spare(server)
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        job_id = _submit(stub, "slow", {})
        deadline = time.monotonic() + 20
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.02)
        # The job runs in the process that was forked before it was submitted, and a new
        # spare waits for the next one.
        assert server.children() == {job_id: spare}
        replacement = _spare(server)
        assert replacement != spare
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
        assert _finish(stub, job_id).state == job_pb2.JOB_STATE_CANCELLED
        os.kill(replacement, 9)
        deadline = time.monotonic() + 10
        while _alive(replacement) and time.monotonic() < deadline:
            time.sleep(0.02)
        job = _run(channel, "quick", {"count": 1, "label": "after a dead spare"})
    # (A spare killed as the job arrives must not take the job down with it.)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
    assert server.ready and _alive(server.pid)


def _wait_running(stub: action_service_pb2_grpc.ActionServiceStub, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job.state != (
        job_pb2.JOB_STATE_RUNNING
    ):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)


def test_the_next_spare_is_forked_once_the_job_has_its_first_event(
    server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    """The spare that took a job is replaced only once that job's first event is stored, so
    forking and connecting the next spare does not compete with the job's start."""
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    spare = _spare(server)
    gate, then = tmp_path / "gate", tmp_path / "then"
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        params = {"gate": str(gate), "then": str(then), "quiet": True}
        job_id = _submit(stub, "gated", params)
        _wait_running(stub, job_id)  # its worker opened its stream; the action is silent
        assert server.children() == {job_id: spare}
        time.sleep(0.5)
        assert _children_of(server.pid) == {spare}, "a spare was forked before any event"
        gate.touch()  # the action logs its first event
        replacement = _spare(server)
        assert replacement != spare
        then.touch()
        assert _finish(stub, job_id).state == job_pb2.JOB_STATE_SUCCEEDED


def test_a_job_arriving_before_the_spare_is_replaced_is_forked_directly(
    server_factory: Callable[..., Any], tmp_path: Any
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    server = _wait_ready(_pool(running), "toy")
    spare = _spare(server)
    gate = tmp_path / "gate"
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        silent = _submit(stub, "gated", {"gate": str(gate), "quiet": True})
        _wait_running(stub, silent)
        assert _children_of(server.pid) == {spare}
        # No spare waits: this job's child is forked for it, and a spare right after it.
        job = _run(channel, "quick", {"count": 1, "label": "direct"})
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error
        assert _spare(server) not in (spare, 0)
        gate.touch()
        assert _finish(stub, silent).state == job_pb2.JOB_STATE_SUCCEEDED
    assert server.ready and _alive(server.pid)


def test_a_forked_job_takes_the_ray_loopback_setting_of_its_environment() -> None:
    """A plugin preloaded by the fork server may import Ray before any job's environment
    exists; Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import. The fork applies the
    job's value, or Ray would replace the embedded head's 127.0.0.1 by the outward IP."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    script = (
        "import os, ray._private.ray_constants as constants\n"
        "assert constants.ENABLE_RAY_CLUSTER\n"
        "os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '0'\n"
        "from synapse_server.worker._zygote import _reread_import_time_ray_settings\n"
        "_reread_import_time_ray_settings()\n"
        "print(constants.ENABLE_RAY_CLUSTER)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
