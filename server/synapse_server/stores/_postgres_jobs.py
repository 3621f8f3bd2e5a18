"""The :class:`~synapse_server.core.JobStore` on PostgreSQL: jobs, events and server leases
shared by every server on the database.

The same tables and rules as the SQLite store (``_sqlite_jobs``): a batch of events and the
job row they change are one transaction; params live apart from the row. What several
servers add:

- a job belongs to the server that runs it (``owner_server_id``); every write of its row and
  events is fenced on that owner, so a server that lost a job (its lease expired and another
  server claimed it) can never write into its history again, and ``(job_id, seq)`` stays
  unique and gap-free;
- claiming takes rows with ``FOR UPDATE SKIP LOCKED``: two claimers never take one job, and
  neither waits for the other;
- every stored batch of events is announced with ``NOTIFY synapse_job_events`` (delivered at
  commit, so a listener reads committed rows), a cancellation asked for a job with
  ``NOTIFY synapse_cancel`` (see ``_postgres_notify``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from synapse_server.core import (
    ClaimedJob,
    InvalidArgumentError,
    Job,
    JobEvent,
    JobFilter,
    JobOwnershipLostError,
    JobPage,
    JobState,
    RequestIdConflictError,
    ServerRecord,
)
from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.stores._postgres import PostgresDatabase
from synapse_server.stores._sqlite_jobs import _dump, _event_text, _result_text, _row_to_event
from synapse_server.stores._sqlite_jobs import _row_to_job as _sqlite_row_to_job

__all__ = ["EVENTS_CHANNEL", "CANCEL_CHANNEL", "PostgresJobStore"]

T = TypeVar("T")

#: NOTIFY channel of stored event batches; payload ``<job id> <last seq> <1 if terminal>``.
EVENTS_CHANNEL = "synapse_job_events"
#: NOTIFY channel of cancel requests; payload ``<owner server id> <job id>``.
CANCEL_CHANNEL = "synapse_cancel"

_COLUMNS = (
    "id, tenant, plugin, action, mode, params, state, request_id, created_at, started_at, "
    "finished_at, result, error, reason, progress, plugin_version, last_seq, pending_reason, "
    "cancel_requested, result_size, plugin_sha256, warnings, owner_server_id"
)
_INSERTED = [c for c in _COLUMNS.split(", ") if c != "params"]
_UNFINISHED = tuple(sorted(s.value for s in JobState if not s.is_terminal))
_NOW = "extract(epoch from clock_timestamp())::double precision"


def _fields(*, params: str) -> str:
    sources = {"params": params, "result": "NULL"}
    return ", ".join(sources.get(c, f"j.{c}") for c in _COLUMNS.split(", "))


_SELECT_JOB = (
    f"SELECT {_fields(params='p.params')} FROM jobs j LEFT JOIN job_params p ON p.job_id = j.id"
)
_SUMMARY = f"SELECT {_fields(params=chr(39) * 2)} FROM jobs j"


def _row_to_job(row: Sequence[Any]) -> Job:
    return _sqlite_row_to_job(tuple(row))


def _insert_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.tenant,
        job.plugin,
        job.action,
        job.mode,
        job.state.value,
        job.request_id,
        job.created_at,
        job.started_at,
        job.finished_at,
        _result_text(job),
        None if job.error is None else _dump(job.error.to_dict()),
        job.reason,
        job.progress,
        job.plugin_version,
        job.last_seq,
        job.pending_reason,
        job.cancel_requested,
        job.result_size,
        job.plugin_sha256,
        _dump(list(job.warnings)),
        job.owner,
    )


async def _update(conn: Any, job: Job) -> bool:
    """Write the job's mutable fields; False when it has an owner that no longer owns it."""
    cursor = await conn.execute(
        "UPDATE jobs SET state=%s, started_at=%s, finished_at=%s, result=COALESCE(%s, result), "
        "error=%s, reason=%s, progress=%s, last_seq=%s, pending_reason=%s, "
        "cancel_requested=(cancel_requested OR %s), result_size=%s "
        "WHERE id=%s AND (%s='' OR owner_server_id=%s)",
        (
            job.state.value,
            job.started_at,
            job.finished_at,
            _result_text(job),
            None if job.error is None else _dump(job.error.to_dict()),
            job.reason,
            job.progress,
            job.last_seq,
            job.pending_reason,
            job.cancel_requested,
            job.result_size,
            job.id,
            job.owner,
            job.owner,
        ),
    )
    return cursor.rowcount > 0 or not job.owner


