"""Pre-started ("standby") local worker processes, ready to take a job without import time.

A fresh worker spends seconds importing before it can run anything (grpc, the SDK, the
plugin's dependencies such as torch). The pool keeps, per plugin, a few worker processes
started with ``--standby --preload <plugin>``: they have done those imports and wait on stdin
for one job. Each standby process still runs exactly one job and exits, so isolation between
jobs is the same as with a cold start; the pool only moves the start-up ahead of the job.

Standby processes die with the server (parent-death signal) and are killed by ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable

__all__ = ["StandbyWorkerPool"]

logger = logging.getLogger(__name__)

Spawner = Callable[[str], Awaitable[asyncio.subprocess.Process]]


def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class StandbyWorkerPool:
    """Up to ``size`` idle standby workers for each of the ``max_plugins`` latest plugins.

    ``spawn(plugin)`` starts one standby worker process preloading ``plugin``.
    """

    def __init__(self, spawn: Spawner, size: int, *, max_plugins: int = 4) -> None:
        if size < 0 or max_plugins < 1:
            raise ValueError("size must be >= 0 and max_plugins >= 1")
        self._spawn = spawn
        self._size = size
        self._max_plugins = max_plugins
        # Least recently used plugin first.
        self._idle: OrderedDict[str, list[asyncio.subprocess.Process]] = OrderedDict()
        self._starting: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def size(self) -> int:
        """Idle workers kept per plugin."""
        return self._size

    def idle(self, plugin: str | None = None) -> list[asyncio.subprocess.Process]:
        """The live idle workers (of ``plugin``, or of every plugin)."""
        groups = [self._idle.get(plugin, [])] if plugin is not None else self._idle.values()
        return [p for group in groups for p in group if p.returncode is None]

    def take(self, plugin: str) -> asyncio.subprocess.Process | None:
        """An idle worker that preloaded ``plugin`` (removed from the pool), or None."""
        group = self._idle.get(plugin)
        while group:
            process = group.pop(0)
            if process.returncode is None:
                return process
            logger.warning(
                "standby worker pid %d for %s had exited (%s)",
                process.pid,
                plugin,
                process.returncode,
            )
        return None

    def refill(self, plugin: str) -> None:
        """Start standby workers for ``plugin`` in the background until ``size`` are idle."""
        if self._closed or self._size == 0:
            return
        group = self._idle.setdefault(plugin, [])
        self._idle.move_to_end(plugin)
        group[:] = [p for p in group if p.returncode is None]
        missing = self._size - len(group) - self._starting.get(plugin, 0)
        for _ in range(missing):
            self._starting[plugin] = self._starting.get(plugin, 0) + 1
            task = asyncio.create_task(self._start(plugin), name=f"standby-{plugin}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while len(self._idle) > self._max_plugins:
            old, processes = self._idle.popitem(last=False)
            for process in processes:
                logger.info("standby worker pid %d for %s: evicted", process.pid, old)
                _kill(process)
                self._reap(process)

    async def _start(self, plugin: str) -> None:
        try:
            process = await self._spawn(plugin)
        except Exception:
            logger.exception("could not start a standby worker for %s", plugin)
            return
        finally:
            self._starting[plugin] -= 1
        if self._closed or plugin not in self._idle:
            _kill(process)
            self._reap(process)
            return
        self._idle[plugin].append(process)
        logger.info("standby worker pid %d started for %s", process.pid, plugin)

    def _reap(self, process: asyncio.subprocess.Process) -> None:
        task = asyncio.create_task(process.wait())
        self._tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Kill every idle worker (and any being started) and wait for them."""
        self._closed = True
        # Starts in flight are awaited, not cancelled: a cancelled start could leave a process
        # nobody tracks. Each one sees ``_closed`` and kills what it started.
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        processes = [p for group in self._idle.values() for p in group]
        self._idle.clear()
        for process in processes:
            _kill(process)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
