"""Thin servicers: convert the request, await the core, convert the answer back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from synapse.plugin.v1 import (
    action_service_pb2,
    action_service_pb2_grpc,
    job_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)

from synapse_server.core import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobFilter,
    Keepalive,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from synapse_server.core._jobs import JobService, WorkerReport
from synapse_server.core._paging import checked_page_size
from synapse_server.core._scratch import scratch_file_chunks
from synapse_server.core.datasets import DatasetRegistryService
from synapse_server.grpc import _converters as conv
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._dataset_converters import dataset_to_pb
from synapse_server.grpc._dataset_servicer import upload_chunks
from synapse_server.grpc._errors import map_errors
from synapse_server.grpc._progress_wire import MAX_EVENTS_PER_MESSAGE, EncodedEvents
from synapse_server.grpc._requests import DEFAULT_MAX_MESSAGE_BYTES
from synapse_server.grpc._streams import writes_through
from synapse_server.telemetry import bind_log_context

__all__ = ["ActionServicer", "WorkerServicer", "worker_reports"]

logger = logging.getLogger(__name__)

_DEFAULT_CHUNK = 1 << 20
_MAX_CHUNK = 4 << 20
_REPORT_BATCH = 512


def _tenant() -> str:
    principal = current_principal()
    if principal.worker is not None:
        raise PermissionDeniedError("a worker credential cannot call ActionService")
    return principal.tenant


class ActionServicer(action_service_pb2_grpc.ActionServiceServicer):
    """ActionService over :class:`JobService`."""

    def __init__(
        self,
        jobs: JobService,
        keepalive_seconds: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._jobs = jobs
        self._keepalive = keepalive_seconds
        self._max_message_bytes = max_message_bytes
        self._encoded = EncodedEvents()

    @map_errors
    async def ListActions(  # noqa: N802
        self, request: action_service_pb2.ListActionsRequest, context: grpc.aio.ServicerContext
    ) -> action_service_pb2.ListActionsResponse:
        _tenant()
        return conv.list_actions_response(self._jobs.catalog.plugins(request.plugin))

    @map_errors
    async def RunAction(  # noqa: N802
        self, request: action_service_pb2.RunActionRequest, context: grpc.aio.ServicerContext
    ) -> action_service_pb2.RunActionResponse:
        tenant = _tenant()
        if request.params_json:
            params_json = conv.params_json_from_pb(request.params_json)
        else:
            params_json = conv.params_json_from_struct(request.params)
        job, created = await self._jobs.submit(
            tenant,
            request.plugin,
            request.action,
            params_json,
            mode=conv.mode_from_pb(request.mode),
            request_id=request.request_id,
        )
        return action_service_pb2.RunActionResponse(job=conv.job_to_pb(job), created=created)

    @map_errors
    @writes_through
    async def StreamProgress(  # noqa: N802
        self, request: action_service_pb2.StreamProgressRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes | action_service_pb2.StreamProgressResponse]:
        tenant = _tenant()
        if not request.job_id:
            raise InvalidArgumentError("job_id is required", field="job_id")
        per_message = min(request.max_events_per_message, MAX_EVENTS_PER_MESSAGE)
        runs = await self._jobs.subscribe_batches(
            tenant,
            request.job_id,
            request.after_seq,
            follow=not request.replay_only,
            keepalive_seconds=self._keepalive,
        )
        # aclosing: a disconnecting subscriber releases its hub cursor right away.
        async with contextlib.aclosing(runs) as stream:  # type: ignore[type-var]
            async for item in stream:
                if isinstance(item, Keepalive):
                    job = await self._jobs.get(tenant, request.job_id)
                    yield action_service_pb2.StreamProgressResponse(
                        keepalive=conv.keepalive_to_pb(job)
                    )
                elif per_message > 1:
                    for message in self._encoded.batches(item, per_message):
                        yield message
                else:
                    # The same bytes for every subscriber (see _progress_wire).
                    for event in item:
                        yield self._encoded.get(event)

    @map_errors
    async def GetJob(  # noqa: N802
        self, request: action_service_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> action_service_pb2.GetJobResponse:
        full = request.view != job_pb2.JOB_VIEW_BASIC
        job = await self._jobs.get(_tenant(), request.job_id, with_params=full)
        response = action_service_pb2.GetJobResponse(job=conv.job_to_pb(job, with_params=full))
        if full and response.ByteSize() > self._max_message_bytes:
            # The params travel twice in the full view; near the message limit only their
            # JSON text is sent, which every client reads first.
            response.job.ClearField("params")
            if response.ByteSize() > self._max_message_bytes:
                raise ResourceExhaustedError(
                    f"the job's params are {len(response.job.params_json)} bytes: over the "
                    f"{self._max_message_bytes}-byte message limit with the job around them; "
                    "ask for JOB_VIEW_BASIC"
                )
        return response

    @map_errors
    async def ListJobs(  # noqa: N802
        self, request: action_service_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> action_service_pb2.ListJobsResponse:
        tenant = _tenant()
        flt = JobFilter(
            states=frozenset(conv.state_from_pb(s) for s in request.states),
            plugin=request.plugin or None,
            action=request.action or None,
        )
        page = await self._jobs.list(
            tenant, flt, checked_page_size(request.page_size), request.page_token
        )
        return action_service_pb2.ListJobsResponse(
            jobs=[conv.job_to_pb(j) for j in page.jobs], next_page_token=page.next_page_token
        )

    @map_errors
    async def CancelJob(  # noqa: N802
        self, request: action_service_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> action_service_pb2.CancelJobResponse:
        job = await self._jobs.cancel(_tenant(), request.job_id, request.reason)
        return action_service_pb2.CancelJobResponse(job=conv.job_to_pb(job))

    @map_errors
    @writes_through
    async def GetJobResult(  # noqa: N802
        self, request: action_service_pb2.GetJobResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[action_service_pb2.GetJobResultResponse]:
        if not 0 <= request.chunk_size_bytes <= _MAX_CHUNK:
            raise InvalidArgumentError(
                f"chunk_size_bytes must be between 0 and {_MAX_CHUNK}", field="chunk_size_bytes"
            )
        payload = await self._jobs.result_json(_tenant(), request.job_id)
        size = request.chunk_size_bytes or _DEFAULT_CHUNK
        for offset in range(0, max(len(payload), 1), size):
            yield action_service_pb2.GetJobResultResponse(
                offset=offset, data=payload[offset : offset + size], total_size_bytes=len(payload)
            )


def _worker() -> Any:
    principal = current_principal()
    if principal.worker is None:
        raise PermissionDeniedError("WorkerService needs a worker credential")
    return principal.worker


def worker_reports(
    messages: Iterable[worker_service_pb2.ReportEventsRequest],
) -> list[WorkerReport]:
    """The events of a worker's stream messages, single ones and batches, in order.

    InvalidArgumentError for a second ``open``.
    """
    reports: list[WorkerReport] = []
    for message in messages:
        kind = message.WhichOneof("kind")
        if kind == "events":
            reports.extend(conv.worker_event_from_pb(e) for e in message.events.events)
        elif kind == "event":
            # A single event per message: what workers of earlier versions send.
            reports.append(conv.worker_event_from_pb(message.event))
        else:
            raise InvalidArgumentError("`open` may only be sent once")
    return reports


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """WorkerService over :class:`JobService` (internal: platform workers only); job outputs
    go to ``datasets`` (None: this server stores none). ``job_scratch``: the scratch directory
    of a job whose worker this server launched on its own machine (None: no job has one),
    from which an output named by ``local_file`` is copied."""

    def __init__(
        self,
        jobs: JobService,
        datasets: DatasetRegistryService | None = None,
        job_scratch: Callable[[str], Path | None] | None = None,
    ) -> None:
        self._jobs = jobs
        self._datasets = datasets
        self._job_scratch = job_scratch

    async def _local_output(
        self, job_id: str, name: str, stream: AsyncIterator[object]
    ) -> AsyncIterator[bytes]:
        """The chunks of output file ``name`` in the job's scratch directory (checked as
        ``open_scratch_file`` says, when the first chunk is read); nothing may follow the info
        message."""
        scratch = self._job_scratch(job_id) if self._job_scratch is not None else None
        if scratch is None:
            raise FailedPreconditionError(
                f"job {job_id}'s worker has no scratch directory on this server's machine: "
                "send the output's chunks"
            )
        if await anext(stream, None) is not None:
            raise InvalidArgumentError("no chunk may follow an info that names a local_file")
        return scratch_file_chunks(scratch, name)

    @map_errors
    async def UploadJobOutput(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[worker_service_pb2.UploadJobOutputRequest],
        context: grpc.aio.ServicerContext,
    ) -> worker_service_pb2.UploadJobOutputResponse:
        """Info first, then the Parquet file's chunks (or none: the info names the file in the
        job's scratch directory); staged until the job succeeds."""
        claims = _worker()
        if self._datasets is None:
            raise FailedPreconditionError("this server's store keeps no job outputs")
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or first.WhichOneof("kind") != "info":
            raise InvalidArgumentError("the first UploadJobOutput message must carry info")
        job = self._jobs.running_job(claims, first.info.job_id)
        bind_log_context(job_id=job.id)
        if first.info.local_file:
            chunks = await self._local_output(job.id, first.info.local_file, stream)
        else:
            chunks = upload_chunks(stream, "UploadJobOutput")
        record = await self._datasets.stage_output(job.tenant, job.id, first.info.name, chunks)
        if not self._jobs.is_running(job.id):
            # The job ended while the file came in: its end already dropped what was staged
            # before, and this must not outlive it either.
            await self._datasets.discard_outputs(job.id)
            raise FailedPreconditionError(f"job {job.id} has already finished")
        return worker_service_pb2.UploadJobOutputResponse(output=dataset_to_pb(record))

    @map_errors
    async def GetAssignment(  # noqa: N802
        self, request: worker_service_pb2.GetAssignmentRequest, context: grpc.aio.ServicerContext
    ) -> worker_service_pb2.GetAssignmentResponse:
        job = await self._jobs.assignment(_worker(), request.job_id)
        bind_log_context(job_id=job.id)
        return worker_service_pb2.GetAssignmentResponse(
            job_id=job.id,
            plugin=job.plugin,
            plugin_version=job.plugin_version,
            plugin_sha256=job.plugin_sha256,
            action=job.action,
            params_json=job.params_json.encode(),
            mode=conv.mode_to_pb(job.mode),
            cancel_requested=job.cancel_requested,
            headers=self._jobs.worker_headers(job.id),
        )

    @map_errors
    async def ReportEvents(  # noqa: N802
        self,
        request_iterator: AsyncIterator[worker_service_pb2.ReportEventsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[worker_service_pb2.ReportEventsResponse]:
        claims = _worker()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "open":
            raise InvalidArgumentError("the first message must be `open`")
        job_id = first.open.job_id
        acked, cancel = await self._jobs.open_worker_stream(claims, job_id, first.open.worker_id)
        bind_log_context(job_id=job_id)
        cancel_sent = cancel.is_set()
        yield worker_service_pb2.ReportEventsResponse(
            acked_worker_seq=acked, cancel_requested=cancel_sent
        )
        queue: asyncio.Queue[worker_service_pb2.ReportEventsRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for message in request_iterator:
                    await queue.put(message)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        cancel_wait: asyncio.Task[Any] | None = None
        try:
            while True:
                get = asyncio.create_task(queue.get())
                waits: set[asyncio.Future[Any]] = {get}
                if not cancel_sent:
                    cancel_wait = cancel_wait or asyncio.create_task(cancel.wait())
                    waits.add(cancel_wait)
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if cancel_wait is not None and cancel_wait in done and not cancel_sent:
                    cancel_sent = True
                    yield worker_service_pb2.ReportEventsResponse(
                        acked_worker_seq=acked, cancel_requested=True
                    )
                if get not in done:
                    get.cancel()
                    continue
                batch = [get.result()]
                while len(batch) < _REPORT_BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                ended = batch[-1] is None
                reports = worker_reports([m for m in batch if m is not None])
                if reports:
                    acked, finished = await self._jobs.report(claims, job_id, reports)
                    yield worker_service_pb2.ReportEventsResponse(
                        acked_worker_seq=acked, cancel_requested=cancel_sent
                    )
                    if finished:
                        return
                if ended:
                    # The reader's failure (a message refused by the request checks, a
                    # malformed stream) is the stream's answer, not a clean end.
                    await reader
                    return
        finally:
            reader.cancel()
            if cancel_wait is not None:
                cancel_wait.cancel()
