"""The dataset registry: upload (streamed), get, list, download (streamed), delete, and the
outputs jobs write (staged while the job runs, visible once it succeeds).

Transport-neutral: the gRPC servicers convert messages and call these coroutines with the
caller's tenant. Files live in the artifact store the model registry shares (identical bytes
share one file); hashing, schema reading and file work run in worker threads, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from synapse_sdk.models import ModelIntegrityError

from synapse_server.core._errors import InvalidArgumentError, ServerError, quoted
from synapse_server.core._paging import checked_page_size
from synapse_server.core.artifacts import ChecksumTally, PendingArtifact, SharedArtifacts
from synapse_server.core.datasets._inspect import inspect_dataset
from synapse_server.core.datasets._records import (
    DATASET_ID_PREFIX,
    DatasetFormat,
    DatasetPage,
    DatasetRecord,
    DatasetUploadSpec,
    new_dataset_id,
)
from synapse_server.core.datasets._store import DatasetStore

__all__ = [
    "DatasetNotFoundError",
    "DatasetRegistryLimits",
    "DatasetRegistryService",
    "check_dataset_name",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 4 * 1024 * 1024
MAX_NAME = 256
_HEX = frozenset("0123456789abcdef")

# Stores a checked record's row (an upload's insert, a job output's staging).
AsyncInsert = Callable[[DatasetRecord], Awaitable[DatasetRecord | None]]


class DatasetNotFoundError(ServerError, LookupError):
    """No dataset with this id (or name) visible to the caller: another tenant's dataset is
    reported the same (NOT_FOUND on the wire)."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"dataset {quoted(ref)} not found")


@dataclass(frozen=True)
class DatasetRegistryLimits:
    """``max_dataset_bytes`` caps one uploaded dataset or job output file."""

    max_dataset_bytes: int = 50 * 1024**3


def check_dataset_name(name: str, field: str = "info.name") -> str:
    """The name stripped; INVALID_ARGUMENT when empty, too long, with control characters or
    shaped like a dataset id (a reference would then be ambiguous)."""
    stripped = name.strip()
    if not stripped:
        raise InvalidArgumentError("name is required", field=field)
    if len(stripped) > MAX_NAME:
        raise InvalidArgumentError(f"name is longer than {MAX_NAME} characters", field=field)
    if any(unicodedata.category(c).startswith("C") for c in stripped):
        raise InvalidArgumentError("name must not contain control characters", field=field)
    if stripped.startswith(DATASET_ID_PREFIX):
        raise InvalidArgumentError(
            f"name must not start with {DATASET_ID_PREFIX!r} (dataset ids do)", field=field
        )
    return stripped


def _check_id(dataset_id: str) -> str:
    if not dataset_id:
        raise InvalidArgumentError("dataset_id is required", field="dataset_id")
    return dataset_id


