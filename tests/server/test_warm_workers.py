"""Standby (warm) local workers: handoff over stdin, one job per process, crash isolation, close."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2
from synapse_server.core._executor import LocalProcessExecutor
from synapse_server.worker._standby import Handoff, HandoffError, read_handoff

pytestmark = pytest.mark.timeout(90)


def _executor(running: Any) -> LocalProcessExecutor:
    executor = running.server._jobs._executors["local"]
    assert isinstance(executor, LocalProcessExecutor)
    return executor


def _wait_idle(executor: LocalProcessExecutor, plugin: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = executor.standby.idle(plugin)
        if idle:
            return [p.pid for p in idle]
        time.sleep(0.05)
    raise AssertionError(f"no standby worker for {plugin} within {timeout}s")


def _run(channel: grpc.Channel, action: str, params: dict[str, Any]) -> job_pb2.Job:
    stub = action_service_pb2_grpc.ActionServiceStub(channel)
    job = stub.RunAction(
        pb.RunActionRequest(plugin="toy", action=action, params_json=json.dumps(params).encode()),
        timeout=10,
    ).job
    for message in stub.StreamProgress(pb.StreamProgressRequest(job_id=job.id), timeout=60):
        if message.HasField("event") and message.event.HasField("terminal"):
            break
    return stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10).job


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_handoff_line_round_trip_and_bad_lines() -> None:
    handoff = Handoff("j1", "secret", "/tmp/j1.log", {"RAY_ADDRESS": "x:1"})
    assert read_handoff(io.BytesIO(handoff.to_line())) == handoff
    assert read_handoff(io.BytesIO(b"")) is None
    for bad in (b"nope\n", b"[1]\n", b'{"job_id": "j"}\n', b'{"job_id": "j", "credential": 1}\n'):
        with pytest.raises(HandoffError):
            read_handoff(io.BytesIO(bad))
    with pytest.raises(HandoffError, match="environment"):
        read_handoff(io.BytesIO(b'{"job_id":"j","credential":"c","environment":{"A":1}}\n'))


def test_preloaded_standby_worker_runs_the_job_and_is_replaced(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    executor = _executor(running)
    [pid] = _wait_idle(executor, "toy")
    with running.channel() as channel:
        job = _run(channel, "quick", {"count": 2, "label": "warm"})
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    # The standby process took the job (a standby only exits after its one job) and a fresh
    # one replaced it.
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    [replacement] = _wait_idle(executor, "toy")
    assert replacement != pid
    log = running.settings.data_dir / "logs" / "jobs" / f"{job.id}.log"
    assert log.is_file()  # the job's output went to its own log after the handoff


def test_crash_in_a_standby_worker_fails_only_its_job(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=1, preload_plugins=["toy"])
    executor = _executor(running)
    _wait_idle(executor, "toy")
    with running.channel() as channel:
        crashed = _run(channel, "exit", {})
        assert crashed.state == job_pb2.JOB_STATE_FAILED
        assert crashed.error.type == "WorkerCrashed"
        _wait_idle(executor, "toy")
        fine = _run(channel, "quick", {"count": 1, "label": "after"})
    assert fine.state == job_pb2.JOB_STATE_SUCCEEDED


def test_close_leaves_no_standby_processes(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=2, preload_plugins=["toy"])
    executor = _executor(running)
    deadline = time.monotonic() + 30
    while len(executor.standby.idle("toy")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [p.pid for p in executor.standby.idle("toy")]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    running.call(executor.close())
    assert executor.standby.idle() == []
    assert not any(_alive(pid) for pid in pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_no_standby_workers_when_disabled(server_factory: Callable[..., Any]) -> None:
    running = server_factory(warm_workers=0, preload_plugins=["toy"])
    with running.channel() as channel:
        job = _run(channel, "quick", {"count": 1, "label": "cold"})
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert _executor(running).standby.idle() == []
