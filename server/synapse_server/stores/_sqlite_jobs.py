"""The embedded :class:`~synapse_server.core.JobStore`: jobs and their events in SQLite.

Events are written in batches together with any job-row change they imply, so a job's row
and its event history are always consistent on disk. Writes go to the database's writer
thread, reads to its reader thread (see ``SqliteDatabase``): long replays do not stall writes.
The tables are created by the schema migrations (``_sqlite_schema``).

Group commit: the batches of many jobs arrive together (each worker's stream brings one at a
time), and a transaction plus a hop to the writer thread for each cost more than the rows.
Batches (and job-row updates) that arrive while a transaction is being committed wait and
go to the store together, in arrival order, in the next one; each in a savepoint of its own,
so that one refused (a seq the job already has, a job another server took over) is undone
alone, with its caller getting the error, and the others are stored. A caller is answered
only once the transaction holding its batch has committed: what a caller was told is
stored is, and a batch that failed is not stored at all. A lone batch does not wait: it is
written at once, as before.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from synapse_sdk.jsonutil import dump_json_checked, load_json

from synapse_server.core import (
    ClaimedJob,
    EventKind,
    InvalidArgumentError,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobOwnershipLostError,
    JobPage,
    JobState,
    RequestIdConflictError,
    ServerRecord,
)
from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.stores._sqlite import transaction
from synapse_server.stores._sqlite_database import SqliteDatabase

__all__ = ["SqliteJobStore"]

T = TypeVar("T")

_JOB_COLUMNS = (
    "id, tenant, plugin, action, mode, params, state, request_id, created_at, started_at, "
    "finished_at, result, error, reason, progress, plugin_version, last_seq, pending_reason, "
    "cancel_requested, result_size, plugin_sha256, warnings, owner_server_id"
)
_UNFINISHED = tuple(sorted(s.value for s in JobState if not s.is_terminal))
_IN_UNFINISHED = f"({','.join('?' * len(_UNFINISHED))})"
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
        owner,
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
        owner=owner,
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


_INSERT_EVENTS = "INSERT INTO job_events (job_id, seq, kind, ts, data) VALUES (?,?,?,?,?)"


@dataclass(slots=True)
class _Write:
    """One caller's batch of events (``rows``, maybe none) and job row, waiting for its
    group's transaction (see the module docstring)."""

    rows: list[tuple[Any, ...]]
    job: Job | None
    # An update of the row alone (update_job) is left as it is when the job has another
    # owner; with events, the batch is refused.
    fenced: bool
    done: asyncio.Future[None]


def _write_group(conn: sqlite3.Connection, *, group: Sequence[_Write]) -> list[Exception | None]:
    """Store ``group`` in one transaction, each write in a savepoint; the error of each (or
    None). An error of the transaction itself (the disk is full, the commit failed) raises:
    nothing of the group is stored."""
    errors: list[Exception | None] = []
    with transaction(conn):
        for write in group:
            conn.execute("SAVEPOINT batch")
            try:
                if write.rows:
                    conn.executemany(_INSERT_EVENTS, write.rows)
                if write.job is not None and not _update(conn, write.job) and write.fenced:
                    # Undone with the events: another server runs the job now.
                    raise JobOwnershipLostError(write.job.id)
            except (sqlite3.IntegrityError, JobOwnershipLostError) as exc:
                # This batch only (a seq the job already has; the job was taken over).
                conn.execute("ROLLBACK TO batch")
                errors.append(exc)
            else:
                errors.append(None)
            conn.execute("RELEASE batch")
    return errors


