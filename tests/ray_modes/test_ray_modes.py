"""Task and job modes on a real three-node Ray cluster, through a real server process."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ray_modes_support import (
    PlatformServer,
    RayCluster,
    events,
    get_job,
    result_of,
    run_action,
    start_server,
    stop_server,
    struct_dict,
    wait_for,
)
from synapse.plugin.v1 import job_pb2

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _check_stream(evs: list, steps: int) -> None:
    """Seqs 1..n without gaps; PENDING, RUNNING, then step logs/progress in order, terminal."""
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    kinds = [e.WhichOneof("kind") for e in evs]
    assert kinds[0] == "state_changed" and evs[0].state_changed.state == job_pb2.JOB_STATE_PENDING
    assert kinds[1] == "state_changed" and evs[1].state_changed.state == job_pb2.JOB_STATE_RUNNING
    assert kinds[-1] == "terminal"
    logs = [int(e.log.data["i"]) for e in evs if e.WhichOneof("kind") == "log"]
    progress = [e.progress.current for e in evs if e.WhichOneof("kind") == "progress"]
    assert logs == list(range(1, steps + 1))
    assert progress == list(range(1, steps + 1))


def test_task_mode_is_the_action_default_and_runs_on_ray(platform: PlatformServer) -> None:
    job = run_action(platform, "where", {"steps": 4})
    assert job.mode == job_pb2.RUN_MODE_TASK
    evs = events(platform, job.id)
    _check_stream(evs, 4)
    result = result_of(evs[-1])
    assert result["mode"] == "task"
    assert result["node_id"], "a task-mode action runs inside a Ray worker"


def test_jobs_run_on_the_nodes_they_ask_for(
    platform: PlatformServer, ray_cluster: RayCluster
) -> None:
    """Scale-out shown: each job targets a node by custom resource and reports where it ran."""
    targets = ["node_a", "node_b", "head", "node_a", "node_b"]
    jobs = [
        run_action(platform, "where", {"steps": 2, "resources": {name: 0.1}}) for name in targets
    ]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        streams = list(pool.map(lambda j: events(platform, j.id), jobs))
    ran_on = []
    for name, evs in zip(targets, streams, strict=True):
        _check_stream(evs, 2)
        result = result_of(evs[-1])
        assert result["node_id"] == ray_cluster.node_ids[name]
        # The plugin came through Ray, unpacked into that node's own cache directory.
        assert Path(result["file"]).is_relative_to(ray_cluster.cache_dirs[name]), result["file"]
        ran_on.append(name)
    assert set(ran_on) == {"head", "node_a", "node_b"}


def test_request_overrides_the_default_mode(platform: PlatformServer) -> None:
    local = run_action(platform, "where", {"steps": 1}, mode="local")
    assert local.mode == job_pb2.RUN_MODE_LOCAL
    result = result_of(events(platform, local.id)[-1])
    assert result["mode"] == "local" and result["node_id"] == ""
    default_local = run_action(platform, "where_local", {"steps": 1})
    assert default_local.mode == job_pb2.RUN_MODE_LOCAL
    task = run_action(platform, "where_local", {"steps": 1}, mode="task")
    assert result_of(events(platform, task.id)[-1])["mode"] == "task"
    events(platform, default_local.id)


def test_unknown_mode_is_invalid_argument(platform: PlatformServer) -> None:
    from google.protobuf import struct_pb2
    from synapse.plugin.v1 import action_service_pb2

    with pytest.raises(grpc.RpcError) as info:
        platform.actions.RunAction(
            action_service_pb2.RunActionRequest(
                plugin="ray-probe",
                action="where",
                params=struct_pb2.Struct(),
                mode=42,  # type: ignore[arg-type]  # a number RunMode does not define, on purpose
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_job_mode_runs_in_a_fresh_isolated_process(
    platform: PlatformServer, ray_cluster: RayCluster
) -> None:
    first = run_action(platform, "isolated", {"steps": 2, "resources": {"node_b": 0.1}})
    second = run_action(platform, "where", {"steps": 2, "resources": {"node_b": 0.1}}, mode="job")
    assert first.mode == second.mode == job_pb2.RUN_MODE_JOB
    results = []
    for job in (first, second):
        evs = events(platform, job.id)
        _check_stream(evs, 2)
        results.append(result_of(evs[-1]))
    assert all(r["mode"] == "job" for r in results)
    assert all(r["node_id"] == ray_cluster.node_ids["node_b"] for r in results)
    assert results[0]["pid"] != results[1]["pid"], "each job-mode job gets its own process"


def test_a_crashing_worker_fails_the_job_with_a_reason(platform: PlatformServer) -> None:
    job = run_action(platform, "crash", {})
    evs = events(platform, job.id)
    assert any(e.log.event == "about to crash" for e in evs if e.WhichOneof("kind") == "log")
    terminal = evs[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "WorkerCrashed"
    assert terminal.error.message == "worker exited with code 17 without reporting a result"
    assert terminal.reason == terminal.error.message


@pytest.mark.parametrize(
    ("mode", "how", "expected"),
    [
        # The Ray task or actor supervises the worker as its child process, so every mode
        # names the exit code or signal the same way (Ray itself sees only a closed connection).
        (mode, how, expected)
        for mode in ("local", "task", "job")
        for how, expected in (
            ("exit", "worker exited with code 3 without reporting a result"),
            ("segfault", "worker crashed with SIGSEGV (segmentation fault)"),
            ("sigkill", "worker was killed (SIGKILL), possibly out of memory"),
        )
    ]
    + [("job", "ray_kill", "the Ray actor running the worker was killed (ray.kill)")],
)
def test_a_worker_that_dies_fails_its_job_with_what_happened(
    platform: PlatformServer, mode: str, how: str, expected: str
) -> None:
    job = run_action(platform, "die", {"how": how}, mode=mode)
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "WorkerCrashed"
    assert terminal.error.message == expected
    # The terminal event carries the same reason as the error.
    assert terminal.reason == terminal.error.message
    # The job's own node still runs work.
    after = run_action(platform, "where", {"steps": 1}, mode=mode)
    assert result_of(events(platform, after.id)[-1])["mode"] == mode


def _process_start(pid: int) -> str | None:
    """The start time of live process ``pid`` (None once it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _is_ray_worker(pid: int) -> bool:
    # Ray names its worker processes "ray::<task or IDLE>" in their command line.
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def _ray_worker_above(pid: int) -> int:
    """The Ray worker process that ``pid`` is (or descends from): a job's worker is its
    child, or in task mode its grandchild, forked from a fork server the Ray worker keeps."""
    while pid > 1:
        if _is_ray_worker(pid):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("not running under a Ray worker process")


def _first_log(server: PlatformServer, job_id: str, name: str) -> dict[str, Any]:
    """The data of the job's first log event called ``name``, read from the live stream."""
    from synapse.plugin.v1 import action_service_pb2

    stream = server.actions.StreamProgress(
        action_service_pb2.StreamProgressRequest(job_id=job_id), timeout=90
    )
    try:
        for response in stream:
            event = response.event
            is_log = response.WhichOneof("kind") == "event" and event.WhichOneof("kind") == "log"
            if is_log and event.log.event == name:
                return struct_dict(event.log.data)
    finally:
        stream.cancel()
    raise AssertionError(f"job {job_id} ended without a {name!r} log")


def test_a_plugin_crash_in_task_mode_leaves_its_ray_worker_process_running(
    platform: PlatformServer,
) -> None:
    """The plugin's worker is a child of the Ray worker: a crash ends the child only, and the
    Ray worker process goes on to run the next task."""
    job = run_action(platform, "crash", {"resources": {"node_a": 0.1}})
    crashed = _first_log(platform, job.id, "about to crash")
    # The crashing worker's parent (the Ray worker, or its fork server) outlives it.
    ray_worker = _ray_worker_above(int(crashed["parent_pid"]))
    started = _process_start(ray_worker)
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.error.message == "worker exited with code 17 without reporting a result"
    assert _process_start(ray_worker) == started, "the Ray worker process died with the plugin"
    after = run_action(platform, "where", {"steps": 1, "resources": {"node_a": 0.1}})
    result = result_of(events(platform, after.id)[-1])
    assert _ray_worker_above(result["parent_pid"]) == ray_worker, (
        "the next task runs in the same Ray worker"
    )


def test_task_mode_forks_each_jobs_worker_from_a_fork_server_in_the_ray_worker(
    platform: PlatformServer,
) -> None:
    """Consecutive jobs in one Ray worker process: each runs in a process of its own, forked
    from the one fork server that Ray worker keeps (no interpreter start per job)."""
    results = []
    for _ in range(3):
        job = run_action(platform, "where", {"steps": 1, "resources": {"node_a": 0.1}})
        results.append(result_of(events(platform, job.id)[-1]))
    fork_servers = {r["parent_pid"] for r in results}
    ray_workers = {_ray_worker_above(r["parent_pid"]) for r in results}
    assert len({r["pid"] for r in results}) == 3, "each job gets a process of its own"
    assert len(fork_servers) == 1 and len(ray_workers) == 1, results
    assert fork_servers != ray_workers, "the worker is forked from the fork server"


@pytest.mark.parametrize("mode", ["task", "job"])
def test_cancel_leaves_no_worker_process_behind(platform: PlatformServer, mode: str) -> None:
    """A stubborn job (it ignores the cooperative cancel) is killed: its worker process is
    gone afterwards, and in task mode the Ray worker process that ran it lives on."""
    from synapse.plugin.v1 import action_service_pb2

    job = run_action(platform, "stubborn", {"resources": {"node_b": 0.1}}, mode=mode)
    started = _first_log(platform, job.id, "started")
    worker, parent = int(started["pid"]), _ray_worker_above(int(started["parent_pid"]))
    assert _process_start(worker) is not None
    parent_start = _process_start(parent)
    platform.actions.CancelJob(action_service_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    assert events(platform, job.id)[-1].terminal.state == job_pb2.JOB_STATE_CANCELLED
    wait_for(lambda: _process_start(worker) is None, 60, "the cancelled job's worker to end")
    if mode == "task":
        assert _process_start(parent) == parent_start, "the Ray worker process was lost"


@pytest.mark.parametrize("mode", ["task", "job"])
def test_a_ray_worker_killed_from_outside_takes_its_job_worker_along(
    platform: PlatformServer, mode: str
) -> None:
    """The Ray worker process SIGKILLed (as the kernel's OOM killer would): the job fails with
    what Ray reports, and the worker it supervised does not run on without it."""
    import signal

    job = run_action(platform, "stubborn", {"resources": {"node_b": 0.1}}, mode=mode)
    started = _first_log(platform, job.id, "started")
    worker, parent = int(started["pid"]), _ray_worker_above(int(started["parent_pid"]))
    os.kill(parent, signal.SIGKILL)
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "WorkerCrashed"
    assert terminal.error.message.startswith("the Ray worker process died unexpectedly"), (
        terminal.error.message
    )
    wait_for(lambda: _process_start(worker) is None, 60, "the orphaned worker to end")


@pytest.fixture(scope="module")
def limited_platform(
    ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformServer]:
    """A server whose job workers may use 320 MiB each."""
    server = start_server(
        ray_cluster.address,
        tmp_path_factory.mktemp("limited"),
        extra=("--worker-memory-limit-mb", "320"),
    )
    try:
        yield server
    finally:
        stop_server(server)


@pytest.mark.parametrize(
    ("mode", "how", "origin"),
    [
        # Heap memory: the allocation fails inside the plugin (RLIMIT_DATA), which reports it.
        ("task", "data", job_pb2.ERROR_ORIGIN_PLUGIN),
        ("job", "data", job_pb2.ERROR_ORIGIN_PLUGIN),
        # Shared memory, which RLIMIT_DATA does not count: the Ray side's watch kills the worker.
        ("task", "shared", job_pb2.ERROR_ORIGIN_PLATFORM),
        ("job", "shared", job_pb2.ERROR_ORIGIN_PLATFORM),
    ],
)
def test_the_memory_limit_applies_in_ray_modes(
    limited_platform: PlatformServer, mode: str, how: str, origin: int
) -> None:
    job = run_action(limited_platform, "hog", {"how": how, "max_mib": 2048}, mode=mode)
    terminal = events(limited_platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED, terminal
    assert terminal.error.type == "MemoryLimitExceeded"
    assert terminal.error.message == "the job exceeded its memory limit of 320 MiB"
    assert terminal.error.origin == origin
    # The worker ran under the limit; a job that reserves more Ray memory gets its reservation.
    where = run_action(limited_platform, "where", {"steps": 1}, mode=mode)
    assert result_of(events(limited_platform, where.id)[-1])["data_limit"] == 320 << 20
    reserved = run_action(limited_platform, "where", {"steps": 1, "memory": 512 << 20}, mode=mode)
    assert result_of(events(limited_platform, reserved.id)[-1])["data_limit"] == 512 << 20


def test_infeasible_request_is_refused_at_submit(platform: PlatformServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        run_action(platform, "where", {"num_cpus": 8})
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "num_cpus=8" in info.value.details() and "largest node has 1" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        run_action(platform, "where", {"resources": {"tpu_pod": 1}})
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resources.tpu_pod=1" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        run_action(platform, "where", {"num_cpus": -1})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_jobs_are_accepted_at_once_while_ray_starts(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """The first Ray-mode job of a server that has not started Ray yet: RunAction answers
    without waiting for Ray (PENDING, "starting Ray"), Ray comes up in the background, and
    the job runs; a job that no node could hold fails then, saying so."""
    server = start_server(ray_cluster.address, tmp_path / "cold", warm_ray=False)
    try:
        job = run_action(server, "where", {"steps": 1})
        assert job.state == job_pb2.JOB_STATE_PENDING
        assert job.pending_reason == "starting Ray", job.pending_reason
        assert result_of(events(server, job.id)[-1])["mode"] == "task"
        # Ray is up now: a job too big for every node is refused at submit again.
        with pytest.raises(grpc.RpcError) as info:
            run_action(server, "where", {"num_cpus": 8})
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        stop_server(server)
    server = start_server(ray_cluster.address, tmp_path / "cold-big", warm_ray=False)
    try:
        big = run_action(server, "where", {"num_cpus": 8}, mode="job")
        assert big.pending_reason == "starting Ray", big.pending_reason
        terminal = events(server, big.id)[-1].terminal
        assert terminal.state == job_pb2.JOB_STATE_FAILED
        assert terminal.error.type == "PreconditionFailed", terminal.error
        assert "num_cpus=8" in terminal.error.message and "largest node has 1" in (
            terminal.error.message
        )
    finally:
        stop_server(server)


def test_a_ray_that_does_not_start_fails_the_job_with_a_reason(tmp_path: Path) -> None:
    # An address Ray cannot use: connecting fails at once (a closed port would take minutes).
    server = start_server("127.0.0.1:not-a-port", tmp_path / "no-ray", warm_ray=False)
    try:
        for mode in ("task", "job"):
            job = run_action(server, "where", {"steps": 1}, mode=mode)
            assert job.state == job_pb2.JOB_STATE_PENDING
            assert job.pending_reason == "starting Ray", job.pending_reason
            terminal = events(server, job.id)[-1].terminal
            assert terminal.state == job_pb2.JOB_STATE_FAILED, mode
            assert terminal.error.type == "PlatformUnavailable", terminal.error
            assert terminal.error.message.startswith("Ray could not be started: "), (
                terminal.error.message
            )
            assert terminal.error.origin == job_pb2.ERROR_ORIGIN_PLATFORM
    finally:
        stop_server(server)


def test_busy_cluster_keeps_the_job_pending_with_a_reason_then_cancel_stops_remote_work(
    platform: PlatformServer,
) -> None:
    """A job that fits the cluster but not now waits PENDING and says why; CancelJob kills."""
    from synapse.plugin.v1 import action_service_pb2

    holder = run_action(platform, "stubborn", {"resources": {"node_a": 1}})
    wait_for(
        lambda: get_job(platform, holder.id).state == job_pb2.JOB_STATE_RUNNING,
        60,
        "the holder job to run",
    )
    waiting = run_action(platform, "where", {"steps": 1, "resources": {"node_a": 1}})
    job = wait_for(
        lambda: (
            (j := get_job(platform, waiting.id)).pending_reason.startswith("waiting for res") and j
        ),
        30,
        "a pending reason",
    )
    assert job.state == job_pb2.JOB_STATE_PENDING
    assert job.pending_reason == "waiting for resources: needs resources.node_a=1, available 0"

    platform.actions.CancelJob(
        action_service_pb2.CancelJobRequest(job_id=holder.id, reason="test"), timeout=10
    )
    holder_events = events(platform, holder.id)
    terminal = holder_events[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_CANCELLED
    assert "killed" in terminal.reason
    # The stubborn worker is gone: the resource it held is free, so the waiting job runs.
    result = result_of(events(platform, waiting.id)[-1])
    assert result["mode"] == "task"


def test_cancel_while_pending_removes_the_queued_task(platform: PlatformServer) -> None:
    from synapse.plugin.v1 import action_service_pb2

    holder = run_action(platform, "stubborn", {"resources": {"node_b": 1}})
    wait_for(lambda: get_job(platform, holder.id).state == job_pb2.JOB_STATE_RUNNING, 60, "holder")
    queued = run_action(platform, "where", {"steps": 1, "resources": {"node_b": 1}})
    wait_for(lambda: get_job(platform, queued.id).pending_reason.startswith("waiting"), 30, "wait")
    for job in (queued, holder):
        platform.actions.CancelJob(action_service_pb2.CancelJobRequest(job_id=job.id), timeout=10)
    assert events(platform, queued.id)[-1].terminal.state == job_pb2.JOB_STATE_CANCELLED
    assert events(platform, holder.id)[-1].terminal.state == job_pb2.JOB_STATE_CANCELLED
    # node_b is usable again: neither the queued task nor the holder kept its resource.
    after = run_action(platform, "where", {"steps": 1, "resources": {"node_b": 1}})
    assert result_of(events(platform, after.id)[-1])["mode"] == "task"


def test_events_survive_a_broken_worker_connection(platform: PlatformServer) -> None:
    """Every event stored once and in order when the worker's connection drops and returns."""
    job = run_action(platform, "where", {"steps": 30, "delay": 0.1, "resources": {"node_a": 0.1}})
    wait_for(lambda: get_job(platform, job.id).progress_percent > 10, 60, "progress")
    assert platform.proxy.cut(refuse_seconds=1.0) >= 1
    evs = events(platform, job.id)
    _check_stream(evs, 30)
    assert result_of(evs[-1])["mode"] == "task"


def test_a_dying_node_fails_its_job_with_a_reason(
    platform: PlatformServer, ray_cluster: RayCluster
) -> None:
    """No job stays RUNNING forever when the node under its worker disappears."""
    node = ray_cluster.cluster.add_node(
        num_cpus=1,
        resources={"doomed": 1},
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        env_vars={"SYNAPSE_PLUGIN_CACHE": str(ray_cluster.cache_dirs["head"].parent / "doomed")},
    )
    ray_cluster.cluster.wait_for_nodes()
    job = run_action(platform, "stubborn", {"resources": {"doomed": 1}})
    wait_for(lambda: get_job(platform, job.id).state == job_pb2.JOB_STATE_RUNNING, 60, "running")
    ray_cluster.cluster.remove_node(node, allow_graceful=False)
    terminal = events(platform, job.id, timeout=120)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "WorkerCrashed"
    assert "died" in terminal.error.message, terminal.error.message
    assert terminal.reason == terminal.error.message
