"""Model metadata persistence: a :class:`ModelStore` protocol and its SQLite implementation.

The SQLite store may share its database file with the job store (its own table, its own
connection): SQLite in WAL mode serialises the writers and ``busy_timeout`` absorbs contention.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from synapse_sdk.models import ArchiveFormat

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core._storage import StorageGuard, release_transaction
from synapse_server.core.models._records import ModelPage, ModelRecord

__all__ = ["ModelStore", "SqliteModelStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    framework      TEXT NOT NULL DEFAULT '',
    metadata       TEXT NOT NULL DEFAULT '{}',
    sha256         TEXT NOT NULL,
    size_bytes     INTEGER NOT NULL,
    archive_format TEXT NOT NULL,
    created_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS models_tenant ON models (tenant, id);
CREATE INDEX IF NOT EXISTS models_sha256 ON models (sha256);
"""

_COLUMNS = (
    "id, tenant, name, description, framework, metadata, sha256, size_bytes, archive_format, "
    "created_at"
)


class ModelStore(Protocol):
    """Where model metadata lives; a server database can replace the SQLite one."""

    async def open(self) -> None:
        """Create or migrate the schema."""

    async def close(self) -> None:
        """Release the connection."""

    async def insert(self, record: ModelRecord) -> ModelRecord:
        """Store a new model; returns it with its assigned id."""

    async def get(self, tenant: str, model_id: int) -> ModelRecord | None:
        """The tenant's model with this id, or ``None``."""

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> ModelPage:
        """The tenant's models (optionally of one name), newest first."""

    async def delete(self, tenant: str, model_id: int) -> ModelRecord | None:
        """Remove the model row; returns what was removed, or ``None``."""

    async def references(self, sha256: str) -> int:
        """How many models (of any tenant) use the artifact with this checksum."""

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some model references."""


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
    """The embedded :class:`ModelStore`: a ``models`` table in a SQLite file (WAL)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # One thread owns the connection; model metadata calls are rare and short.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-models")
        self._conn: sqlite3.Connection | None = None
        self._guard = StorageGuard("model store", path)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._conn is None:
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=5000")
                self._conn = conn
            conn = self._conn
            try:
                return fn(conn)
            except BaseException:
                if not release_transaction(conn):
                    self._conn = None  # closed, stuck in a transaction: open a fresh one
                raise

        # A full disk, an I/O error or a long lock leaves as a StorageError (see _storage).
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._guard.call(call)
        )

    async def open(self) -> None:
        """Create the file and schema if needed."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(lambda c: c.executescript(_SCHEMA))

    async def close(self) -> None:
        """Close the connection and stop the I/O thread."""

        def _close() -> None:
            if self._conn is not None:
                try:
                    self._conn.close()
                except sqlite3.Error as exc:
                    # Closing must not fail a shutdown (e.g. on a full disk).
                    logger.warning("model store: closing the connection failed: %s", exc)
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._pool, _close)
        self._pool.shutdown(wait=True)

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

        new_id = await self._run(_insert)
        return ModelRecord(**{**record.__dict__, "id": new_id})

    async def get(self, tenant: str, model_id: int) -> ModelRecord | None:
        """The tenant's model with this id, or ``None``."""

        def _get(conn: sqlite3.Connection) -> ModelRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM models WHERE id=? AND tenant=?", (model_id, tenant)
            ).fetchone()
            return None if row is None else _row(row)

        return await self._run(_get)

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

        return await self._run(_list)

    async def delete(self, tenant: str, model_id: int) -> ModelRecord | None:
        """Remove the model row; returns what was removed, or ``None``."""

        def _delete(conn: sqlite3.Connection) -> ModelRecord | None:
            row = conn.execute(
                f"DELETE FROM models WHERE id=? AND tenant=? RETURNING {_COLUMNS}",
                (model_id, tenant),
            ).fetchone()
            return None if row is None else _row(row)

        return await self._run(_delete)

    async def references(self, sha256: str) -> int:
        """How many models (of any tenant) use the artifact with this checksum."""
        return await self._run(
            lambda c: int(
                c.execute("SELECT COUNT(*) FROM models WHERE sha256=?", (sha256,)).fetchone()[0]
            )
        )

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some model references."""
        return await self._run(
            lambda c: {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM models")}
        )
