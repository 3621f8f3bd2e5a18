"""Per-plugin fork servers: worker processes for jobs without paying the imports per job.

A fresh worker spends seconds importing before it can run anything (grpc, the SDK, the
plugin's dependencies such as torch). A fork server (``python -m synapse_server.worker
--fork-server --preload <plugin>``, see ``synapse_server.worker._zygote``) does those imports
once and then forks one child per job; the child runs exactly that job and exits, so isolation
between jobs is that of a fresh process. The server never waits for a worker that is still
importing once the plugin's fork server is ready, however many jobs arrive back to back.

This module is the server's side: :class:`ForkServer` talks to one fork server process over
its stdin/stdout (fork and kill requests; ready, started, exited reports) and relays each
child's exit status to the job that waits for it; :class:`ForkServerPool` keeps one per
recently used plugin. Fork servers die with the server (parent-death signal), their children
with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from synapse_server.core._spawn import SpawnedProcess

__all__ = ["ForkServer", "ForkServerError", "ForkServerPool"]

logger = logging.getLogger(__name__)

#: ``spawn(plugin)`` -> the fork server process and the version of the plugin's code it loads.
Spawner = Callable[[str], Awaitable[tuple[SpawnedProcess, str]]]


# How long a failed write waits for the fork server's exit to be seen.
_GONE_WAIT_S = 5.0


class ForkServerError(RuntimeError):
    """The fork server could not start the job's worker (it exited, or refused the request)."""


