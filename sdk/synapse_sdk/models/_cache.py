"""A per-machine cache of extracted model archives, keyed by the archive's sha256.

``<cache>/<sha256>/`` holds one extracted archive. It is populated atomically (download and
extract into a staging directory beside it, then rename), under an exclusive file lock per
checksum, so concurrent loads in several processes download once and nobody ever sees a
half-extracted model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from synapse_sdk.errors import SynapseError
from synapse_sdk.models._archive import ArchiveFormat, ExtractionLimits, extract_archive

__all__ = ["ModelCache", "ModelIntegrityError", "default_cache_dir"]

logger = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")


class ModelIntegrityError(SynapseError):
    """Model bytes do not match their sha256 (damaged in transit or in storage)."""


def default_cache_dir() -> Path:
    """``$SYNAPSE_MODEL_CACHE``, else ``$XDG_CACHE_HOME/synapse/models``, else ``~/.cache/...``."""
    explicit = os.environ.get("SYNAPSE_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "synapse" / "models"


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._fh.write(data)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def fetch_verified(
    fetch: Callable[[_HashingWriter], object], dest: Path, sha256: str, label: str
) -> Path:
    """Run ``fetch`` into ``dest`` and check the bytes it wrote hash to ``sha256``."""
    with open(dest, "wb") as fh:
        writer = _HashingWriter(fh)
        fetch(writer)
    actual = writer.digest.hexdigest()
    if actual != sha256:
        dest.unlink(missing_ok=True)
        raise ModelIntegrityError(
            f"{label}: downloaded archive has sha256 {actual}, expected {sha256}"
        )
    return dest


class ModelCache:
    """Extracted model archives under ``root``, one directory per archive checksum."""

    def __init__(self, root: str | Path | None = None, limits: ExtractionLimits | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.limits = limits or ExtractionLimits()

    def path_for(self, sha256: str) -> Path:
        """The directory this checksum's extracted archive lives in (if cached)."""
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise ModelIntegrityError(f"not a sha256 checksum: {sha256!r}")
        return self.root / sha256

    def ensure(
        self,
        sha256: str,
        archive_format: ArchiveFormat | str,
        fetch: Callable[[_HashingWriter], object],
        label: str = "model",
    ) -> Path:
        """The extracted directory for ``sha256``, calling ``fetch`` only when it is missing.

        ``fetch`` writes the archive bytes to the writer it gets; they are verified against
        ``sha256`` before extraction.
        """
        final = self.path_for(sha256)
        if final.is_dir():
            return final
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root / f".{sha256}.lock"):
            if final.is_dir():  # another process filled it while we waited for the lock
                return final
            staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", dir=self.root))
            try:
                archive = fetch_verified(fetch, staging / "archive", sha256, label)
                tree = extract_archive(archive, staging / "tree", archive_format, self.limits)
                os.rename(tree, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        logger.info("cached %s (%s) in %s", label, sha256[:12], final)
        return final
