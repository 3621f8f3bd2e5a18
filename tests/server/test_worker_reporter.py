"""The worker's event reporter: progress batched and coalesced, nothing else ever dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2, worker_service_pb2_grpc
from synapse_sdk.events import LogEvent, ProgressEvent
from synapse_server.worker._runner import PROGRESS_KEEP, _EventReporter

pytestmark = pytest.mark.timeout(60)


def _reporter() -> _EventReporter:
    # Never started: these tests look at what would be sent, in order.
    stub = cast(worker_service_pb2_grpc.WorkerServiceStub, object())
    return _EventReporter(stub, "job", "worker", [], reconnect_seconds=1.0)


def _progress(current: int, total: int, category: str = "work") -> ProgressEvent:
    return ProgressEvent(category=category, current=current, total=total, overall=0.0)


def _buffer(reporter: _EventReporter) -> list[tuple[int, str, Any]]:
    rows: list[tuple[int, str, Any]] = []
    for message in reporter._buffer:
        kind = str(message.WhichOneof("kind"))
        value: Any = None
        if kind == "progress":
            value = (message.progress.category, message.progress.current)
        elif kind == "log":
            value = message.log.event
        rows.append((message.worker_seq, kind, value))
    return rows


def test_a_short_burst_of_progress_is_kept_whole() -> None:
    reporter = _reporter()
    for i in range(1, PROGRESS_KEEP + 1):
        reporter.emit(_progress(i, PROGRESS_KEEP))
    assert [row[2][1] for row in _buffer(reporter)] == list(range(1, PROGRESS_KEEP + 1))


def test_a_flood_is_coalesced_into_the_latest_with_gap_free_numbers() -> None:
    reporter = _reporter()
    for i in range(1, 101):
        reporter.emit(_progress(i, 100))
    rows = _buffer(reporter)
    assert [seq for seq, _, _ in rows] == list(range(1, PROGRESS_KEEP + 1))
    assert [value[1] for _, _, value in rows] == [*range(1, PROGRESS_KEEP), 100]


def test_logs_and_other_categories_are_never_coalesced_and_keep_their_order() -> None:
    reporter = _reporter()
    for i in range(1, 11):
        reporter.emit(_progress(i, 10, "a"))
    reporter.emit(LogEvent(event="between"))
    reporter.emit(_progress(1, 2, "b"))
    for i in range(1, 11):
        reporter.emit(_progress(i, 10, "a"))
    reporter.emit(_progress(2, 2, "b"))
    rows = _buffer(reporter)
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
    kept = [*range(1, PROGRESS_KEEP), 10]
    assert [value for _, _, value in rows] == [
        *[("a", i) for i in kept],
        "between",
        ("b", 1),
        *[("a", i) for i in kept],
        ("b", 2),
    ]


def test_an_event_handed_to_the_stream_is_never_replaced() -> None:
    reporter = _reporter()
    for i in range(1, PROGRESS_KEEP + 1):
        reporter.emit(_progress(i, 100))
    reporter._sent_seq = PROGRESS_KEEP  # what the sending thread records when it takes them
    for i in range(PROGRESS_KEEP + 1, 101):
        reporter.emit(_progress(i, 100))
    rows = _buffer(reporter)
    assert [value[1] for _, _, value in rows[:PROGRESS_KEEP]] == list(range(1, PROGRESS_KEEP + 1))
    assert rows[-1][2] == ("work", 100)
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))


def test_a_flood_through_the_server_ends_with_its_last_progress(
    server_factory: Callable[..., Any],
) -> None:
    running = server_factory()
    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        params = json.dumps({"count": 500, "label": "flood"}).encode()
        job = stub.RunAction(
            pb.RunActionRequest(plugin="toy", action="quick", params_json=params), timeout=10
        ).job
        history = list(stub.StreamProgress(pb.StreamProgressRequest(job_id=job.id), timeout=60))
    events = [m.event for m in history if m.HasField("event")]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    currents = [e.progress.current for e in events if e.HasField("progress")]
    assert currents == sorted(set(currents)) and currents[-1] == 500
    assert len(currents) < 500  # superseded progress was not sent
    assert any(e.HasField("log") and e.log.event == "done" for e in events)
    assert events[-1].terminal.state == job_pb2.JOB_STATE_SUCCEEDED
