"""The model registry: register (streamed upload), get, list, download (streamed), delete.

Transport-neutral: the gRPC servicer converts messages and calls these coroutines with the
caller's tenant. File and hashing work runs in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models import (
    ArchiveError,
    ExtractionLimits,
    ModelIntegrityError,
    inspect_archive,
)

from synapse_server.core._errors import FailedPreconditionError, InvalidArgumentError
from synapse_server.core._paging import checked_page_size
from synapse_server.core.artifacts import ArtifactStore, ChecksumTally, SharedArtifacts
from synapse_server.core.models._records import ModelPage, ModelRecord, ModelUploadSpec
from synapse_server.core.models._store import ModelStore

__all__ = ["ModelRegistryLimits", "ModelRegistryService", "ModelUsageCheck"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024
# With a shared artifacts directory, uploads of other servers may sit committed but not yet
# referenced for as long as their row insert takes: far less than this.
_SHARED_ORPHAN_GRACE_SECONDS = 3600.0
MAX_CHUNK_SIZE = 4 * 1024 * 1024
_MAX_NAME = 256

# Returns why the model cannot be deleted (e.g. "deployed in app 'x'"), or None when it can.
ModelUsageCheck = Callable[[str, int], Awaitable[str | None]]


@dataclass(frozen=True)
class ModelRegistryLimits:
    """Size limits of the registry.

    ``max_archive_bytes`` caps the uploaded archive; ``extraction`` caps what it may expand to
    (checked at registration, so an archive bomb is refused before anyone downloads it).
    """

    max_archive_bytes: int = 10 * 1024**3
    extraction: ExtractionLimits = field(default_factory=ExtractionLimits)


def _check_metadata(value: Any, path: str = "metadata") -> None:
    """Metadata must be plain JSON (it travels as a protobuf Struct)."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{path}: non-finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_metadata(item, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(f"{path}: keys must be strings")
            _check_metadata(item, f"{path}.{key}")
        return
    raise InvalidArgumentError(f"{path}: {type(value).__name__} is not JSON")


