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

__all__ = [
    "CREDENTIAL_ENV",
    "NODE_ID_ENV",
    "child_environment",
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
    job_id: str,
    plugin_dir: Path,
    *,
    worker_id: str,
    memory_limit_mb: int | None,
    root_cert_file: Path | None = None,
    server_name: str | None = None,
) -> list[str]:
    """The command line of a remote job's worker (no credential: that goes in the environment)."""
    command = [python, "-m", "synapse_server.worker", "--address", address, "--job-id", job_id]
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
    credential: str,
    *,
    ray_address: str | None,
    node_id: str | None,
) -> dict[str, str]:
    """The child's environment: the Ray worker's, less Ray's own, plus the job's variables."""
    env = {name: value for name, value in base.items() if name not in _RAY_WORKER_ONLY}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    if node_id:
        env[NODE_ID_ENV] = node_id
    # A deployment job's own RAY_ADDRESS (the server's cluster) wins over the one above.
    env.update(job_environment)
    # A segfault in native plugin code leaves a Python traceback in the worker's log.
    env["PYTHONFAULTHANDLER"] = "1"
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
    process = subprocess.Popen(
        command, env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True
    )
    logger.info("job %s: started worker pid %d", job_id, process.pid)
    waiter = _ExitWaiter(process)
    limit = (memory_limit_mb or 0) << 20
    over_limit = False
    next_check = time.monotonic() + memory_check_seconds
    try:
        while not waiter.wait(poll_seconds):
            if cancelled():
                logger.warning("job %s: cancelled; killing worker pid %d", job_id, process.pid)
                _kill_group(process)
                break
            if limit and time.monotonic() >= next_check:
                next_check = time.monotonic() + memory_check_seconds
                resident = resident_bytes(process.pid)
                if resident is not None and resident > limit:
                    logger.warning(
                        "job %s: worker pid %d uses %d MiB, over its limit of %d MiB; killing it",
                        job_id,
                        process.pid,
                        resident >> 20,
                        memory_limit_mb,
                    )
                    over_limit = True
                    _kill_group(process)
        returncode = process.wait()
    finally:
        # Cancelled (KeyboardInterrupt) or failed while waiting: the worker must not go on.
        _kill_group(process)
        with contextlib.suppress(ChildProcessError):
            process.wait()
        waiter.close()
    logger.info("job %s: worker pid %d exited with %d", job_id, process.pid, returncode)
    return WorkerExit.from_returncode(returncode, memory_limit_mb, over_limit)
