"""Who references which artifact: one :class:`ArtifactStore` shared by several registries.

Model archives, datasets and job outputs live in the same content-addressed store, so two of
them with identical bytes share one file. Each registry's metadata store says how often it
uses a checksum (an :class:`ArtifactReferrer`); a file is removed only once no registry
references it, and the orphan sweep at start keeps what any registry references. One lock
orders "commit the file + insert its row" against "delete a row + remove the unreferenced
file", so a concurrent upload of the same bytes never loses its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from synapse_server.core.artifacts._files import ArtifactStore, PendingArtifact

__all__ = ["ArtifactReferrer", "ChecksumTally", "SharedArtifacts"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ArtifactReferrer(Protocol):
    """A metadata store whose rows point at artifacts by checksum."""

    async def references(self, sha256: str) -> int:
        """How many rows (of any tenant) use the artifact with this checksum."""
        ...

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some row references."""
        ...


class ChecksumTally:
    """The checksums one registry references, in memory, for its stored-bytes gauge.

    Changed on the event loop, read at scrape time on another thread: every change replaces
    the set (a reader sees a whole set, never one being changed).
    """

    def __init__(self, files: ArtifactStore) -> None:
        self._files = files
        self._checksums: frozenset[str] = frozenset()

    def reset(self, checksums: set[str]) -> None:
        """Start from what the registry's store references."""
        self._checksums = frozenset(checksums)

    def add(self, sha256: str) -> None:
        """The registry references ``sha256`` now."""
        if sha256 not in self._checksums:
            self._checksums = self._checksums | {sha256}

    def discard(self, sha256: str) -> None:
        """The registry references ``sha256`` no more."""
        if sha256 in self._checksums:
            self._checksums = self._checksums - {sha256}

    def stored_bytes(self) -> int:
        """The size of the files behind the checksums (blocking: reads the file system)."""
        total = 0
        for sha256 in self._checksums:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += self._files.path_for(sha256).stat().st_size
        return total


class SharedArtifacts:
    """An :class:`ArtifactStore` and the registries that reference its files.

    ``orphan_grace_seconds``: an unreferenced artifact younger than this is kept by
    :meth:`collect_orphans` (another server sharing the directory may be about to insert its
    row).
    """

    def __init__(self, files: ArtifactStore, *, orphan_grace_seconds: float = 0.0) -> None:
        self.files = files
        self._grace = orphan_grace_seconds
        self._referrers: list[ArtifactReferrer] = []
        self.lock = asyncio.Lock()

    def add_referrer(self, referrer: ArtifactReferrer) -> None:
        """Count ``referrer``'s rows as references (before :meth:`collect_orphans` runs)."""
        if not any(r is referrer for r in self._referrers):
            self._referrers.append(referrer)

    async def references(self, sha256: str) -> int:
        """How many rows of every registry use the artifact."""
        total = 0
        for referrer in self._referrers:
            total += await referrer.references(sha256)
        return total

    async def commit(
        self, pending: PendingArtifact, sha256: str, insert: Callable[[], Awaitable[T]]
    ) -> T:
        """Move ``pending`` into place and run ``insert`` (the row that references it).

        When ``insert`` fails, the file is removed again unless something else uses it; the
        caller discards ``pending`` when this raises before the file was moved.
        """
        async with self.lock:
            await asyncio.to_thread(self.files.commit, pending, sha256)
            try:
                return await insert()
            except BaseException:
                await self.release_locked(sha256)
                raise

    async def release(self, sha256: str) -> None:
        """Remove the artifact when no registry references it any more."""
        async with self.lock:
            await self.release_locked(sha256)

    async def release_locked(self, sha256: str) -> None:
        """:meth:`release` for a caller that holds :attr:`lock` (its row just deleted)."""
        if await self.references(sha256) == 0:
            await asyncio.to_thread(self.files.remove, sha256)

    async def open(self) -> None:
        """Prepare the directories and sweep orphans (idempotent)."""
        await asyncio.to_thread(self.files.open)
        await self.collect_orphans()

    async def collect_orphans(self) -> None:
        """Remove artifacts no registry references (left by an interrupted upload)."""
        # Listed before the references are read: an artifact committed after the listing
        # cannot be taken for an orphan.
        older_than = time.time() - self._grace if self._grace else None
        stored = await asyncio.to_thread(lambda: set(self.files.stored(older_than)))
        referenced: set[str] = set()
        for referrer in self._referrers:
            referenced |= await referrer.all_checksums()
        for orphan in stored - referenced:
            logger.info("removing unreferenced artifact %s", orphan)
            await asyncio.to_thread(self.files.remove, orphan)
