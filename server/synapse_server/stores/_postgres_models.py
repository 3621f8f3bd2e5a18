"""The :class:`~synapse_server.core.models.ModelStore` on PostgreSQL: the ``models`` table of
the shared database (see ``_postgres_schema``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.models import ModelPage, ModelRecord
from synapse_server.stores._postgres import PostgresDatabase
from synapse_server.stores._sqlite_models import _COLUMNS, _row

__all__ = ["PostgresModelStore"]


class PostgresModelStore:
    """The shared :class:`~synapse_server.core.models.ModelStore`: a ``models`` table in a
    PostgreSQL database."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database
        self._io = database.channel("model store")
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

        async def _insert(conn: Any) -> int:
            cursor = await conn.execute(
                "INSERT INTO models (tenant, name, description, framework, metadata, sha256, "
                "size_bytes, archive_format, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                "RETURNING id",
                values,
            )
            row = await cursor.fetchone()
            return int(row[0])

        new_id = await self._write(_insert)
        return ModelRecord(**{**record.__dict__, "id": new_id})

    async def get(self, tenant: str, model_id: int) -> ModelRecord | None:
        """The tenant's model with this id, or ``None``."""

        async def _get(conn: Any) -> ModelRecord | None:
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM models WHERE id=%s AND tenant=%s", (model_id, tenant)
            )
            row = await cursor.fetchone()
            return None if row is None else _row(tuple(row))

        found: ModelRecord | None = await self._read(_get)
        return found

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> ModelPage:
        """The tenant's models (optionally of one name), newest first."""
        clauses = ["tenant = %s"]
        args: list[Any] = [tenant]
        if page_token:
            clauses.append("id < %s")
            args.append(decode_page_token("m", page_token))
        if name:
            clauses.append("name = %s")
            args.append(name)
        args.append(page_size + 1)
        sql = (
            f"SELECT {_COLUMNS} FROM models WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT %s"
        )

        async def _list(conn: Any) -> ModelPage:
            cursor = await conn.execute(sql, args)
            rows = [_row(tuple(r)) for r in await cursor.fetchall()]
            if len(rows) > page_size:
                rows = rows[:page_size]
                return ModelPage(rows, encode_page_token("m", rows[-1].id))
            return ModelPage(rows, "")

        page: ModelPage = await self._read(_list)
        return page

    async def delete(self, tenant: str, model_id: int) -> ModelRecord | None:
        """Remove the model row; returns what was removed, or ``None``."""

        async def _delete(conn: Any) -> ModelRecord | None:
            cursor = await conn.execute(
                f"DELETE FROM models WHERE id=%s AND tenant=%s RETURNING {_COLUMNS}",
                (model_id, tenant),
            )
            row = await cursor.fetchone()
            return None if row is None else _row(tuple(row))

        found: ModelRecord | None = await self._write(_delete)
        return found

    async def references(self, sha256: str) -> int:
        """How many models (of any tenant) use the artifact with this checksum."""

        async def _count(conn: Any) -> int:
            cursor = await conn.execute("SELECT COUNT(*) FROM models WHERE sha256=%s", (sha256,))
            row = await cursor.fetchone()
            return int(row[0])

        count: int = await self._read(_count)
        return count

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some model references."""

        async def _all(conn: Any) -> set[str]:
            cursor = await conn.execute("SELECT DISTINCT sha256 FROM models")
            return {r[0] for r in await cursor.fetchall()}

        found: set[str] = await self._read(_all)
        return found
