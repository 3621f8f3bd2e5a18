"""The blocking client: :class:`Client` and the :class:`JobHandle` it returns for each job.

Every method builds its call with ``_calls`` and the other sans-IO modules and only performs
it here; :class:`~synapse_client.AsyncClient` is the same client, awaited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import _calls as calls
from ._config import retry_delay
from ._core import ClientCore
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

__all__ = ["Client", "JobHandle"]


class JobHandle(JobHandleBase["Client"]):
    """One job on the server: follow its events, wait for its result, cancel it.

    Handles are cheap and stateless on the server side: any number may follow the same job,
    and a handle can be rebuilt from the id alone (``Client.job(job_id)``).
    """

    def refresh(self) -> Job:
        """Fetches the job's current state (GetJob)."""
        self.job = self._client.get_job(self._id)
        return self.job

    def events(self, after_seq: int = 0, *, follow: bool = True) -> Iterator[JobEvent]:
        """Every event with seq > ``after_seq``, live, ending with the terminal event.

        A dropped stream is reopened from the last delivered seq, so the caller sees each
        event exactly once and in order. Pass a saved seq to resume where a previous
        iteration (even in another process) stopped. ``follow=False`` yields only the
        events stored so far and stops.
        """
        return self._follow(EventSequencer(self._id, after_seq, follow), deadline=None)

    def progress(self, after_seq: int = 0) -> Iterator[JobEvent]:
        """Like :meth:`events`, keeping only progress events (``event.payload`` is one)."""
        return (e for e in self.events(after_seq) if isinstance(e.payload, ProgressEvent))

    def result(self, timeout: float | None = None) -> Any:
        """Waits for the job to finish and returns its parsed JSON result.

        Raises :class:`JobFailedError` (with the plugin's error type, message and traceback),
        :class:`JobCancelledError`, or :class:`JobTimeoutError` after ``timeout`` seconds
        (the job keeps running). Once this handle's :meth:`events` delivered the terminal
        event, an inline result needs no call.
        """
        if self._result is not UNSET:
            return self._result
        deadline = deadline_after(timeout)
        with job_timeout(self._id, timeout):
            terminal = self._terminal
            if terminal is None:
                job = self._client.get_job(self._id, timeout=remaining(deadline), with_params=False)
                sequencer = EventSequencer(self._id, result_stream_start(job))
                for _ in self._follow(sequencer, deadline):
                    pass
                terminal = finished_terminal(sequencer)
            else:
                raise_for_terminal(self._id, terminal)
            if terminal.result_inline:
                value = inline_result(self._id, terminal)
            else:
                value = self._fetch_result(deadline)
        self._result = value
        return value

    def cancel(self, reason: str = "") -> Job:
        """Asks the server to cancel the job; returns the job as it is right after."""
        self.job = self._client.cancel_job(self._id, reason)
        return self.job

    def outputs(self) -> list[DatasetInfo]:
        """The datasets the job wrote (kept only once it SUCCEEDED), by name."""
        return self._client.list_job_outputs(self._id)

    def download_output(
        self, dest: DownloadDestination, name: str | None = None, *, chunk_size: int = 0
    ) -> DatasetInfo:
        """Streams the job's output ``name`` (default: its only one) into ``dest`` (a path
        or a writable object) as Parquet; see :meth:`Client.download_dataset`.

        Raises :class:`OutputNotFoundError` when the job has no such output.
        """
        output = pick_output(self._id, self.outputs(), name)
        return self._client.download_dataset(output.id, dest, chunk_size=chunk_size)

    def _follow(self, sequencer: EventSequencer, deadline: float | None) -> Iterator[JobEvent]:
        follower = ProgressFollower(sequencer, self._client._config.retry)
        while True:
            call = calls.stream_progress(follower.request(), remaining(deadline))
            failure: SynapseClientError | None
            try:
                with self._client._stream(call) as responses:
                    for response in responses:
                        yield from map(self._note, follower.accept(response))
                failure = follower.end_of_stream()
            except RpcFailedError as error:
                failure = error
            if failure is None:
                return
            time.sleep(follower.reconnect_after(failure))

    def _fetch_result(self, deadline: float | None) -> Any:
        attempt = 0
        while True:
            attempt += 1
            assembler = ResultAssembler(self._id)
            try:
                with self._client._stream(
                    calls.get_job_result(self._id, remaining(deadline))
                ) as chunks:
                    for chunk in chunks:
                        assembler.add(chunk)
                return assembler.result()
            except RpcFailedError as failure:
                delay = retry_delay(self._client._config.retry, attempt, failure)
                if delay is None:
                    raise
            time.sleep(delay)


