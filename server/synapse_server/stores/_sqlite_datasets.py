"""The embedded :class:`~synapse_server.core.datasets.DatasetStore`: a ``datasets`` table in
SQLite, beside the other stores' tables (created by migration 7, ``_sqlite_schema``)."""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.datasets import (
    DatasetColumn,
    DatasetFormat,
    DatasetPage,
    DatasetRecord,
)
from synapse_server.stores._sqlite import transaction
from synapse_server.stores._sqlite_database import SqliteDatabase

__all__ = ["SqliteDatasetStore", "columns_from_json", "columns_to_json"]

T = TypeVar("T")

_COLUMNS = (
    "ord, id, tenant, name, format, sha256, size_bytes, num_rows, columns, created_at, job_id, "
    "committed"
)
#: The kind of a datasets page token (see ``_paging``).
TOKEN_KIND = "d"


def columns_to_json(columns: tuple[DatasetColumn, ...]) -> str:
    """A schema as stored: a JSON array of ``[name, type]`` pairs."""
    return json.dumps([[c.name, c.type] for c in columns], separators=(",", ":"))


def columns_from_json(text: str) -> tuple[DatasetColumn, ...]:
    """Inverse of :func:`columns_to_json`."""
    return tuple(DatasetColumn(str(n), str(t)) for n, t in json.loads(text))


def _row(row: tuple[Any, ...]) -> tuple[int, DatasetRecord]:
    (ord_, id_, tenant, name, fmt, sha, size, rows, columns, created, job_id, committed) = row
    return ord_, DatasetRecord(
        id=id_,
        tenant=tenant,
        name=name,
        format=DatasetFormat(fmt),
        sha256=sha,
        size_bytes=size,
        num_rows=rows,
        columns=columns_from_json(columns),
        created_at=created,
        job_id=job_id,
        committed=bool(committed),
    )


def _values(record: DatasetRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.tenant,
        record.name,
        record.format.value,
        record.sha256,
        record.size_bytes,
        record.num_rows,
        columns_to_json(record.columns),
        record.created_at,
        record.job_id,
        int(record.committed),
    )


_INSERT = (
    "INSERT INTO datasets (id, tenant, name, format, sha256, size_bytes, num_rows, columns, "
    "created_at, job_id, committed) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


class SqliteDatasetStore:
    """The embedded dataset store (see the module doc).

    ``database`` is shared with the other stores of that file (``open_stores``), or a path:
    then the store has the file to itself.
    """

    def __init__(self, database: SqliteDatabase | Path) -> None:
        self._db = database if isinstance(database, SqliteDatabase) else SqliteDatabase(database)
        self._io = self._db.channel("dataset store")
        self._opened = False

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

    async def insert(self, record: DatasetRecord) -> DatasetRecord:
        """Store a new dataset row."""
        values = _values(record)
        await self._write(lambda c: c.execute(_INSERT, values))
        return record

    async def get(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """The tenant's committed dataset with this id, or ``None``."""

        def _get(conn: sqlite3.Connection) -> DatasetRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM datasets WHERE id=? AND tenant=? AND committed=1",
                (dataset_id, tenant),
            ).fetchone()
            return None if row is None else _row(row)[1]

        return await self._read(_get)

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> DatasetPage:
        """The tenant's committed datasets (optionally of one name), newest first."""
        clauses = ["tenant = ?", "committed = 1"]
        args: list[Any] = [tenant]
        if page_token:
            clauses.append("ord < ?")
            args.append(decode_page_token(TOKEN_KIND, page_token))
        if name:
            clauses.append("name = ?")
            args.append(name)
        args.append(page_size + 1)
        sql = (
            f"SELECT {_COLUMNS} FROM datasets WHERE {' AND '.join(clauses)} "
            "ORDER BY ord DESC LIMIT ?"
        )

        def _list(conn: sqlite3.Connection) -> DatasetPage:
            rows = [_row(r) for r in conn.execute(sql, args).fetchall()]
            if len(rows) > page_size:
                rows = rows[:page_size]
                return DatasetPage([r for _, r in rows], encode_page_token(TOKEN_KIND, rows[-1][0]))
            return DatasetPage([r for _, r in rows], "")

        return await self._read(_list)

    async def delete(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """Remove the tenant's committed dataset row; what was removed, or ``None``."""

        def _delete(conn: sqlite3.Connection) -> DatasetRecord | None:
            row = conn.execute(
                f"DELETE FROM datasets WHERE id=? AND tenant=? AND committed=1 "
                f"RETURNING {_COLUMNS}",
                (dataset_id, tenant),
            ).fetchone()
            return None if row is None else _row(row)[1]

        return await self._write(_delete)

    async def stage_output(self, record: DatasetRecord) -> DatasetRecord | None:
        """Store a staged job output, replacing the job's staged output of that name."""
        values = _values(record)

        def _stage(conn: sqlite3.Connection) -> DatasetRecord | None:
            with transaction(conn):
                row = conn.execute(
                    f"DELETE FROM datasets WHERE job_id=? AND name=? AND committed=0 "
                    f"RETURNING {_COLUMNS}",
                    (record.job_id, record.name),
                ).fetchone()
                conn.execute(_INSERT, values)
            return None if row is None else _row(row)[1]

        return await self._write(_stage)

    async def commit_outputs(self, job_id: str) -> int:
        """Make the job's staged outputs visible."""
        return await self._write(
            lambda c: (
                c.execute(
                    "UPDATE datasets SET committed=1 WHERE job_id=? AND committed=0", (job_id,)
                ).rowcount
            )
        )

    async def discard_outputs(self, job_id: str) -> builtins.list[DatasetRecord]:
        """Remove the job's staged outputs."""
        return await self._write(
            lambda c: [
                _row(r)[1]
                for r in c.execute(
                    f"DELETE FROM datasets WHERE job_id=? AND committed=0 RETURNING {_COLUMNS}",
                    (job_id,),
                ).fetchall()
            ]
        )

    async def job_outputs(self, tenant: str, job_id: str) -> builtins.list[DatasetRecord]:
        """The job's committed outputs, by name."""
        return await self._read(
            lambda c: [
                _row(r)[1]
                for r in c.execute(
                    f"SELECT {_COLUMNS} FROM datasets WHERE job_id=? AND tenant=? AND "
                    "committed=1 ORDER BY name",
                    (job_id, tenant),
                ).fetchall()
            ]
        )

    async def staged_jobs(self) -> set[str]:
        """The jobs that have staged outputs."""
        return await self._read(
            lambda c: {
                r[0] for r in c.execute("SELECT DISTINCT job_id FROM datasets WHERE committed=0")
            }
        )

    async def references(self, sha256: str) -> int:
        """How many rows (staged or not, of any tenant) use the artifact."""
        return await self._read(
            lambda c: int(
                c.execute("SELECT COUNT(*) FROM datasets WHERE sha256=?", (sha256,)).fetchone()[0]
            )
        )

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some row references."""
        return await self._read(
            lambda c: {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM datasets")}
        )
