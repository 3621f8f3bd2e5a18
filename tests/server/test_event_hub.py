"""EventHub over a real SQLite store: ordering, replay + live, late join, coalescing, leaks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from synapse_server.core import (
    KEEPALIVE,
    EventHub,
    EventKind,
    Job,
    JobAlreadyFinishedError,
    JobEvent,
    JobState,
    NewEvent,
)
from synapse_server.stores import SqliteJobStore

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "jobs.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def hub(store: SqliteJobStore) -> EventHub:
    await store.create_job(Job(id="j", tenant="t", plugin="p", action="a"))
    return EventHub(store)


def _log(i: int) -> NewEvent:
    return NewEvent(EventKind.LOG, {"event": f"log{i}", "level": "info", "data": {}})


def _progress(current: int, category: str = "c") -> NewEvent:
    return NewEvent(
        EventKind.PROGRESS,
        {"category": category, "current": current, "total": 100, "overall": float(current)},
    )


_TERMINAL = NewEvent(EventKind.TERMINAL, {"state": "SUCCEEDED", "result": {"ok": True}})


async def _collect(
    hub: EventHub, after: int = 0, out: list[JobEvent] | None = None
) -> list[JobEvent]:
    """Every event of the subscription, appended to ``out`` (if given) as it arrives."""
    out = [] if out is None else out
    async for item in hub.subscribe("j", after):
        assert isinstance(item, JobEvent)
        out.append(item)
    return out


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition()`` holds (a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_seq_is_gap_free_and_persisted(hub: EventHub, store: SqliteJobStore) -> None:
    first = await hub.append("j", [_log(0), _log(1)])
    second = await hub.append("j", [_log(2)])
    assert [e.seq for e in first + second] == [1, 2, 3]
    assert [e.seq for e in await store.list_events("j", 0, 10)] == [1, 2, 3]
    # A fresh hub (as after a restart) continues from the stored seq.
    other = EventHub(store)
    assert [e.seq for e in await other.append("j", [_log(3)])] == [4]


async def test_job_row_is_updated_with_events(hub: EventHub, store: SqliteJobStore) -> None:
    job = await store.get_job("j")
    assert job is not None
    await hub.append("j", [_log(0), _TERMINAL], job.evolve(state=JobState.SUCCEEDED))
    stored = await store.get_job("j")
    assert stored is not None and stored.state is JobState.SUCCEEDED and stored.last_seq == 2


async def test_replay_then_live_then_terminal(hub: EventHub) -> None:
    await hub.append("j", [_log(i) for i in range(3)])
    replayed: list[JobEvent] = []
    task = asyncio.create_task(_collect(hub, out=replayed))
    # The subscriber has replayed the stored events and waits for live ones.
    await _until(lambda: len(replayed) == 3, "the replay")
    for i in range(3, 6):
        await hub.append("j", [_log(i)])
    await hub.append("j", [_TERMINAL])
    events = await asyncio.wait_for(task, 5)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert events[-1].is_terminal
    with pytest.raises(JobAlreadyFinishedError):
        await hub.append("j", [_log(9)])


async def test_many_subscribers_and_after_seq(hub: EventHub) -> None:
    tasks = [asyncio.create_task(_collect(hub, after)) for after in (0, 0, 2, 5)]
    # All four are subscribed (and, with nothing stored yet, wait for live events).
    await _until(
        lambda: "j" in hub._channels and hub._channels["j"].subscribers == 4, "subscribers"
    )
    for i in range(6):
        await hub.append("j", [_log(i)])
        await asyncio.sleep(0)
    await hub.append("j", [_TERMINAL])
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [e.seq for e in results[0]] == list(range(1, 8))
    assert [e.seq for e in results[1]] == list(range(1, 8))
    assert [e.seq for e in results[2]] == list(range(3, 8))
    assert [e.seq for e in results[3]] == [6, 7]


async def test_late_join_after_finish_reads_the_store(hub: EventHub, store: SqliteJobStore) -> None:
    await hub.append("j", [_log(0), _log(1), _TERMINAL])
    assert hub.open_channels == 0
    fresh = EventHub(store)  # nothing in memory: everything comes from SQLite
    events = await asyncio.wait_for(_collect(fresh), 5)
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.seq for e in await asyncio.wait_for(_collect(fresh, 2), 5)] == [3]
    assert await asyncio.wait_for(_collect(fresh, 3), 5) == []
    assert fresh.open_channels == 0


async def test_long_history_beyond_memory_tail(hub: EventHub) -> None:
    for start in range(0, 3000, 500):
        await hub.append("j", [_log(i) for i in range(start, start + 500)])
    await hub.append("j", [_TERMINAL])
    events = await asyncio.wait_for(_collect(hub), 10)
    assert [e.seq for e in events] == list(range(1, 3002))


async def test_lagging_subscriber_coalesces_progress_only(hub: EventHub) -> None:
    batch: list[NewEvent] = []
    for i in range(1, 401):
        batch.append(_progress(i % 100 or 100, "a" if i % 2 else "b"))
        if i % 50 == 0:
            batch.append(_log(i))
    await hub.append("j", [*batch, _TERMINAL])
    events = await asyncio.wait_for(_collect(hub), 5)
    logs = [e for e in events if e.kind is EventKind.LOG]
    progress = [e for e in events if e.kind is EventKind.PROGRESS]
    assert len(logs) == 8  # every log
    assert len(progress) < 400  # superseded progress skipped
    assert events[-1].is_terminal
    last_a = [e for e in progress if e.data["category"] == "a"][-1]
    last_b = [e for e in progress if e.data["category"] == "b"][-1]
    assert last_a.data["current"] == 99 and last_b.data["current"] == 100
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    # An up-to-date subscriber (small backlog) gets every progress event.
    events_tail = await asyncio.wait_for(_collect(hub, len(batch) - 20), 5)
    assert len(events_tail) == 21


async def test_keepalive_on_idle_and_disconnect_leaks_nothing(hub: EventHub) -> None:
    await hub.append("j", [_log(0)])
    received: list[object] = []

    async def follow() -> None:
        async for item in hub.subscribe("j", 0, keepalive_seconds=0.05):
            received.append(item)

    task = asyncio.create_task(follow())
    # Two keepalives on an idle stream, however long a loaded machine takes to send them.
    await _until(lambda: received.count(KEEPALIVE) >= 2, "two keepalives")
    assert isinstance(received[0], JobEvent)
    assert all(item is KEEPALIVE for item in received[1:])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    channel = hub._channels["j"]
    assert channel.subscribers == 0
    await hub.append("j", [_TERMINAL])
    assert hub.open_channels == 0


async def test_terminal_must_be_last(hub: EventHub) -> None:
    with pytest.raises(ValueError):
        await hub.append("j", [_TERMINAL, _log(1)])
