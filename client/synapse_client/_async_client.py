"""The asyncio client: :class:`AsyncClient` and :class:`AsyncJobHandle` (grpc.aio).

The same client as :class:`~synapse_client.Client`, method for method: each builds its call
with ``_calls`` and the other sans-IO modules and awaits it here; only the I/O differs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from . import _calls as calls
from ._config import retry_delay
from ._core import AsyncClientCore
from ._datasets import DatasetDownload, DatasetInfo, DatasetUpload, pick_output
from ._errors import RpcFailedError, SynapseClientError
from ._inference import UNSET_JSON, DeploymentInfo, InferResult
from ._jobs import (
    UNSET,
    EventSequencer,
    JobHandleBase,
    ProgressFollower,
    ResultAssembler,
    deadline_after,
    finished_terminal,
    inline_result,
    job_timeout,
    raise_for_terminal,
    remaining,
    result_stream_start,
)
from ._models import (
    DEFAULT_UPLOAD_CHUNK,
    ArtifactDownload,
    DownloadDestination,
    DownloadSink,
    InfoT,
    ModelDownload,
    ModelInfo,
    ModelUpload,
    file_sha256,
)
from ._types import Job, JobEvent, JobState, PluginInfo, ProgressEvent, RunMode

logger = logging.getLogger(__name__)

__all__ = ["AsyncClient", "AsyncJobHandle"]


class AsyncJobHandle(JobHandleBase["AsyncClient"]):
    """One job on the server, for asyncio code; see :class:`JobHandle`."""

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
        :class:`JobTimeoutError` after ``timeout`` seconds (the job keeps running). Once this
        handle's :meth:`events` delivered the terminal event, an inline result needs no call.
        """
        if self._result is not UNSET:
            return self._result
        deadline = deadline_after(timeout)
        with job_timeout(self._id, timeout):
            terminal = self._terminal
            if terminal is None:
                job = await self._client.get_job(
                    self._id, timeout=remaining(deadline), with_params=False
                )
                sequencer = EventSequencer(self._id, result_stream_start(job))
                async for _ in self._follow(sequencer, deadline):
                    pass
                terminal = finished_terminal(sequencer)
            else:
                raise_for_terminal(self._id, terminal)
            if terminal.result_inline:
                value = inline_result(self._id, terminal)
            else:
                value = await self._fetch_result(deadline)
        self._result = value
        return value

    async def cancel(self, reason: str = "") -> Job:
        """Asks the server to cancel the job; returns the job as it is right after."""
        self.job = await self._client.cancel_job(self._id, reason)
        return self.job

    async def outputs(self) -> list[DatasetInfo]:
        """The datasets the job wrote (kept only once it SUCCEEDED), by name."""
        return await self._client.list_job_outputs(self._id)

    async def download_output(
        self, dest: DownloadDestination, name: str | None = None, *, chunk_size: int = 0
    ) -> DatasetInfo:
        """Streams the job's output ``name`` (default: its only one) into ``dest``; see
        :meth:`JobHandle.download_output`."""
        output = pick_output(self._id, await self.outputs(), name)
        return await self._client.download_dataset(output.id, dest, chunk_size=chunk_size)

    async def _follow(
        self, sequencer: EventSequencer, deadline: float | None
    ) -> AsyncIterator[JobEvent]:
        follower = ProgressFollower(sequencer, self._client._config.retry)
        while True:
            call = calls.stream_progress(follower.request(), remaining(deadline))
            failure: SynapseClientError | None
            try:
                async with self._client._stream(call) as responses:
                    async for response in responses:
                        for event in follower.accept(response):
                            yield self._note(event)
                failure = follower.end_of_stream()
            except RpcFailedError as error:
                failure = error
            if failure is None:
                return
            await asyncio.sleep(follower.reconnect_after(failure))

    async def _fetch_result(self, deadline: float | None) -> Any:
        attempt = 0
        while True:
            attempt += 1
            assembler = ResultAssembler(self._id)
            try:
                async with self._client._stream(
                    calls.get_job_result(self._id, remaining(deadline))
                ) as chunks:
                    async for chunk in chunks:
                        assembler.add(chunk)
                return assembler.result()
            except RpcFailedError as failure:
                delay = retry_delay(self._client._config.retry, attempt, failure)
                if delay is None:
                    raise
            await asyncio.sleep(delay)


