"""Streaming handlers never let grpc cancel a write in flight (grpc.aio would leak its memory).

The servicer side is driven the way grpc.aio drives an async-generator handler: iterate it and
await ``context.write`` for every message it yields; a client's cancellation cancels that task.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2
from synapse_server.grpc._streams import writes_through

pytestmark = pytest.mark.timeout(30)


class _Context:
    """A servicer context whose writes complete only when the test says so."""

    def __init__(self, fail: bool = False) -> None:
        self.started: list[Any] = []
        self.completed: list[Any] = []
        self.cancelled: list[Any] = []
        self.in_flight = asyncio.Event()
        self.release = asyncio.Event()
        self.written = asyncio.Event()
        self.fail = fail

    async def write(self, message: Any) -> None:
        self.started.append(message)
        self.in_flight.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(message)  # grpc.aio: this write's memory is lost
            raise
        self.release.clear()
        self.in_flight.clear()
        if self.fail:
            raise RuntimeError("Failed execute_batch")  # what grpc raises on a cancelled call
        self.completed.append(message)
        self.written.set()


class _Servicer:
    def __init__(self, messages: list[str], error: Exception | None = None) -> None:
        self.messages = messages
        self.error = error
        self.closed = False

    @writes_through
    async def Stream(self, request: Any, context: Any) -> AsyncIterator[str]:
        try:
            for message in self.messages:
                yield message
            if self.error is not None:
                raise self.error
            await asyncio.Event().wait()  # follows live: only a cancellation ends it
        finally:
            self.closed = True


async def _grpc_drives(servicer: _Servicer, context: _Context) -> None:
    # What grpc.aio's _finish_handler_with_stream_responses does with a generator handler.
    async for message in servicer.Stream(None, context):
        await context.write(message)


async def test_a_cancelled_stream_lets_its_write_in_flight_complete() -> None:
    context = _Context()
    servicer = _Servicer(["a", "b", "c"])
    rpc = asyncio.create_task(_grpc_drives(servicer, context))
    await asyncio.wait_for(context.in_flight.wait(), 10)
    rpc.cancel()  # the client cancelled while "a" is being written
    with pytest.raises(asyncio.CancelledError):
        await rpc
    assert servicer.closed
    context.release.set()  # core completes the write afterwards
    for _ in range(100):
        await asyncio.sleep(0)
    assert context.cancelled == []
    assert context.completed == ["a"]
    assert context.started == ["a"]  # nothing is written after the cancellation


class _Finite:
    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    @writes_through
    async def Stream(self, request: Any, context: Any) -> AsyncIterator[str]:
        for message in self.messages:
            yield message


async def test_messages_are_written_in_order_before_the_stream_ends() -> None:
    context = _Context()
    rpc = asyncio.create_task(_grpc_drives(_Finite(["a", "b", "c"]), context))  # type: ignore[arg-type]
    for written in range(3):
        await asyncio.wait_for(context.in_flight.wait(), 10)
        assert not rpc.done(), f"the stream ended with {3 - written} messages unwritten"
        context.release.set()
        await context.written.wait()
        context.written.clear()
    await asyncio.wait_for(rpc, 10)
    assert context.completed == context.started == ["a", "b", "c"]


async def test_an_error_reaches_the_error_mapping_after_the_write_in_flight() -> None:
    context = _Context()
    servicer = _Servicer(["a"], error=ValueError("bad"))
    rpc = asyncio.create_task(_grpc_drives(servicer, context))
    await asyncio.wait_for(context.in_flight.wait(), 10)
    for _ in range(20):
        await asyncio.sleep(0)
    assert not rpc.done()  # the error waits for the write
    context.release.set()
    with pytest.raises(ValueError, match="bad"):
        await asyncio.wait_for(rpc, 10)
    assert context.completed == ["a"]


async def test_a_failed_write_ends_the_stream_as_cancelled_not_as_an_error() -> None:
    context = _Context(fail=True)
    servicer = _Servicer(["a", "b"])
    rpc = asyncio.create_task(_grpc_drives(servicer, context))
    await asyncio.wait_for(context.in_flight.wait(), 10)
    context.release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(rpc, 10)
    assert context.started == ["a"] and servicer.closed


async def test_a_write_that_fails_after_the_cancellation_is_consumed_quietly() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        context = _Context(fail=True)
        servicer = _Servicer(["a", "b"])
        rpc = asyncio.create_task(_grpc_drives(servicer, context))
        await asyncio.wait_for(context.in_flight.wait(), 10)
        rpc.cancel()
        with pytest.raises(asyncio.CancelledError):
            await rpc
        context.release.set()  # core fails the write of the cancelled call
        for _ in range(100):
            await asyncio.sleep(0)
        del rpc
        gc.collect()
        assert context.cancelled == [] and context.started == ["a"]
        assert reported == []  # no "exception was never retrieved", no error from a callback
    finally:
        loop.set_exception_handler(None)


class _YieldingContext:
    """Writes that give the loop a turn (a bare yield) before and after waiting."""

    def __init__(self) -> None:
        self.completed: list[Any] = []

    async def write(self, message: Any) -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        self.completed.append(message)


async def test_writes_that_yield_to_the_loop_complete_in_order() -> None:
    context = _YieldingContext()
    await asyncio.wait_for(_grpc_drives(_Finite(["a", "b", "c"]), context), 10)  # type: ignore[arg-type]
    assert context.completed == ["a", "b", "c"]


def test_cancelled_progress_streams_leave_nothing_behind_in_the_server(
    server_factory: Any,
) -> None:
    """A real server: after many streams cancelled mid-replay, the hub holds no subscriber,
    no extra channel and no task of theirs (the native side is measured by the bench)."""
    running = server_factory(keepalive_seconds=60)
    hub = running.server.jobs._hub

    async def tasks() -> int:
        return len(asyncio.all_tasks())

    with running.channel() as channel:
        stub = action_service_pb2_grpc.ActionServiceStub(channel)
        request = pb.RunActionRequest(plugin="toy", action="stubborn")
        job_id = stub.RunAction(request, timeout=10).job.id
        deadline = time.monotonic() + 60
        while True:  # the stubborn job logs once it runs: three events
            job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
            if job.state == job_pb2.JOB_STATE_RUNNING and job.last_seq >= 3:
                break
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        channels, baseline = hub.open_channels, running.call(tasks())
        for _ in range(300):
            call = stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=30)
            next(call)
            call.cancel()
        # Cancellations reach the server asynchronously; wait for them, with a deadline.
        deadline = time.monotonic() + 30
        while hub._channels[job_id].subscribers or running.call(tasks()) > baseline:
            assert time.monotonic() < deadline, "cancelled streams still hold server state"
            time.sleep(0.05)
        assert hub.open_channels == channels
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
