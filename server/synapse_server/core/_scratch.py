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
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "JOB_SCRATCH_ENV",
    "LOCAL_ARTIFACTS_ENV",
    "SCRATCH_ENV",
    "new_job_scratch",
    "remove_scratch",
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