class SqliteJobStore:
    """The embedded :class:`~synapse_server.core.JobStore`: tables in a SQLite file (WAL).

    ``database`` is shared with the other stores of that file (``open_stores``), or a path:
    then the store has the file to itself.
    """

    def __init__(self, database: SqliteDatabase | Path) -> None:
        self._db = database if isinstance(database, SqliteDatabase) else SqliteDatabase(database)
        self._io = self._db.channel("job store")
        self._opened = False
        # Group commit (see the module docstring): the writes waiting for the transaction in
        # flight, and that transaction's future (None: none in flight).
        self._waiting: list[_Write] = []
        self._in_flight: asyncio.Future[list[Exception | None]] | None = None

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
        """Persist ``events`` and, if given, ``job``'s row, atomically (group commit: see the
        module docstring)."""
        rows = [(e.job_id, e.seq, e.kind.value, e.timestamp, _event_text(e, job)) for e in events]
        await self._grouped(rows, job, fenced=True)

    async def update_job(self, job: Job) -> None:
        """Persist ``job``'s state, timestamps, outcome and progress."""
        # In the same queue as the batches: a job's row is never written out of order.
        await self._grouped([], job, fenced=False)

    async def _grouped(self, rows: list[tuple[Any, ...]], job: Job | None, *, fenced: bool) -> None:
        write = _Write(rows, job, fenced, asyncio.get_running_loop().create_future())
        self._waiting.append(write)
        if self._in_flight is None:
            self._start_group()
        # A caller cancelled before its group goes to the writer thread is left out of it
        # (nothing of its batch is stored); once there, the batch is stored all the same.
        await write.done

    def _start_group(self) -> None:
        group = [write for write in self._waiting if not write.done.done()]
        self._waiting = []
        if not group:
            return
        try:
            future = self._io.submit(functools.partial(_write_group, group=group))
        except Exception as exc:  # the database is closed
            self._settle(group, None, exc)
            return
        self._in_flight = future
        future.add_done_callback(functools.partial(self._group_done, group))

    def _group_done(
        self, group: list[_Write], future: asyncio.Future[list[Exception | None]]
    ) -> None:
        self._in_flight = None
        if future.cancelled():
            for write in group:
                if not write.done.done():
                    write.done.cancel()
        elif (error := future.exception()) is not None:
            self._settle(group, None, error)
        else:
            self._settle(group, future.result(), None)
        if self._waiting:
            self._start_group()

    @staticmethod
    def _settle(
        group: list[_Write], errors: list[Exception | None] | None, error: BaseException | None
    ) -> None:
        for index, write in enumerate(group):
            if write.done.done():
                continue
            own = error if errors is None else errors[index]
            if own is None:
                write.done.set_result(None)
            else:
                write.done.set_exception(own)

    # Several servers on one database (see JobStore) -------------------------------------------

    async def register_server(
        self, server_id: str, address: str, host: str, lease_seconds: float
    ) -> None:
        """Record the server with a fresh lease."""

        def _register(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO servers (id, address, host, started_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET address=excluded.address, "
                "host=excluded.host, started_at=excluded.started_at, "
                "expires_at=excluded.expires_at",
                (server_id, address, host, now, now + lease_seconds),
            )

        await self._write(_register)

    async def renew_server(self, server_id: str, lease_seconds: float) -> list[tuple[str, str]]:
        """Extend the lease; the server's unfinished jobs with a cancel request."""

        def _renew(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            conn.execute(
                "UPDATE servers SET expires_at=? WHERE id=?",
                (time.time() + lease_seconds, server_id),
            )
            rows = conn.execute(
                "SELECT id, cancel_reason FROM jobs WHERE owner_server_id=? AND "
                f"cancel_requested=1 AND state IN {_IN_UNFINISHED}",
                (server_id, *_UNFINISHED),
            ).fetchall()
            return [(str(r[0]), str(r[1])) for r in rows]

        return await self._write(_renew)

    async def release_server(self, server_id: str) -> None:
        """End the lease now."""
        await self._write(
            lambda c: c.execute(
                # 0: given up (not merely expired), see claim_jobs(released_only=True).
                "UPDATE servers SET expires_at=0 WHERE id=?",
                (server_id,),
            )
        )

    async def live_servers(self) -> list[ServerRecord]:
        """Servers whose lease holds."""

        def _live(conn: sqlite3.Connection) -> list[ServerRecord]:
            rows = conn.execute(
                "SELECT id, address, host, started_at, expires_at FROM servers "
                "WHERE expires_at > ? ORDER BY started_at",
                (time.time(),),
            ).fetchall()
            return [ServerRecord(*row) for row in rows]

        return await self._read(_live)

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

        def _claim(conn: sqlite3.Connection) -> list[ClaimedJob]:
            # The write lock from the start: one claimer at a time sees and takes a job.
            with transaction(conn, immediate=True):
                args: list[Any]
                if previous_owner is not None:
                    which, args = "j.owner_server_id = ?", [previous_owner]
                elif released_only:
                    which = (
                        "j.owner_server_id != ? AND EXISTS (SELECT 1 FROM servers s "
                        "WHERE s.id = j.owner_server_id AND s.expires_at = 0)"
                    )
                    args = [server_id]
                else:
                    which = (
                        "j.owner_server_id != ? AND NOT EXISTS (SELECT 1 FROM servers s "
                        "WHERE s.id = j.owner_server_id AND s.expires_at > ?)"
                    )
                    args = [server_id, time.time()]
                rows = conn.execute(
                    f"{_SELECT_JOB} WHERE j.state IN {_IN_UNFINISHED} AND {which} "
                    "ORDER BY j.ord LIMIT ?",
                    (*_UNFINISHED, *args, limit),
                ).fetchall()
                claimed = [_row_to_job(row) for row in rows]
                reasons = {
                    job.id: str(
                        conn.execute(
                            "SELECT cancel_reason FROM jobs WHERE id=?", (job.id,)
                        ).fetchone()[0]
                    )
                    for job in claimed
                    if job.cancel_requested
                }
                conn.executemany(
                    "UPDATE jobs SET owner_server_id=? WHERE id=?",
                    [(server_id, job.id) for job in claimed],
                )
            return [
                ClaimedJob(job.evolve(owner=server_id), job.owner, reasons.get(job.id, ""))
                for job in claimed
            ]

        return await self._write(_claim)

    async def request_cancel(self, job_id: str, reason: str) -> Job | None:
        """Record a cancel request for the unfinished job (the first reason stays)."""

        def _request(conn: sqlite3.Connection) -> Job | None:
            conn.execute(
                "UPDATE jobs SET cancel_reason=CASE WHEN cancel_requested=1 THEN cancel_reason "
                f"ELSE ? END, cancel_requested=1 WHERE id=? AND state IN {_IN_UNFINISHED}",
                (reason, job_id, *_UNFINISHED),
            )
            row = conn.execute(f"SELECT {_SUMMARY_FIELDS} FROM jobs j WHERE j.id=?", (job_id,))
            found = row.fetchone()
            return None if found is None else _row_to_job(found)

        return await self._write(_request)

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
        job.owner,
    )


def _update(conn: sqlite3.Connection, job: Job) -> bool:
    """Write the job's mutable fields; False when it has an owner that no longer owns it."""
    cursor = conn.execute(
        # A job read without its result text (a summary) leaves the stored text as it is; a
        # cancel request stored by another server stays until the owner has seen it.
        "UPDATE jobs SET state=?, started_at=?, finished_at=?, result=COALESCE(?, result), "
        "error=?, reason=?, progress=?, last_seq=?, pending_reason=?, "
        "cancel_requested=MAX(cancel_requested, ?), result_size=? "
        "WHERE id=? AND (?='' OR owner_server_id=?)",
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
            job.owner,
            job.owner,
        ),
    )
    return cursor.rowcount > 0 or not job.owner
