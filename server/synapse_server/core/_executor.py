"""Executors start the worker that runs a job, and stop it hard when asked.

Whatever an executor starts (a local process, a Ray task), the worker talks to the server the
same way: it fetches its assignment and streams its events over ``WorkerService`` with a
job-scoped credential. An executor therefore only launches, waits for and kills workers; it
never sees events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._errors import FailedPreconditionError
from synapse_server.core._memory import (
    EXIT_OUT_OF_MEMORY,
    MEMORY_LIMIT_ERROR,
    memory_limit_message,
    resident_bytes,
)
from synapse_server.core._models import Job
from synapse_server.core._plugin_code import PluginCode
from synapse_server.core._scratch import (
    JOB_SCRATCH_ENV,
    LOCAL_ARTIFACTS_ENV,
    new_job_scratch,
    remove_scratch,
)
from synapse_server.core._spawn import SpawnedProcess, spawn
from synapse_server.core._standby import ForkServer, ForkServerError, ForkServerPool

__all__ = [
    "Executor",
    "JobEnvironment",
    "LocalProcessExecutor",
    "SchedulingExecutor",
    "WorkerExit",
]

logger = logging.getLogger(__name__)


class _ForkNotStarted(Exception):
    """A fork server could not fork a job's worker: the job has not started."""


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """How a worker ended: an exit code, or the signal that killed it.

    ``memory_limit_mb`` is set when the worker ended because its job exceeded that limit.
    """

    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""
    memory_limit_mb: int | None = None

    @classmethod
    def from_returncode(
        cls, returncode: int, memory_limit_mb: int | None = None, over_limit: bool = False
    ) -> WorkerExit:
        """How a worker process ended, from its return code as ``subprocess`` gives it.

        ``over_limit``: the worker was killed for exceeding ``memory_limit_mb``. Under a limit,
        that and the worker's own out-of-memory exit code both mean the job exceeded it.
        """
        if memory_limit_mb and (over_limit or returncode == EXIT_OUT_OF_MEMORY):
            if returncode < 0:
                return cls(signal=-returncode, memory_limit_mb=memory_limit_mb)
            return cls(exit_code=returncode, memory_limit_mb=memory_limit_mb)
        if returncode < 0:
            return cls(signal=-returncode)
        return cls(exit_code=returncode)

    @property
    def error_type(self) -> str:
        """The JobError type of a job whose worker ended this way without a result."""
        return MEMORY_LIMIT_ERROR if self.memory_limit_mb else "WorkerCrashed"

    def describe(self) -> str:
        """A reason for a job whose worker ended without reporting a result."""
        if self.memory_limit_mb:
            return memory_limit_message(self.memory_limit_mb)
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            if self.signal == signal.SIGKILL:
                return f"worker was killed ({name}), possibly out of memory"
            if self.signal == signal.SIGSEGV:
                return f"worker crashed with {name} (segmentation fault)"
            return f"worker was terminated by {name}"
        if self.exit_code is not None:
            return f"worker exited with code {self.exit_code} without reporting a result"
        return self.detail or "worker ended without reporting a result"


class JobEnvironment(Protocol):
    """Extra environment variables for one job's worker (e.g. the server's Ray address).

    Called just before the worker starts; may start shared infrastructure (Ray) first. An
    error it raises fails the job before any worker runs.
    """

    async def environment(self, job: Job) -> Mapping[str, str]:
        """The variables to add for ``job`` (empty when it needs none)."""
        ...


class Executor(Protocol):
    """Runs workers for jobs."""

    async def run(
        self, job: Job, credential: str, trace_context: Mapping[str, str] | None = None
    ) -> WorkerExit:
        """Start a worker for ``job`` and wait until it is gone.

        ``trace_context``: the job span's W3C headers, which the worker's span continues
        (what GetAssignment answers as ``headers``).
        """

    async def kill(self, job_id: str) -> None:
        """Stop the job's worker now (no-op if it is not running)."""

    async def close(self) -> None:
        """Kill every worker still running."""


