"""The :class:`~synapse_server.core.datasets.DatasetStore` on PostgreSQL: the ``datasets``
table of the shared database (see ``_postgres_schema``), the SQLite store's queries."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.datasets import DatasetPage, DatasetRecord
from synapse_server.stores._postgres import PostgresDatabase
from synapse_server.stores._sqlite_datasets import _COLUMNS, TOKEN_KIND, _row, columns_to_json

__all__ = ["PostgresDatasetStore"]

_INSERT = (
    "INSERT INTO datasets (id, tenant, name, format, sha256, size_bytes, num_rows, columns, "
    "created_at, job_id, committed) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
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
        record.committed,
    )


class PostgresDatasetStore:
    """The shared dataset store: a ``datasets`` table in a PostgreSQL database."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database
        self._io = database.channel("dataset store")
        self._opened = False

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

    async def _rows(self, sql: str, args: tuple[Any, ...], *, write: bool) -> list[DatasetRecord]:
        async def _run(conn: Any) -> list[DatasetRecord]:
            cursor = await conn.execute(sql, args)
            return [_row(tuple(r))[1] for r in await cursor.fetchall()]

        found: list[DatasetRecord] = await (self._write if write else self._read)(_run)
        return found

    async def insert(self, record: DatasetRecord) -> DatasetRecord:
        """Store a new dataset row."""
        values = _values(record)

        async def _insert(conn: Any) -> None:
            await conn.execute(_INSERT, values)

        await self._write(_insert)
        return record

    async def get(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """The tenant's committed dataset with this id, or ``None``."""
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM datasets WHERE id=%s AND tenant=%s AND committed",
            (dataset_id, tenant),
            write=False,
        )
        return rows[0] if rows else None

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> DatasetPage:
        """The tenant's committed datasets (optionally of one name), newest first."""
        clauses = ["tenant = %s", "committed"]
        args: list[Any] = [tenant]
        if page_token:
            clauses.append("ord < %s")
            args.append(decode_page_token(TOKEN_KIND, page_token))
        if name:
            clauses.append("name = %s")
            args.append(name)
        args.append(page_size + 1)
        sql = (
            f"SELECT {_COLUMNS} FROM datasets WHERE {' AND '.join(clauses)} "
            "ORDER BY ord DESC LIMIT %s"
        )

        async def _list(conn: Any) -> DatasetPage:
            cursor = await conn.execute(sql, args)
            rows = [_row(tuple(r)) for r in await cursor.fetchall()]
            if len(rows) > page_size:
                rows = rows[:page_size]
                return DatasetPage([r for _, r in rows], encode_page_token(TOKEN_KIND, rows[-1][0]))
            return DatasetPage([r for _, r in rows], "")

        page: DatasetPage = await self._read(_list)
        return page

    async def delete(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """Remove the tenant's committed dataset row; what was removed, or ``None``."""
        rows = await self._rows(
            f"DELETE FROM datasets WHERE id=%s AND tenant=%s AND committed RETURNING {_COLUMNS}",
            (dataset_id, tenant),
            write=True,
        )
        return rows[0] if rows else None

    async def stage_output(self, record: DatasetRecord) -> DatasetRecord | None:
        """Store a staged job output, replacing the job's staged output of that name."""
        values = _values(record)

        async def _stage(conn: Any) -> DatasetRecord | None:
            async with conn.transaction():
                cursor = await conn.execute(
                    f"DELETE FROM datasets WHERE job_id=%s AND name=%s AND NOT committed "
                    f"RETURNING {_COLUMNS}",
                    (record.job_id, record.name),
                )
                row = await cursor.fetchone()
                await conn.execute(_INSERT, values)
            return None if row is None else _row(tuple(row))[1]

        replaced: DatasetRecord | None = await self._write(_stage)
        return replaced

    async def commit_outputs(self, job_id: str) -> int:
        """Make the job's staged outputs visible."""

        async def _commit(conn: Any) -> int:
            cursor = await conn.execute(
                "UPDATE datasets SET committed=TRUE WHERE job_id=%s AND NOT committed", (job_id,)
            )
            return int(cursor.rowcount)

        count: int = await self._write(_commit)
        return count

    async def discard_outputs(self, job_id: str) -> builtins.list[DatasetRecord]:
        """Remove the job's staged outputs."""
        return await self._rows(
            f"DELETE FROM datasets WHERE job_id=%s AND NOT committed RETURNING {_COLUMNS}",
            (job_id,),
            write=True,
        )

    async def job_outputs(self, tenant: str, job_id: str) -> builtins.list[DatasetRecord]:
        """The job's committed outputs, by name."""
        return await self._rows(
            f"SELECT {_COLUMNS} FROM datasets WHERE job_id=%s AND tenant=%s AND committed "
            "ORDER BY name",
            (job_id, tenant),
            write=False,
        )

    async def staged_jobs(self) -> set[str]:
        """The jobs that have staged outputs."""

        async def _jobs(conn: Any) -> set[str]:
            cursor = await conn.execute("SELECT DISTINCT job_id FROM datasets WHERE NOT committed")
            return {r[0] for r in await cursor.fetchall()}

        found: set[str] = await self._read(_jobs)
        return found

    async def references(self, sha256: str) -> int:
        """How many rows (staged or not, of any tenant) use the artifact."""

        async def _count(conn: Any) -> int:
            cursor = await conn.execute("SELECT COUNT(*) FROM datasets WHERE sha256=%s", (sha256,))
            row = await cursor.fetchone()
            return int(row[0])

        count: int = await self._read(_count)
        return count

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some row references."""

        async def _all(conn: Any) -> set[str]:
            cursor = await conn.execute("SELECT DISTINCT sha256 FROM datasets")
            return {r[0] for r in await cursor.fetchall()}

        found: set[str] = await self._read(_all)
        return found
