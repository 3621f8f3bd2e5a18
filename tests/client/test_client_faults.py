"""Error mapping, retries and stream resumption, against a fault-injecting ActionService.

The ActionService here runs on a real grpcio server (port 0) and injects faults on demand.

It exists for what the platform server cannot be made to do on cue: answer with each status
code and rich details, drop a stream mid-way, lose a response. The happy paths run against the
real platform server in the end-to-end tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc as pb_grpc
from synapse.plugin.v1 import job_event_pb2, job_pb2
from synapse_client import (
    STATUS_TO_ERROR,
    AsyncClient,
    Client,
    ClientConfigError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ProtocolError,
    RetryPolicy,
    RpcFailedError,
    SynapseClientError,
    UnavailableError,
)


def rich_abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """Aborts with a google.rpc.Status carrying BadRequest and ErrorInfo details."""
    details = []
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="params.n", description="must be > 0"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="mode", description="unsupported"),
        ]
    )
    info = error_details_pb2.ErrorInfo(
        reason="TEST_REASON", domain="synapse", metadata={"correlation_id": "corr-123"}
    )
    for message_ in (bad, info):
        packed = any_pb2.Any()
        packed.Pack(message_)
        details.append(packed)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    context.abort_with_status(rpc_status.to_status(status))


def event(seq: int, job_id: str = "j1", **kind: Any) -> job_event_pb2.JobEvent:
    return job_event_pb2.JobEvent(seq=seq, job_id=job_id, **kind)


def progress(seq: int, current: int) -> job_event_pb2.JobEvent:
    return event(
        seq, progress=job_event_pb2.ProgressEvent(category="c", current=current, total=100)
    )


@dataclass
class FaultScript:
    """What the fault-injecting servicer does; tests edit it and read what it recorded."""

    events: list[job_event_pb2.JobEvent] = field(default_factory=list)
    #: Abort StreamProgress with UNAVAILABLE after sending this many events, once per entry.
    drop_after: list[int] = field(default_factory=list)
    #: Number of upcoming unary calls to fail with UNAVAILABLE before answering.
    unavailable_calls: int = 0
    #: RunAction: fail with UNAVAILABLE after "creating" the job (a lost response).
    lose_first_run_response: bool = False
    result_json: bytes = b""
    chunk_size: int = 4
    job_state: int = job_pb2.JOB_STATE_RUNNING
    stream_requests: list[tuple[str, int]] = field(default_factory=list)
    run_requests: list[pb.RunActionRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultInjectingActionServicer(pb_grpc.ActionServiceServicer):
    """GetJob with a job id naming a status code (e.g. "NOT_FOUND") fails with that code."""

    def __init__(self, script: FaultScript) -> None:
        self.script = script
        self.jobs_by_request: dict[str, str] = {}

    def _record(self, context: grpc.ServicerContext) -> None:
        self.script.metadata.append({k: v for k, v in context.invocation_metadata()})

    def _maybe_unavailable(self, context: grpc.ServicerContext) -> None:
        with self.script.lock:
            if self.script.unavailable_calls > 0:
                self.script.unavailable_calls -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def _job(self, job_id: str) -> job_pb2.Job:
        last = self.script.events[-1].seq if self.script.events else 0
        return job_pb2.Job(
            id=job_id, plugin="p", action="a", state=self.script.job_state, last_seq=last
        )

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.GetJobResponse:
        self._record(context)
        if request.job_id in grpc.StatusCode.__members__:
            rich_abort(context, grpc.StatusCode[request.job_id], f"failing with {request.job_id}")
        self._maybe_unavailable(context)
        return pb.GetJobResponse(job=self._job(request.job_id))

    def RunAction(
        self, request: pb.RunActionRequest, context: grpc.ServicerContext
    ) -> pb.RunActionResponse:
        self._record(context)
        self.script.run_requests.append(request)
        created = request.request_id not in self.jobs_by_request
        if created:
            self.jobs_by_request[request.request_id] = f"job-{len(self.jobs_by_request) + 1}"
        if self.script.lose_first_run_response:
            self.script.lose_first_run_response = False
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return pb.RunActionResponse(
            job=self._job(self.jobs_by_request[request.request_id]), created=created
        )

    def StreamProgress(
        self, request: pb.StreamProgressRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamProgressResponse]:
        self.script.stream_requests.append((request.job_id, request.after_seq))
        limit = self.script.drop_after.pop(0) if self.script.drop_after else None
        sent = 0
        for message in self.script.events:
            if message.seq <= request.after_seq:
                continue
            if limit is not None and sent == limit:
                context.abort(grpc.StatusCode.UNAVAILABLE, "server going away")
            yield pb.StreamProgressResponse(keepalive=job_event_pb2.Keepalive(last_seq=0))
            yield pb.StreamProgressResponse(event=message)
            sent += 1
        live = not request.replay_only
        if live and not (self.script.events and self.script.events[-1].HasField("terminal")):
            # Like a live job: hold the stream open until the client goes away.
            while context.is_active():
                time.sleep(0.02)

    def GetJobResult(
        self, request: pb.GetJobResultRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetJobResultResponse]:
        data = self.script.result_json
        for offset in range(0, len(data), self.script.chunk_size):
            yield pb.GetJobResultResponse(
                offset=offset,
                data=data[offset : offset + self.script.chunk_size],
                total_size_bytes=len(data),
            )


@pytest.fixture
def fault_server() -> Iterator[tuple[str, FaultScript]]:
    """A running fault-injecting ActionService: yields its address and its script."""
    script = FaultScript()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    pb_grpc.add_ActionServiceServicer_to_server(FaultInjectingActionServicer(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", script
    finally:
        server.stop(grace=None)


FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


def _terminal_ok(seq: int, result: bytes = b'{"ok": true}', inline: bool = True) -> Any:
    return event(
        seq,
        terminal=job_event_pb2.TerminalEvent(
            state=job_pb2.JOB_STATE_SUCCEEDED,
            result_json=result if inline else b"",
            result_size_bytes=len(result),
            result_inline=inline,
        ),
    )


# --- error mapping ---------------------------------------------------------------------------

NON_OK = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]


def test_table_covers_every_non_ok_code() -> None:
    assert set(STATUS_TO_ERROR) == set(NON_OK)
    for code, cls in STATUS_TO_ERROR.items():
        assert cls.grpc_status_code is code
        assert issubclass(cls, RpcFailedError) and issubclass(cls, SynapseClientError)


@pytest.mark.parametrize("code", NON_OK, ids=lambda c: c.name)
def test_every_status_code_becomes_its_typed_error(
    fault_server: tuple[str, FaultScript], code: grpc.StatusCode
) -> None:
    address, _ = fault_server
    with Client(address, retry=FAST_RETRY) as client, pytest.raises(RpcFailedError) as info:
        client.get_job(code.name)
    error = info.value
    assert type(error) is STATUS_TO_ERROR[code]
    assert error.code is code
    assert error.message == f"failing with {code.name}"
    assert error.correlation_id == "corr-123"
    assert error.reason == "TEST_REASON"
    assert isinstance(error.__cause__, grpc.RpcError)


def test_invalid_argument_carries_field_violations(fault_server: tuple[str, FaultScript]) -> None:
    address, _ = fault_server
    with Client(address) as client, pytest.raises(InvalidArgumentError) as info:
        client.get_job("INVALID_ARGUMENT")
    assert info.value.field_violations == [
        FieldViolation("params.n", "must be > 0"),
        FieldViolation("mode", "unsupported"),
    ]
    assert "params.n: must be > 0" in str(info.value)
    assert "corr-123" in str(info.value)


def test_internal_error_exposes_correlation_id(fault_server: tuple[str, FaultScript]) -> None:
    address, _ = fault_server
    with Client(address) as client, pytest.raises(InternalError) as info:
        client.get_job("INTERNAL")
    assert info.value.correlation_id == "corr-123"


async def test_async_client_maps_errors_the_same_way(
    fault_server: tuple[str, FaultScript],
) -> None:
    address, _ = fault_server
    async with AsyncClient(address) as client:
        with pytest.raises(InvalidArgumentError) as info:
            await client.get_job("INVALID_ARGUMENT")
        assert [v.field for v in info.value.field_violations] == ["params.n", "mode"]
        with pytest.raises(NotFoundError):
            await client.get_job("NOT_FOUND")


def test_plain_status_without_details_and_unreachable_server() -> None:
    # Nothing listens on this port: it stays bound to a socket that never listens, so no
    # other process can take it meanwhile (a port closed first could be reused by a server).
    # UNAVAILABLE from the channel itself.
    import socket

    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with (
            Client(f"127.0.0.1:{port}", retry=retry, timeout=5) as client,
            pytest.raises(UnavailableError) as info,
        ):
            client.get_job("x")
    assert info.value.details == [] and info.value.correlation_id is None


# --- retries ---------------------------------------------------------------------------------


def test_unavailable_is_retried_then_succeeds(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.unavailable_calls = 2
    with Client(address, retry=FAST_RETRY, token="s3cret") as client:
        assert client.get_job("j1").id == "j1"
    assert len(script.metadata) == 3
    assert all(m["authorization"] == "Bearer s3cret" for m in script.metadata)
    assert "s3cret" not in repr(client)


def test_retries_are_bounded(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.unavailable_calls = 10
    with Client(address, retry=FAST_RETRY) as client, pytest.raises(UnavailableError):
        client.get_job("j1")
    assert len(script.metadata) == FAST_RETRY.max_attempts


def test_run_action_retry_reuses_the_generated_request_id(
    fault_server: tuple[str, FaultScript],
) -> None:
    address, script = fault_server
    script.lose_first_run_response = True
    with Client(address, retry=FAST_RETRY) as client:
        handle = client.run_action("p", "a", {"n": 1}, mode="local")
    first, second = script.run_requests
    assert first.request_id and first.request_id == second.request_id
    assert first.mode == job_pb2.RUN_MODE_LOCAL
    # The lost first response had created the job; the retry got the same one back.
    assert handle.id == "job-1" and handle.created is False


def test_run_action_rejects_bad_arguments_locally(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    with Client(address) as client:
        with pytest.raises(ClientConfigError, match="plugin"):
            client.run_action("", "a")
        with pytest.raises(ClientConfigError, match="request_id"):
            client.run_action("p", "a", request_id="x" * 129)
        with pytest.raises(ClientConfigError, match="run mode"):
            client.run_action("p", "a", mode="gpu")
    assert script.run_requests == []


# --- stream resumption and results -------------------------------------------------------------


def test_dropped_stream_resumes_without_duplicates(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.events = [progress(seq, seq) for seq in range(1, 10)] + [_terminal_ok(10)]
    script.drop_after = [3, 4]
    with Client(address, retry=FAST_RETRY) as client:
        seqs = [e.seq for e in client.job("j1").events()]
    assert seqs == list(range(1, 11))
    assert script.stream_requests == [("j1", 0), ("j1", 3), ("j1", 7)]


def test_events_resume_from_a_saved_seq_and_skip_keepalives(
    fault_server: tuple[str, FaultScript],
) -> None:
    address, script = fault_server
    script.events = [progress(seq, seq) for seq in range(1, 6)] + [_terminal_ok(6)]
    with Client(address) as client:
        events = list(client.job("j1").events(after_seq=4))
        assert [e.seq for e in events] == [5, 6]
        assert events[-1].is_terminal
        assert [e.seq for e in client.job("j1").progress()] == [1, 2, 3, 4, 5]


def test_seq_may_skip_coalesced_progress_but_never_go_back(
    fault_server: tuple[str, FaultScript],
) -> None:
    address, script = fault_server
    script.events = [progress(1, 1), progress(4, 4), _terminal_ok(5)]
    with Client(address) as client:
        assert [e.seq for e in client.job("j1").events()] == [1, 4, 5]


def test_stream_gives_up_after_the_retry_budget(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.events = [progress(1, 1), _terminal_ok(2)]
    script.drop_after = [0] * 10
    with Client(address, retry=FAST_RETRY) as client, pytest.raises(UnavailableError):
        list(client.job("j1").events())
    assert len(script.stream_requests) == FAST_RETRY.max_attempts


def test_result_is_fetched_in_chunks_when_not_inline(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    payload = b'{"values": [1, 2, 3], "name": "large"}'
    script.events = [progress(1, 50), _terminal_ok(2, payload, inline=False)]
    script.result_json = payload
    script.job_state = job_pb2.JOB_STATE_SUCCEEDED
    with Client(address) as client:
        assert client.job("j1").result(timeout=10) == {"values": [1, 2, 3], "name": "large"}
    # A finished job's result needs only its last event, not the whole history.
    assert script.stream_requests == [("j1", 1)]


def test_result_timeout_is_typed(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.events = [progress(1, 1)]  # never terminates; the stream stays open while idle
    script.drop_after = []

    with Client(address, retry=FAST_RETRY) as client, pytest.raises(JobTimeoutError) as info:
        client.job("j1").result(timeout=0.5)
    assert info.value.job_id == "j1" and isinstance(info.value, TimeoutError)


async def test_async_stream_resumes_and_assembles_result(
    fault_server: tuple[str, FaultScript],
) -> None:
    address, script = fault_server
    payload = b'{"big": "' + b"x" * 50 + b'"}'
    script.events = [progress(seq, seq) for seq in range(1, 8)] + [
        _terminal_ok(8, payload, inline=False)
    ]
    script.drop_after = [5]
    script.result_json = payload
    async with AsyncClient(address, retry=FAST_RETRY) as client:
        handle = client.job("j1")
        seqs = [e.seq async for e in handle.events()]
        assert seqs == list(range(1, 9))
        script.job_state = job_pb2.JOB_STATE_SUCCEEDED
        assert await handle.result(timeout=10) == {"big": "x" * 50}


def test_replay_only_stops_at_the_stored_events(fault_server: tuple[str, FaultScript]) -> None:
    address, script = fault_server
    script.events = [progress(1, 1), progress(2, 2)]

    with Client(address) as client:
        assert [e.seq for e in client.job("j1").events(follow=False)] == [1, 2]
        assert [e.seq for e in client.job("j1").events(after_seq=1, follow=False)] == [2]
    assert [after for _, after in script.stream_requests] == [0, 1]


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_bad_inline_result_is_a_protocol_error_in_both_clients(
    fault_server: tuple[str, FaultScript], flavour: str
) -> None:
    # Both clients read a terminal event's inline result with the same strict parser.
    address, script = fault_server
    script.events = [_terminal_ok(1, b'{"a": NaN}')]
    script.job_state = job_pb2.JOB_STATE_SUCCEEDED
    with pytest.raises(ProtocolError, match="inline result is not JSON"):
        if flavour == "sync":
            with Client(address) as client:
                client.job("j1").result(timeout=10)
        else:
            async with AsyncClient(address) as aclient:
                await aclient.job("j1").result(timeout=10)


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_result_after_following_events_makes_no_call(
    fault_server: tuple[str, FaultScript], flavour: str
) -> None:
    address, script = fault_server
    script.events = [progress(1, 50), _terminal_ok(2, b'{"n": 7}')]
    if flavour == "sync":
        with Client(address) as client:
            handle = client.job("j1")
            assert [e.seq for e in handle.events()] == [1, 2]
            calls_before = (len(script.metadata), len(script.stream_requests))
            assert handle.result(timeout=10) == {"n": 7}
    else:
        async with AsyncClient(address) as aclient:
            ahandle = aclient.job("j1")
            assert [e.seq async for e in ahandle.events()] == [1, 2]
            calls_before = (len(script.metadata), len(script.stream_requests))
            assert await ahandle.result(timeout=10) == {"n": 7}
    assert (len(script.metadata), len(script.stream_requests)) == calls_before


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_failure_seen_in_events_is_raised_by_result(
    fault_server: tuple[str, FaultScript], flavour: str
) -> None:
    address, script = fault_server
    failed = event(
        2,
        terminal=job_event_pb2.TerminalEvent(
            state=job_pb2.JOB_STATE_FAILED,
            error=job_pb2.JobError(type="ValueError", message="bad row"),
        ),
    )
    script.events = [progress(1, 50), failed]
    if flavour == "sync":
        with Client(address) as client:
            handle = client.job("j1")
            list(handle.events())
            with pytest.raises(JobFailedError, match="bad row"):
                handle.result(timeout=10)
    else:
        async with AsyncClient(address) as aclient:
            ahandle = aclient.job("j1")
            [e async for e in ahandle.events()]
            with pytest.raises(JobFailedError, match="bad row"):
                await ahandle.result(timeout=10)
    # Only the events stream was opened: the result came from its terminal event.
    assert len(script.stream_requests) == 1
