"""Storage failures as domain errors, shared by every store and file writer of the server.

A full disk, an I/O error or a database locked for longer than the busy timeout reach the
stores as ``OSError`` or as their database driver's exceptions. Callers only ever see
:class:`StorageError` subclasses: :class:`StorageFullError` (RESOURCE_EXHAUSTED) or
:class:`StorageUnavailableError` (UNAVAILABLE): the job service retries on them, the gRPC
layer maps them once. Other failures (a bug, a corrupt file) pass through unchanged and stay
INTERNAL. File system errors are classified here; each store backend classifies its driver's
errors (``synapse_server.stores``) and hands its translator to :class:`StorageGuard`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from synapse_server.core._errors import StorageError, StorageFullError, StorageUnavailableError

__all__ = ["StorageGuard", "StorageTranslator", "as_storage_error", "transient_storage_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Turns an exception into the storage error it stands for (``directory``: where the failing
#: file lives), or ``None`` when it is not a storage failure.
StorageTranslator = Callable[[BaseException, Path | None], StorageError | None]

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_TRANSIENT_ERRNOS = {
    errno.EIO: "disk I/O error",
    errno.EROFS: "read-only file system",
    errno.EBUSY: "device busy",
    errno.EAGAIN: "resource temporarily unavailable",
    errno.ENFILE: "too many open files",
    errno.EMFILE: "too many open files",
}
# An I/O error on a file system with less free space than this is taken for a full disk:
# SQLite reports some writes that hit ENOSPC (growing its shared-memory file) as I/O errors.
_NEARLY_FULL_BYTES = 256 << 10
# While storage keeps failing, each store logs the failure at most this often.
_LOG_EVERY_SECONDS = 30.0


def as_storage_error(exc: BaseException, directory: Path | None = None) -> StorageError | None:
    """The domain error for ``exc`` when it is a file system failure, else ``None``.

    ``directory`` (where the failing file lives) lets an ambiguous I/O error be recognised as
    a full disk. A :class:`StorageError` is returned as it is.
    """
    if isinstance(exc, StorageError):
        return exc
    if not isinstance(exc, OSError):
        return None
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError()
    cause = _TRANSIENT_ERRNOS.get(exc.errno or 0)
    return None if cause is None else transient_storage_error(cause, directory)


def transient_storage_error(cause: str, directory: Path | None = None) -> StorageError:
    """A failure that goes away by itself (``cause`` names it in a few words), or a full
    disk when ``directory``'s file system has next to no free space left."""
    if directory is not None and _nearly_full(directory):
        return StorageFullError()
    return StorageUnavailableError(cause)


def _nearly_full(directory: Path) -> bool:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES


class StorageGuard:
    """Runs one store's storage calls: translates failures, logs them (throttled) and the
    recovery.

    ``name`` says what is stored (``job store``), ``path`` where (a file, or a database
    server's address without credentials); both go to the server log only, never to callers.
    ``translate`` classifies failures (file system errors by default; a database store passes
    its driver's translator).
    """

    def __init__(
        self,
        name: str,
        path: Path | str,
        *,
        directory: Path | None = None,
        translate: StorageTranslator = as_storage_error,
    ) -> None:
        self._name = name
        self._path = path
        self._translate = translate
        # Where free space is measured: the file's directory unless told otherwise (none for
        # a database on another server).
        if directory is None and isinstance(path, Path):
            directory = path.parent
        self._directory = directory
        self._lock = threading.Lock()
        self._failing = False
        self._last_log = 0.0
        self._failures = 0

    def translate(self, exc: BaseException) -> StorageError | None:
        """``exc`` as a storage error (see :func:`as_storage_error`), or ``None``."""
        return self._translate(exc, self._directory)

    def call(self, fn: Callable[[], T], *, write: bool = True) -> T:
        """``fn()``, with a storage failure raised as a :class:`StorageError`.

        Only a ``write`` that succeeds ends a failure period: reads often still work on a
        full disk.
        """
        with self.guarded(write=write):
            return fn()

    @contextlib.contextmanager
    def guarded(self, *, write: bool = True) -> Iterator[None]:
        """The block's storage failures raised as :class:`StorageError` (see :meth:`call`)."""
        try:
            yield
        except Exception as exc:
            error = self.translate(exc)
            if error is None:
                raise
            self.failed(exc, error)
            raise error from exc
        if write and self._failing:
            self.succeeded()

    def failed(self, exc: BaseException, error: StorageError) -> None:
        """Record a failure; log it unless one was logged recently."""
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            first = not self._failing
            self._failing = True
            if not first and now - self._last_log < _LOG_EVERY_SECONDS:
                return
            self._last_log = now
            failures, self._failures = self._failures, 0
        logger.warning(
            "%s: storage failure at %s: %s (%s)%s",
            self._name,
            self._path,
            error.cause,
            exc,
            "" if first else f"; {failures} failures since the last report",
        )

    def succeeded(self) -> None:
        """Record that storage works (again)."""
        with self._lock:
            if not self._failing:
                return
            self._failing = False
            self._failures = 0
        logger.warning("%s: %s is writable again", self._name, self._path)
