"""The embedded :class:`~synapse_server.core.deployments.DeploymentStore`: serve applications
in SQLite.

The ``serve_applications`` table lives in the server's database file beside the other
stores' (see ``SqliteDatabase``); it is created by the schema migrations (``_sqlite_schema``).
A name's single owner is enforced in the write transaction itself (``BEGIN IMMEDIATE``), so
two servers on one file cannot both give a name away either.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.deployments import (
    DeploymentNameHeldError,
    DeploymentPage,
    DeploymentRecord,
    DeploymentStatus,
    ReplicaRecord,
    ReplicaState,
)
from synapse_server.stores._sqlite import transaction
from synapse_server.stores._sqlite_database import SqliteDatabase

__all__ = ["SqliteDeploymentStore"]

T = TypeVar("T")

_COLUMNS = (
    "id, tenant, name, plugin, action, job_id, status, status_message, route_prefix, "
    "model_ids, ray_actor_options, endpoint_action, replicas, create_time, update_time"
)


def _row_to_record(row: Sequence[Any]) -> DeploymentRecord:
    replicas = tuple(
        ReplicaRecord(
            r["replica_id"],
            ReplicaState.parse(r["state"]),
            tuple(r.get("loaded_model_ids", ())),
            # Rows written before the flag existed: a non-empty list was an answer.
            bool(r.get("loaded_models_known", bool(r.get("loaded_model_ids")))),
        )
        for r in json.loads(row[12])
    )
    return DeploymentRecord(
        id=int(row[0]),
        tenant=row[1],
        name=row[2],
        plugin=row[3],
        action=row[4],
        job_id=row[5],
        status=DeploymentStatus(row[6]),
        status_message=row[7],
        route_prefix=row[8],
        model_ids=tuple(int(m) for m in json.loads(row[9])),
        ray_actor_options=dict(json.loads(row[10])),
        endpoint_action=row[11],
        replicas=replicas,
        create_time=float(row[13]),
        update_time=float(row[14]),
    )


def _replicas_json(replicas: Iterable[ReplicaRecord]) -> str:
    return json.dumps(
        [
            {
                "replica_id": r.replica_id,
                "state": r.state.value,
                "loaded_model_ids": list(r.loaded_model_ids),
                "loaded_models_known": r.loaded_models_known,
            }
            for r in replicas
        ]
    )


class SqliteDeploymentStore:
    """The embedded :class:`~synapse_server.core.deployments.DeploymentStore`: a
    ``serve_applications`` table in a SQLite file (WAL).

    ``database`` is shared with the other stores of that file (``open_stores``), or a path:
    then the store has the file to itself.
    """

    def __init__(self, database: SqliteDatabase | Path) -> None:
        self._db = database if isinstance(database, SqliteDatabase) else SqliteDatabase(database)
        self._io = self._db.channel("deployment store")
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

    async def upsert(self, record: DeploymentRecord) -> tuple[DeploymentRecord, bool]:
        """Insert, or update the record of the same (tenant, name); returns it and created.

        Raises :class:`DeploymentNameHeldError` when another tenant's record holds the name
        (checked in the same transaction as the write, so two tenants cannot both get it).
        """

        def _upsert(conn: sqlite3.Connection) -> tuple[DeploymentRecord, bool]:
            now = time.time()
            # The write lock from the start: the name's holder cannot change between the check
            # and the write.
            with transaction(conn, immediate=True):
                if (
                    record.status is not DeploymentStatus.DELETED
                    and _holder(conn, record.name, other_than=record.tenant) is not None
                ):
                    raise DeploymentNameHeldError(record.name)
                row = conn.execute(
                    "SELECT id FROM serve_applications WHERE tenant = ? AND name = ?",
                    (record.tenant, record.name),
                ).fetchone()
                values = (
                    record.plugin,
                    record.action,
                    record.job_id,
                    record.status.value,
                    record.status_message,
                    record.route_prefix,
                    json.dumps(list(record.model_ids)),
                    json.dumps(record.ray_actor_options),
                    record.endpoint_action,
                    _replicas_json(record.replicas),
                )
                if row is None:
                    cursor = conn.execute(
                        "INSERT INTO serve_applications (tenant, name, plugin, action, job_id, "
                        "status, status_message, route_prefix, model_ids, ray_actor_options, "
                        "endpoint_action, replicas, create_time, update_time) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (record.tenant, record.name, *values, now, now),
                    )
                    new_id, created = int(cursor.lastrowid or 0), True
                else:
                    new_id, created = int(row[0]), False
                    conn.execute(
                        "UPDATE serve_applications SET plugin = ?, action = ?, job_id = ?, "
                        "status = ?, status_message = ?, route_prefix = ?, model_ids = ?, "
                        "ray_actor_options = ?, endpoint_action = ?, replicas = ?, "
                        "update_time = ? WHERE id = ?",
                        (*values, now, new_id),
                    )
            stored = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE id = ?", (new_id,)
            ).fetchone()
            return _row_to_record(stored), created

        return await self._write(_upsert)

    async def get(self, deployment_id: int) -> DeploymentRecord | None:
        """The record with this id, or None."""

        def _get(conn: sqlite3.Connection) -> DeploymentRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE id = ?", (deployment_id,)
            ).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._read(_get)

    async def find_by_name(self, tenant: str, name: str) -> DeploymentRecord | None:
        """The tenant's record of the application called ``name``, or None."""

        def _find(conn: sqlite3.Connection) -> DeploymentRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._read(_find)

    async def holder(self, name: str) -> str | None:
        """The tenant whose record holds the application name (any record not DELETED)."""
        return await self._read(lambda conn: _holder(conn, name))

    async def find_by_endpoint(
        self, tenant: str, plugin: str, endpoint_action: str
    ) -> list[DeploymentRecord]:
        """The tenant's records for a plugin's serve entrypoint, newest first."""

        def _find(conn: sqlite3.Connection) -> list[DeploymentRecord]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE tenant = ? AND plugin = ? "
                "AND endpoint_action = ? ORDER BY id DESC",
                (tenant, plugin, endpoint_action),
            ).fetchall()
            return [_row_to_record(r) for r in rows]

        return await self._read(_find)

    async def list(
        self,
        tenant: str,
        statuses: Sequence[DeploymentStatus],
        plugin: str,
        name: str,
        page_size: int,
        page_token: str,
    ) -> DeploymentPage:
        """The tenant's records, newest first, filtered; ``page_token`` continues a listing."""
        before = decode_page_token("d", page_token) if page_token else None

        def _list(conn: sqlite3.Connection) -> DeploymentPage:
            clauses = ["tenant = ?"]
            args: list[Any] = [tenant]
            if statuses:
                clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
                args.extend(s.value for s in statuses)
            if plugin:
                clauses.append("plugin = ?")
                args.append(plugin)
            if name:
                clauses.append("name = ?")
                args.append(name)
            if before is not None:
                clauses.append("id < ?")
                args.append(before)
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE {' AND '.join(clauses)} "
                "ORDER BY id DESC LIMIT ?",
                (*args, page_size + 1),
            ).fetchall()
            records = [_row_to_record(r) for r in rows[:page_size]]
            token = encode_page_token("d", records[-1].id) if len(rows) > page_size else ""
            return DeploymentPage(records, token)

        return await self._read(_list)

    async def update(self, record: DeploymentRecord) -> None:
        """Store a record's status, message and replicas."""

        def _update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE serve_applications SET status = ?, status_message = ?, replicas = ?, "
                "update_time = ? WHERE id = ?",
                (
                    record.status.value,
                    record.status_message,
                    _replicas_json(record.replicas),
                    record.update_time,
                    record.id,
                ),
            )

        await self._write(_update)

    async def mark_all_live_deleted(self, message: str) -> int:
        """Every record not DELETED or FAILED becomes DELETED with ``message``; the count."""

        def _mark(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE serve_applications SET status = ?, status_message = ?, replicas = '[]', "
                "update_time = ? WHERE status NOT IN (?, ?)",
                (
                    DeploymentStatus.DELETED.value,
                    message,
                    time.time(),
                    DeploymentStatus.DELETED.value,
                    DeploymentStatus.FAILED.value,
                ),
            )
            return int(cursor.rowcount)

        return await self._write(_mark)


def _holder(conn: sqlite3.Connection, name: str, other_than: str | None = None) -> str | None:
    query = "SELECT tenant FROM serve_applications WHERE name = ? AND status != ?"
    args: list[Any] = [name, DeploymentStatus.DELETED.value]
    if other_than is not None:
        query += " AND tenant != ?"
        args.append(other_than)
    row = conn.execute(query + " ORDER BY id LIMIT 1", args).fetchone()
    return None if row is None else str(row[0])
