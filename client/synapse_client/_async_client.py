"""The asyncio client: :class:`AsyncClient` and :class:`AsyncJobHandle` (grpc.aio).

Same surface as the blocking client; requests, stream resumption and result decoding come
from the shared ``_jobs`` and ``_converters`` modules, only the awaiting differs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from synapse.plugin.v1 import action_service_pb2, action_service_pb2_grpc, job_pb2

from ._config import retry_delay
from ._converters import job_from_proto, job_states_to_proto, plugin_from_proto
from ._core import AsyncClientCore
from ._errors import (
    DeadlineExceededError,
    JobTimeoutError,
    ProtocolError,
    RpcFailedError,
    SynapseClientError,
    map_rpc_errors,
)
from ._jobs import (
    EventSequencer,
    ResultAssembler,
    raise_for_terminal,
    reconnect_delay,
    remaining,
    result_stream_start,
    run_action_request,
    stream_ended_early,
)
from ._types import Job, JobEvent, JobState, PluginInfo, ProgressEvent, RunMode

logger = logging.getLogger(__name__)

__all__ = ["AsyncClient", "AsyncJobHandle"]

_UNSET: Any = object()


class AsyncJobHandle:
    """One job on the server, for asyncio code; see :class:`JobHandle`."""

    def __init__(
        self,
        client: AsyncClient,
        job_id: str,
        job: Job | None = None,
        created: bool | None = None,
    ) -> None:
        self._client = client
        self._id = job_id
        #: The job as the server last reported it to this handle (None until fetched).
        self.job = job
        #: From run_action: False when its request_id matched a job that already existed.
        self.created = created
        self._result: Any = _UNSET

    @property
    def id(self) -> str:
        """The job's id."""
        return self._id

    def __repr__(self) -> str:
        state = self.job.state.value if self.job is not None else "unknown"
        return f"AsyncJobHandle({self._id!r}, state={state})"

    async def refresh(self) -> Job:
        """Fetches the job's current state (GetJob)."""
        self.job = await self._client.get_job(self._id)
        return self.job

    def events(self, after_seq: int = 0, *, follow: bool = True) -> AsyncIterator[JobEvent]:
        """Every event with seq > ``after_seq``, live, ending with the terminal event.

        A dropped stream is reopened from the last delivered seq: no duplicates, nothing
        lost. ``follow=False`` yields only the events stored so far and stops.
        """
        return self._follow(EventSequencer(self._id, after_seq, follow), deadline=None)

    async def progress(self, after_seq: int = 0) -> AsyncIterator[JobEvent]:
        """Like :meth:`events`, keeping only progress events (``event.payload`` is one)."""
        async for event in self.events(after_seq):
            if isinstance(event.payload, ProgressEvent):
                yield event

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Waits for the job to finish and returns its parsed JSON result.

        Raises :class:`JobFailedError`, :class:`JobCancelledError`, or
        :class:`JobTimeoutError` after ``timeout`` seconds (the job keeps running).
        """
        if self._result is not _UNSET:
            return self._result
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            job = await self._client.get_job(
                self._id, timeout=remaining(deadline), with_params=False
            )
            sequencer = EventSequencer(self._id, result_stream_start(job))
            async for _ in self._follow(sequencer, deadline):
                pass
            terminal = sequencer.terminal
            if terminal is None:  # _follow only returns normally after the terminal event
                raise ProtocolError(f"job {self._id}: stream ended without a terminal event")
            raise_for_terminal(self._id, terminal)
            value = (
                terminal.inline_result()
                if terminal.result_inline
                else await self._fetch_result(deadline)
            )
        except DeadlineExceededError as error:
            if timeout is None:
                raise
            raise JobTimeoutError(self._id, timeout) from error
        self._result = value
        return value

    async def cancel(self, reason: str = "") -> Job:
        """Asks the server to cancel the job; returns the job as it is right after."""
        self.job = await self._client.cancel_job(self._id, reason)
        return self.job

    async def _follow(
        self, sequencer: EventSequencer, deadline: float | None
    ) -> AsyncIterator[JobEvent]:
        client = self._client
        stub = client._stub(action_service_pb2_grpc.ActionServiceStub)
        attempt = 0
        while True:
            call = stub.StreamProgress(
                sequencer.request(),
                timeout=remaining(deadline),
                metadata=client._config.metadata,
            )
            failure: SynapseClientError | None = None
            try:
                with map_rpc_errors(client._config.security):
                    async for response in call:
                        event = sequencer.accept(response)
                        if event is not None:
                            attempt = 0
                            yield event
                if sequencer.ended_early():
                    failure = stream_ended_early(self._id)
            except RpcFailedError as error:
                failure = error
            finally:
                call.cancel()
            if failure is None:
                return
            attempt += 1
            delay = reconnect_delay(client._config.retry, attempt, failure)
            logger.info(
                "progress stream of job %s dropped after seq %d, resuming in %.2fs",
                self._id,
                sequencer.last_seq,
                delay,
            )
            await asyncio.sleep(delay)

    async def _fetch_result(self, deadline: float | None) -> Any:
        client = self._client
        stub = client._stub(action_service_pb2_grpc.ActionServiceStub)
        attempt = 0
        while True:
            attempt += 1
            assembler = ResultAssembler(self._id)
            call = stub.GetJobResult(
                action_service_pb2.GetJobResultRequest(job_id=self._id),
                timeout=remaining(deadline),
                metadata=client._config.metadata,
            )
            try:
                with map_rpc_errors(client._config.security):
                    async for chunk in call:
                        assembler.add(chunk)
                return assembler.result()
            except RpcFailedError as failure:
                delay = retry_delay(client._config.retry, attempt, failure)
                if delay is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(delay)


class AsyncClient(AsyncClientCore):
    """Asyncio client of a Synapse server, with the same methods as :class:`Client`.

    Construct it inside a running event loop; use ``async with`` or ``await close()``.
    """

    def _actions(self) -> action_service_pb2_grpc.ActionServiceStub:
        return self._stub(action_service_pb2_grpc.ActionServiceStub)

    async def list_actions(self, plugin: str | None = None) -> list[PluginInfo]:
        """The installed plugins (or just ``plugin``) with their actions and params schemas."""
        response = await self._call(
            self._actions().ListActions, action_service_pb2.ListActionsRequest(plugin=plugin or "")
        )
        return [plugin_from_proto(p) for p in response.plugins]

    async def run_action(
        self,
        plugin: str,
        action: str,
        params: dict[str, Any] | None = None,
        mode: RunMode | str | None = None,
        request_id: str | None = None,
    ) -> AsyncJobHandle:
        """Starts ``plugin``'s ``action`` as a job; retries reuse one generated request_id."""
        request = run_action_request(plugin, action, params, mode, request_id)
        response = await self._call(self._actions().RunAction, request)
        job = job_from_proto(response.job)
        return AsyncJobHandle(self, job.id, job, created=response.created)

    def job(self, job_id: str) -> AsyncJobHandle:
        """A handle for an existing job (no RPC is made)."""
        return AsyncJobHandle(self, job_id)

    async def get_job(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        with_params: bool = True,
    ) -> Job:
        """One job by id; raises :class:`NotFoundError` for an unknown one.

        ``with_params=False`` leaves ``params`` empty (cheaper for jobs with large params).
        """
        view = job_pb2.JOB_VIEW_FULL if with_params else job_pb2.JOB_VIEW_BASIC
        request = action_service_pb2.GetJobRequest(job_id=job_id, view=view)
        response = await self._call(self._actions().GetJob, request, timeout)
        return job_from_proto(response.job)

    async def list_jobs(
        self,
        state: JobState | str | list[JobState | str] | None = None,
        plugin: str | None = None,
        action: str | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Job]:
        """Jobs, newest first, fetching further pages as the iteration reaches them."""
        request = action_service_pb2.ListJobsRequest(
            states=job_states_to_proto(state),  # type: ignore[arg-type]
            plugin=plugin or "",
            action=action or "",
            page_size=page_size,
        )
        while True:
            response = await self._call(self._actions().ListJobs, request)
            for message in response.jobs:
                yield job_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    async def cancel_job(self, job_id: str, reason: str = "") -> Job:
        """Asks the server to cancel a job; a finished job is returned unchanged."""
        response = await self._call(
            self._actions().CancelJob,
            action_service_pb2.CancelJobRequest(job_id=job_id, reason=reason),
        )
        return job_from_proto(response.job)