class ModelRegistryService:
    """Models of every tenant: metadata in a :class:`ModelStore`, archives in an ArtifactStore.

    Artifacts are shared between models with identical archives; the last model using one
    removes it. A lock orders "commit artifact + insert row" against "delete row + remove
    unreferenced artifact", so a concurrent upload of the same archive never loses its file.
    """

    def __init__(
        self,
        store: ModelStore,
        artifacts: ArtifactStore,
        limits: ModelRegistryLimits | None = None,
        usage_check: ModelUsageCheck | None = None,
        *,
        orphan_grace_seconds: float = 0.0,
    ) -> None:
        """``orphan_grace_seconds``: an unreferenced artifact younger than this is kept at
        :meth:`open` (another server sharing the directory may be about to insert its row)."""
        self._store = store
        self._artifacts = artifacts
        # The artifact files are shared with the other registries (datasets): see artifacts.
        self._shared = SharedArtifacts(artifacts, orphan_grace_seconds=orphan_grace_seconds)
        self._shared.add_referrer(store)
        self._tally = ChecksumTally(artifacts)
        self._limits = limits or ModelRegistryLimits()
        self._usage_check = usage_check

    @classmethod
    def for_data_dir(
        cls,
        store: ModelStore,
        data_dir: Path,
        limits: ModelRegistryLimits | None = None,
        usage_check: ModelUsageCheck | None = None,
        *,
        shared_by: str = "",
    ) -> ModelRegistryService:
        """The registry with artifacts under ``<data_dir>/models``.

        ``shared_by``: this server's id when several servers share the directory (uploads in
        progress kept apart, young unreferenced artifacts left alone at start).
        """
        lim = limits or ModelRegistryLimits()
        artifacts = ArtifactStore(data_dir / "models", lim.max_archive_bytes, uploader=shared_by)
        grace = _SHARED_ORPHAN_GRACE_SECONDS if shared_by else 0.0
        return cls(store, artifacts, lim, usage_check, orphan_grace_seconds=grace)

    @property
    def limits(self) -> ModelRegistryLimits:
        """The registry's size limits."""
        return self._limits

    @property
    def artifacts(self) -> SharedArtifacts:
        """The artifact files and their references, for the registries that share them."""
        return self._shared

    def stored_bytes(self) -> int:
        """Bytes of model archives on disk (blocking: reads the file system); the files the
        other registries alone use (datasets) are theirs."""
        return self._tally.stored_bytes()

    async def refresh_stored(self) -> None:
        """Read again which files models use (for :meth:`stored_bytes`): servers sharing the
        database store models this one does not hear of."""
        self._tally.reset(await self._store.all_checksums())

    async def open(self) -> None:
        """Prepare directories and drop artifacts no registry references (an interrupted
        upload). Every registry sharing :attr:`artifacts` must have joined it by now."""
        await self._shared.open()
        self._tally.reset(await self._store.all_checksums())

    def _validate_spec(self, spec: ModelUploadSpec) -> None:
        if not spec.name.strip():
            raise InvalidArgumentError("name is required", field="info.name")
        if len(spec.name) > _MAX_NAME:
            raise InvalidArgumentError(f"name is longer than {_MAX_NAME} characters")
        if spec.expected_sha256 and (
            len(spec.expected_sha256) != 64
            or not set(spec.expected_sha256) <= set("0123456789abcdef")
        ):
            raise InvalidArgumentError("expected_sha256 must be 64 lower-case hex digits")
        if not isinstance(spec.metadata, dict):
            raise InvalidArgumentError("metadata must be a JSON object")
        _check_metadata(spec.metadata)

    async def register(
        self, tenant: str, spec: ModelUploadSpec, chunks: AsyncIterable[bytes]
    ) -> ModelRecord:
        """Store the archive streamed in ``chunks`` and register it as a model of ``tenant``.

        Raises InvalidArgumentError for bad metadata, an empty, oversized, corrupt or unsafe
        archive (or one not of the declared format) and ModelIntegrityError when the archive's
        sha256 differs from ``spec.expected_sha256``.
        """
        self._validate_spec(spec)
        pending = await asyncio.to_thread(self._artifacts.begin)
        committed = False
        try:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(pending.write, chunk)
            sha256 = await asyncio.to_thread(pending.finish)
            if pending.size == 0:
                raise InvalidArgumentError("the model archive is empty")
            if spec.expected_sha256 and spec.expected_sha256 != sha256:
                raise ModelIntegrityError(
                    f"uploaded archive has sha256 {sha256}, expected {spec.expected_sha256}"
                )
            try:
                await asyncio.to_thread(
                    inspect_archive, pending.path, spec.archive_format, self._limits.extraction
                )
            except ArchiveError as exc:
                raise InvalidArgumentError(f"model archive rejected: {exc}") from exc
            record = ModelRecord(
                id=0,
                tenant=tenant,
                name=spec.name.strip(),
                description=spec.description,
                framework=spec.framework,
                metadata=spec.metadata,
                sha256=sha256,
                size_bytes=pending.size,
                archive_format=spec.archive_format,
                created_at=time.time(),
            )

            async def insert() -> ModelRecord:
                nonlocal committed
                committed = True
                inserted = await self._store.insert(record)
                self._tally.add(sha256)
                return inserted

            stored = await self._shared.commit(pending, sha256, insert)
        finally:
            if not committed:
                await asyncio.to_thread(pending.discard)
        logger.info(
            "registered model %d %r (%s, %d bytes) for tenant %s",
            stored.id,
            stored.name,
            sha256[:12],
            stored.size_bytes,
            tenant,
        )
        return stored

    async def get(self, tenant: str, model_id: int) -> ModelRecord:
        """The tenant's model; ModelNotFoundError for unknown ids and other tenants' models."""
        record = await self._store.get(tenant, model_id)
        if record is None:
            raise ModelNotFoundError(model_id)
        return record

    async def list(
        self, tenant: str, *, name: str = "", page_size: int = 0, page_token: str = ""
    ) -> ModelPage:
        """The tenant's models, newest first; ``page_size`` 0 means the default (100)."""
        return await self._store.list(tenant, name, checked_page_size(page_size), page_token)

    async def download(
        self, tenant: str, model_id: int, chunk_size: int = 0
    ) -> tuple[ModelRecord, AsyncIterator[bytes]]:
        """The model and an iterator over its archive's chunks (verified against its sha256)."""
        if chunk_size < 0 or chunk_size > MAX_CHUNK_SIZE:
            raise InvalidArgumentError(f"chunk_size_bytes must be between 0 and {MAX_CHUNK_SIZE}")
        record = await self.get(tenant, model_id)
        if not await asyncio.to_thread(self._artifacts.exists, record.sha256):
            raise ModelIntegrityError(f"the artifact of model {model_id} is missing from storage")
        return record, self._chunks(record.sha256, chunk_size or DEFAULT_CHUNK_SIZE)

    async def _chunks(self, sha256: str, chunk_size: int) -> AsyncIterator[bytes]:
        reader = self._artifacts.read(sha256, chunk_size)
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, reader, done)
            if chunk is done:
                return
            assert isinstance(chunk, bytes)
            yield chunk

    async def delete(self, tenant: str, model_id: int) -> ModelRecord:
        """Delete the model, and its artifact once no other model uses it."""
        await self.get(tenant, model_id)
        if self._usage_check is not None:
            reason = await self._usage_check(tenant, model_id)
            if reason:
                raise FailedPreconditionError(f"model {model_id} is in use: {reason}")
        async with self._shared.lock:
            removed = await self._store.delete(tenant, model_id)
            if removed is None:
                raise ModelNotFoundError(model_id)
            await self._shared.release_locked(removed.sha256)
            if await self._store.references(removed.sha256) == 0:
                self._tally.discard(removed.sha256)
        logger.info("deleted model %d for tenant %s", model_id, tenant)
        return removed