def _line(data: Mapping[str, object]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


class ForkServer:
    """One fork server process of one plugin (see the module docstring)."""

    def __init__(self, plugin: str, process: SpawnedProcess, version: str = "") -> None:
        if process.stdin is None or process.stdout is None:
            raise ValueError("a fork server needs pipes on stdin and stdout")
        self.plugin = plugin
        # Which code of the plugin it imported (the snapshot's digest): jobs of other code
        # must not run here.
        self.version = version
        self.process = process
        self._ready = asyncio.Event()
        self._gone: str = ""
        self._started: dict[str, asyncio.Future[int]] = {}
        self._exited: dict[str, asyncio.Future[int]] = {}
        self._pids: dict[str, int] = {}
        self._reader = asyncio.create_task(self._read(), name=f"fork-server-{plugin}")

    @property
    def pid(self) -> int:
        """The fork server's process id."""
        return self.process.pid

    @property
    def ready(self) -> bool:
        """True once the imports are done and the process still serves requests."""
        return self._ready.is_set() and not self._gone

    @property
    def alive(self) -> bool:
        """False once the fork server process has exited (or its reports ended)."""
        return not self._gone

    @property
    def jobs(self) -> int:
        """Jobs whose worker was requested and has not been reported gone."""
        return len(self._exited)

    def children(self) -> dict[str, int]:
        """Job id -> pid of every started child not yet reported gone."""
        return dict(self._pids)

    async def wait_ready(self) -> None:
        """Wait until the fork server can fork; ForkServerError if it exits first."""
        await self._ready.wait()
        if self._gone:
            raise ForkServerError(self._gone)

    async def start(
        self,
        job_id: str,
        credential: str,
        log_file: str,
        environment: Mapping[str, str],
        assignment: Mapping[str, Any] | None = None,
    ) -> int:
        """Fork the worker of ``job_id`` (waits for readiness first); its pid.

        ``assignment``: the job's assignment handed over with the request (see the fork
        server's protocol); without it the worker asks the server for it.
        """
        await self.wait_ready()
        if job_id in self._exited:
            raise ForkServerError(f"job {job_id} already has a worker")
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        self._started[job_id] = started
        self._exited[job_id] = loop.create_future()
        request: dict[str, Any] = {
            "op": "fork",
            "job_id": job_id,
            "credential": credential,
            "log_file": log_file,
            "environment": dict(environment),
        }
        if assignment is not None:
            request["assignment"] = dict(assignment)
        try:
            await self._write(_line(request))
            return await started
        except BaseException:
            self._started.pop(job_id, None)
            # Requests are handled in order: a fork already requested is killed right after
            # it, and its exit report then finds nobody waiting.
            self.kill(job_id)
            self._exited.pop(job_id, None)
            raise

    async def wait(self, job_id: str) -> int:
        """The exit status of the job's worker once it is reaped (negative: a signal)."""
        future = self._exited.get(job_id)
        if future is None:
            raise ForkServerError(f"job {job_id} has no worker here")
        try:
            return await future
        finally:
            self._exited.pop(job_id, None)

    def kill(self, job_id: str) -> None:
        """SIGKILL the process group of the job's worker (no-op once it is gone)."""
        if job_id not in self._exited and job_id not in self._pids:
            return
        if self._gone:
            pid = self._pids.get(job_id)
            if pid is not None:
                # Without its fork server the child is already being killed (parent-death
                # signal); its group may still hold processes it started.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            return
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            stdin.write(_line({"op": "kill", "job_id": job_id}))

    async def _write(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            # The process is gone or going: let the reader see it exit first, so that
            # `alive` says so and the caller starts the job on a new fork server instead of
            # failing it (a write can lose the race with the reader's end of file).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), _GONE_WAIT_S)
            raise ForkServerError(f"fork server of {self.plugin} is gone: {exc}") from None

    def close_input(self) -> None:
        """No more requests: the fork server exits once its running children are reaped."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    def _dispatch(self, data: dict[str, object]) -> None:
        event, job_id = data.get("event"), data.get("job_id")
        if event == "ready":
            self._ready.set()
            logger.info("fork server pid %d for %s is ready", self.pid, self.plugin)
            return
        if not isinstance(job_id, str):
            logger.error("fork server of %s: bad report %r", self.plugin, data)
            return
        if event == "started" and isinstance(data.get("pid"), int):
            pid = int(data["pid"])  # type: ignore[call-overload]
            self._pids[job_id] = pid
            started = self._started.pop(job_id, None)
            if started is not None and not started.done():
                started.set_result(pid)
        elif event == "exited" and isinstance(data.get("returncode"), int):
            self._pids.pop(job_id, None)
            exited = self._exited.get(job_id)
            if exited is not None and not exited.done():
                exited.set_result(int(data["returncode"]))  # type: ignore[call-overload]
        elif event == "failed":
            error = ForkServerError(f"fork server of {self.plugin}: {data.get('error')}")
            for futures in (self._started, self._exited):
                future = futures.pop(job_id, None)
                if future is not None and not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: a request nobody waits for any more
        else:
            logger.error("fork server of %s: bad report %r", self.plugin, data)

    async def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                try:
                    data = json.loads(line)
                except ValueError:
                    logger.error("fork server of %s: unreadable report %r", self.plugin, line)
                    continue
                if isinstance(data, dict):
                    self._dispatch(data)
                else:
                    logger.error("fork server of %s: bad report %r", self.plugin, data)
        finally:
            code = await self.process.wait()
            self._gone = f"the fork server of plugin {self.plugin!r} exited with code {code}"
            if code != 0:
                logger.warning("%s", self._gone)
            error = ForkServerError(
                f"{self._gone}; its workers are killed with it (parent-death signal)"
            )
            for futures in (self._started, self._exited):
                for future in futures.values():
                    if not future.done():
                        future.set_exception(error)
                        future.exception()
            self._started.clear()
            self._ready.set()

    async def stop(self, grace: float) -> None:
        """Kill every child, end the input and wait for the process (SIGKILL after grace)."""
        for job_id in list(self._exited):
            self.kill(job_id)
        self.close_input()
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


class ForkServerPool:
    """One fork server for each of the ``max_plugins`` most recently used plugins.

    ``spawn(plugin)`` starts a fork server process preloading ``plugin``. A plugin pushed out
    of the pool gets no new jobs; its fork server exits once its running jobs are done.
    """

    def __init__(self, spawn: Spawner, *, max_plugins: int = 4) -> None:
        if max_plugins < 1:
            raise ValueError("max_plugins must be >= 1")
        self._spawn = spawn
        self._max_plugins = max_plugins
        # Least recently used plugin first.
        self._servers: OrderedDict[str, asyncio.Task[ForkServer]] = OrderedDict()
        self._retired: set[ForkServer] = set()
        self._closed = False

    def servers(self) -> list[ForkServer]:
        """The live fork servers that were started (ready or still importing)."""
        found = []
        for task in self._servers.values():
            if task.done() and not task.cancelled() and task.exception() is None:
                server = task.result()
                if server.alive:
                    found.append(server)
        return found

    def server(self, plugin: str) -> ForkServer | None:
        """The plugin's live fork server, if it has been started."""
        return next((s for s in self.servers() if s.plugin == plugin), None)

    def prestart(self, plugin: str) -> None:
        """Start the plugin's fork server in the background (no-op if it has one)."""
        self._task(plugin)

    async def get(self, plugin: str) -> ForkServer:
        """The plugin's fork server, started if needed (it may still be importing)."""
        return await self._task(plugin)

    def _task(self, plugin: str) -> asyncio.Task[ForkServer]:
        if self._closed:
            raise ForkServerError("the worker pool is closed")
        self._retired = {s for s in self._retired if s.alive}
        task = self._servers.get(plugin)
        if (
            task is not None
            and task.done()
            and (task.cancelled() or task.exception() is not None or not task.result().alive)
        ):
            task = None
        if task is None:
            task = asyncio.create_task(self._start(plugin), name=f"fork-server-start-{plugin}")
            self._servers[plugin] = task
        self._servers.move_to_end(plugin)
        while len(self._servers) > self._max_plugins:
            old, evicted = self._servers.popitem(last=False)
            evicted.add_done_callback(self._retire)
            logger.info("fork server for %s: evicted", old)
        return task

    async def _start(self, plugin: str) -> ForkServer:
        process, version = await self._spawn(plugin)
        logger.info("fork server pid %d started for %s (%s)", process.pid, plugin, version[:12])
        return ForkServer(plugin, process, version)

    def _retire(self, task: asyncio.Task[ForkServer]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        server = task.result()
        self._retired.add(server)
        server.close_input()

    def retire_all(self) -> list[str]:
        """Start no more jobs on the current fork servers; the plugins they served.

        For a reload of edited plugins: the next job of each plugin starts a new fork server,
        which imports the plugin's code as the catalog loaded it now. Jobs running on a
        retired fork server finish there, and the fork server exits after its last one.
        """
        plugins = list(self._servers)
        for plugin in plugins:
            self._servers.pop(plugin).add_done_callback(self._retire)
        if plugins:
            logger.info("fork servers retired for %s", ", ".join(plugins))
        return plugins

    async def close(self, grace: float = 5.0) -> None:
        """Kill every fork server's children and stop the fork servers."""
        self._closed = True
        servers = set(self._retired)
        for task in self._servers.values():
            with contextlib.suppress(Exception):
                servers.add(await task)
        self._servers.clear()
        self._retired.clear()
        await asyncio.gather(*(s.stop(grace) for s in servers))
