"""The embedded :class:`~synapse_server.core.JobStore`: jobs and their events in SQLite.

Events are written in batches (one transaction per batch) together with any job-row change
they imply, so a job's row and its event history are always consistent on disk. Writes go to
the database's writer thread, reads to its reader thread (see ``SqliteDatabase``): long
replays do not stall writes. The tables are created by the schema migrations
(``_sqlite_schema``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from synapse_sdk.jsonutil import dump_json_checked, load_json

from synapse_server.core import (
    EventKind,
    InvalidArgumentError,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobPage,
    JobState,
    RequestIdConflictError,
)
from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.stores._sqlite import transaction
from synapse_server.stores._sqlite_database import SqliteDatabase

__all__ = ["SqliteJobStore"]

T = TypeVar("T")

_JOB_COLUMNS = (
    "id, tenant, plugin, action, mode, params, state, request_id, created_at, started_at, "
    "finished_at, result, error, reason, progress, plugin_version, last_seq, pending_reason, "
    "cancel_requested, result_size, plugin_sha256, warnings"
)
# Params live in their own table: SQLite rewrites a whole row on every UPDATE, and a job's
# row is updated with each batch of events (progress, last_seq), so megabytes of params in it
# were rewritten (and appended to the WAL) hundreds of times per job (measured: ~10 ms per
# update for 7 MB of params). Rows written before job_params existed keep theirs in
# jobs.params, hence the COALESCE.


def _job_fields(*, params: str, result: str) -> str:
    """The job columns, from ``jobs j`` joined to ``job_params p``, with these two sources."""
    sources = {"params": params, "result": result}
    return ", ".join(sources.get(c, f"j.{c}") for c in _JOB_COLUMNS.split(", "))


_FROM_JOBS = "FROM jobs j LEFT JOIN job_params p ON p.job_id = j.id"
_PARAMS = "COALESCE(p.params, j.params)"
# Jobs are read without their result text (megabytes, read only by get_result): result_json
# stays empty, result_size tells the size. With their params (recovery, GetJob's full view,
# the request-id check), or as summaries without them too (listings, GetJob's basic view and
# the tenant checks of other calls).
_SELECT_JOB = f"SELECT {_job_fields(params=_PARAMS, result='NULL')} {_FROM_JOBS}"
_SUMMARY_FIELDS = _job_fields(params="''", result="NULL")


def _dump(value: Any) -> str:
    # A terminal event carries an inline result of up to a megabyte: the Rust serialiser
    # writes it several times faster than json.dumps.
    return dump_json_checked(value).decode()


def _result_text(job: Job) -> str | None:
    if job.result_json:
        return job.result_json
    return None if job.result is None else _dump(job.result)


def _row_to_job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (
        id_,
        tenant,
        plugin,
        action,
        mode,
        params,
        state,
        request_id,
        created_at,
        started_at,
        finished_at,
        result,
        error,
        reason,
        progress,
        plugin_version,
        last_seq,
        pending_reason,
        cancel_requested,
        result_size,
        plugin_sha256,
        warnings,
    ) = row
    return Job(
        id=id_,
        tenant=tenant,
        plugin=plugin,
        action=action,
        mode=mode,
        # Kept as text (see Job.params); "" in a summary (see _SELECT_JOB).
        params_json=params,
        state=JobState(state),
        request_id=request_id,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        # Never selected (NULL, see _SELECT_JOB): get_result reads the text when it is asked for.
        result=None,
        result_json=result or "",
        result_size=result_size,
        error=None if error is None else JobError.from_dict(load_json(error)),
        reason=reason,
        progress=progress,
        plugin_version=plugin_version,
        plugin_sha256=plugin_sha256,
        last_seq=last_seq,
        pending_reason=pending_reason,
        cancel_requested=bool(cancel_requested),
        warnings=tuple(load_json(warnings)) if warnings != "[]" else (),
    )


def _row_to_event(job_id: str, row: tuple[Any, ...]) -> JobEvent:
    seq, kind, ts, data = row
    return JobEvent(
        job_id=job_id, seq=seq, kind=EventKind(kind), data=load_json(data), timestamp=ts
    )


def _event_text(event: JobEvent, job: Job | None) -> str:
    data = event.data
    text = data.get("result_json")
    if (
        event.kind is EventKind.TERMINAL
        and text is not None
        and job is not None
        and job.result_json == text
    ):
        # The job row written with this event holds the same text: storing it again
        # (escaped, inside the event's JSON) would write an inline result twice. Readers
        # put it back from the row (_attach_results).
        return _dump({k: v for k, v in data.items() if k != "result_json"})
    return _dump(data)


def _attach_results(conn: sqlite3.Connection, events: list[JobEvent]) -> list[JobEvent]:
    """Give a terminal event stored without its inline result text the job row's text."""
    for event in events:
        data = event.data
        if (
            event.kind is EventKind.TERMINAL
            and data.get("result_inline")
            and "result_json" not in data
            and "result" not in data  # stored by earlier versions, with the parsed result
        ):
            row = conn.execute("SELECT result FROM jobs WHERE id=?", (event.job_id,)).fetchone()
            data["result_json"] = (row[0] if row is not None else None) or "null"
    return events