class AsyncClient(AsyncClientCore):
    """Asyncio client of a Synapse server: :class:`Client`'s methods and arguments, awaited.

    Construct it inside a running event loop; use ``async with`` or ``await close()``.
    Listings and job events are async iterators. ``interceptors`` are grpc.aio client
    interceptors (``grpc.aio.UnaryUnaryClientInterceptor``…); one that implements several
    kinds sees every call of each kind, as on a blocking channel.
    """

    # --- actions and jobs ----------------------------------------------------------------------

    async def list_actions(self, plugin: str | None = None) -> list[PluginInfo]:
        """The installed plugins (or just ``plugin``) with their actions and params schemas."""
        return await self._unary(calls.list_actions(plugin))

    async def run_action(
        self,
        plugin: str,
        action: str,
        params: dict[str, Any] | None = None,
        mode: RunMode | str | None = None,
        request_id: str | None = None,
    ) -> AsyncJobHandle:
        """Starts ``plugin``'s ``action`` as a job; retries reuse one generated request_id."""
        job, created = await self._unary(calls.run_action(plugin, action, params, mode, request_id))
        return AsyncJobHandle(self, job.id, job, created=created)

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
        return await self._unary(calls.get_job(job_id, timeout, with_params))

    async def list_jobs(
        self,
        state: JobState | str | list[JobState | str] | None = None,
        plugin: str | None = None,
        action: str | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[Job]:
        """Jobs, newest first, fetching further pages as the iteration reaches them."""
        async for job in self._paged(calls.list_jobs(state, plugin, action, page_size)):
            yield job

    async def cancel_job(self, job_id: str, reason: str = "") -> Job:
        """Asks the server to cancel a job; a finished job is returned unchanged."""
        return await self._unary(calls.cancel_job(job_id, reason))

    # --- models --------------------------------------------------------------------------------

    async def register_model(
        self,
        archive: str | Path,
        name: str,
        *,
        description: str = "",
        framework: str = "",
        metadata: dict[str, Any] | None = None,
        archive_format: str | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ModelInfo:
        """Uploads an archive file as a new model; see :meth:`Client.register_model`.

        The file is hashed and read chunk by chunk in a worker thread while the upload
        streams, so the event loop never waits on the disk.
        """
        upload = ModelUpload.prepare(
            archive,
            name,
            description=description,
            framework=framework,
            metadata=metadata,
            archive_format=archive_format,
            chunk_size=chunk_size,
        )
        sha256 = await asyncio.to_thread(file_sha256, upload.path)

        async def requests() -> AsyncIterator[Any]:
            yield upload.header(sha256)
            fh = await asyncio.to_thread(open, upload.path, "rb")
            try:
                while data := await asyncio.to_thread(fh.read, upload.chunk_size):
                    yield upload.chunk(data)
            finally:
                # Waits for a read still running in its thread (the file's own lock).
                fh.close()

        model = await self._upload(calls.register_model(timeout), requests())
        logger.info("registered model %d (%s)", model.id, model.name)
        return model

    async def get_model(
        self,
        model_id: int,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ModelInfo:
        """One model's metadata; raises :class:`NotFoundError` for an unknown id."""
        return await self._unary(calls.get_model(model_id, timeout))

    async def list_models(
        self, name: str | None = None, page_size: int = 0
    ) -> AsyncIterator[ModelInfo]:
        """Models, newest first, fetching further pages as the iteration reaches them."""
        async for model in self._paged(calls.list_models(name, page_size)):
            yield model

    async def download_model(
        self,
        model_id: int,
        dest: DownloadDestination,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ModelInfo:
        """Streams the model's archive into ``dest`` (a file path or a writable object).

        The bytes are checked against the model's sha256; a mismatch raises
        :class:`ModelChecksumError` and, for a path, leaves no file behind. Every write
        (to the file, or ``dest.write``) runs in a worker thread, one at a time and in order.
        """
        call = calls.download_model(model_id, chunk_size, timeout)
        return await self._download_into(call, ModelDownload(model_id), dest)

    async def _download_into(
        self, call: calls.StreamCall, download: ArtifactDownload[InfoT], dest: DownloadDestination
    ) -> InfoT:
        """Streams ``call``'s file into ``dest`` through ``download``'s checks; its info.
        Every write runs in a worker thread, one at a time and in order."""
        sink = DownloadSink(dest)
        await asyncio.to_thread(sink.open)
        try:
            async with self._stream(call) as messages:
                async for message in messages:
                    data = download.accept(message)
                    if data is not None:
                        await asyncio.to_thread(sink.write, data)
            info = download.finish()
            await asyncio.to_thread(sink.commit)
        finally:
            await asyncio.to_thread(sink.discard)
        return info

    async def delete_model(
        self,
        model_id: int,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Deletes a model (its artifact goes once no other model shares it)."""
        await self._unary(calls.delete_model(model_id, timeout))

    # --- datasets ------------------------------------------------------------------------------

    async def upload_dataset(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        format: str | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DatasetInfo:
        """Uploads a dataset file; see :meth:`Client.upload_dataset`. The file is hashed and
        read in worker threads while the upload streams."""
        upload = DatasetUpload.prepare(path, name, format, chunk_size)
        sha256 = await asyncio.to_thread(file_sha256, upload.path)

        async def requests() -> AsyncIterator[Any]:
            yield upload.header(sha256)
            fh = await asyncio.to_thread(open, upload.path, "rb")
            try:
                while data := await asyncio.to_thread(fh.read, upload.chunk_size):
                    yield upload.chunk(data)
            finally:
                fh.close()

        dataset = await self._upload(calls.upload_dataset(timeout), requests())
        logger.info("uploaded dataset %s (%s, %d rows)", dataset.id, dataset.name, dataset.num_rows)
        return dataset

    async def get_dataset(
        self,
        dataset_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DatasetInfo:
        """One dataset's metadata and schema; :class:`NotFoundError` for an unknown id."""
        return await self._unary(calls.get_dataset(dataset_id, timeout))

    async def list_datasets(
        self, name: str | None = None, page_size: int = 0
    ) -> AsyncIterator[DatasetInfo]:
        """Datasets (uploads and job outputs), newest first, page by page as iterated."""
        async for dataset in self._paged(calls.list_datasets(name, page_size)):
            yield dataset

    async def download_dataset(
        self,
        dataset_id: str,
        dest: DownloadDestination,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> DatasetInfo:
        """Streams the dataset's file into ``dest``; see :meth:`Client.download_dataset`.
        Every write runs in a worker thread, one at a time and in order."""
        call = calls.download_dataset(dataset_id, chunk_size, timeout)
        return await self._download_into(call, DatasetDownload(dataset_id), dest)

    async def delete_dataset(
        self,
        dataset_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Deletes a dataset (its file goes once nothing else shares it)."""
        await self._unary(calls.delete_dataset(dataset_id, timeout))

    async def list_job_outputs(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[DatasetInfo]:
        """The datasets a job wrote (kept only once it SUCCEEDED), by name."""
        return await self._unary(calls.list_job_outputs(job_id, timeout))

    # --- inference and deployments -------------------------------------------------------------

    async def infer(
        self,
        application: str | None = None,
        *,
        plugin: str | None = None,
        action: str | None = None,
        model: int | str | None = None,
        json: Any = UNSET_JSON,
        json_text: str | bytes | None = None,
        tensors: Mapping[str, Any] | None = None,
        method: str = "post",
        path: str = "/",
        request_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> InferResult:
        """Call a deployed endpoint: by ``application`` name, or by ``plugin`` + ``action``.

        The same payloads as :meth:`Client.infer`: ``json`` and/or ``tensors`` (numpy arrays)
        in, :class:`InferResult` (``json``, ``tensors``) out.
        """
        return await self._unary(
            calls.infer(
                application,
                plugin=plugin,
                action=action,
                model=model,
                json=json,
                json_text=json_text,
                tensors=tensors,
                method=method,
                path=path,
                request_id=request_id,
                timeout=timeout,
            )
        )

    async def infer_stream(
        self,
        application: str | None = None,
        *,
        plugin: str | None = None,
        action: str | None = None,
        model: int | str | None = None,
        json: Any = UNSET_JSON,
        json_text: str | bytes | None = None,
        tensors: Mapping[str, Any] | None = None,
        method: str = "post",
        path: str = "/",
        request_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AsyncIterator[InferResult]:
        """Call an endpoint that yields (InferStream): one :class:`InferResult` per item, as
        :meth:`Client.infer_stream`. Leaving the ``async for`` early cancels the call."""
        call = calls.infer_stream(
            application,
            plugin=plugin,
            action=action,
            model=model,
            json=json,
            json_text=json_text,
            tensors=tensors,
            method=method,
            path=path,
            request_id=request_id,
            timeout=timeout,
        )
        async with self._stream(call) as responses:
            async for response in responses:
                yield calls.infer_stream_item(response)

    async def list_deployments(
        self, plugin: str | None = None, name: str | None = None
    ) -> list[DeploymentInfo]:
        """The caller's deployments (first page of up to 1000), newest first."""
        return await self._unary(calls.list_deployments(plugin, name))

    async def get_deployment(self, deployment_id: int) -> DeploymentInfo:
        """One deployment with fresh status and replicas."""
        return await self._unary(calls.get_deployment(deployment_id))

    async def delete_deployment(self, deployment_id: int) -> DeploymentInfo:
        """Undeploy a serve application."""
        return await self._unary(calls.delete_deployment(deployment_id))

    async def register_deployment(
        self,
        name: str,
        plugin: str,
        action: str,
        *,
        job_id: str = "",
        route_prefix: str = "",
        model_ids: list[int] | None = None,
        ray_actor_options: Mapping[str, Any] | None = None,
        endpoint_action: str = "",
    ) -> tuple[DeploymentInfo, bool]:
        """Record a deployed serve application (a deployment job's worker only)."""
        return await self._unary(
            calls.register_deployment(
                name,
                plugin,
                action,
                job_id=job_id,
                route_prefix=route_prefix,
                model_ids=model_ids,
                ray_actor_options=ray_actor_options,
                endpoint_action=endpoint_action,
            )
        )