class DatasetRegistryService:
    """Datasets of every tenant: rows in a :class:`DatasetStore`, files in shared artifacts.

    Joins ``artifacts`` as a referrer at construction: build it before the artifacts' orphan
    sweep (``ModelRegistryService.open``), so its files are never taken for orphans.
    """

    def __init__(
        self,
        store: DatasetStore,
        artifacts: SharedArtifacts,
        limits: DatasetRegistryLimits | None = None,
    ) -> None:
        self._store = store
        self._artifacts = artifacts
        self._limits = limits or DatasetRegistryLimits()
        self._tally = ChecksumTally(artifacts.files)
        artifacts.add_referrer(store)

    @property
    def limits(self) -> DatasetRegistryLimits:
        """The registry's size limit."""
        return self._limits

    async def open(self, job_over: Callable[[str], Awaitable[bool]] | None = None) -> None:
        """Drop the outputs a previous process staged for jobs that can no longer succeed.

        ``job_over(job_id)``: whether that job has ended (servers sharing a database: the
        others' jobs run on); None for a server that owns every job, where after a restart
        no job of a previous process runs on, so every staged output goes.
        """
        self._tally.reset(await self._store.all_checksums())
        for job_id in await self._store.staged_jobs():
            if job_over is None or await job_over(job_id):
                await self.discard_outputs(job_id)

    async def refresh_stored(self) -> None:
        """Read again which files datasets use (for :meth:`stored_bytes`): servers sharing
        the database store datasets this one does not hear of."""
        self._tally.reset(await self._store.all_checksums())

    def stored_bytes(self) -> int:
        """Bytes of the files datasets and job outputs use (blocking: reads the file
        system); a file a model shares counts here too."""
        return self._tally.stored_bytes()

    async def _forget(self, sha256: str) -> None:
        # After a row went: the gauge stops counting a file no dataset row uses.
        if await self._store.references(sha256) == 0:
            self._tally.discard(sha256)

    # Uploads --------------------------------------------------------------------------------

    async def _receive(
        self, chunks: AsyncIterable[bytes], what: str
    ) -> tuple[PendingArtifact, str]:
        """Stream ``chunks`` into a temp file; the pending artifact and its sha256."""
        pending = await asyncio.to_thread(
            self._artifacts.files.begin, self._limits.max_dataset_bytes, what
        )
        try:
            try:
                async for chunk in chunks:
                    if chunk:
                        await asyncio.to_thread(pending.write, chunk)
            finally:
                # A source left part-read (past the size limit, cancelled) lets go of what
                # it holds (a file, a stream) now, not when it is collected.
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
            sha256 = await asyncio.to_thread(pending.finish)
        except BaseException:
            await asyncio.to_thread(pending.discard)
            raise
        return pending, sha256

    async def _store_file(
        self,
        tenant: str,
        name: str,
        fmt: DatasetFormat,
        chunks: AsyncIterable[bytes],
        *,
        expected_sha256: str = "",
        job_id: str = "",
    ) -> tuple[DatasetRecord, PendingArtifact]:
        """Receive and check a file; the record it would be and its pending artifact (the
        caller commits it or discards it)."""
        what = "job output" if job_id else "dataset"
        pending, sha256 = await self._receive(chunks, what)
        try:
            if pending.size == 0:
                raise InvalidArgumentError(f"the {what} file is empty")
            if expected_sha256 and expected_sha256 != sha256:
                raise ModelIntegrityError(
                    f"uploaded {what} has sha256 {sha256}, expected {expected_sha256}"
                )
            rows, columns = await asyncio.to_thread(inspect_dataset, pending.path, fmt)
        except BaseException:
            await asyncio.to_thread(pending.discard)
            raise
        record = DatasetRecord(
            id=new_dataset_id(),
            tenant=tenant,
            name=name,
            format=fmt,
            sha256=sha256,
            size_bytes=pending.size,
            num_rows=rows,
            columns=columns,
            created_at=time.time(),
            job_id=job_id,
            committed=not job_id,
        )
        return record, pending

    async def _commit(
        self, pending: PendingArtifact, record: DatasetRecord, insert: AsyncInsert
    ) -> DatasetRecord | None:
        moved = False

        async def run() -> DatasetRecord | None:
            nonlocal moved
            moved = True
            stored = await insert(record)
            self._tally.add(record.sha256)
            return stored

        try:
            return await self._artifacts.commit(pending, record.sha256, run)
        finally:
            if not moved:
                await asyncio.to_thread(pending.discard)

    async def upload(
        self, tenant: str, spec: DatasetUploadSpec, chunks: AsyncIterable[bytes]
    ) -> DatasetRecord:
        """Store the file streamed in ``chunks`` as a dataset of ``tenant``.

        Raises InvalidArgumentError for a bad name, an empty file or one that is not a valid
        file of ``spec.format`` (naming the problem), ArtifactTooLargeError past the size
        limit and ModelIntegrityError when the sha256 differs from ``spec.expected_sha256``.
        Nothing is stored when it raises.
        """
        name = check_dataset_name(spec.name)
        expected = spec.expected_sha256
        if expected and (len(expected) != 64 or not set(expected) <= _HEX):
            raise InvalidArgumentError("expected_sha256 must be 64 lower-case hex digits")
        record, pending = await self._store_file(
            tenant, name, spec.format, chunks, expected_sha256=expected
        )
        stored = await self._commit(pending, record, self._store.insert)
        assert stored is not None
        logger.info(
            "stored dataset %s %r (%s, %d rows, %d bytes) for tenant %s",
            stored.id,
            stored.name,
            stored.sha256[:12],
            stored.num_rows,
            stored.size_bytes,
            tenant,
        )
        return stored

    async def stage_output(
        self, tenant: str, job_id: str, name: str, chunks: AsyncIterable[bytes]
    ) -> DatasetRecord:
        """Store a job's output (Parquet) as staged: visible once :meth:`commit_outputs` runs
        for the job. A second output of the same name replaces the first."""
        name = check_dataset_name(name)
        record, pending = await self._store_file(
            tenant, name, DatasetFormat.PARQUET, chunks, job_id=job_id
        )
        replaced: DatasetRecord | None = None

        async def stage(rec: DatasetRecord) -> DatasetRecord:
            nonlocal replaced
            replaced = await self._store.stage_output(rec)
            return rec

        await self._commit(pending, record, stage)
        if replaced is not None:
            await self._artifacts.release(replaced.sha256)
            await self._forget(replaced.sha256)
        logger.info(
            "job %s: staged output %r (%d rows, %d bytes)",
            job_id,
            name,
            record.num_rows,
            record.size_bytes,
        )
        return record

    # Job outputs ----------------------------------------------------------------------------

    async def commit_outputs(self, job_id: str) -> None:
        """The job succeeded: its staged outputs become datasets."""
        count = await self._store.commit_outputs(job_id)
        if count:
            logger.info("job %s: %d output(s) stored", job_id, count)

    async def discard_outputs(self, job_id: str) -> None:
        """The job did not succeed: drop its staged outputs (and their unshared files)."""
        removed = await self._store.discard_outputs(job_id)
        for record in removed:
            await self._artifacts.release(record.sha256)
            await self._forget(record.sha256)
        if removed:
            logger.info("job %s: dropped %d staged output(s)", job_id, len(removed))

    async def job_outputs(self, tenant: str, job_id: str) -> builtins.list[DatasetRecord]:
        """The job's stored outputs (the caller checked the job is the tenant's)."""
        return await self._store.job_outputs(tenant, job_id)

    # Reading --------------------------------------------------------------------------------

    async def get(self, tenant: str, dataset_id: str) -> DatasetRecord:
        """The tenant's dataset; DatasetNotFoundError for unknown ids and other tenants'."""
        record = await self._store.get(tenant, _check_id(dataset_id))
        if record is None:
            raise DatasetNotFoundError(dataset_id)
        return record

    async def list(
        self, tenant: str, *, name: str = "", page_size: int = 0, page_token: str = ""
    ) -> DatasetPage:
        """The tenant's datasets, newest first; ``page_size`` 0 means the default (100)."""
        return await self._store.list(tenant, name, checked_page_size(page_size), page_token)

    async def download(
        self, tenant: str, dataset_id: str, chunk_size: int = 0
    ) -> tuple[DatasetRecord, AsyncIterator[bytes]]:
        """The dataset and an iterator over its file's chunks (verified against its sha256)."""
        if chunk_size < 0 or chunk_size > MAX_CHUNK_SIZE:
            raise InvalidArgumentError(
                f"chunk_size_bytes must be between 0 and {MAX_CHUNK_SIZE}",
                field="chunk_size_bytes",
            )
        record = await self.get(tenant, dataset_id)
        if not await asyncio.to_thread(self._artifacts.files.exists, record.sha256):
            raise ModelIntegrityError(f"the file of dataset {record.id} is missing from storage")
        return record, self._chunks(record.sha256, chunk_size or DEFAULT_CHUNK_SIZE)

    async def _chunks(self, sha256: str, chunk_size: int) -> AsyncIterator[bytes]:
        reader = self._artifacts.files.read(sha256, chunk_size)
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, reader, done)
            if chunk is done:
                return
            assert isinstance(chunk, bytes)
            yield chunk

    async def delete(self, tenant: str, dataset_id: str) -> DatasetRecord:
        """Delete the dataset, and its file once nothing else uses it."""
        _check_id(dataset_id)
        async with self._artifacts.lock:
            removed = await self._store.delete(tenant, dataset_id)
            if removed is None:
                raise DatasetNotFoundError(dataset_id)
            await self._artifacts.release_locked(removed.sha256)
        await self._forget(removed.sha256)
        logger.info("deleted dataset %s for tenant %s", dataset_id, tenant)
        return removed
