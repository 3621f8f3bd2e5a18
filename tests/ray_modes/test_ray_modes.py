"""Task and job modes on a real three-node Ray cluster, through a real server process."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

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
    assert "Ray worker process died" in terminal.error.message, terminal.error.message
    assert terminal.reason == terminal.error.message


_DIED_UNEXPECTEDLY = "the Ray worker process died unexpectedly: it exited, crashed"


@pytest.mark.parametrize(
    ("mode", "how", "expected"),
    [
        # Below Python (os._exit, a fault, SIGKILL) Ray sees only a closed connection and
        # reports no exit code or signal: the reason says so rather than guess.
        ("task", "exit", _DIED_UNEXPECTEDLY),
        ("task", "segfault", _DIED_UNEXPECTEDLY),
        ("task", "sigkill", _DIED_UNEXPECTEDLY),
        ("job", "exit", _DIED_UNEXPECTEDLY),
        ("job", "segfault", _DIED_UNEXPECTEDLY),
        ("job", "ray_kill", "the Ray actor running the worker was killed (ray.kill)"),
    ],
)
def test_a_worker_that_dies_fails_its_job_with_what_happened(
    platform: PlatformServer, mode: str, how: str, expected: str
) -> None:
    job = run_action(platform, "die", {"how": how}, mode=mode)
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "WorkerCrashed"
    assert terminal.error.message.startswith(expected), terminal.error.message
    # The node is alive: no reason may blame it.
    assert "node" not in terminal.error.message.split("(")[0], terminal.error.message
    # The terminal event carries the same reason as the error.
    assert terminal.reason == terminal.error.message
    # The job's own node still runs work.
    after = run_action(platform, "where", {"steps": 1}, mode=mode)
    assert result_of(events(platform, after.id)[-1])["mode"] == mode


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
