"""A job worker's scratch directory: where it goes, and removing it after the worker.

A worker that uses datasets downloads them into a directory of its own and writes its
outputs there before sending them; it removes the directory when the job ends, however the
job ended, but a worker killed outright (SIGKILL: a cancel past its grace, the memory
watch, an operator) cannot. So whoever launches a worker picks the directory's exact path
(:func:`new_job_scratch`, one per launch: a job that runs again gets another), hands it to
the worker in ``SYNAPSE_JOB_SCRATCH``, and removes it once the worker has ended
(:func:`remove_scratch`): the local executor, and the Ray supervisor on the worker's node.
Without that, every killed dataset job would leave its dataset copy and partial output
behind until the disk filled.

A worker the local executor launched may hand a finished output over by naming its file in
that directory instead of streaming the bytes (:func:`open_scratch_file`, where the server
checks what it is about to read: the worker runs plugin code).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from synapse_server.core._errors import InvalidArgumentError

__all__ = [
    "JOB_SCRATCH_ENV",
    "LOCAL_ARTIFACTS_ENV",
    "SCRATCH_ENV",
    "new_job_scratch",
    "open_scratch_file",
    "remove_scratch",
    "scratch_file_chunks",
]

#: Where job scratch directories are made (default: the temp directory).
SCRATCH_ENV = "SYNAPSE_DATASET_SCRATCH"
#: The exact scratch directory of one worker, chosen by whoever launches it.
JOB_SCRATCH_ENV = "SYNAPSE_JOB_SCRATCH"
#: The server's artifact blob directory, given to workers on the server's own machine: a
#: dataset the server names is copied from it into the scratch directory (checked against
#: its sha256) instead of downloaded through the server.
LOCAL_ARTIFACTS_ENV = "SYNAPSE_LOCAL_ARTIFACTS"


def new_job_scratch(job_id: str, environ: Mapping[str, str] | None = None) -> Path:
    """A fresh scratch path for one launch of job ``job_id`` (not created: the worker
    creates it when it first needs it, on its own node)."""
    env = os.environ if environ is None else environ
    parent = env.get(SCRATCH_ENV) or env.get("TMPDIR") or tempfile.gettempdir()
    return Path(parent) / f"synapse-job-{job_id}-{uuid.uuid4().hex[:12]}"


def remove_scratch(path: str | os.PathLike[str] | None) -> bool:
    """Remove a worker's scratch directory if it is there; whether it was.

    Never raises: what cannot be removed is left (``rmtree`` ignores errors). A link or a
    file at the path is left alone: the worker makes a directory.
    """
    if not path or not os.path.isdir(path) or os.path.islink(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _refuse(reason: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"local_file: {reason}", field="info.local_file")


def open_scratch_file(scratch: str | os.PathLike[str], name: str) -> int:
    """A read-only descriptor of the file ``name`` in the worker scratch directory
    ``scratch``, for the server to copy (the caller closes it).

    The worker runs plugin code, so nothing it names is trusted: ``name`` must be a plain
    file name; neither the directory nor the file may be a symlink (the file is opened
    relative to the directory's descriptor, both with ``O_NOFOLLOW``); both must belong to
    this process's user; the file must be a regular file with no other hard link (a link to
    a file elsewhere, which the job could not read itself, is refused), and a FIFO or device
    is never waited on (``O_NONBLOCK``). Raises InvalidArgumentError naming the failed check,
    never echoing ``name``.
    """
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise _refuse("must be a plain file name in the job's scratch directory")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(scratch, flags | os.O_DIRECTORY)
    except OSError:
        raise _refuse("the job's scratch directory is missing or not a directory") from None
    try:
        if os.fstat(dir_fd).st_uid != os.geteuid():
            raise _refuse("the job's scratch directory belongs to another user")
        try:
            fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:
            raise _refuse("no such file in the job's scratch directory (or a symlink)") from None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse("not a regular file")
        if info.st_uid != os.geteuid():
            raise _refuse("the file belongs to another user")
        if info.st_nlink != 1:
            raise _refuse("the file has other hard links")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _ScratchReader:
    """One scratch file, opened, read and closed under a lock.

    The open and each read run in a worker thread; the lock makes the close wait for the one
    in flight, so a descriptor is never closed (and its number reused by another open) while
    a thread is about to read from it. Reads stop at the size the file had when opened: a
    file that keeps growing cannot keep the server reading.
    """

    def __init__(self, scratch: str | os.PathLike[str], name: str) -> None:
        self._scratch, self._name = scratch, name
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._left = 0
        self._closed = False

    def open(self) -> None:
        with self._lock:
            if not self._closed:
                self._fd = open_scratch_file(self._scratch, self._name)
                self._left = os.fstat(self._fd).st_size

    def read(self, size: int) -> bytes:
        with self._lock:
            if self._fd is None or self._left <= 0:
                return b""
            data = os.read(self._fd, min(size, self._left))
            self._left -= len(data)
            return data

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def close_soon(self) -> None:
        """Close now if no open or read is in flight, else in a thread once it is done (the
        event loop never waits on the file system)."""
        if self._lock.acquire(blocking=False):
            self._lock.release()
            self.close()
            return
        try:
            asyncio.get_running_loop().run_in_executor(None, self.close)
        except RuntimeError:  # no loop, or its executor is shut down: the server is going
            self.close()


async def scratch_file_chunks(
    scratch: str | os.PathLike[str], name: str, chunk_size: int = 1 << 20
) -> AsyncIterator[bytes]:
    """The bytes of the file ``name`` in ``scratch`` (opened as :func:`open_scratch_file`
    says, at the first chunk asked for), ``chunk_size`` at a time, up to the size it had when
    opened; the open and the reads run in a thread.

    Nothing is opened before the first chunk is asked for: a consumer that fails before
    reading (a bad output name, say) leaves no descriptor behind. The file is closed when
    the chunks end, fail or are dropped, a cancelled read included.
    """
    reader = _ScratchReader(scratch, name)
    try:
        await asyncio.to_thread(reader.open)
        while data := await asyncio.to_thread(reader.read, chunk_size):
            yield data
    finally:
        reader.close_soon()
