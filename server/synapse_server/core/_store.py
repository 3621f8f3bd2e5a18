"""The job store protocol: where jobs and their events live.

Implemented by ``synapse_server.stores`` (SQLite in the embedded server); the job service and
the event hub only ever talk to this protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from synapse_server.core._models import Job, JobEvent, JobFilter, JobPage, JobState

__all__ = ["ClaimedJob", "JobStore", "ServerRecord", "StoreNotifications"]


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """A server sharing the database: its id, where it listens, and until when its lease
    holds (seconds since the epoch, by the database's clock)."""

    id: str
    address: str
    host: str
    started_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this server took over (with its params), the server that had it, and why its
    cancellation was asked for (when ``job.cancel_requested``)."""

    job: Job
    previous_owner: str
    cancel_reason: str = ""


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
        stored. A terminal event's inline result text reads back as it was appended. With a
        ``job`` that has an ``owner``, the call is fenced: when the stored job has another
        owner (a server took it over), nothing is stored and
        :class:`~synapse_server.core.JobOwnershipLostError` is raised.
        """

    async def update_job(self, job: Job) -> None:
        """Persist ``job``'s mutable fields: state, times, outcome (error, reason, result),
        progress, ``last_seq``, pending reason, cancel request and result size. A job without
        a result text or value (a summary) leaves the stored result text as it is. A cancel
        request once stored stays (a row written without one does not clear it). Fenced like
        :meth:`append_events` (a job of another owner is left as it is, without an error)."""

    async def list_events(self, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        """Up to ``limit`` events of the job with ``seq > after_seq``, in seq order."""

    async def last_event(self, job_id: str) -> JobEvent | None:
        """The job's event with the highest seq, or ``None``."""

    # Several servers on one database ------------------------------------------------------
    # A server holds a lease, renewed by its heartbeat; the jobs it owns are its own while
    # the lease holds. Once it has expired, another server may claim them.

    async def register_server(
        self, server_id: str, address: str, host: str, lease_seconds: float
    ) -> None:
        """Record the server (again, after a restart) with a lease of ``lease_seconds``."""

    async def renew_server(self, server_id: str, lease_seconds: float) -> list[tuple[str, str]]:
        """Extend the server's lease; ``(job id, reason)`` of its unfinished jobs whose
        cancellation was asked for (by any server: see :meth:`request_cancel`)."""

    async def release_server(self, server_id: str) -> None:
        """End the server's lease now (a clean shutdown): its unfinished jobs may be claimed
        by the other servers at once (see ``released_only``)."""

    async def live_servers(self) -> list[ServerRecord]:
        """The servers whose lease has not expired."""

    async def claim_jobs(
        self,
        server_id: str,
        *,
        previous_owner: str | None = None,
        released_only: bool = False,
        limit: int = 100,
    ) -> list[ClaimedJob]:
        """Take over unfinished (PENDING or RUNNING) jobs for ``server_id``, oldest first.

        With ``previous_owner``: the jobs of that server (a restart under the same id), at
        once. Without: the jobs of servers whose lease has expired or that are not recorded
        (never ``server_id``'s own); with ``released_only``, only those of servers that gave
        their lease up (:meth:`release_server`). Each job is claimed by one server only,
        however many try at the same time; jobs another claimer holds at that moment are
        skipped.
        """

    async def request_cancel(self, job_id: str, reason: str) -> Job | None:
        """Record that the unfinished job must be cancelled (with ``reason``) for its owner
        to act on; returns the job as stored (a finished one unchanged), ``None`` if unknown.
        """


class StoreNotifications(Protocol):
    """What a shared database tells each server as it happens (PostgreSQL LISTEN/NOTIFY).

    Delivery is best effort: a notification lost while the connection is re-established is
    made up for by ``on_reconnect`` (and by the callers' own bounded polling).
    """

    async def start(
        self,
        server_id: str,
        on_job_events: Callable[[str, int, bool], None],
        on_cancel: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        """Start listening: ``on_job_events(job_id, last_seq, terminal)`` after every stored
        batch of events of any job, ``on_cancel(job_id)`` when a cancellation is asked for a
        job of ``server_id``, ``on_reconnect()`` after the connection was lost and is back."""

    async def stop(self) -> None:
        """Stop listening and close the connection."""