class SqliteJobStore:
    """The embedded :class:`~synapse_server.core.JobStore`: tables in a SQLite file (WAL).

    ``database`` is shared with the other stores of that file (``open_stores``), or a path:
    then the store has the file to itself.
    """

    def __init__(self, database: SqliteDatabase | Path) -> None:
        self._db = database if isinstance(database, SqliteDatabase) else SqliteDatabase(database)
        self._io = self._db.channel("job store")
        self._opened = False

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._io.write(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._io.read(fn)

    async def open(self) -> None:
        """Open the database (creating the file and migrating its schema if needed)."""
        if not self._opened:
            await self._db.open()
            self._opened = True

    async def close(self) -> None:
        """Release the database (its connections and threads close with its last store)."""
        if self._opened:
            self._opened = False
            await self._db.close()

    async def journal_mode(self) -> str:
        """The journal mode SQLite reports (``wal`` once opened)."""
        return await self._read(lambda c: str(c.execute("PRAGMA journal_mode").fetchone()[0]))

    async def create_job(self, job: Job) -> tuple[Job, bool]:
        """Insert ``job`` or return the tenant's earlier job with the same request id."""

        def _create(conn: sqlite3.Connection) -> tuple[Job, bool]:
            # The write lock from the start: no other request with the same id slips in
            # between the look-up and the insert.
            with transaction(conn, immediate=True):
                existing = None
                if job.request_id is not None:
                    row = conn.execute(
                        f"{_SELECT_JOB} WHERE j.tenant=? AND j.request_id=?",
                        (job.tenant, job.request_id),
                    ).fetchone()
                    existing = None if row is None else _row_to_job(row)
                if existing is None:
                    conn.execute(
                        f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES "
                        f"({','.join('?' * len(_JOB_COLUMNS.split(', ')))})",
                        _job_values(job),
                    )
                    conn.execute(
                        "INSERT INTO job_params (job_id, params) VALUES (?, ?)",
                        (job.id, job.params_json),
                    )
                    return job, True
            same = (existing.plugin, existing.action, existing.mode) == (
                job.plugin,
                job.action,
                job.mode,
            ) and (
                # The same text is the same params; other text (spacing, key order) may
                # still be, so only then are both parsed.
                existing.params_json == job.params_json or existing.params == job.params
            )
            if not same:
                raise RequestIdConflictError(
                    f"request_id {job.request_id!r} was already used for a different request"
                )
            return existing, False

        return await self._write(_create)

    async def get_job(self, job_id: str, *, with_params: bool = False) -> Job | None:
        """The job, or ``None``. Without ``with_params`` a summary (see ``_SUMMARY_FIELDS``);
        with it, the params too. The result text is read with :meth:`get_result`."""
        sql = (
            f"{_SELECT_JOB} WHERE j.id=?"
            if with_params
            else f"SELECT {_SUMMARY_FIELDS} FROM jobs j WHERE j.id=?"
        )

        def _get(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(sql, (job_id,)).fetchone()
            return None if row is None else _row_to_job(row)

        return await self._read(_get)

    async def get_result(self, job_id: str) -> tuple[str, JobState, str | None] | None:
        """``(tenant, state, result JSON text)``; ``None`` for an unknown job."""

        def _get(conn: sqlite3.Connection) -> tuple[str, JobState, str | None] | None:
            row = conn.execute(
                "SELECT tenant, state, result FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
            return None if row is None else (row[0], JobState(row[1]), row[2])

        return await self._read(_get)

    async def list_jobs(self, flt: JobFilter, page_size: int, page_token: str) -> JobPage:
        """Jobs matching ``flt``, newest first; ``page_token`` continues an earlier listing.

        The jobs are summaries, without params and result texts (listings show neither).
        """
        if page_size <= 0:
            raise InvalidArgumentError("page_size must be positive", field="page_size")
        clauses: list[str] = []
        args: list[Any] = []
        if page_token:
            clauses.append("ord < ?")
            args.append(decode_page_token("o", page_token))
        if flt.tenant is not None:
            clauses.append("tenant = ?")
            args.append(flt.tenant)
        if flt.plugin:
            clauses.append("plugin = ?")
            args.append(flt.plugin)
        if flt.action:
            clauses.append("action = ?")
            args.append(flt.action)
        if flt.states:
            clauses.append(f"state IN ({','.join('?' * len(flt.states))})")
            args.extend(sorted(s.value for s in flt.states))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT j.ord, {_SUMMARY_FIELDS} FROM jobs j {where} ORDER BY j.ord DESC LIMIT ?"
        args.append(page_size + 1)

        def _list(conn: sqlite3.Connection) -> JobPage:
            rows = conn.execute(sql, args).fetchall()
            more = len(rows) > page_size
            rows = rows[:page_size]
            jobs = [_row_to_job(row[1:]) for row in rows]
            token = encode_page_token("o", rows[-1][0]) if more and rows else ""
            return JobPage(jobs=jobs, next_page_token=token)

        return await self._read(_list)

    async def jobs_in_states(self, states: Iterable[JobState]) -> list[Job]:
        """All jobs in ``states``, oldest first."""
        values = sorted(s.value for s in states)

        def _find(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"{_SELECT_JOB} WHERE j.state IN ({','.join('?' * len(values))}) ORDER BY j.ord",
                values,
            ).fetchall()
            return [_row_to_job(row) for row in rows]

        return await self._read(_find)

    async def plugin_code_in_use(self) -> set[str]:
        """The distinct ``plugin_sha256`` of jobs in a non-terminal state."""
        unfinished = sorted(s.value for s in JobState if not s.is_terminal)

        def _find(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT DISTINCT plugin_sha256 FROM jobs WHERE plugin_sha256 != '' AND "
                f"state IN ({','.join('?' * len(unfinished))})",
                unfinished,
            ).fetchall()
            return {row[0] for row in rows}

        return await self._read(_find)

    async def append_events(self, events: Sequence[JobEvent], job: Job | None = None) -> None:
        """Persist ``events`` and, if given, ``job``'s row, atomically."""
        rows = [(e.job_id, e.seq, e.kind.value, e.timestamp, _event_text(e, job)) for e in events]

        def _append(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO job_events (job_id, seq, kind, ts, data) VALUES (?,?,?,?,?)", rows
                )
                if job is not None:
                    _update(conn, job)

        await self._write(_append)

    async def update_job(self, job: Job) -> None:
        """Persist ``job``'s state, timestamps, outcome and progress."""
        await self._write(lambda conn: _update(conn, job))

    async def list_events(self, job_id: str, after_seq: int, limit: int) -> list[JobEvent]:
        """Events with ``seq > after_seq`` in order, at most ``limit``."""

        def _list(conn: sqlite3.Connection) -> list[JobEvent]:
            rows = conn.execute(
                "SELECT seq, kind, ts, data FROM job_events WHERE job_id=? AND seq>? "
                "ORDER BY seq LIMIT ?",
                (job_id, after_seq, limit),
            ).fetchall()
            return _attach_results(conn, [_row_to_event(job_id, row) for row in rows])

        return await self._read(_list)

    async def last_event(self, job_id: str) -> JobEvent | None:
        """The event with the highest seq, or ``None``."""

        def _last(conn: sqlite3.Connection) -> JobEvent | None:
            row = conn.execute(
                "SELECT seq, kind, ts, data FROM job_events WHERE job_id=? "
                "ORDER BY seq DESC LIMIT 1",
                (job_id,),
            ).fetchone()
            return None if row is None else _attach_results(conn, [_row_to_event(job_id, row)])[0]

        return await self._read(_last)


def _job_values(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.tenant,
        job.plugin,
        job.action,
        job.mode,
        "",  # the params go to job_params
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
        int(job.cancel_requested),
        job.result_size,
        job.plugin_sha256,
        _dump(list(job.warnings)),
    )


def _update(conn: sqlite3.Connection, job: Job) -> None:
    conn.execute(
        # A job read without its result text (a summary) leaves the stored text as it is.
        "UPDATE jobs SET state=?, started_at=?, finished_at=?, result=COALESCE(?, result), "
        "error=?, reason=?, progress=?, last_seq=?, pending_reason=?, cancel_requested=?, "
        "result_size=? WHERE id=?",
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
            int(job.cancel_requested),
            job.result_size,
            job.id,
        ),
    )