class Client(ClientCore):
    """Blocking client of a Synapse server.

    ``Client("host:port", token=..., tls=TLSConfig(...))``; use it as a context manager or
    call :meth:`close`. Every failed call raises a :class:`SynapseClientError` subclass;
    calls that failed with UNAVAILABLE are retried with backoff first.

    ``interceptors``: grpc client interceptors (``grpc.UnaryUnaryClientInterceptor`` and the
    other three kinds) that every call goes through, in order, retries included.
    ``timeout`` is the default deadline of unary calls; ``channel_options`` are extra grpc
    channel arguments.
    """

    # --- actions and jobs ----------------------------------------------------------------------

    def list_actions(self, plugin: str | None = None) -> list[PluginInfo]:
        """The installed plugins (or just ``plugin``) with their actions and params schemas."""
        return self._unary(calls.list_actions(plugin))

    def run_action(
        self,
        plugin: str,
        action: str,
        params: dict[str, Any] | None = None,
        mode: RunMode | str | None = None,
        request_id: str | None = None,
    ) -> JobHandle:
        """Starts ``plugin``'s ``action`` as a job and returns its handle.

        A ``request_id`` is generated when none is given and reused by every retry, so a
        retried call never starts a second job.
        """
        job, created = self._unary(calls.run_action(plugin, action, params, mode, request_id))
        return JobHandle(self, job.id, job, created=created)

    def job(self, job_id: str) -> JobHandle:
        """A handle for an existing job (no RPC is made)."""
        return JobHandle(self, job_id)

    def get_job(
        self, job_id: str, timeout: float | None = None, *, with_params: bool = True
    ) -> Job:
        """One job by id; raises :class:`NotFoundError` for an unknown one.

        ``with_params=False`` leaves ``params`` empty (cheaper for jobs with large params).
        """
        return self._unary(calls.get_job(job_id, timeout, with_params))

    def list_jobs(
        self,
        state: JobState | str | list[JobState | str] | None = None,
        plugin: str | None = None,
        action: str | None = None,
        page_size: int = 0,
    ) -> Iterator[Job]:
        """Jobs, newest first, fetching further pages as the iteration reaches them."""
        yield from self._paged(calls.list_jobs(state, plugin, action, page_size))

    def cancel_job(self, job_id: str, reason: str = "") -> Job:
        """Asks the server to cancel a job; a finished job is returned unchanged."""
        return self._unary(calls.cancel_job(job_id, reason))

    # --- models --------------------------------------------------------------------------------

    def register_model(
        self,
        archive: str | Path,
        name: str,
        *,
        description: str = "",
        framework: str = "",
        metadata: dict[str, Any] | None = None,
        archive_format: str | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Uploads an archive file (``.zip``, ``.tar``, ``.tar.gz``) as a new model.

        The archive's sha256 is computed first and sent along, so the server verifies what it
        received. Pack a directory first (``synapse model register DIR`` does it for you).
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
        sha256 = file_sha256(upload.path)

        def requests() -> Iterator[Any]:
            yield upload.header(sha256)
            with open(upload.path, "rb") as fh:
                while data := fh.read(upload.chunk_size):
                    yield upload.chunk(data)

        model = self._upload(calls.register_model(timeout), requests())
        logger.info("registered model %d (%s)", model.id, model.name)
        return model

    def get_model(self, model_id: int, timeout: float | None = None) -> ModelInfo:
        """One model's metadata; raises :class:`NotFoundError` for an unknown id."""
        return self._unary(calls.get_model(model_id, timeout))

    def list_models(self, name: str | None = None, page_size: int = 0) -> Iterator[ModelInfo]:
        """Models, newest first, fetching further pages as the iteration reaches them."""
        yield from self._paged(calls.list_models(name, page_size))

    def download_model(
        self,
        model_id: int,
        dest: DownloadDestination,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Streams the model's archive into ``dest`` (a file path or a writable object).

        The bytes are checked against the model's sha256; a mismatch raises
        :class:`ModelChecksumError` and, for a path, leaves no file behind.
        """
        call = calls.download_model(model_id, chunk_size, timeout)
        return self._download_into(call, ModelDownload(model_id), dest)

    def _download_into(
        self, call: calls.StreamCall, download: ArtifactDownload[InfoT], dest: DownloadDestination
    ) -> InfoT:
        """Streams ``call``'s file into ``dest`` through ``download``'s checks; its info."""
        sink = DownloadSink(dest)
        sink.open()
        try:
            with self._stream(call) as messages:
                for message in messages:
                    data = download.accept(message)
                    if data is not None:
                        sink.write(data)
            info = download.finish()
            sink.commit()
        finally:
            sink.discard()
        return info

    def delete_model(self, model_id: int, timeout: float | None = None) -> None:
        """Deletes a model (its artifact goes once no other model shares it)."""
        self._unary(calls.delete_model(model_id, timeout))

    # --- datasets ------------------------------------------------------------------------------

    def upload_dataset(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        format: str | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float | None = None,
    ) -> DatasetInfo:
        """Uploads a dataset file: Parquet (the default), JSON Lines or NumPy ``.npy``.

        ``name`` defaults to the file name without its extension; ``format`` (``parquet``,
        ``jsonl``, ``npy``) to the one its extension names. The server reads the schema and
        refuses a file that is not valid (:class:`InvalidArgumentError`, naming the problem);
        the file's sha256 is sent along and checked.
        """
        upload = DatasetUpload.prepare(path, name, format, chunk_size)
        sha256 = file_sha256(upload.path)

        def requests() -> Iterator[Any]:
            yield upload.header(sha256)
            with open(upload.path, "rb") as fh:
                while data := fh.read(upload.chunk_size):
                    yield upload.chunk(data)

        dataset = self._upload(calls.upload_dataset(timeout), requests())
        logger.info("uploaded dataset %s (%s, %d rows)", dataset.id, dataset.name, dataset.num_rows)
        return dataset

    def get_dataset(self, dataset_id: str, timeout: float | None = None) -> DatasetInfo:
        """One dataset's metadata and schema; :class:`NotFoundError` for an unknown id."""
        return self._unary(calls.get_dataset(dataset_id, timeout))

    def list_datasets(self, name: str | None = None, page_size: int = 0) -> Iterator[DatasetInfo]:
        """Datasets (uploads and job outputs), newest first, page by page as iterated."""
        yield from self._paged(calls.list_datasets(name, page_size))

    def download_dataset(
        self,
        dataset_id: str,
        dest: DownloadDestination,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> DatasetInfo:
        """Streams the dataset's file into ``dest`` (a file path or a writable object).

        The bytes are checked against its sha256; a mismatch raises
        :class:`DatasetChecksumError` and, for a path, leaves no file behind.
        """
        call = calls.download_dataset(dataset_id, chunk_size, timeout)
        return self._download_into(call, DatasetDownload(dataset_id), dest)

    def delete_dataset(self, dataset_id: str, timeout: float | None = None) -> None:
        """Deletes a dataset (its file goes once nothing else shares it)."""
        self._unary(calls.delete_dataset(dataset_id, timeout))

    def list_job_outputs(self, job_id: str, timeout: float | None = None) -> list[DatasetInfo]:
        """The datasets a job wrote (kept only once it SUCCEEDED), by name."""
        return self._unary(calls.list_job_outputs(job_id, timeout))

    # --- inference and deployments -------------------------------------------------------------

    def infer(
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
        timeout: float | None = None,
    ) -> InferResult:
        """Call a deployed endpoint: by ``application`` name, or by ``plugin`` + ``action``.

        ``json`` is the request body (a JSON object maps onto the endpoint's parameters),
        sent as JSON text so integers arrive as integers; ``json_text`` is a body already
        encoded as JSON text (instead of ``json``). ``tensors`` adds binary inputs by
        parameter name (numpy arrays, which the endpoint receives as numpy arrays; binary
        outputs come back in :attr:`InferResult.tensors`).
        ``timeout`` is the call's deadline (the client default when None). Raises the
        client's typed errors (NotFoundError, InvalidArgumentError, UnavailableError,
        DeadlineExceededError, InternalError).
        """
        return self._unary(
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

    def infer_stream(
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
        timeout: float | None = None,
    ) -> Iterator[InferResult]:
        """Call an endpoint that yields (InferStream): one :class:`InferResult` per item, as
        the endpoint produces it. The arguments are :meth:`infer`'s.

        ``timeout`` bounds the whole stream (None: no deadline). Leaving the iteration early
        (``break``, an exception, closing the iterator) cancels the call, which stops the
        endpoint's generator in the replica. Errors are :meth:`infer`'s, raised where the
        iteration reaches them (after the items that came before).
        """
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
        with self._stream(call) as responses:
            for response in responses:
                yield calls.infer_stream_item(response)

    def list_deployments(
        self, plugin: str | None = None, name: str | None = None
    ) -> list[DeploymentInfo]:
        """The caller's deployments (first page of up to 1000), newest first."""
        return self._unary(calls.list_deployments(plugin, name))

    def get_deployment(self, deployment_id: int) -> DeploymentInfo:
        """One deployment with fresh status and replicas."""
        return self._unary(calls.get_deployment(deployment_id))

    def delete_deployment(self, deployment_id: int) -> DeploymentInfo:
        """Undeploy a serve application."""
        return self._unary(calls.delete_deployment(deployment_id))

    def register_deployment(
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
        """Record a deployed serve application (used by ``register_serve_application``).

        Only a deployment job's worker may: the server refuses a client token with
        :class:`PermissionDeniedError`.
        """
        return self._unary(
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
