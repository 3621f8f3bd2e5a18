"""Worker events travel in batches: the worker's grouping and the server's reading of them."""

from __future__ import annotations

import pytest
from synapse.plugin.v1 import worker_service_pb2
from synapse_server.core import InvalidArgumentError
from synapse_server.grpc._servicers import worker_reports
from synapse_server.worker._runner import _BATCH_BYTES, _BATCH_EVENTS, _batches


def _log(seq: int, text: str = "x") -> worker_service_pb2.WorkerEvent:
    message = worker_service_pb2.WorkerEvent(worker_seq=seq)
    message.log.event = text
    return message


def _chunk(seq: int, size: int) -> worker_service_pb2.WorkerEvent:
    message = worker_service_pb2.WorkerEvent(worker_seq=seq)
    message.result_chunk.offset = 0
    message.result_chunk.data = b"r" * size
    return message


def test_batches_keep_order_and_respect_both_limits() -> None:
    logs = [_log(seq) for seq in range(1, 2 * _BATCH_EVENTS + 11)]
    groups = list(_batches(logs))
    assert [len(g) for g in groups] == [_BATCH_EVENTS, _BATCH_EVENTS, 10]
    assert [m.worker_seq for g in groups for m in g] == [m.worker_seq for m in logs]
    # Result chunks of 1 MiB go one per message, with the events around them in their own.
    mixed = [_log(1), _chunk(2, _BATCH_BYTES), _chunk(3, _BATCH_BYTES), _log(4)]
    assert [[m.worker_seq for m in g] for g in _batches(mixed)] == [[1], [2], [3], [4]]
    assert list(_batches([])) == []


def test_the_server_reads_batches_and_single_events_in_order() -> None:
    batch = worker_service_pb2.ReportEventsRequest(
        events=worker_service_pb2.WorkerEventBatch(events=[_log(1, "a"), _log(2, "b")])
    )
    single = worker_service_pb2.ReportEventsRequest(event=_log(3, "c"))
    reports = worker_reports([batch, single])
    assert [(r.worker_seq, r.item.data["event"]) for r in reports] == [  # type: ignore[union-attr]
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]
    opening = worker_service_pb2.ReportEventsRequest(
        open=worker_service_pb2.ReportEventsOpen(job_id="j")
    )
    with pytest.raises(InvalidArgumentError, match="only be sent once"):
        worker_reports([batch, opening])
