"""ActionService end to end: a real server, real worker processes, raw generated stubs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_event_pb2, job_pb2

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stub(platform_channel: grpc.Channel) -> action_service_pb2_grpc.ActionServiceStub:
    return action_service_pb2_grpc.ActionServiceStub(platform_channel)


def run(stub: Any, action: str, params: dict[str, Any] | None = None, **kw: Any) -> job_pb2.Job:
    request = pb.RunActionRequest(plugin="toy", action=action, **kw)
    if params:
        request.params.update(params)
    return stub.RunAction(request, timeout=10).job


def events(stub: Any, job_id: str, after: int = 0, **kw: Any) -> list[job_event_pb2.JobEvent]:
    out = []
    for message in stub.StreamProgress(
        pb.StreamProgressRequest(job_id=job_id, after_seq=after, **kw), timeout=30
    ):
        if message.HasField("event"):
            out.append(message.event)
    return out


def terminal(stub: Any, job_id: str) -> job_event_pb2.TerminalEvent:
    history = events(stub, job_id)
    assert history[-1].HasField("terminal")
    return history[-1].terminal


def test_list_actions_publishes_schemas(stub: Any) -> None:
    response = stub.ListActions(pb.ListActionsRequest(), timeout=10)
    toy = {p.code: p for p in response.plugins}["toy"]
    actions = {a.name: a for a in toy.actions}
    assert [a.name for a in toy.actions] == sorted(actions)
    schema = json.loads(actions["quick"].params_schema_json)
    assert schema["properties"]["count"]["type"] == "integer"
    assert set(schema["required"]) == {"count", "label"}
    assert actions["quick"].default_mode == job_pb2.RUN_MODE_LOCAL
    with pytest.raises(grpc.RpcError) as info:
        stub.ListActions(pb.ListActionsRequest(plugin="nope"), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_run_action_streams_to_terminal(stub: Any) -> None:
    job = run(stub, "quick", {"count": 3, "label": "hi"})
    assert job.state in (job_pb2.JOB_STATE_PENDING, job_pb2.JOB_STATE_RUNNING)
    history = events(stub, job.id)
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    kinds = [e.WhichOneof("kind") for e in history]
    assert kinds[0] == "state_changed" and kinds[1] == "state_changed"
    assert history[1].state_changed.state == job_pb2.JOB_STATE_RUNNING
    assert kinds.count("progress") >= 3 and "log" in kinds
    final = history[-1].terminal
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert json.loads(final.result_json) == {"label": "hi", "count": 3}
    # The inline result is the stored result text, byte for byte.
    fetched = stub.GetJobResult(pb.GetJobResultRequest(job_id=job.id), timeout=10)
    assert final.result_inline and b"".join(c.data for c in fetched) == final.result_json
    got = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10).job
    assert got.state == job_pb2.JOB_STATE_SUCCEEDED
    assert got.progress_percent == 100.0 and got.last_seq == history[-1].seq
    # Late subscribers replay the same history; after_seq skips what they saw.
    assert [e.seq for e in events(stub, job.id, after=2)] == [e.seq for e in history[2:]]
    chunks = list(stub.GetJobResult(pb.GetJobResultRequest(job_id=job.id), timeout=10))
    assert json.loads(b"".join(c.data for c in chunks)) == {"label": "hi", "count": 3}


def test_big_result_is_not_inline(stub: Any) -> None:
    job = run(stub, "quick", {"count": 1, "label": "big", "big": 3 << 20})
    final = terminal(stub, job.id)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED and not final.result_inline
    chunks = list(
        stub.GetJobResult(pb.GetJobResultRequest(job_id=job.id, chunk_size_bytes=1 << 20))
    )
    assert len(chunks) == 4
    data = b"".join(c.data for c in chunks)
    assert len(data) == final.result_size_bytes
    assert len(json.loads(data)["blob"]) == 3 << 20


def test_params_json_round_trip_and_job_views(stub: Any) -> None:
    # params_json wins over the Struct; the worker receives it and integers stay integers.
    params = {"count": 2, "label": "json \u00e9"}
    request = pb.RunActionRequest(
        plugin="toy", action="quick", params_json=json.dumps(params).encode()
    )
    request.params.update({"count": 1, "label": "struct loses"})
    job = stub.RunAction(request, timeout=10).job
    # RunAction does not echo the params back.
    assert not job.HasField("params") and job.params_json == b""
    final = terminal(stub, job.id)
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert json.loads(final.result_json) == {"label": "json \u00e9", "count": 2}
    full = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10).job
    assert json.loads(full.params_json) == params and dict(full.params)["label"] == "json \u00e9"
    basic = stub.GetJob(pb.GetJobRequest(job_id=job.id, view=job_pb2.JOB_VIEW_BASIC)).job
    assert basic.params_json == b"" and not basic.HasField("params")
    assert basic.result_size_bytes == final.result_size_bytes
    listed = stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    assert all(j.params_json == b"" and not j.HasField("params") for j in listed)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1]", "params_json is not a JSON object"),
        (b'{"count": ', "params_json is not valid JSON"),
        (b'{"count": NaN}', "params_json is not valid JSON"),
        (b'{"label": "\xff"}', "params_json is not UTF-8"),
        (b'{"count": -1, "label": 1}', ""),
    ],
    ids=["not-object", "not-json", "nan", "not-utf8", "schema"],
)
def test_bad_params_json_is_invalid_argument(stub: Any, raw: bytes, message: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.RunAction(
            pb.RunActionRequest(plugin="toy", action="quick", params_json=raw), timeout=10
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")


def test_bad_params_are_invalid_argument_with_field_violations(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        run(stub, "quick", {"count": -1})
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    fields = {v.field for v in bad.field_violations}
    assert fields == {"params.count", "params.label"}


@pytest.mark.parametrize(
    ("plugin", "action"), [("nope", "quick"), ("toy", "nope")], ids=["plugin", "action"]
)
def test_unknown_plugin_or_action_is_not_found(stub: Any, plugin: str, action: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.RunAction(pb.RunActionRequest(plugin=plugin, action=action), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_unknown_job_is_not_found(stub: Any) -> None:
    for call in (
        lambda: stub.GetJob(pb.GetJobRequest(job_id="missing"), timeout=10),
        lambda: stub.CancelJob(pb.CancelJobRequest(job_id="missing"), timeout=10),
        lambda: events(stub, "missing"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("action", "error_type", "needle"),
    [
        ("fail", "ValueError", "toy failure"),
        ("exit", "WorkerCrashed", "exited with code 7"),
        ("segfault", "WorkerCrashed", "SIGSEGV"),
        ("memory_hog", "MemoryLimitExceeded", "the job exceeded its memory limit of 2048 MiB"),
    ],
)
def test_crashing_plugins_fail_their_job_only(
    stub: Any, action: str, error_type: str, needle: str
) -> None:
    job = run(stub, action)
    final = terminal(stub, job.id)
    assert final.state == job_pb2.JOB_STATE_FAILED
    assert final.error.type == error_type, final.error
    assert needle in final.error.message
    # Every failure says why in the terminal event's reason too.
    assert final.reason == final.error.message
    if error_type == "WorkerCrashed":
        assert final.error.origin == job_pb2.ERROR_ORIGIN_PLATFORM
        assert final.error.plugin_traceback == "" and final.error.correlation_id
    else:
        assert final.error.origin == job_pb2.ERROR_ORIGIN_PLUGIN
        assert "Traceback" in final.error.plugin_traceback
    # The server keeps serving.
    ok = run(stub, "quick", {"count": 1, "label": "after"})
    assert terminal(stub, ok.id).state == job_pb2.JOB_STATE_SUCCEEDED


def _wait_for(stub: Any, job_id: str, predicate: Any, timeout: float = 20) -> job_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
        if predicate(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never matched; last {job}")


def test_cancel_rolls_back_steps(stub: Any) -> None:
    job = run(stub, "slow")
    stream: Iterator[Any] = stub.StreamProgress(pb.StreamProgressRequest(job_id=job.id), timeout=30)
    seen = []
    for message in stream:
        if message.HasField("event"):
            seen.append(message.event)
            if message.event.HasField("step_started") and message.event.step_started.name == "wait":
                break
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=job.id, reason="test"), timeout=10).job
    assert cancelled.cancel_requested
    rest = [m.event for m in stream if m.HasField("event")]
    history = seen + rest
    final = history[-1].terminal
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert "test" in final.reason
    statuses = {
        (e.step_finished.name, e.step_finished.status)
        for e in history
        if e.HasField("step_finished")
    }
    assert ("first", job_event_pb2.STEP_STATUS_ROLLED_BACK) in statuses
    assert ("second", job_event_pb2.STEP_STATUS_ROLLED_BACK) in statuses
    # Cancelling a finished job is a no-op.
    again = stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=10).job
    assert again.state == job_pb2.JOB_STATE_CANCELLED


def test_cancel_kills_a_stubborn_action_after_grace(stub: Any) -> None:
    job = run(stub, "stubborn")
    _wait_for(stub, job.id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING)
    stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=10)
    # The action sleeps 60 s and ignores the cancel; the stream (30 s deadline) can only end
    # with this terminal event because the worker was killed after the grace period.
    final = terminal(stub, job.id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert "killed" in final.reason


def test_request_id_makes_run_action_idempotent(stub: Any) -> None:
    request = pb.RunActionRequest(plugin="toy", action="quick", request_id="req-1")
    request.params.update({"count": 1, "label": "once"})
    first = stub.RunAction(request, timeout=10)
    second = stub.RunAction(request, timeout=10)
    assert first.created and not second.created
    assert first.job.id == second.job.id
    request.params.update({"label": "different"})
    with pytest.raises(grpc.RpcError) as info:
        stub.RunAction(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_list_jobs_filters_and_pages(stub: Any) -> None:
    ids = [run(stub, "quick", {"count": 0, "label": str(i)}).id for i in range(3)]
    for job_id in ids:
        terminal(stub, job_id)
    page = stub.ListJobs(pb.ListJobsRequest(page_size=2, plugin="toy", action="quick"))
    assert [j.id for j in page.jobs] == ids[::-1][:2]
    nxt = stub.ListJobs(
        pb.ListJobsRequest(
            page_size=2, plugin="toy", action="quick", page_token=page.next_page_token
        )
    )
    assert nxt.jobs[0].id == ids[0]
    failed = stub.ListJobs(pb.ListJobsRequest(states=[job_pb2.JOB_STATE_FAILED]))
    assert all(j.state == job_pb2.JOB_STATE_FAILED for j in failed.jobs)
    with pytest.raises(grpc.RpcError) as info:
        stub.ListJobs(pb.ListJobsRequest(page_token="garbage"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_many_events_arrive_in_order_with_last_progress(stub: Any) -> None:
    job = run(stub, "chatty", {"events": 3000})
    history = events(stub, job.id)
    seqs = [e.seq for e in history]
    assert seqs == sorted(seqs)
    logs = [e for e in history if e.HasField("log")]
    assert len(logs) == 300
    progress = [e.progress for e in history if e.HasField("progress")]
    assert progress[-1].current == 3000
    assert history[-1].terminal.state == job_pb2.JOB_STATE_SUCCEEDED


def test_run_action_on_a_serve_action_is_failed_precondition(
    server_factory: Any, tmp_path: Path
) -> None:
    plugin_dir = tmp_path / "plugins" / "served"
    plugin_dir.mkdir(parents=True)
    toy_actions = Path(__file__).parent.parent / "plugins" / "toy" / "actions.py"
    shutil.copy(toy_actions, plugin_dir / "actions.py")
    (plugin_dir / "config.yaml").write_text(
        "code: served\nname: Served\nversion: '1.0.0'\ncategory: custom\n"
        "actions:\n  endpoint:\n    entrypoint: actions:QuickAction\n    method: serve\n"
    )
    server = server_factory(plugin_dirs=[tmp_path / "plugins"])
    with server.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RunAction(pb.RunActionRequest(plugin="served", action="endpoint"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Infer" in info.value.details()
