"""One server per data directory: an exclusive ``flock`` held for the server's whole life.

Two servers on one data directory would each take the other's jobs for their own: the
second one's restart recovery fails the jobs the first is still running, both schedule the
same pending jobs, and the first then waits on workers that no longer report to it. The
lock makes the second server stop at once instead, naming the first.

``flock`` locks belong to the open file, so the kernel releases the lock when the holder
exits in any way (SIGKILL included): a stale lock file never blocks a restart. The file's
text (pid, host, address) only describes the holder for the message; it is not the lock.
Worker processes never inherit the descriptor (it is close-on-exec, and the server forks
nothing without exec).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_FILE_NAME",
    "DataDirectoryInUseError",
    "DataDirectoryLock",
    "DataDirectoryLockError",
]

logger = logging.getLogger(__name__)

LOCK_FILE_NAME = "server.lock"
# The holder's description is tiny; anything longer is not ours and is not echoed.
_MAX_HOLDER_TEXT = 4096


class DataDirectoryLockError(RuntimeError):
    """The data directory cannot be locked (its message is one line for the operator)."""


class DataDirectoryInUseError(DataDirectoryLockError):
    """Another server holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(
            f"data directory {data_dir} is in use by another synapse server "
            f"({describe_holder(holder)}); stop that server or choose another --data-dir"
        )


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h, listening on 127.0.0.1:50051`` from what the holder wrote."""
    pid = holder.get("pid")
    parts = [f"pid {pid}" if isinstance(pid, int) else "pid unknown"]
    host = holder.get("host")
    if isinstance(host, str) and host:
        parts[0] += f" on host {host[:255]}"
    address = holder.get("address")
    if isinstance(address, str) and address:
        parts.append(f"listening on {address[:255]}")
    else:
        parts.append("still starting")
    return ", ".join(parts)


class DataDirectoryLock:
    """The exclusive lock of one data directory (``<data_dir>/server.lock``)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between :meth:`acquire` and :meth:`release`."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirectoryInUseError` at once (never waits)."""
        if self._fd is not None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DataDirectoryLockError(
                f"cannot lock data directory {self.data_dir}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirectoryInUseError(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.record(address="")

    def record(self, address: str) -> None:
        """Describe this process as the holder (its address once it is bound)."""
        if self._fd is None:
            raise RuntimeError("the data directory lock is not held")
        text = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "address": address,
                "since": time.time(),
            }
        ).encode()
        # Rewritten in place under the lock; a reader that catches it half-written only
        # gets a vaguer message. Only a description: a full disk must not stop the server.
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)
        except OSError as exc:
            logger.warning("could not describe this server in %s: %s", self.path, exc)

    def release(self) -> None:
        """Give the lock up (the file stays; its text no longer names a live holder)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, _MAX_HOLDER_TEXT, 0)
        holder = json.loads(data)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