async def _attach_results(conn: Any, events: list[JobEvent]) -> list[JobEvent]:
    """Give a terminal event stored without its inline result text the job row's text."""
    for event in events:
        data = event.data
        if (
            event.kind.value == "terminal"
            and data.get("result_inline")
            and "result_json" not in data
            and "result" not in data
        ):
            cursor = await conn.execute("SELECT result FROM jobs WHERE id=%s", (event.job_id,))
            row = await cursor.fetchone()
            data["result_json"] = (row[0] if row is not None else None) or "null"
    return events


class PostgresJobStore:
    """The shared :class:`~synapse_server.core.JobStore`: tables in a PostgreSQL database."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database
        self._io = database.channel("job store")
        self._opened = False

    @property
    def database(self) -> PostgresDatabase:
        """The database the store lives in."""
        return self._db

    async def _write(self, fn: Callable[[Any], Any]) -> Any:
        return await self._io.write(fn)

    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        return await self._io.read(fn)

    async def open(self) -> None:
        """Open the database (connecting and migrating its schema if needed)."""
        if not self._opened:
            await self._db.open()
            self._opened = True

    async def close(self) -> None:
        """Release the database (the pool closes with its last store)."""
        if self._opened:
            self._opened = False
            await self._db.close()

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job`` or return the tenant's earlier job with the same request id."""
        columns = ", ".join(_INSERTED)
        placeholders = ", ".join(["%s"] * len(_INSERTED))

        async def _create(conn: Any) -> tuple[Job | None, bool]:
            async with conn.transaction():
                # The unique (tenant, request_id) index decides between concurrent requests,
                # whichever server they reach: one row is inserted, the others find it.
                cursor = await conn.execute(
                    f"INSERT INTO jobs ({columns}) VALUES ({placeholders}) "
                    "ON CONFLICT (tenant, request_id) WHERE request_id IS NOT NULL "
                    "DO NOTHING RETURNING id",
                    _insert_values(job),
                )
                if await cursor.fetchone() is not None:
                    await conn.execute(
                        "INSERT INTO job_params (job_id, params) VALUES (%s, %s)",
                        (job.id, job.params_json),
                    )
                    return job, True
            cursor = await conn.execute(
                f"{_SELECT_JOB} WHERE j.tenant=%s AND j.request_id=%s",
                (job.tenant, job.request_id),
            )
            row = await cursor.fetchone()
            return (None if row is None else _row_to_job(row)), False

        existing, created = await self._write(_create)
        if created:
            return job, True
        if existing is None:  # the conflicting row went away in between: not possible today
            raise RequestIdConflictError(f"request_id {job.request_id!r} is being used")
        same = (existing.plugin, existing.action, existing.mode) == (
            job.plugin,
            job.action,
            job.mode,
        ) and (existing.params_json == job.params_json or existing.params == job.params)
        if not same:
            raise RequestIdConflictError(
                f"request_id {job.request_id!r} was already used for a different request"
            )
        return existing, False

    async def get_job(self, job_id: str, *, with_params: bool = False) -> Job | None:
        """The job, or ``None``; a summary unless ``with_params``."""
        sql = f"{_SELECT_JOB} WHERE j.id=%s" if with_params else f"{_SUMMARY} WHERE j.id=%s"

        async def _get(conn: Any) -> Job | None:
            cursor = await conn.execute(sql, (job_id,))
            row = await cursor.fetchone()
            return None if row is None else _row_to_job(row)

        result: Job | None = await self._read(_get)
        return result

    async def get_result(self, job_id: str) -> tuple[str, JobState, str | None] | None:
        """``(tenant, state, result JSON text)``; ``None`` for an unknown job."""

        async def _get(conn: Any) -> tuple[str, JobState, str | None] | None:
            cursor = await conn.execute(
                "SELECT tenant, state, result FROM jobs WHERE id=%s", (job_id,)
            )
            row = await cursor.fetchone()
            return None if row is None else (row[0], JobState(row[1]), row[2])

        result: tuple[str, JobState, str | None] | None = await self._read(_get)
        return result

    async def list_jobs(self, flt: JobFilter, page_size: int, page_token: str) -> JobPage:
        """Summaries of the jobs matching ``flt``, newest first."""
        if page_size <= 0:
            raise InvalidArgumentError("page_size must be positive", field="page_size")
        clauses: list[str] = []
        args: list[Any] = []
        if page_token:
            clauses.append("j.ord < %s")
            args.append(decode_page_token("o", page_token))
        if flt.tenant is not None:
            clauses.append("j.tenant = %s")
            args.append(flt.tenant)
        if flt.plugin:
            clauses.append("j.plugin = %s")
            args.append(flt.plugin)
        if flt.action:
            clauses.append("j.action = %s")
            args.append(flt.action)
        if flt.states:
            clauses.append("j.state = ANY(%s)")
            args.append(sorted(s.value for s in flt.states))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT j.ord, {_fields(params=chr(39) * 2)} FROM jobs j {where} "
            "ORDER BY j.ord DESC LIMIT %s"
        )
        args.append(page_size + 1)

        async def _list(conn: Any) -> JobPage:
            cursor = await conn.execute(sql, args)
            rows = await cursor.fetchall()
            more = len(rows) > page_size
            rows = rows[:page_size]
            jobs = [_row_to_job(row[1:]) for row in rows]
            token = encode_page_token("o", rows[-1][0]) if more and rows else ""
            return JobPage(jobs=jobs, next_page_token=token)

        page: JobPage = await self._read(_list)
        return page

    async def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]:
        """All jobs in ``states``, oldest first, with their params."""
        values = sorted(s.value for s in states)

        async def _find(conn: Any) -> list[Job]:
            cursor = await conn.execute(
                f"{_SELECT_JOB} WHERE j.state = ANY(%s) ORDER BY j.ord", (values,)
            )
            return [_row_to_job(row) for row in await cursor.fetchall()]

        found: list[Job] = await self._read(_find)
        return found

    async def plugin_code_in_use(self) -> set[str]:
        """The distinct ``plugin_sha256`` of unfinished jobs."""

        async def _find(conn: Any) -> set[str]:
            cursor = await conn.execute(
                "SELECT DISTINCT plugin_sha256 FROM jobs WHERE plugin_sha256 != '' "
                "AND state = ANY(%s)",
                (list(_UNFINISHED),),
            )
            return {row[0] for row in await cursor.fetchall()}

        found: set[str] = await self._read(_find)
        return found

    async def append_events(self, events: Sequence[JobEvent], job: Job | None = None) -> None:
        """Persist ``events`` and ``job``'s row in one transaction (fenced on its owner), and
        announce them to the other servers."""
        rows = [(e.job_id, e.seq, e.kind.value, e.timestamp, _event_text(e, job)) for e in events]

        async def _append(conn: Any) -> None:
            async with conn.transaction():
                # The row first: its lock orders this write against a claim of the job.
                if job is not None and not await _update(conn, job):
                    raise JobOwnershipLostError(job.id)
                if rows:
                    async with conn.cursor() as cursor:
                        await cursor.executemany(
                            "INSERT INTO job_events (job_id, seq, kind, ts, data) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            rows,
                        )
                    last = events[-1]
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)",
                        (EVENTS_CHANNEL, f"{last.job_id} {last.seq} {int(last.is_terminal)}"),
                    )

        await self._write(_append)

    async def update_job(self, job: Job) -> None:
        """Persist ``job``'s mutable fields (fenced on its owner)."""

        async def _do(conn: Any) -> None:
            await _update(conn, job)

        await self._write(_do)

    async def list_events(self, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        """Events with ``seq > after_seq`` in order, at most ``limit``."""

        async def _list(conn: Any) -> list[JobEvent]:
            cursor = await conn.execute(
                "SELECT seq, kind, ts, data FROM job_events WHERE job_id=%s AND seq>%s "
                "ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            )
            events = [_row_to_event(job_id, tuple(row)) for row in await cursor.fetchall()]
            return await _attach_results(conn, events)

        found: list[JobEvent] = await self._read(_list)
        return found

    async def last_event(self, job_id: str) -> JobEvent | None:
        """The event with the highest seq, or ``None``."""

        async def _last(conn: Any) -> JobEvent | None:
            cursor = await conn.execute(
                "SELECT seq, kind, ts, data FROM job_events WHERE job_id=%s "
                "ORDER BY seq DESC LIMIT 1",
                (job_id,),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            return (await _attach_results(conn, [_row_to_event(job_id, tuple(row))]))[0]

        found: JobEvent | None = await self._read(_last)
        return found

    # Several servers on one database (see JobStore) -------------------------------------------

    async def register_server(
        self, server_id: str, address: str, host: str, lease_seconds: float
    ) -> None:
        """Record the server with a fresh lease (by the database's clock)."""

        async def _register(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO servers (id, address, host, started_at, expires_at) "
                f"VALUES (%s, %s, %s, {_NOW}, {_NOW} + %s) ON CONFLICT (id) DO UPDATE SET "
                "address=excluded.address, host=excluded.host, "
                "started_at=excluded.started_at, expires_at=excluded.expires_at",
                (server_id, address, host, lease_seconds),
            )

        await self._write(_register)

    async def renew_server(self, server_id: str, lease_seconds: float) -> list[tuple[str, str]]:
        """Extend the lease; the server's unfinished jobs with a cancel request."""

        async def _renew(conn: Any) -> list[tuple[str, str]]:
            await conn.execute(
                f"UPDATE servers SET expires_at={_NOW} + %s WHERE id=%s",
                (lease_seconds, server_id),
            )
            cursor = await conn.execute(
                "SELECT id, cancel_reason FROM jobs WHERE owner_server_id=%s AND "
                "cancel_requested AND state = ANY(%s)",
                (server_id, list(_UNFINISHED)),
            )
            return [(str(r[0]), str(r[1])) for r in await cursor.fetchall()]

        found: list[tuple[str, str]] = await self._write(_renew)
        return found

    async def release_server(self, server_id: str) -> None:
        """End the lease now."""

        async def _release(conn: Any) -> None:
            # 0: given up (not merely expired), see claim_jobs(released_only=True).
            await conn.execute("UPDATE servers SET expires_at=0 WHERE id=%s", (server_id,))

        await self._write(_release)

    async def live_servers(self) -> list[ServerRecord]:
        """Servers whose lease holds."""

        async def _live(conn: Any) -> list[ServerRecord]:
            cursor = await conn.execute(
                "SELECT id, address, host, started_at, expires_at FROM servers "
                f"WHERE expires_at > {_NOW} ORDER BY started_at"
            )
            return [ServerRecord(*row) for row in await cursor.fetchall()]

        found: list[ServerRecord] = await self._read(_live)
        return found

    async def claim_jobs(
        self,
        server_id: str,
        *,
        previous_owner: str | None = None,
        released_only: bool = False,
        limit: int = 100,
    ) -> list[ClaimedJob]:
        """Take over the unfinished jobs of ``previous_owner``, or of expired (or released)
        servers."""
        if previous_owner is not None:
            which, args = "j.owner_server_id = %s", [previous_owner]
        elif released_only:
            which = (
                "j.owner_server_id != %s AND EXISTS (SELECT 1 FROM servers s "
                "WHERE s.id = j.owner_server_id AND s.expires_at = 0)"
            )
            args = [server_id]
        else:
            which = (
                "j.owner_server_id != %s AND NOT EXISTS (SELECT 1 FROM servers s "
                f"WHERE s.id = j.owner_server_id AND s.expires_at > {_NOW})"
            )
            args = [server_id]

        async def _claim(conn: Any) -> list[ClaimedJob]:
            async with conn.transaction():
                cursor = await conn.execute(
                    f"{_SELECT_JOB} WHERE j.state = ANY(%s) AND {which} ORDER BY j.ord "
                    "LIMIT %s FOR UPDATE OF j SKIP LOCKED",
                    (list(_UNFINISHED), *args, limit),
                )
                claimed = [_row_to_job(row) for row in await cursor.fetchall()]
                reasons: dict[str, str] = {}
                if claimed:
                    cursor = await conn.execute(
                        "UPDATE jobs SET owner_server_id=%s WHERE id = ANY(%s) "
                        "RETURNING id, cancel_reason",
                        (server_id, [job.id for job in claimed]),
                    )
                    reasons = {str(r[0]): str(r[1]) for r in await cursor.fetchall()}
            return [
                ClaimedJob(
                    job.evolve(owner=server_id),
                    job.owner,
                    reasons.get(job.id, "") if job.cancel_requested else "",
                )
                for job in claimed
            ]

        found: list[ClaimedJob] = await self._write(_claim)
        return found

    async def request_cancel(self, job_id: str, reason: str) -> Job | None:
        """Record a cancel request for the unfinished job and tell its owner."""

        async def _request(conn: Any) -> Job | None:
            async with conn.transaction():
                cursor = await conn.execute(
                    "UPDATE jobs SET cancel_reason=CASE WHEN cancel_requested THEN "
                    "cancel_reason ELSE %s END, cancel_requested=TRUE "
                    "WHERE id=%s AND state = ANY(%s) RETURNING owner_server_id",
                    (reason, job_id, list(_UNFINISHED)),
                )
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    await conn.execute(
                        "SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, f"{row[0]} {job_id}")
                    )
            cursor = await conn.execute(f"{_SUMMARY} WHERE j.id=%s", (job_id,))
            found = await cursor.fetchone()
            return None if found is None else _row_to_job(found)

        result: Job | None = await self._write(_request)
        return result
