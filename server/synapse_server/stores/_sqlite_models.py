"""The embedded :class:`~synapse_server.core.models.ModelStore`: a ``models`` table in SQLite.

The table lives in the server's database file beside the other stores' (see
``SqliteDatabase``); it is created by the schema migrations (``_sqlite_schema``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from synapse_sdk.models import ArchiveFormat

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.models import ModelPage, ModelRecord
from synapse_server.stores._sqlite_database import SqliteDatabase

__all__ = ["SqliteModelStore"]

T = TypeVar("T")

_COLUMNS = (
    "id, tenant, name, description, framework, metadata, sha256, size_bytes, archive_format, "
    "created_at"
)


def _row(row: tuple[Any, ...]) -> ModelRecord:
    (id_, tenant, name, description, framework, metadata, sha, size, fmt, created) = row
    return ModelRecord(
        id=id_,
        tenant=tenant,
        name=name,
        description=description,
        framework=framework,
        metadata=json.loads(metadata),
        sha256=sha,
        size_bytes=size,
        archive_format=ArchiveFormat(fmt),
        created_at=created,
    )


class SqliteModelStore:
    """The embedded :class:`~synapse_server.core.models.ModelStore`: a ``models`` table in a
    SQLite file (WAL).

    ``database`` is shared with the other stores of that file (``open_stores``), or a path:
    then the store has the file to itself.
    """

    def __init__(self, database: SqliteDatabase | Path) -> None:
        self._db = database if isinstance(database, SqliteDatabase) else SqliteDatabase(database)
        self._io = self._db.channel("model store")
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

    async def insert(self, record: ModelRecord) -> ModelRecord:
        """Store a new model; returns it with its assigned id."""
        values = (
            record.tenant,
            record.name,
            record.description,
            record.framework,
            json.dumps(record.metadata, separators=(",", ":"), allow_nan=False),
            record.sha256,
            record.size_bytes,
            record.archive_format.value,
            record.created_at,
        )

        def _insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO models (tenant, name, description, framework, metadata, sha256, "
                "size_bytes, archive_format, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                values,
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        new_id = await self._write(_insert)
        return ModelRecord(**{**record.__dict__, "id": new_id})

    async def get(self, tenant: str, model_id: int) -> ModelRecord | None:
        """The tenant's model with this id, or ``None``."""

        def _get(conn: sqlite3.Connection) -> ModelRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM models WHERE id=? AND tenant=?", (model_id, tenant)
            ).fetchone()
            return None if row is None else _row(row)

        return await self._read(_get)

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> ModelPage:
        """The tenant's models (optionally of one name), newest first."""
        clauses = ["tenant = ?"]
        args: list[Any] = [tenant]
        if page_token:
            clauses.append("id < ?")
            args.append(decode_page_token("m", page_token))
        if name:
            clauses.append("name = ?")
            args.append(name)
        args.append(page_size + 1)
        sql = (
            f"SELECT {_COLUMNS} FROM models WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"
        )

        def _list(conn: sqlite3.Connection) -> ModelPage:
            rows = [_row(r) for r in conn.execute(sql, args).fetchall()]
            if len(rows) > page_size:
                rows = rows[:page_size]
                return ModelPage(rows, encode_page_token("m", rows[-1].id))
            return ModelPage(rows, "")

        return await self._read(_list)

    async def delete(self, tenant: str, model_id: int) -> ModelRecord | None:
        """Remove the model row; returns what was removed, or ``None``."""

        def _delete(conn: sqlite3.Connection) -> ModelRecord | None:
            row = conn.execute(
                f"DELETE FROM models WHERE id=? AND tenant=? RETURNING {_COLUMNS}",
                (model_id, tenant),
            ).fetchone()
            return None if row is None else _row(row)

        return await self._write(_delete)

    async def references(self, sha256: str) -> int:
        """How many models (of any tenant) use the artifact with this checksum."""
        return await self._read(
            lambda c: int(
                c.execute("SELECT COUNT(*) FROM models WHERE sha256=?", (sha256,)).fetchone()[0]
            )
        )

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some model references."""
        return await self._read(
            lambda c: {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM models")}
        )
