"""The event hub: gives each job event its seq, stores it, and feeds every subscriber.

Design: an event is persisted *before* it becomes visible, so a subscriber never sees an event
that a crash could take back, and replay from the store and live delivery agree. Subscribers
do not get a queue each; they keep a cursor (the last seq they delivered) and read forward
from a bounded in-memory tail of the job's recent events, falling back to the store when they
are further behind. A per-job ``asyncio.Condition`` wakes them. A slow subscriber therefore
costs no memory, and one that disconnects leaves nothing behind but a counter decrement.

A subscriber that lags far behind may skip progress events that a later progress event of the
same category supersedes; logs, steps, metrics, state changes and the terminal event are
always delivered, and the latest progress value always arrives.

Several servers on one database: only a job's owner appends its events; a subscriber on
another server follows a *remote* channel. It learns of new events from the store's
notifications (:meth:`EventHub.remote_events`) and, should one be lost, by looking at the
job's row every ``remote_poll_seconds`` while it waits: new events reach it within that bound
at worst. It reads them from the store, in order, as a late subscriber does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from synapse_server.core._errors import JobAlreadyFinishedError
from synapse_server.core._models import KEEPALIVE, EventKind, Job, JobEvent, Keepalive
from synapse_server.core._store import JobStore
from synapse_server.telemetry import PlatformMetrics

__all__ = ["EventHub", "NewEvent"]

logger = logging.getLogger(__name__)

_TAIL_SIZE = 1024
_REPLAY_PAGE = 512
# A subscriber with more than this many undelivered events is lagging: superseded progress
# events in what it reads next are skipped.
_COALESCE_BACKLOG = 256


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its kind, payload and the time it happened."""

    kind: EventKind
    data: dict[str, Any]
    timestamp: float = field(default_factory=time.time)


class _JobChannel:
    """Per-job state shared by its publisher and subscribers."""

    __slots__ = (
        "checked_at",
        "cond",
        "finished",
        "last_seq",
        "local",
        "lock",
        "subscribers",
        "tail",
    )

    def __init__(self, last_seq: int, finished: bool) -> None:
        self.last_seq = last_seq
        self.finished = finished
        # True once this process appended to the job (it owns it): its appends wake the
        # subscribers. Otherwise another server does, and the channel follows the store.
        self.local = False
        # When a remote channel last looked at the store (loop time): its subscribers share
        # one look per poll interval.
        self.checked_at = 0.0
        self.tail: collections.deque[JobEvent] = collections.deque(maxlen=_TAIL_SIZE)
        self.cond = asyncio.Condition()
        # Serialises appends to this job so seqs are assigned and persisted in one order.
        self.lock = asyncio.Lock()
        self.subscribers = 0

    def tail_after(self, cursor: int) -> list[JobEvent] | None:
        """Events after ``cursor`` from memory, or ``None`` when memory no longer has them."""
        if not self.tail:
            return None
        first = self.tail[0].seq
        if cursor + 1 < first:
            return None
        return [e for e in self.tail if e.seq > cursor]


def coalesce(events: Sequence[JobEvent]) -> list[JobEvent]:
    """Drop progress events superseded by a later one of the same category in ``events``."""
    latest: dict[Any, int] = {}
    for event in events:
        if event.kind is EventKind.PROGRESS:
            latest[event.data.get("category")] = event.seq
    return [
        e
        for e in events
        if e.kind is not EventKind.PROGRESS or latest[e.data.get("category")] == e.seq
    ]


