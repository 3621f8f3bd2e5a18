"""The Ray side of a remote job: run the job's worker as a child process and supervise it.

In task and job mode the Ray task (or the job's actor) does not run plugin code itself. It
starts ``python -m synapse_server.worker``, the worker the local executor starts, as a child
process, waits for it and returns how it ended as a :class:`WorkerExit`. So:

- a plugin that exits, crashes or is killed ends only the child, and the job's reason names the
  exit code or signal, as in local mode. (A Ray worker process that dies below Python is seen
  by Ray only as a closed connection, with no exit code or signal.)
- the per-job memory limit applies as in local mode: the child runs under ``RLIMIT_DATA`` and
  its resident memory is checked here; a child above the limit is killed and the job fails
  with MemoryLimitExceeded (see ``synapse_server.core._memory``);
- in task mode the Ray worker process outlives the plugin: the next tasks reuse it;
- a cancelled task (``ray.cancel`` raises KeyboardInterrupt here) or actor task (its cancel
  flag, polled here) kills the child's process group before returning. A Ray worker process
  that dies itself (a forced cancel, ``ray.kill``, its node dying) takes the child along: the
  child asks the kernel to SIGKILL it when its parent dies (the worker's ``--parent-pid``,
  ``PR_SET_PDEATHSIG``).

The child is not a Ray worker. Its environment carries ``RAY_ADDRESS`` (this cluster), so
plugin code that uses Ray connects to the same cluster with ``ray.init()``, as a driver, and
:data:`NODE_ID_ENV` (the node it runs on). The Ray worker's internal variables (``RAY_JOB_ID``,
``RAY_RAYLET_PID``) are not passed on: they belong to the Ray worker process, not to a driver.
The job's credential travels in the child's environment, never in its argv.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from synapse_server.core._executor import WorkerExit
from synapse_server.core._memory import resident_bytes
from synapse_server.core._scratch import JOB_SCRATCH_ENV, new_job_scratch, remove_scratch

__all__ = [
    "CREDENTIAL_ENV",
    "NODE_ID_ENV",
    "ForkServerGoneError",
    "TaskForkServer",
    "child_environment",
    "root_certificates_file",
    "supervise_forked_worker",
    "supervise_worker",
    "worker_command",
]

logger = logging.getLogger(__name__)

#: Where the worker finds its job-scoped credential (see ``synapse_server.worker``).
CREDENTIAL_ENV = "SYNAPSE_WORKER_CREDENTIAL"
#: The Ray node a remote job's worker runs on (the child is no Ray worker to ask).
NODE_ID_ENV = "SYNAPSE_RAY_NODE_ID"
# Variables of a Ray worker process that must not reach a process that is not one (Ray strips
# the same ones from a submitted job's environment: ray_constants.RAY_INTERNAL_FLAGS).
_RAY_WORKER_ONLY = frozenset({"RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_OVERRIDE_NODE_ID_FOR_TESTING"})
# How often the cancel flag is polled (also the longest a task cancel waits to be noticed).
POLL_SECONDS = 0.2
# How often the child's resident memory is checked, as the local executor does.
MEMORY_CHECK_SECONDS = 0.5


def worker_command(
    python: str,
    address: str,
    plugin_dir: Path,
    *role: str,
    worker_id: str,
    memory_limit_mb: int | None,
    root_cert_file: Path | None = None,
    server_name: str | None = None,
) -> list[str]:
    """The command line of a remote job's worker or fork server, as the local executor's.

    ``role`` is ``--job-id ID`` or ``--fork-server --preload PLUGIN``. No credential: a
    worker finds it in its environment, a fork server's children in their fork request.
    """
    command = [python, "-m", "synapse_server.worker", "--address", address, *role]
    command += ["--plugin-dir", str(plugin_dir), "--parent-pid", str(os.getpid())]
    command += ["--worker-id", worker_id]
    if memory_limit_mb:
        command += ["--memory-limit-mb", str(memory_limit_mb)]
    if root_cert_file is not None:
        command += ["--root-cert-file", str(root_cert_file)]
    if server_name:
        command += ["--server-name", server_name]
    return command


def child_environment(
    base: Mapping[str, str],
    job_environment: Mapping[str, str],
    credential: str | None,
    *,
    ray_address: str | None,
    node_id: str | None,
) -> dict[str, str]:
    """The child's environment: the Ray worker's, less Ray's own, plus the job's variables.

    ``credential`` None: a fork server's, whose children get theirs with their request.
    """
    env = {name: value for name, value in base.items() if name not in _RAY_WORKER_ONLY}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    if node_id:
        env[NODE_ID_ENV] = node_id
    # A deployment job's own RAY_ADDRESS (the server's cluster) wins over the one above.
    env.update(job_environment)
    # A segfault in native plugin code leaves a Python traceback in the worker's log.
    env["PYTHONFAULTHANDLER"] = "1"
    env.pop(CREDENTIAL_ENV, None)
    if credential is not None:
        env[CREDENTIAL_ENV] = credential
    return env


def root_certificates_file(directory: Path, root_certificates: bytes) -> Path:
    """A file holding ``root_certificates`` (public data) for the worker's ``--root-cert-file``.

    Named by the content's digest, written once per node and atomically, so concurrent jobs
    share it and never read a partial file.
    """
    path = directory / f"{hashlib.sha256(root_certificates).hexdigest()}.pem"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    staging = directory / f".{path.name}.{uuid.uuid4().hex[:8]}"
    staging.write_bytes(root_certificates)
    staging.replace(path)
    return path


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # Only while the child is not reaped: its pid (and with it the group id) is still ours.
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class _ExitWaiter:
    """Waits up to a timeout for the child to exit, sleeping in the kernel (a pidfd) when it can."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._fd = -1
        with contextlib.suppress(AttributeError, OSError):
            self._fd = os.pidfd_open(process.pid)

    def wait(self, timeout: float) -> bool:
        """True once the child has exited (not yet reaped)."""
        if self._fd < 0:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _watch(
    job_id: str,
    pid: int,
    step: Callable[[float], int | None],
    kill: Callable[[], None],
    *,
    memory_limit_mb: int | None,
    cancelled: Callable[[], bool],
    poll_seconds: float,
    memory_check_seconds: float,
) -> WorkerExit:
    """Wait for the worker ``pid`` to end, killing it when cancelled or over its memory limit.

    ``step(timeout)`` waits up to ``timeout`` for the worker's return code (None: still
    running); ``kill()`` kills its process group.
    """
    limit = (memory_limit_mb or 0) << 20
    over_limit = killed = False
    next_check = time.monotonic() + memory_check_seconds
    while (returncode := step(poll_seconds)) is None:
        if killed:
            continue
        if cancelled():
            logger.warning("job %s: cancelled; killing worker pid %d", job_id, pid)
            kill()
            killed = True
        elif limit and time.monotonic() >= next_check:
            next_check = time.monotonic() + memory_check_seconds
            resident = resident_bytes(pid)
            if resident is not None and resident > limit:
                logger.warning(
                    "job %s: worker pid %d uses %d MiB, over its limit of %d MiB; killing it",
                    job_id,
                    pid,
                    resident >> 20,
                    memory_limit_mb,
                )
                over_limit = True
                kill()
                killed = True
    logger.info("job %s: worker pid %d exited with %d", job_id, pid, returncode)
    return WorkerExit.from_returncode(returncode, memory_limit_mb, over_limit)


