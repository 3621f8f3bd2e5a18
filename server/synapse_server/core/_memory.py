"""The per-job memory limit of job workers: what it counts, and how a job that hits it fails.

A job's worker runs with ``RLIMIT_DATA`` at the limit: the kernel refuses heap,
anonymous private mappings and thread stacks beyond it, so an allocation fails inside the
plugin (``MemoryError``, numpy's ``_ArrayMemoryError``, torch's "DefaultCPUAllocator: can't
allocate memory") and the job fails with :data:`MEMORY_LIMIT_ERROR` and
:func:`memory_limit_message`. Not ``RLIMIT_AS``: that counts address space reserved and never
used, of which torch and glibc reserve a lot (the example batch job: 1.5 GB of address space,
0.3-0.43 GB of data, 0.2-0.32 GB resident, more on machines with more cores, since each thread
reserves its own malloc arena and stack).

Memory the kernel does not count as data (shared mappings, ``/dev/shm``) is watched instead:
the executor checks each worker's resident memory twice a second and kills a worker above the
limit, which fails its job the same way. Resident here is anonymous and shared memory
(``RssAnon`` + ``RssShmem``), not the pages of files the worker maps: those are the page cache,
which the kernel drops as it needs, so a job that streams a dataset file larger than its limit
through a memory map (pyarrow, ``np.load(mmap_mode="r")``) is not taken for one that holds
it. A worker that found itself out of memory where it could not report it exits with
:data:`EXIT_OUT_OF_MEMORY`.

In the Ray modes the same worker runs as a child process of the Ray task or actor, which
applies the same limit and watch (``synapse_server.ray._supervisor``).
"""

from __future__ import annotations

import os

__all__ = [
    "EXIT_OUT_OF_MEMORY",
    "MEMORY_LIMIT_ERROR",
    "memory_limit_message",
    "resident_bytes",
]

#: JobError.type of a job that ran out of its memory limit.
MEMORY_LIMIT_ERROR = "MemoryLimitExceeded"
#: Exit code of a worker that ran out of memory and could not report it.
EXIT_OUT_OF_MEMORY = 5


def memory_limit_message(limit_mb: int) -> str:
    """The failure message of a job that exceeded ``limit_mb``."""
    return f"the job exceeded its memory limit of {limit_mb} MiB"


def resident_bytes(pid: int) -> int | None:
    """The resident anonymous and shared memory of process ``pid`` (file pages it maps left
    out; None if it is gone); /proc never blocks."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            text = status.read()
    except OSError:
        return None
    total = 0
    found = False
    for line in text.splitlines():
        if line.startswith((b"RssAnon:", b"RssShmem:")):
            try:
                total += int(line.split()[1]) * 1024  # in kB
            except (IndexError, ValueError):
                return None
            found = True
    if not found:
        # A kernel without the split (before 4.5): the whole resident set, file pages too.
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            return None
    return total
