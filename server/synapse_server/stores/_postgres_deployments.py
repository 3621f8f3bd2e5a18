"""The :class:`~synapse_server.core.deployments.DeploymentStore` on PostgreSQL: the
``serve_applications`` table of the shared database.

A name's single owner is enforced inside the write transaction, which first takes an
advisory lock on the name: two servers registering one name for two tenants at the same
time are ordered, and the second finds the first's record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from synapse_server.core._paging import decode_page_token, encode_page_token
from synapse_server.core.deployments import (
    DeploymentNameHeldError,
    DeploymentPage,
    DeploymentRecord,
    DeploymentStatus,
)
from synapse_server.stores._postgres import PostgresDatabase
from synapse_server.stores._sqlite_deployments import _COLUMNS, _replicas_json, _row_to_record

__all__ = ["PostgresDeploymentStore"]


async def _holder(conn: Any, name: str, other_than: str | None = None) -> str | None:
    query = "SELECT tenant FROM serve_applications WHERE name = %s AND status != %s"
    args: list[Any] = [name, DeploymentStatus.DELETED.value]
    if other_than is not None:
        query += " AND tenant != %s"
        args.append(other_than)
    cursor = await conn.execute(query + " ORDER BY id LIMIT 1", args)
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


class PostgresDeploymentStore:
    """The shared :class:`~synapse_server.core.deployments.DeploymentStore`."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._db = database
        self._io = database.channel("deployment store")
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

    async def upsert(self, record: DeploymentRecord) -> tuple[DeploymentRecord, bool]:
        """Insert, or update the record of the same (tenant, name); returns it and created."""

        async def _upsert(conn: Any) -> tuple[DeploymentRecord, bool]:
            now = time.time()
            async with conn.transaction():
                # Held to the end of the transaction: the name's holder cannot change between
                # the check and the write, on this server or another.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"serve_application:{record.name}",),
                )
                if (
                    record.status is not DeploymentStatus.DELETED
                    and await _holder(conn, record.name, other_than=record.tenant) is not None
                ):
                    raise DeploymentNameHeldError(record.name)
                cursor = await conn.execute(
                    "SELECT id FROM serve_applications WHERE tenant = %s AND name = %s",
                    (record.tenant, record.name),
                )
                row = await cursor.fetchone()
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
                    cursor = await conn.execute(
                        "INSERT INTO serve_applications (tenant, name, plugin, action, job_id, "
                        "status, status_message, route_prefix, model_ids, ray_actor_options, "
                        "endpoint_action, replicas, create_time, update_time) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "RETURNING id",
                        (record.tenant, record.name, *values, now, now),
                    )
                    new_id, created = int((await cursor.fetchone())[0]), True
                else:
                    new_id, created = int(row[0]), False
                    await conn.execute(
                        "UPDATE serve_applications SET plugin = %s, action = %s, job_id = %s, "
                        "status = %s, status_message = %s, route_prefix = %s, model_ids = %s, "
                        "ray_actor_options = %s, endpoint_action = %s, replicas = %s, "
                        "update_time = %s WHERE id = %s",
                        (*values, now, new_id),
                    )
                cursor = await conn.execute(
                    f"SELECT {_COLUMNS} FROM serve_applications WHERE id = %s", (new_id,)
                )
                stored = await cursor.fetchone()
            return _row_to_record(stored), created

        result: tuple[DeploymentRecord, bool] = await self._write(_upsert)
        return result

    async def get(self, deployment_id: int) -> DeploymentRecord | None:
        """The record with this id, or None."""
        return await self._one(
            f"SELECT {_COLUMNS} FROM serve_applications WHERE id = %s", (deployment_id,)
        )

    async def find_by_name(self, tenant: str, name: str) -> DeploymentRecord | None:
        """The tenant's record of the application called ``name``, or None."""
        return await self._one(
            f"SELECT {_COLUMNS} FROM serve_applications WHERE tenant = %s AND name = %s",
            (tenant, name),
        )

    async def _one(self, sql: str, args: Sequence[Any]) -> DeploymentRecord | None:
        async def _get(conn: Any) -> DeploymentRecord | None:
            cursor = await conn.execute(sql, args)
            row = await cursor.fetchone()
            return None if row is None else _row_to_record(row)

        found: DeploymentRecord | None = await self._read(_get)
        return found

    async def holder(self, name: str) -> str | None:
        """The tenant whose record holds the application name (any record not DELETED)."""

        async def _get(conn: Any) -> str | None:
            return await _holder(conn, name)

        found: str | None = await self._read(_get)
        return found

    async def find_by_endpoint(
        self, tenant: str, plugin: str, endpoint_action: str
    ) -> list[DeploymentRecord]:
        """The tenant's records for a plugin's serve entrypoint, newest first."""

        async def _find(conn: Any) -> list[DeploymentRecord]:
            cursor = await conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE tenant = %s AND plugin = %s "
                "AND endpoint_action = %s ORDER BY id DESC",
                (tenant, plugin, endpoint_action),
            )
            return [_row_to_record(r) for r in await cursor.fetchall()]

        found: list[DeploymentRecord] = await self._read(_find)
        return found

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
        clauses = ["tenant = %s"]
        args: list[Any] = [tenant]
        if statuses:
            clauses.append("status = ANY(%s)")
            args.append([s.value for s in statuses])
        if plugin:
            clauses.append("plugin = %s")
            args.append(plugin)
        if name:
            clauses.append("name = %s")
            args.append(name)
        if before is not None:
            clauses.append("id < %s")
            args.append(before)
        sql = (
            f"SELECT {_COLUMNS} FROM serve_applications WHERE {' AND '.join(clauses)} "
            "ORDER BY id DESC LIMIT %s"
        )

        async def _list(conn: Any) -> DeploymentPage:
            cursor = await conn.execute(sql, (*args, page_size + 1))
            rows = await cursor.fetchall()
            records = [_row_to_record(r) for r in rows[:page_size]]
            token = encode_page_token("d", records[-1].id) if len(rows) > page_size else ""
            return DeploymentPage(records, token)

        page: DeploymentPage = await self._read(_list)
        return page

    async def update(self, record: DeploymentRecord) -> None:
        """Store a record's status, message and replicas."""

        async def _update(conn: Any) -> None:
            await conn.execute(
                "UPDATE serve_applications SET status = %s, status_message = %s, "
                "replicas = %s, update_time = %s WHERE id = %s",
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

        async def _mark(conn: Any) -> int:
            cursor = await conn.execute(
                "UPDATE serve_applications SET status = %s, status_message = %s, "
                "replicas = '[]', update_time = %s WHERE status NOT IN (%s, %s)",
                (
                    DeploymentStatus.DELETED.value,
                    message,
                    time.time(),
                    DeploymentStatus.DELETED.value,
                    DeploymentStatus.FAILED.value,
                ),
            )
            return int(cursor.rowcount)

        count: int = await self._write(_mark)
        return count