def supervise_worker(
    command: list[str],
    env: Mapping[str, str],
    *,
    job_id: str,
    memory_limit_mb: int | None,
    cancelled: Callable[[], bool] = lambda: False,
    poll_seconds: float = POLL_SECONDS,
    memory_check_seconds: float = MEMORY_CHECK_SECONDS,
) -> WorkerExit:
    """Run the worker ``command`` to its end and say how it ended.

    The child runs in a session (process group) of its own; ``cancelled()`` (polled) or an
    exception raised into this thread (a task cancel's KeyboardInterrupt) kills that group.
    With ``memory_limit_mb``, a child whose resident memory exceeds it is killed and the result
    names the limit.
    """
    # The worker's scratch directory, removed here once it has ended (see core._scratch).
    scratch = new_job_scratch(job_id, env)
    process = subprocess.Popen(
        command,
        env={**env, JOB_SCRATCH_ENV: str(scratch)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    logger.info("job %s: started worker pid %d", job_id, process.pid)
    waiter = _ExitWaiter(process)

    def step(timeout: float) -> int | None:
        return process.wait() if waiter.wait(timeout) else None

    try:
        return _watch(
            job_id,
            process.pid,
            step,
            lambda: _kill_group(process),
            memory_limit_mb=memory_limit_mb,
            cancelled=cancelled,
            poll_seconds=poll_seconds,
            memory_check_seconds=memory_check_seconds,
        )
    finally:
        # Cancelled (KeyboardInterrupt) or failed while waiting: the worker must not go on.
        _kill_group(process)
        with contextlib.suppress(ChildProcessError):
            process.wait()
        waiter.close()
        remove_scratch(scratch)


class ForkServerGoneError(RuntimeError):
    """The fork server exited, or refused to start the job's worker."""


class TaskForkServer:
    """The client side of a fork server (``synapse_server.worker._zygote``) kept by a Ray worker.

    The local executor's per-plugin fork servers, brought to task mode: a Ray worker process
    runs one task at a time and is reused for later ones, so it keeps one fork server, which
    has imported the SDK and the job's plugin once, and forks each job's worker from it in
    milliseconds instead of starting an interpreter per job. A job's worker is still a fresh
    process of its own: it runs in a session of its own, under the fork server's memory limit,
    and dies with the fork server, which dies with the Ray worker (parent-death signals).
    Requests and reports are JSON lines on the fork server's stdin and stdout (see
    ``_zygote`` for the protocol); the credential travels there, never in argv.
    """

    def __init__(self, key: tuple[object, ...], command: list[str], env: Mapping[str, str]):
        self.key = key
        self.process = subprocess.Popen(
            command,
            env=dict(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        self._buffer = b""
        self._reports: list[dict[str, object]] = []
        self.ready = False
        self.gone = False

    @property
    def pid(self) -> int:
        """The fork server's process id."""
        return self.process.pid

    def _read(self, timeout: float) -> None:
        """Collect the reports that arrive within ``timeout``; ForkServerGoneError at its end."""
        if self.gone:
            raise ForkServerGoneError(f"the fork server pid {self.pid} exited")
        readable, _, _ = select.select([self._out], [], [], timeout)
        if not readable:
            return
        data = os.read(self._out, 1 << 16)
        if not data:
            self.gone = True
            raise ForkServerGoneError(f"the fork server pid {self.pid} exited")
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                if isinstance(report, dict):
                    self._reports.append(report)

    def _take(self, job_id: str, events: tuple[str, ...]) -> dict[str, object] | None:
        for index, report in enumerate(self._reports):
            if report.get("event") == "ready":
                self.ready = True
            elif report.get("job_id") in (job_id, "") and report.get("event") in events:
                del self._reports[: index + 1]
                return report
        # Reports of earlier jobs (a killed job's late exit) are of no use any more.
        self._reports.clear()
        return None

    def _send(self, data: Mapping[str, object]) -> None:
        line = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._in, view) :]
        except OSError as exc:
            self.gone = True
            raise ForkServerGoneError(f"the fork server pid {self.pid} exited") from exc

    def start(
        self,
        job_id: str,
        credential: str,
        environment: Mapping[str, str],
        cancelled: Callable[[], bool],
        poll_seconds: float,
    ) -> int | None:
        """Fork the job's worker (once the fork server is ready); its pid, None if cancelled."""
        while not self.ready:
            self._read(poll_seconds)
            self._take(job_id, ())
            if not self.ready and cancelled():
                return None
        request = {
            "op": "fork",
            "job_id": job_id,
            "credential": credential,
            "log_file": "",
            "environment": dict(environment),
        }
        self._send(request)
        while True:
            report = self._take(job_id, ("started", "failed"))
            if report is not None:
                break
            self._read(poll_seconds)
        if report.get("event") == "failed" or not isinstance(report.get("pid"), int):
            raise ForkServerGoneError(f"the fork server refused the job: {report.get('error')}")
        return int(report["pid"])  # type: ignore[call-overload]

    def wait_step(self, job_id: str, timeout: float) -> int | None:
        """The worker's return code once the fork server reports it (None: still running)."""
        report = self._take(job_id, ("exited",))
        if report is None:
            self._read(timeout)
            report = self._take(job_id, ("exited",))
        if report is None:
            return None
        return int(report["returncode"])  # type: ignore[call-overload]

    def kill(self, job_id: str) -> None:
        """Have the fork server SIGKILL the job's process group (it knows whether it is reaped)."""
        with contextlib.suppress(ForkServerGoneError):
            self._send({"op": "kill", "job_id": job_id})

    def retire(self) -> None:
        """No more requests: the fork server exits once its children (its spare) have ended."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]

    def reaped(self) -> bool:
        """True once the fork server process has ended and been reaped."""
        return self.process.poll() is not None


# The fork server of this Ray worker process (task mode), and retired ones not yet reaped.
_fork_server: TaskForkServer | None = None
_retired: list[TaskForkServer] = []


def _fork_server_for(
    key: tuple[object, ...], command: list[str], env: Mapping[str, str]
) -> TaskForkServer:
    """This process's fork server for ``key`` (plugin code, limit, server), started if needed.

    One at a time: a job of other plugin code (or another limit) retires the current one, so
    a Ray worker never holds more than one plugin's imports.
    """
    global _fork_server
    _retired[:] = [server for server in _retired if not server.reaped()]
    if _fork_server is not None and (_fork_server.key != key or _fork_server.gone):
        _fork_server.retire()
        _retired.append(_fork_server)
        _fork_server = None
    if _fork_server is None:
        _fork_server = TaskForkServer(key, command, env)
        logger.info("started fork server pid %d", _fork_server.pid)
    return _fork_server


def _drop_fork_server(server: TaskForkServer) -> None:
    global _fork_server
    if _fork_server is server:
        _fork_server = None
    server.retire()
    # Only while not reaped: its pid (and with it its group id) is still its own.
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    _retired.append(server)


def supervise_forked_worker(
    key: tuple[object, ...],
    fork_server_command: list[str],
    fork_server_env: Mapping[str, str],
    *,
    job_id: str,
    credential: str,
    environment: Mapping[str, str],
    memory_limit_mb: int | None,
    cold_start: Callable[[], WorkerExit],
    cancelled: Callable[[], bool] = lambda: False,
    poll_seconds: float = POLL_SECONDS,
    memory_check_seconds: float = MEMORY_CHECK_SECONDS,
) -> WorkerExit:
    """Run the job's worker forked from this process's fork server; see :class:`TaskForkServer`.

    Supervised as :func:`supervise_worker` supervises a started one. A fork server that exits
    or refuses before the worker started is dropped and the job runs in a worker started by
    ``cold_start()`` instead; one that exits under a running worker takes the worker along.
    """
    server = _fork_server_for(key, fork_server_command, fork_server_env)
    pid: int | None = None
    # The worker's scratch directory, removed here once it has ended (see core._scratch).
    scratch = new_job_scratch(job_id, {**fork_server_env, **environment})
    environment = {**environment, JOB_SCRATCH_ENV: str(scratch)}
    try:
        pid = server.start(job_id, credential, environment, cancelled, poll_seconds)
    except ForkServerGoneError as exc:
        logger.warning("job %s: %s; starting its worker directly", job_id, exc)
        _drop_fork_server(server)
        return cold_start()
    except BaseException:
        # Cancelled while forking: a fork already requested is killed right after it.
        server.kill(job_id)
        raise
    if pid is None:
        return WorkerExit(detail="the job was cancelled before its worker started")
    logger.info("job %s: forked worker pid %d (fork server %d)", job_id, pid, server.pid)
    done = False
    try:
        outcome = _watch(
            job_id,
            pid,
            lambda timeout: server.wait_step(job_id, timeout),
            lambda: server.kill(job_id),
            memory_limit_mb=memory_limit_mb,
            cancelled=cancelled,
            poll_seconds=poll_seconds,
            memory_check_seconds=memory_check_seconds,
        )
        done = True
        return outcome
    except ForkServerGoneError:
        done = True
        _drop_fork_server(server)
        return WorkerExit(
            detail="the fork server in the Ray worker process exited; the job's worker "
            "was killed with it"
        )
    finally:
        if not done:
            # Cancelled (KeyboardInterrupt) or failed while waiting: the worker must not go on.
            # (Its directory goes at once, while the fork server kills it: best effort.)
            server.kill(job_id)
        remove_scratch(scratch)
