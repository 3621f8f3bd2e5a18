"""StreamProgress batches: the events ready at once in one message, when the caller asks."""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_event_pb2
from synapse_client._jobs import EventSequencer
from synapse_server.core import EventKind, JobEvent
from synapse_server.grpc._progress_wire import MAX_EVENTS_PER_MESSAGE, EncodedEvents

from tests.server.test_server_actions import events, run


@pytest.fixture
def stub(platform_channel: grpc.Channel) -> action_service_pb2_grpc.ActionServiceStub:
    return action_service_pb2_grpc.ActionServiceStub(platform_channel)


def _messages(stub: Any, job_id: str, **request: Any) -> list[pb.StreamProgressResponse]:
    call = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id, **request), timeout=30)
    return [m for m in call if m.WhichOneof("kind") != "keepalive"]


def _flat(messages: list[pb.StreamProgressResponse]) -> list[job_event_pb2.JobEvent]:
    out: list[job_event_pb2.JobEvent] = []
    for message in messages:
        if message.HasField("events"):
            assert len(message.events.events) > 1  # a single event travels as `event`
            out.extend(message.events.events)
        else:
            out.append(message.event)
    return out


def test_a_replayed_history_comes_in_batches_of_at_most_what_was_asked(stub: Any) -> None:
    job = run(stub, "quick", {"count": 40, "label": "b"})
    one_each = events(stub, job.id)  # waits for the terminal event
    assert len(one_each) >= 5 and one_each[-1].HasField("terminal")
    for asked in (2, 3, 1000):
        messages = _messages(stub, job.id, max_events_per_message=asked)
        assert _flat(messages) == one_each
        per_message = min(asked, MAX_EVENTS_PER_MESSAGE)
        assert len(messages) == math.ceil(len(one_each) / per_message)
    # Without asking (0 or 1): one event per message, as always.
    for asked in (0, 1):
        messages = _messages(stub, job.id, max_events_per_message=asked)
        assert all(m.HasField("event") for m in messages)
        assert [m.event for m in messages] == one_each


def test_a_live_stream_in_batches_delivers_every_event_in_order(stub: Any) -> None:
    job = run(stub, "quick", {"count": 40, "label": "live"})
    live = _flat(_messages(stub, job.id, max_events_per_message=64))
    assert live == events(stub, job.id)
    assert [e.seq for e in live] == sorted({e.seq for e in live})
    # From the middle on: only what comes after.
    middle = live[len(live) // 2].seq
    rest = _flat(_messages(stub, job.id, after_seq=middle, max_events_per_message=64))
    assert rest == [e for e in live if e.seq > middle]


def _event(seq: int, text: str = "x") -> JobEvent:
    return JobEvent(job_id="j", seq=seq, kind=EventKind.LOG, data={"event": text}, timestamp=1.0)


def test_batches_keep_to_the_count_and_byte_limits() -> None:
    encoded = EncodedEvents()
    small = [_event(seq) for seq in range(1, 8)]
    messages = list(encoded.batches(small, max_events=3))
    decoded = [pb.StreamProgressResponse.FromString(m) for m in messages]
    assert [len(d.events.events) if d.HasField("events") else 1 for d in decoded] == [3, 3, 1]
    alone = [pb.StreamProgressResponse.FromString(encoded.get(e)).event for e in small]
    assert _flat(decoded) == alone
    # A byte limit cuts runs short; an event over it goes alone, as a plain `event`.
    big = _event(8, "y" * 5000)
    messages = list(encoded.batches([*small[:2], big, *small[2:4]], 10, max_bytes=4000))
    decoded = [pb.StreamProgressResponse.FromString(m) for m in messages]
    assert [d.WhichOneof("kind") for d in decoded] == ["events", "event", "events"]
    assert [e.seq for e in _flat(decoded)] == [1, 2, 8, 3, 4]
    assert decoded[1].event.log.event == "y" * 5000
    assert all(len(m) <= 4000 + 8 for i, m in enumerate(messages) if i != 1)


def test_the_client_takes_batches_and_skips_what_it_has() -> None:
    sequencer = EventSequencer("j", after_seq=2)
    request = sequencer.request()
    assert request.max_events_per_message > 1
    encoded = EncodedEvents()
    history = [_event(seq) for seq in range(1, 6)]
    batch = pb.StreamProgressResponse.FromString(next(encoded.batches(history, 10)))
    assert [e.seq for e in sequencer.accept(batch)] == [3, 4, 5]  # 1 and 2 were delivered
    assert sequencer.accept(batch) == []  # a reconnect's repeat delivers nothing twice
    assert sequencer.last_seq == 5
    assert sequencer.accept(pb.StreamProgressResponse(keepalive=job_event_pb2.Keepalive())) == []
