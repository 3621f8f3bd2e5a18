"""A pre-started ("warm") worker: imports everything up front, then waits for its one job.

Starting a worker costs seconds of imports (the SDK, grpc, and above all the plugin's own
dependencies such as torch). A standby worker pays that before a job exists: it preloads the
plugins it was started for, then blocks on stdin until the executor hands it a job as one JSON
line ``{"job_id", "credential", "log_file", "environment"}``. From then on it is an ordinary
worker (``run_worker``) and exits after that single job, so every job still gets a process of
its own. End of input without a job (the executor closing its pool) exits with code 0.

The credential arrives over the pipe, never in argv, so process listings do not show it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from synapse_server.worker._runner import (
    EXIT_OK,
    _die_with_parent,
    _find_plugin,
    _limit_memory,
    run_worker,
)

__all__ = ["EXIT_BAD_HANDOFF", "Handoff", "HandoffError", "read_handoff", "run_standby"]

logger = logging.getLogger(__name__)

EXIT_BAD_HANDOFF = 5


class HandoffError(ValueError):
    """The executor's handoff line is not a valid job assignment."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """What a standby worker needs to become the worker of one job."""

    job_id: str
    credential: str
    log_file: str = ""
    environment: dict[str, str] = field(default_factory=dict)

    def to_line(self) -> bytes:
        """The JSON line the executor writes to the worker's stdin."""
        data = {
            "job_id": self.job_id,
            "credential": self.credential,
            "log_file": self.log_file,
            "environment": self.environment,
        }
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def read_handoff(stream: IO[bytes]) -> Handoff | None:
    """The next handoff on ``stream``; None at end of input; HandoffError if malformed."""
    line = stream.readline()
    if not line:
        return None
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HandoffError(f"handoff is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HandoffError("handoff must be a JSON object")
    job_id, credential = data.get("job_id"), data.get("credential")
    if not isinstance(job_id, str) or not job_id:
        raise HandoffError("handoff has no job_id")
    if not isinstance(credential, str) or not credential:
        raise HandoffError("handoff has no credential")
    log_file = data.get("log_file") or ""
    environment = data.get("environment") or {}
    if not isinstance(log_file, str):
        raise HandoffError("handoff log_file must be a string")
    if not isinstance(environment, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in environment.items()
    ):
        raise HandoffError("handoff environment must map strings to strings")
    return Handoff(job_id, credential, log_file, dict(environment))


def _preload(plugin_dirs: Sequence[Path], code: str) -> None:
    # Loading a plugin imports its action modules and with them their heavy dependencies;
    # the job's own load later finds them in sys.modules. A plugin that fails here fails the
    # same way when the job loads it, which reports the error properly, so only log it.
    try:
        _find_plugin(plugin_dirs, code, "")  # load_plugin imports every action's module
    except Exception:
        logger.warning("could not preload plugin %r; the job will load it", code, exc_info=True)


def _redirect_output(log_file: str) -> None:
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_standby(
    address: str,
    *,
    plugin_dirs: Sequence[Path],
    preload: Sequence[str] = (),
    memory_limit_mb: int | None = None,
    parent_pid: int | None = None,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Preload ``preload`` plugins, wait for a handoff on stdin and run that job.

    Returns the process exit code: ``run_worker``'s for a job, 0 when the input ended without
    one, ``EXIT_BAD_HANDOFF`` for a malformed handoff.
    """
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    if memory_limit_mb is not None:
        _limit_memory(memory_limit_mb)
    # Every job builds a platform model backend, which imports the client package (~30 ms):
    # done here, before there is a job to wait for it.
    importlib.import_module("synapse_client")
    for code in preload:
        _preload(plugin_dirs, code)
    try:
        handoff = read_handoff(stdin if stdin is not None else sys.stdin.buffer)
    except HandoffError as exc:
        logger.error("standby worker: %s", exc)
        return EXIT_BAD_HANDOFF
    if handoff is None:
        return EXIT_OK
    if handoff.log_file:
        _redirect_output(handoff.log_file)
    os.environ.update(handoff.environment)
    options: dict[str, Any] = {"root_certificates": root_certificates, "server_name": server_name}
    return run_worker(
        address, handoff.job_id, handoff.credential, plugin_dirs=plugin_dirs, **options
    )
