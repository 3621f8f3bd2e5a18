"""Plugin code snapshots: the code a loaded plugin runs, kept apart from its live directory.

When the catalog loads a plugin, it copies the plugin's directory into
``<data dir>/plugins/<sha256>/``, named by a digest of its content (:func:`code_digest`), and
imports the plugin from that copy. Every mode then runs a job from the copy whose params model
validated the job: local fork servers and workers import it, Ray modes pack it (once per
digest). Nothing reads the live plugin directory after the load, so an edit on disk takes
effect only when the plugins are loaded again (``SIGHUP`` or a restart), and in every mode at
the same moment. Jobs record the digest they ran.

A snapshot is never changed once in place (it is built in a staging directory and renamed,
its files are read-only). :meth:`PluginCodeStore.collect` removes snapshots that nothing
refers to any more.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from synapse_server.core._errors import FailedPreconditionError

__all__ = [
    "MAX_PLUGIN_BYTES",
    "MAX_PLUGIN_FILES",
    "PluginCode",
    "PluginCodeStore",
    "PluginCodeTooLargeError",
    "PluginCodeUnavailableError",
    "code_digest",
    "plugin_files",
]

logger = logging.getLogger(__name__)

#: A plugin bigger than this is refused: model weights belong in the model registry.
MAX_PLUGIN_BYTES = 100 << 20
#: More files than this in a plugin directory is refused (a data set or an environment in it).
MAX_PLUGIN_FILES = 10_000
#: Caches and tool directories: never plugin code, often large, and rewritten by tools.
_SKIP_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
_SKIP_SUFFIXES = (".pyc", ".pyo")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_STAGING_PREFIX = ".staging-"


class PluginCodeTooLargeError(FailedPreconditionError):
    """A plugin directory holds more bytes or files than a snapshot may."""


class PluginCodeUnavailableError(FailedPreconditionError):
    """The code a job was submitted with is no longer kept (or its plugin is gone)."""


@dataclass(frozen=True, slots=True)
class PluginCode:
    """One snapshot of a plugin's code: its content digest and the directory holding it."""

    sha256: str
    path: Path


def plugin_files(directory: Path, *, max_files: int = MAX_PLUGIN_FILES) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every file of a plugin directory, by relative path.

    Caches (``__pycache__``, ``.git``, ``*.pyc`` ...) are left out. Symbolic links are
    followed (the snapshot holds what they point to), each real directory once; anything
    other than a regular file (a socket, a FIFO) is left out.
    """
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            # A link back up the tree (or a second link to one directory): walked once.
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in files:
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(root) / name
            if not path.is_file():
                continue
            found.append((path.relative_to(directory).as_posix(), path))
            if len(found) > max_files:
                raise PluginCodeTooLargeError(
                    f"plugin directory {str(directory)!r} has more than {max_files} files; "
                    "keep data sets and model weights out of it (use the model registry)"
                )
    found.sort(key=lambda item: item[0])
    return found


def _entry_header(relative: str, size: int) -> bytes:
    # The path, a NUL (never in a file name) and the size make the encoding unambiguous:
    # no other set of files yields the same byte stream.
    return relative.encode("utf-8", "surrogateescape") + b"\0" + size.to_bytes(8, "big")


def code_digest(directory: Path) -> str:
    """The sha256 (hex) of a plugin directory's code, as a snapshot of it is named.

    Computed over every file of :func:`plugin_files`, in order of relative path: the path
    (UTF-8), a NUL byte, the size as 8 bytes big-endian, then the bytes. Modes and times are
    not part of it.
    """
    digest = hashlib.sha256()
    for relative, path in plugin_files(directory):
        data = path.read_bytes()
        digest.update(_entry_header(relative, len(data)))
        digest.update(data)
    return digest.hexdigest()


class PluginCodeStore:
    """Content-addressed plugin code snapshots under one directory (``<data dir>/plugins``)."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int = MAX_PLUGIN_BYTES,
        max_files: int = MAX_PLUGIN_FILES,
    ) -> None:
        self._root = Path(root)
        self._max_bytes = max_bytes
        self._max_files = max_files
        # Taking and collecting never interleave: a collection must not remove a snapshot
        # that a concurrent take just found in place.
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The directory holding the snapshots."""
        return self._root

    def take(self, directory: Path) -> PluginCode:
        """Snapshot ``directory``: copy its files and name the copy by their digest.

        Each file is read once, and the digest is computed over the bytes written to the
        copy, so a file edited during the copy cannot make the name lie about the content.
        An identical snapshot already in place is reused (after checking that its files
        still have that digest). Blocking (call off the event loop).
        Raises :class:`PluginCodeTooLargeError` over the size or file limits.
        """
        directory = Path(directory).resolve()
        with self._lock:
            self._root.mkdir(parents=True, exist_ok=True)
            staging = self._root / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
            try:
                digest = self._copy(directory, staging)
                target = self._root / digest
                if target.is_dir():
                    if code_digest(target) == digest:
                        return PluginCode(digest, target)
                    # Changed since it was taken (edited by hand, damaged): the name must
                    # tell the content, so the fresh copy replaces it.
                    logger.warning("plugin code snapshot %s was altered; replacing it", digest)
                    trash = self._root / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
                    target.rename(trash)
                    shutil.rmtree(trash, ignore_errors=True)
                staging.rename(target)
                logger.info("plugin code of %s kept as %s", directory, digest)
                return PluginCode(digest, target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)

    def _copy(self, source: Path, staging: Path) -> str:
        digest = hashlib.sha256()
        total = 0
        staging.mkdir()
        for relative, path in plugin_files(source, max_files=self._max_files):
            # Checked before reading, so a stray multi-gigabyte file is never loaded, and
            # after, as the file may have grown in between.
            if total + path.stat().st_size > self._max_bytes:
                raise self._too_large(source)
            data = path.read_bytes()
            total += len(data)
            if total > self._max_bytes:
                raise self._too_large(source)
            digest.update(_entry_header(relative, len(data)))
            digest.update(data)
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            # Read-only: a snapshot is what jobs were validated against, never edited.
            target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return digest.hexdigest()

    def _too_large(self, source: Path) -> PluginCodeTooLargeError:
        return PluginCodeTooLargeError(
            f"plugin directory {str(source)!r} holds more than {self._max_bytes} bytes of "
            "files; keep model weights in the model registry"
        )

    def get(self, sha256: str) -> PluginCode | None:
        """The snapshot named ``sha256``, or None when it is not (or no longer) kept."""
        if not _DIGEST.match(sha256):
            return None
        path = self._root / sha256
        return PluginCode(sha256, path) if path.is_dir() else None

    def digests(self) -> list[str]:
        """The digests of every snapshot kept."""
        if not self._root.is_dir():
            return []
        return sorted(p.name for p in self._root.iterdir() if _DIGEST.match(p.name))

    def collect(self, keep: Collection[str]) -> list[str]:
        """Remove every snapshot not in ``keep`` (and staging left by a crash); the removed."""
        removed: list[str] = []
        with self._lock:
            if not self._root.is_dir():
                return removed
            for path in self._root.iterdir():
                name = path.name
                if name.startswith(_STAGING_PREFIX) or (_DIGEST.match(name) and name not in keep):
                    shutil.rmtree(path, ignore_errors=True)
                    if _DIGEST.match(name):
                        removed.append(name)
        if removed:
            logger.info(
                "removed %d unused plugin code snapshot(s): %s",
                len(removed),
                ", ".join(d[:12] for d in sorted(removed)),
            )
        return removed
