"""A job worker's scratch directory: where it is, and removing what a killed worker left.

A worker that uses datasets downloads them into a directory of its own and writes its
outputs there before sending them; it removes the directory when the job ends, however the
job ended, but a worker killed outright (SIGKILL: a cancel past its grace, the memory
watch, an operator) cannot. Whoever reaps the worker (the fork server for forked workers,
the executor or the Ray supervisor for the others) then calls :func:`remove_job_scratch`,
which finds the directory by the job id in its name. Without it, every killed dataset job
would leave its dataset copy and partial output behind until the disk filled.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["SCRATCH_ENV", "job_scratch_prefix", "remove_job_scratch", "scratch_parent"]

logger = logging.getLogger(__name__)

#: Where a worker puts the datasets and outputs of its job (default: the temp directory).
SCRATCH_ENV = "SYNAPSE_DATASET_SCRATCH"


def scratch_parent(environ: Mapping[str, str] | None = None) -> Path:
    """The directory that job scratch directories are made in."""
    env = os.environ if environ is None else environ
    return Path(env.get(SCRATCH_ENV) or tempfile.gettempdir())


def job_scratch_prefix(job_id: str) -> str:
    """The name every scratch directory of job ``job_id`` starts with."""
    return f"synapse-job-{job_id}-"


def remove_job_scratch(job_id: str, environ: Mapping[str, str] | None = None) -> int:
    """Remove the scratch directories job ``job_id``'s worker left; how many it removed.

    Never raises: what cannot be removed is left (``rmtree`` ignores errors).
    """
    if not job_id:
        return 0
    pattern = glob.escape(str(scratch_parent(environ) / job_scratch_prefix(job_id))) + "*"
    removed = 0
    for path in glob.glob(pattern):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        logger.info("job %s: removed the scratch directory its worker left", job_id)
    return removed