@runtime_checkable
class SchedulingExecutor(Executor, Protocol):
    """An executor that places workers on a shared cluster (Ray task and job modes).

    ``admit`` runs at submit time, answers without waiting for the cluster to start, and raises
    a domain error when the job could never be placed (so the caller gets it from RunAction);
    what it returns, when not empty, is the new job's ``pending_reason`` (e.g. the cluster is
    still starting). The job service binds itself as the pending reporter so a launched job
    that waits for resources shows why in ``pending_reason``. The reporter answers False once
    the job has left PENDING.
    """

    async def admit(self, job: Job) -> str:
        """Refuse a job the cluster could never run; return the job's pending reason, or ''."""

    def bind_pending_reporter(self, reporter: Callable[[str, str], Awaitable[bool]]) -> None:
        """Receive ``async (job_id, reason) -> still pending``."""


#: Params up to this size travel in the fork request (the JSON line the fork server reads and
#: passes to the spare worker on a pipe); a job with larger params has its worker ask for them
#: with GetAssignment, so a large request never holds up the fork server's loop.
_HANDED_OVER_PARAMS_CHARS = 64 << 10


def _assignment(job: Job, trace_context: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The job's assignment as a fork request carries it (``synapse_server.worker``'s
    ``Assignment``), or None when its params are too large to hand over that way.

    Handing it over saves the worker's GetAssignment round trip on the way to the job's first
    event; the server still decides at the worker's stream open whether the job runs.
    """
    if len(job.params_json) > _HANDED_OVER_PARAMS_CHARS:
        return None
    return {
        "plugin": job.plugin,
        "action": job.action,
        "params_json": job.params_json,
        "plugin_version": job.plugin_version,
        "plugin_sha256": job.plugin_sha256,
        "mode": job.mode,
        "cancel_requested": job.cancel_requested,
        "headers": dict(trace_context or {}),
    }


def _kill_group(pid: int) -> None:
    """Kill what is left of a failed worker's process group (a worker runs in a session of
    its own: anything the plugin started must not go on writing into its directory)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class LocalProcessExecutor:
    """One worker process per job on this machine.

    A crash, ``os._exit``, segfault or memory exhaustion in plugin code ends only that
    process. ``memory_limit_mb`` (None or 0: no limit) caps the worker's data memory
    (RLIMIT_DATA) and, checked every ``memory_check_seconds``, its resident memory; a worker
    above it is killed and its job fails with MemoryLimitExceeded (see ``_memory``).

    With ``warm_workers`` >= 1 (the default) each recently used plugin (and each
    ``preload_plugins`` entry, started by :meth:`prewarm`) has a fork server that imported the
    plugin once; a job's worker is forked from it in milliseconds instead of importing for
    seconds, and still runs that one job only (see ``_standby``). ``warm_workers=0`` starts a
    fresh ``python -m synapse_server.worker`` for every job instead.

    Workers and fork servers import a plugin from the code snapshot the catalog loaded (see
    ``_plugin_code``), never from the live plugin directory: a fork server started again after
    a crash runs the same code as before, and a job runs the digest it was validated against
    (a job queued across a reload gets a fresh worker process with its older snapshot).

    ``local_artifacts``: the server's artifact blob directory, which workers on this machine
    copy their datasets from (checked against the sha256 the server names) instead of
    downloading them through the server; None: every dataset is downloaded.
    """

    def __init__(
        self,
        worker_address: str,
        catalog: PluginCatalog,
        *,
        memory_limit_mb: int | None = None,
        python: str | None = None,
        log_dir: Path | None = None,
        environment: JobEnvironment | None = None,
        warm_workers: int = 1,
        preload_plugins: Sequence[str] = (),
        memory_check_seconds: float = 0.5,
        local_artifacts: Path | None = None,
    ) -> None:
        if warm_workers < 0:
            raise ValueError("warm_workers must be >= 0")
        self._address = worker_address
        self._local_artifacts = local_artifacts
        self._environment = environment
        self._catalog = catalog
        self._memory_limit_mb = memory_limit_mb or None
        self._memory_check = memory_check_seconds
        # Jobs whose worker the memory watch killed.
        self._over_limit: set[str] = set()
        self._python = python or sys.executable
        self._log_dir = log_dir
        self._processes: dict[str, SpawnedProcess] = {}
        # The scratch directory of each job whose worker runs now (see job_scratch).
        self._scratch: dict[str, Path] = {}
        self._forked: dict[str, ForkServer] = {}
        self._preload = list(preload_plugins)
        self._fork_servers = ForkServerPool(self._spawn_fork_server) if warm_workers else None

    @property
    def fork_servers(self) -> ForkServerPool | None:
        """The per-plugin fork servers (None when disabled)."""
        return self._fork_servers

    async def prewarm(self) -> None:
        """Start the fork servers of ``preload_plugins`` (in the background)."""
        self._prestart_preloads()

    def _prestart_preloads(self) -> None:
        if self._fork_servers is None:
            return
        loaded = {info.code for info in self._catalog.plugins()}
        for plugin in self._preload:
            if plugin in loaded:
                self._fork_servers.prestart(plugin)
            else:
                logger.warning("preload plugin %r is not loaded; no fork server for it", plugin)

    def reload_plugins(self) -> None:
        """Run later jobs on the code the catalog has loaded now.

        The current fork servers are retired (their running jobs finish on them) and those of
        ``preload_plugins`` started anew in the background, from the new snapshots. Without
        fork servers every job starts a fresh interpreter on its own snapshot, so there is
        nothing to do. Synchronous, so that a caller on the event loop can switch the catalog
        in the same step.
        """
        if self._fork_servers is not None:
            self._fork_servers.retire_all()
            self._prestart_preloads()

    def _command(self, code: PluginCode, *role: str) -> list[str]:
        """The worker command line for ``code``; ``role`` is ``--job-id ID`` or
        ``--fork-server --preload P``."""
        command = [self._python, "-m", "synapse_server.worker", "--address", self._address]
        command += [*role, "--parent-pid", str(os.getpid())]
        command += ["--plugin-dir", str(code.path)]
        if self._memory_limit_mb is not None:
            command += ["--memory-limit-mb", str(self._memory_limit_mb)]
        return command

    async def _spawn(
        self,
        command: list[str],
        env: dict[str, str],
        log_name: str,
        *,
        stdin: int,
        stdout: int | None = None,
    ) -> SpawnedProcess:
        """Start a worker in its own session, its output appended to ``log_dir/log_name``.

        ``stdout`` (a pipe) keeps the standard output for the process's reports; its
        standard error still goes to the log.
        """
        env["PYTHONFAULTHANDLER"] = "1"
        log_file = None
        if self._log_dir is not None:
            try:
                self._log_dir.mkdir(parents=True, exist_ok=True)
                log_file = (self._log_dir / log_name).open("ab")
            except OSError as exc:
                # A full disk must not stop the worker: its output is dropped instead, and
                # the server reports its own storage trouble when it meets it.
                logger.warning(
                    "cannot open worker log %s (%s); its output is dropped", log_name, exc
                )
        log_fd = log_file.fileno() if log_file is not None else None
        if stdout is not None:
            out, err = stdout, log_fd if log_fd is not None else subprocess.DEVNULL
        elif log_fd is not None:
            out, err = log_fd, subprocess.STDOUT
        else:
            out, err = subprocess.DEVNULL, None
        try:
            return await spawn(command, env=env, stdin=stdin, stdout=out, stderr=err)
        finally:
            if log_file is not None:
                log_file.close()

    async def _spawn_fork_server(self, plugin: str) -> tuple[SpawnedProcess, str]:
        # The plugin's code as loaded now (a reload retires the fork servers started before
        # it). The fork server only logs import problems, into fork-server.log next to the
        # job logs; each forked worker writes to its job's own log.
        code = self._catalog.code(plugin)
        process = await self._spawn(
            self._command(code, "--fork-server", "--preload", plugin),
            dict(os.environ),
            "fork-server.log",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return process, code.sha256

    @property
    def running(self) -> int:
        """Number of live worker processes."""
        return len(self._processes) + len(self._forked)

    def process_counts(self) -> dict[str, int]:
        """Live processes by kind: job workers and fork servers (for the metrics gauge)."""
        counts = {"job": self.running}
        if self._fork_servers is not None:
            counts["fork_server"] = len(self._fork_servers.servers())
        return counts

    def _fork_server_runs(self, job: Job, code: PluginCode) -> bool:
        """Whether the plugin's fork server (started from the loaded code) can run ``code``."""
        try:
            return self._catalog.code(job.plugin).sha256 == code.sha256
        except FailedPreconditionError:
            return False  # the plugin was unloaded since; its snapshot still runs the job

    async def run(
        self, job: Job, credential: str, trace_context: Mapping[str, str] | None = None
    ) -> WorkerExit:
        """Start the job's worker process and wait for it to exit."""
        try:
            code = self._catalog.code(job.plugin, job.plugin_sha256)
        except FailedPreconditionError as exc:
            return WorkerExit(detail=str(exc))
        extra_env: Mapping[str, str] = {}
        if self._environment is not None:
            extra_env = await self._environment.environment(job)
        # The worker's scratch directory, removed here once it has ended: a worker killed
        # outright leaves its dataset copy and outputs behind otherwise.
        scratch = new_job_scratch(job.id, {**os.environ, **extra_env})
        extra_env = {**extra_env, JOB_SCRATCH_ENV: str(scratch)}
        if self._local_artifacts is not None:
            extra_env = {**extra_env, LOCAL_ARTIFACTS_ENV: str(self._local_artifacts)}
        self._scratch[job.id] = scratch
        try:
            outcome = await self._launch(job, code, credential, extra_env, trace_context)
        except BaseException:
            self._forget_scratch(job.id, scratch)
            # Withdrawn (the worker was killed) or failed: removed in the background (not
            # at all if the server is past running threads: it is going down).
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().run_in_executor(None, remove_scratch, scratch)
            raise
        self._forget_scratch(job.id, scratch)
        # Before the job's end is stored, so a finished job holds no disk.
        await asyncio.to_thread(remove_scratch, scratch)
        return outcome

    def job_scratch(self, job_id: str) -> Path | None:
        """The scratch directory of the job's running worker on this machine, if it has one:
        where the worker may leave a finished output for the server to copy."""
        return self._scratch.get(job_id)

    def _forget_scratch(self, job_id: str, scratch: Path) -> None:
        # Only this launch's: a later launch of the job may have named its own by now.
        if self._scratch.get(job_id) == scratch:
            del self._scratch[job_id]

    async def _launch(
        self,
        job: Job,
        code: PluginCode,
        credential: str,
        extra_env: Mapping[str, str],
        trace_context: Mapping[str, str] | None,
    ) -> WorkerExit:
        if self._fork_servers is not None and self._fork_server_runs(job, code):
            for attempt in (1, 2):
                server = await self._fork_servers.get(job.plugin)
                # Started for an earlier reload when this job's submission raced with the
                # last one: the job still runs its own code, in a process of its own.
                if server.version != code.sha256:
                    break
                try:
                    return await self._run_forked(
                        server, job, credential, extra_env, _assignment(job, trace_context)
                    )
                except _ForkNotStarted as exc:
                    # A fork server that died before it forked this job's worker (killed,
                    # crashed) leaves the job unstarted: the pool starts a new one, once.
                    if server.alive or attempt == 2:
                        return WorkerExit(detail=f"could not start the worker: {exc}")
                    logger.warning("job %s: %s; starting it on a new fork server", job.id, exc)
        env = dict(os.environ)
        env.update(extra_env)
        # The credential travels in the environment, not argv, so `ps` does not show it.
        env["SYNAPSE_WORKER_CREDENTIAL"] = credential
        process = await self._spawn(
            self._command(code, "--job-id", job.id),
            env,
            f"{job.id}.log",
            stdin=subprocess.DEVNULL,
        )
        logger.info("job %s: started worker pid %d", job.id, process.pid)
        self._processes[job.id] = process
        try:
            async with self._watching_memory(job.id, process.pid):
                returncode = await process.wait()
        except asyncio.CancelledError:
            # The launch was withdrawn (cancelled before it started, server shutting down):
            # the worker must not go on without anyone waiting for it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            self._processes.pop(job.id, None)
        logger.info("job %s: worker pid %d exited with %d", job.id, process.pid, returncode)
        if returncode != 0:
            _kill_group(process.pid)
        return self._exit(job.id, returncode)

    async def _run_forked(
        self,
        server: ForkServer,
        job: Job,
        credential: str,
        extra_env: Mapping[str, str],
        assignment: dict[str, Any] | None,
    ) -> WorkerExit:
        log_path = ""
        if self._log_dir is not None:
            with contextlib.suppress(OSError):  # the worker copes with a log it cannot open
                self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = str(self._log_dir / f"{job.id}.log")
        self._forked[job.id] = server
        try:
            try:
                pid = await server.start(job.id, credential, log_path, extra_env, assignment)
            except ForkServerError as exc:
                logger.warning("job %s: %s", job.id, exc)
                raise _ForkNotStarted(str(exc)) from None
            logger.info("job %s: forked worker pid %d (fork server %d)", job.id, pid, server.pid)
            try:
                async with self._watching_memory(job.id, pid):
                    code = await server.wait(job.id)
            except ForkServerError as exc:
                logger.warning("job %s: %s", job.id, exc)
                return WorkerExit(detail=str(exc))
        except asyncio.CancelledError:
            server.kill(job.id)
            raise
        finally:
            self._forked.pop(job.id, None)
        logger.info("job %s: worker pid %d exited with %d", job.id, pid, code)
        if code != 0:
            _kill_group(pid)
        return self._exit(job.id, code)

    def _exit(self, job_id: str, code: int) -> WorkerExit:
        over_limit = job_id in self._over_limit
        self._over_limit.discard(job_id)
        return WorkerExit.from_returncode(code, self._memory_limit_mb, over_limit)

    @contextlib.asynccontextmanager
    async def _watching_memory(self, job_id: str, pid: int) -> AsyncIterator[None]:
        """While the job's worker runs, kill it if its resident memory exceeds the limit.

        The kernel enforces the limit on data memory (RLIMIT_DATA); this catches what it
        does not count, such as shared memory, at the price of a check per interval.
        """
        if not self._memory_limit_mb:
            yield
            return
        watch = asyncio.create_task(self._watch_memory(job_id, pid, self._memory_limit_mb))
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch_memory(self, job_id: str, pid: int, limit_mb: int) -> None:
        limit = limit_mb << 20
        while True:
            await asyncio.sleep(self._memory_check)
            resident = resident_bytes(pid)
            if resident is None:
                return  # gone (or no /proc): nothing to watch
            if resident > limit:
                logger.warning(
                    "job %s: worker pid %d uses %d MiB, over its limit of %d MiB; killing it",
                    job_id,
                    pid,
                    resident >> 20,
                    limit_mb,
                )
                self._over_limit.add(job_id)
                await self.kill(job_id)
                return

    async def kill(self, job_id: str) -> None:
        """SIGKILL the job's worker (and anything it started in its session)."""
        server = self._forked.get(job_id)
        if server is not None:
            logger.warning("job %s: killing its forked worker", job_id)
            server.kill(job_id)
            return
        process = self._processes.get(job_id)
        if process is None or process.returncode is not None:
            return
        logger.warning("job %s: killing worker pid %d", job_id, process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Kill all workers and stop the fork servers."""
        if self._fork_servers is not None:
            await self._fork_servers.close()
        processes = list(self._processes.items())
        for job_id, _ in processes:
            await self.kill(job_id)
        for _, process in processes:
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
