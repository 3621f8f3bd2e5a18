"""The job store protocol: where jobs and their events live.

Implemented by ``synapse_server.stores`` (SQLite in the embedded server); the job service and
the event hub only ever talk to this protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from synapse_server.core._models import Job, JobEvent, JobFilter, JobPage, JobState

__all__ = ["JobStore"]


class JobStore(Protocol):
    """Where jobs and their events live; a server database can replace the SQLite one.

    Texts are kept as given: a job's params (``params_json``) and result (``result_json``)
    come back byte for byte, never re-serialised. Jobs are read as summaries (no params, no
    result text; ``result_size`` tells the result's size in bytes) unless asked for more.
    """

    async def open(self) -> None:
        """Open the store (creating or migrating its schema if needed)."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job``; with a ``request_id`` already used by the tenant return that job.

        Returns ``(job, created)``. Raises :class:`RequestIdConflictError` when the earlier
        job with the same request id asked for something different (another plugin, action,
        mode or params; the same params in other spacing or key order are the same). Atomic:
        concurrent calls with one request id create one job.
        """

    async def get_job(self, job_id: str, *, with_params: bool = False) -> Job | None:
        """The job, or ``None``; without its params and result texts unless ``with_params``
        (params only: the result is read with :meth:`get_result`)."""

    async def get_result(self, job_id: str) -> tuple[str, JobState, str | None] | None:
        """``(tenant, state, result JSON text)`` of the job without loading its params, or
        ``None`` for an unknown job (the text is ``None`` until the job has a result)."""

    async def list_jobs(self, flt: JobFilter, page_size: int, page_token: str) -> JobPage:
        """Summaries of the jobs matching ``flt``, newest first, ``page_size`` at most.

        ``page_token`` continues the listing a page's ``next_page_token`` ended; a page size
        that is not positive or a token that is not one raises ``InvalidArgumentError``.
        """

    async def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]:
        """All jobs currently in one of ``states``, oldest first, with their params (used at
        startup for recovery)."""

    async def plugin_code_in_use(self) -> set[str]:
        """The plugin code digests of jobs not yet finished (their snapshots must be kept)."""

    async def append_events(self, events: Sequence[JobEvent], job: Job | None = None) -> None:
        """Persist ``events`` (and ``job``'s new row, if given) in one transaction.

        A seq the job already has fails the whole call: none of the events, nor the row, is
        stored. A terminal event's inline result text reads back as it was appended.
        """

    async def update_job(self, job: Job) -> None:
        """Persist ``job``'s mutable fields: state, times, outcome (error, reason, result),
        progress, ``last_seq``, pending reason, cancel request and result size. A job without
        a result text or value (a summary) leaves the stored result text as it is."""

    async def list_events(self, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        """Up to ``limit`` events of the job with ``seq > after_seq``, in seq order."""

    async def last_event(self, job_id: str) -> JobEvent | None:
        """The job's event with the highest seq, or ``None``."""