class EventHub:
    """Appends job events with gap-free seqs and serves replay-then-live subscriptions."""

    def __init__(
        self,
        store: JobStore,
        *,
        remote_poll_seconds: float | None = None,
        metrics: PlatformMetrics | None = None,
    ) -> None:
        """``remote_poll_seconds``: set when other servers append to the store too (see the
        module's docstring); ``None`` for a server that owns every job it serves."""
        self._store = store
        self._metrics = metrics or PlatformMetrics()
        self._channels: dict[str, _JobChannel] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._remote_poll = remote_poll_seconds
        self._wakers: set[asyncio.Task[Any]] = set()

    @property
    def open_channels(self) -> int:
        """Jobs with in-memory state (live or subscribed); for leak checks."""
        return len(self._channels)

    @property
    def subscribers(self) -> int:
        """Open subscriptions over all jobs (read by the metrics scrape, on another thread:
        ``list`` copies the channels in one step)."""
        return sum(channel.subscribers for channel in list(self._channels.values()))

    async def _channel(self, job_id: str) -> _JobChannel:
        channel = self._channels.get(job_id)
        if channel is not None:
            return channel
        lock = self._opening.setdefault(job_id, asyncio.Lock())
        async with lock:
            channel = self._channels.get(job_id)
            if channel is None:
                last = await self._store.last_event(job_id)
                channel = _JobChannel(
                    last_seq=0 if last is None else last.seq,
                    finished=last is not None and last.is_terminal,
                )
                self._channels[job_id] = channel
        if self._opening.get(job_id) is lock and not lock.locked():
            del self._opening[job_id]
        return channel

    def _maybe_release(self, job_id: str, channel: _JobChannel) -> None:
        # Finished jobs without subscribers are served from the store; live jobs keep their
        # channel so the next append does not have to look up the last seq again. A remote
        # job's channel only serves its subscribers.
        if (
            (channel.finished or not channel.local)
            and channel.subscribers == 0
            and self._channels.get(job_id) is channel
        ):
            del self._channels[job_id]

    def remote_events(self, job_id: str, last_seq: int, terminal: bool) -> None:
        """Another server stored the job's events up to ``last_seq`` (``terminal``: the last
        of them ends the job): wake this server's subscribers of the job."""
        channel = self._channels.get(job_id)
        if channel is None or channel.local or last_seq <= channel.last_seq:
            return
        channel.last_seq = last_seq
        channel.finished = channel.finished or terminal
        task = asyncio.get_running_loop().create_task(self._wake(channel))
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    def refresh_remote(self) -> None:
        """Look again at every followed remote job (notifications may have been lost)."""
        for job_id, channel in list(self._channels.items()):
            if not channel.local:
                task = asyncio.get_running_loop().create_task(self._refresh(job_id, channel))
                self._wakers.add(task)
                task.add_done_callback(self._wakers.discard)

    async def _refresh(self, job_id: str, channel: _JobChannel) -> bool:
        """Read a remote job's progress from the store; True when there is news."""
        job = await self._store.get_job(job_id)
        if job is None or channel.local or job.last_seq <= channel.last_seq:
            return False
        channel.last_seq = job.last_seq
        channel.finished = channel.finished or job.state.is_terminal
        await self._wake(channel)
        return True

    @staticmethod
    async def _wake(channel: _JobChannel) -> None:
        async with channel.cond:
            channel.cond.notify_all()

    async def adopt(self, job_id: str) -> None:
        """This server takes the job over from another: its next appends continue after the
        newest stored event, whatever this server saw of the job before."""
        channel = await self._channel(job_id)
        async with channel.lock:
            last = await self._store.last_event(job_id)
            channel.last_seq = 0 if last is None else last.seq
            channel.finished = last is not None and last.is_terminal
            channel.tail.clear()
            channel.local = True

    async def append(
        self,
        job_id: str,
        events: Sequence[NewEvent],
        job_update: Job | None = None,
    ) -> list[JobEvent]:
        """Store ``events`` (with ``job_update``'s row, atomically) and wake subscribers.

        Returns the stored events with their seqs. ``job_update.last_seq`` is set to the last
        seq. Raises :class:`JobAlreadyFinishedError` if the job already has its terminal event,
        or if a terminal event is not the last of ``events``.
        """
        channel = await self._channel(job_id)
        async with channel.lock:
            if channel.finished:
                raise JobAlreadyFinishedError(job_id)
            for index, new in enumerate(events):
                if new.kind is EventKind.TERMINAL and index != len(events) - 1:
                    raise ValueError("a terminal event must be the last event of a job")
            stored = [
                JobEvent(
                    job_id=job_id,
                    seq=channel.last_seq + offset + 1,
                    kind=new.kind,
                    data=new.data,
                    timestamp=new.timestamp,
                )
                for offset, new in enumerate(events)
            ]
            if not stored and job_update is None:
                return []
            if job_update is not None:
                job_update = job_update.evolve(last_seq=channel.last_seq + len(stored))
            await self._store.append_events(stored, job_update)
            channel.local = True
            if stored:
                self._metrics.events_stored(event.kind.value for event in stored)
                channel.tail.extend(stored)
                channel.last_seq = stored[-1].seq
                channel.finished = stored[-1].is_terminal
        async with channel.cond:
            channel.cond.notify_all()
        self._maybe_release(job_id, channel)
        return stored

    async def last_seq(self, job_id: str) -> int:
        """The seq of the job's newest event (0 when it has none)."""
        channel = self._channels.get(job_id)
        if channel is not None:
            return channel.last_seq
        last = await self._store.last_event(job_id)
        return 0 if last is None else last.seq

    async def subscribe(
        self,
        job_id: str,
        after_seq: int = 0,
        *,
        keepalive_seconds: float | None = None,
        follow: bool = True,
    ) -> AsyncIterator[JobEvent | Keepalive]:
        """Every event with ``seq > after_seq`` in order, then live ones, ending after terminal.

        Yields :data:`KEEPALIVE` after ``keepalive_seconds`` without an event. With
        ``follow=False`` it stops once the stored history is replayed. The caller checks that
        the job exists; the hub only knows events.
        """
        batches = self.subscribe_batches(
            job_id, after_seq, keepalive_seconds=keepalive_seconds, follow=follow
        )
        async with contextlib.aclosing(batches):
            async for item in batches:
                if isinstance(item, Keepalive):
                    yield item
                else:
                    for event in item:
                        yield event

    async def subscribe_batches(
        self,
        job_id: str,
        after_seq: int = 0,
        *,
        keepalive_seconds: float | None = None,
        follow: bool = True,
    ) -> AsyncGenerator[Sequence[JobEvent] | Keepalive, None]:
        """:meth:`subscribe`'s events, in runs of the events that are there at once (in seq
        order, never empty; the terminal event ends the last one), so that a subscriber can
        send a burst of events as one message. The runs are read-only."""
        channel = await self._channel(job_id)
        channel.subscribers += 1
        cursor = after_seq
        try:
            while True:
                if cursor < channel.last_seq:
                    batch = channel.tail_after(cursor)
                    if batch is None:
                        batch = await self._store.list_events(job_id, cursor, _REPLAY_PAGE)
                    if not batch:
                        # The store is behind the channel only if an append is mid-flight;
                        # it completes before the channel's seq moves, so this cannot loop.
                        raise RuntimeError(f"job {job_id}: events after seq {cursor} missing")
                    if channel.last_seq - cursor > _COALESCE_BACKLOG:
                        delivered = coalesce(batch)
                    else:
                        delivered = batch
                    for end, event in enumerate(delivered, 1):
                        if event.is_terminal:
                            yield delivered[:end]
                            return
                    if delivered:
                        yield delivered
                    cursor = batch[-1].seq
                    continue
                if channel.finished or not follow:
                    return

                def _has_news(seen: int = cursor) -> bool:
                    return channel.last_seq > seen or channel.finished

                if await self._wait(job_id, channel, _has_news, keepalive_seconds):
                    continue
                yield KEEPALIVE
        finally:
            channel.subscribers -= 1
            self._maybe_release(job_id, channel)

    async def _wait(
        self,
        job_id: str,
        channel: _JobChannel,
        has_news: Callable[[], bool],
        keepalive_seconds: float | None,
    ) -> bool:
        """Until the channel has news (True) or ``keepalive_seconds`` pass without (False).

        A remote channel also looks at the store every ``remote_poll_seconds`` meanwhile.
        """
        loop = asyncio.get_running_loop()
        deadline = None if keepalive_seconds is None else loop.time() + keepalive_seconds
        while True:
            remote = self._remote_poll is not None and not channel.local
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            if remote:
                assert self._remote_poll is not None
                timeout = self._remote_poll if timeout is None else min(timeout, self._remote_poll)
            async with channel.cond:
                try:
                    await asyncio.wait_for(channel.cond.wait_for(has_news), timeout=timeout)
                except TimeoutError:
                    pass
                else:
                    return True
            if remote:
                assert self._remote_poll is not None
                if loop.time() - channel.checked_at >= self._remote_poll / 2:
                    channel.checked_at = loop.time()
                    if await self._refresh(job_id, channel):
                        return True
                if has_news():
                    return True
            if deadline is not None and loop.time() >= deadline:
                return False
