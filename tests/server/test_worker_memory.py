"""The per-job memory limit of local workers: on by default, and a job that exceeds it fails
with MemoryLimitExceeded naming the limit, whether plugin code sees the failed allocation or
the worker is killed for it."""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2
from synapse_client import Client
from synapse_sdk.events import ErrorInfo
from synapse_server._serve_args import add_arguments, settings_from_args
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._executor import LocalProcessExecutor, WorkerExit
from synapse_server.core._memory import EXIT_OUT_OF_MEMORY
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.settings import DEFAULT_WORKER_MEMORY_LIMIT_MB, ServerSettings
from synapse_server.worker._runner import _MemoryGuard, is_out_of_memory

pytestmark = pytest.mark.timeout(120)


def _final(stub: Any, job_id: str) -> Any:
    deadline = time.monotonic() + 100
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
        if job.state in (
            job_pb2.JOB_STATE_SUCCEEDED,
            job_pb2.JOB_STATE_FAILED,
            job_pb2.JOB_STATE_CANCELLED,
        ):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never finished")


def _run(server: Any, action: str, params: dict[str, Any] | None = None) -> Any:
    with server.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        request = pb.RunActionRequest(plugin="toy", action=action)
        if params:
            request.params.update(params)
        return _final(stub, stub.RunAction(request, timeout=10).job.id)


def test_the_limit_is_on_by_default_and_zero_turns_it_off(
    tmp_path: Any, server_factory: Any
) -> None:
    assert ServerSettings(data_dir=tmp_path).worker_memory_limit_mb == 4096
    assert DEFAULT_WORKER_MEMORY_LIMIT_MB == 4096
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    off = settings_from_args(parser.parse_args(["--worker-memory-limit-mb", "0"]))
    assert off.worker_memory_limit_mb == 0
    # What a job's worker actually runs under.
    for limit, expected in ((300, 300 << 20), (0, resource.RLIM_INFINITY)):
        server = server_factory(worker_memory_limit_mb=limit)
        with Client(server.address, timeout=60) as client:
            result = client.run_action("toy", "limits", {}).result(timeout=100)
        assert result["data_limit"] == expected, limit


def test_a_memory_error_in_plugin_code_names_the_limit(server_factory: Any) -> None:
    server = server_factory(worker_memory_limit_mb=512)
    job = _run(server, "memory_hog")
    assert job.state == job_pb2.JOB_STATE_FAILED
    assert job.error.type == "MemoryLimitExceeded"
    assert job.error.message == "the job exceeded its memory limit of 512 MiB"
    # Where the memory went stays visible: the plugin's own traceback.
    assert job.error.origin == job_pb2.ERROR_ORIGIN_PLUGIN
    assert "MemoryHogAction" in job.error.plugin_traceback or "hoard" in (
        job.error.plugin_traceback
    )
    # The next job of the same worker pool runs normally.
    assert _run(server, "quick", {"count": 1, "label": "after"}).state == (
        job_pb2.JOB_STATE_SUCCEEDED
    )


def test_a_failed_torch_allocation_names_the_limit(server_factory: Any) -> None:
    pytest.importorskip("torch")
    server = server_factory(worker_memory_limit_mb=1024)
    job = _run(server, "torch_hog", {"max_mib": 3072})
    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert job.error.type == "MemoryLimitExceeded"
    assert job.error.message == "the job exceeded its memory limit of 1024 MiB"


def test_a_worker_over_its_limit_outside_the_data_limit_is_killed(server_factory: Any) -> None:
    # Shared memory is not data memory: the kernel lets it grow, the executor's watch kills
    # the worker (the hog gives up and would succeed at 2 GiB).
    server = server_factory(worker_memory_limit_mb=256)
    job = _run(server, "shared_hog", {"max_mib": 2048})
    assert job.state == job_pb2.JOB_STATE_FAILED, job
    assert job.error.type == "MemoryLimitExceeded"
    assert job.error.message == "the job exceeded its memory limit of 256 MiB"
    assert job.error.origin == job_pb2.ERROR_ORIGIN_PLATFORM


def test_out_of_memory_is_recognised_through_the_cause_chain() -> None:
    def raised_from(cause: BaseException) -> BaseException:
        try:
            try:
                raise cause
            except BaseException as inner:
                raise ValueError("step failed") from inner
        except ValueError as outer:
            return outer

    torch_message = (
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 2147483648 bytes. Error code 12"
    )
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(raised_from(MemoryError()))
    assert is_out_of_memory(RuntimeError(torch_message))
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(ValueError("memory"))


def test_the_reported_error_under_a_limit_and_without_one() -> None:
    info = ErrorInfo(type="MemoryError", message="", traceback="Traceback ...")
    limited = _MemoryGuard(2048).error(info, "load")
    assert (limited.type, limited.message, limited.step) == (
        "MemoryLimitExceeded",
        "the job exceeded its memory limit of 2048 MiB",
        "load",
    )
    assert limited.plugin_traceback == "Traceback ..."
    unlimited = _MemoryGuard(None).error(info)
    assert (unlimited.type, unlimited.message) == ("MemoryError", "out of memory")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc accounting")
def test_the_reserve_counts_against_the_limit_until_released() -> None:
    # The limit is RLIMIT_DATA: what the reserve holds must count there (else releasing it
    # would make no room for the report), and it need not be resident (not zero-filled).
    before = _status_kb("VmData")
    guard = _MemoryGuard(2048)
    held = _status_kb("VmData") - before
    assert held >= 8 * 1024
    guard.release()
    assert _status_kb("VmData") - before <= held - 8 * 1024
    guard.release()  # twice is harmless
    assert _MemoryGuard(None)._reserve is None


def test_a_worker_that_could_not_report_running_out_of_memory(tmp_path: Path) -> None:
    catalog = PluginCatalog([], ["local"], code_store=PluginCodeStore(tmp_path / "plugins"))
    executor = LocalProcessExecutor("unix:/nowhere", catalog, memory_limit_mb=700)
    outcome = executor._exit("job", EXIT_OUT_OF_MEMORY)
    assert outcome.error_type == "MemoryLimitExceeded"
    assert outcome.describe() == "the job exceeded its memory limit of 700 MiB"
    assert WorkerExit(exit_code=EXIT_OUT_OF_MEMORY).error_type == "WorkerCrashed"
    unlimited = LocalProcessExecutor("unix:/nowhere", catalog)
    assert unlimited._exit("job", EXIT_OUT_OF_MEMORY).error_type == "WorkerCrashed"
