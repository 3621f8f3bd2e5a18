"""Content-addressed artifact files: ``<root>/sha256/<aa>/<sha256>``.

Uploads stream into a temporary file in the same file system while being hashed, then move into
place with an atomic rename, so a half-written artifact is never visible under a checksum name
and identical uploads share one file. One store holds the files of every registry (model
archives, datasets, job outputs); which artifacts are still referenced is the registries'
knowledge (see ``_references``); this class only writes, reads, verifies and removes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from synapse_sdk.models import ModelIntegrityError

from synapse_server.core._errors import InvalidArgumentError, ServerError
from synapse_server.core._storage import StorageGuard

__all__ = ["ArtifactStore", "ArtifactTooLargeError", "PendingArtifact", "blob_path"]

logger = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")


class ArtifactTooLargeError(ServerError):
    """An upload exceeded the server's maximum artifact size (RESOURCE_EXHAUSTED on the wire)."""

    def __init__(self, limit: int, what: str = "model archive") -> None:
        self.limit = limit
        super().__init__(f"{what} exceeds the server limit of {limit} bytes")


def _check_sha(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise InvalidArgumentError(f"not a lower-case hex sha256: {sha256!r}")
    return sha256


def blob_path(blob_dir: Path, sha256: str) -> Path:
    """Where the artifact with this checksum lives under ``blob_dir`` (the store's layout,
    which local workers read datasets from too)."""
    _check_sha(sha256)
    return blob_dir / sha256[:2] / sha256


class PendingArtifact:
    """An upload in progress: bytes go to a temp file and into the running hash."""

    def __init__(self, store: ArtifactStore, max_bytes: int, what: str = "model archive") -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._what = what
        with store.guard.guarded():
            fd, name = tempfile.mkstemp(prefix="upload-", dir=store.tmp_dir)
        self.path = Path(name)
        self._fh = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises :class:`ArtifactTooLargeError` past the size limit."""
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise ArtifactTooLargeError(self._max_bytes, self._what)
        self._digest.update(chunk)
        with self._store.guard.guarded():
            self._fh.write(chunk)

    def finish(self) -> str:
        """Flush to disk and return the sha256 of everything written."""
        with self._store.guard.guarded():
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        self._closed = True
        return self._digest.hexdigest()

    def discard(self) -> None:
        """Drop the temp file (after a failure, or when the artifact already exists)."""
        if not self._closed:
            self._closed = True
            # Buffered bytes that no longer fit on a full disk are dropped with the file.
            with contextlib.suppress(OSError):
                self._fh.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    """Artifact files under ``root``, named by their sha256.

    ``uploader``: set when several servers share ``root`` (each names itself): a server's
    uploads in progress live in a temporary directory of its own, which only it cleans up.
    """

    def __init__(self, root: Path, max_bytes: int, *, uploader: str = "") -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blob_dir = root / "sha256"
        self.tmp_dir = root / "tmp" / uploader if uploader else root / "tmp"
        # A full disk or an I/O error while writing leaves as a StorageError (see _storage).
        self.guard = StorageGuard("artifact store", root, directory=root)

    def open(self) -> None:
        """Create the directories and drop temp files left by an interrupted upload."""
        with self.guard.guarded():
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.iterdir():
            if stale.is_dir():  # another server's uploads (shared root)
                continue
            logger.info("removing interrupted upload %s", stale.name)
            stale.unlink(missing_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the artifact with this checksum lives (whether or not it exists)."""
        return blob_path(self.blob_dir, sha256)

    def exists(self, sha256: str) -> bool:
        """True when an artifact with this checksum is stored."""
        return self.path_for(sha256).is_file()

    def begin(self, max_bytes: int | None = None, what: str = "model archive") -> PendingArtifact:
        """Start an upload of at most ``max_bytes`` (default: the store's limit); ``what``
        names the upload in the error that refuses a larger one."""
        return PendingArtifact(self, self.max_bytes if max_bytes is None else max_bytes, what)

    def commit(self, pending: PendingArtifact, sha256: str) -> Path:
        """Move a finished upload into place; an identical artifact already there is kept."""
        final = self.path_for(sha256)
        if final.is_file():
            pending.discard()
            logger.debug("artifact %s already stored; upload deduplicated", sha256)
            return final
        with self.guard.guarded():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(pending.path, 0o444)
            os.replace(pending.path, final)
        return final

    def read(self, sha256: str, chunk_size: int) -> Iterator[bytes]:
        """Yield the artifact in chunks, verifying its checksum as it goes.

        The last chunk is only yielded once the whole file has been hashed; a file that no
        longer matches its name raises :class:`ModelIntegrityError` instead, so a damaged
        artifact never reaches a reader as a complete download.
        """
        path = self.path_for(sha256)
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            pending = fh.read(chunk_size)
            while pending:
                digest.update(pending)
                following = fh.read(chunk_size)
                if not following and digest.hexdigest() != sha256:
                    logger.error("artifact %s is damaged on disk", sha256)
                    raise ModelIntegrityError(
                        f"stored artifact {sha256} no longer matches its checksum"
                    )
                yield pending
                pending = following
        if digest.hexdigest() != sha256:  # empty file under a non-empty digest
            raise ModelIntegrityError(f"stored artifact {sha256} no longer matches its checksum")

    def remove(self, sha256: str) -> None:
        """Delete the artifact file (the caller knows nothing references it any more)."""
        path = self.path_for(sha256)
        path.unlink(missing_ok=True)
        logger.info("removed artifact %s", sha256)

    def stored_bytes(self) -> int:
        """The size of every stored artifact together (read from the file system)."""
        total = 0
        for path in self.blob_dir.glob("*/*"):
            with contextlib.suppress(OSError):  # removed meanwhile
                total += path.stat().st_size
        return total

    def stored(self, older_than: float | None = None) -> Iterable[str]:
        """Checksums of every stored artifact (for orphan cleanup); with ``older_than`` (a
        time), only those moved into place before it (``commit`` renames: the inode's change
        time is the commit's)."""
        for path in self.blob_dir.glob("*/*"):
            if path.is_file() and (older_than is None or path.stat().st_ctime < older_than):
                yield path.name
