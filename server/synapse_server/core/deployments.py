"""Serve applications (deployments): their records and the service that lists, gets, deletes.

Transport-neutral: the gRPC servicer converts to and from these types, and Ray is reached
through the :class:`ServeBackend` protocol (implemented by ``synapse_server.ray``). Records
live in their own table of the server's SQLite file, so a restart keeps them.

Ownership: Ray Serve has one namespace of application names for the whole cluster, so a
name has at most one owner: the tenant of the one record that holds it (any record not
DELETED). Another tenant can neither register that name nor learn that it is taken (it is
answered like an application Ray Serve does not have). Ray Serve itself does not know who
deployed an application; the replicas a deployment action started do (``deploy()`` gives
them their tenant), so registration checks what the replicas say, and a record whose
application another tenant's deployment has since replaced is marked DELETED instead of
showing, deleting or routing to the other tenant's application.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ServerError,
)
from synapse_server.core._models import Job
from synapse_server.core._paging import checked_page_size, decode_page_token, encode_page_token
from synapse_server.core._storage import StorageGuard, release_transaction

logger = logging.getLogger(__name__)

__all__ = [
    "AppObservation",
    "DeploymentNameHeldError",
    "DeploymentNotFoundError",
    "DeploymentPage",
    "DeploymentRecord",
    "DeploymentService",
    "DeploymentStatus",
    "DeploymentStore",
    "ReplicaRecord",
    "ReplicaState",
    "ServeBackend",
    "SqliteDeploymentStore",
]

T = TypeVar("T")

#: How long a resolved Infer target is reused without asking the store again. Writes made
#: through this service drop the cache at once; the bound only matters for writers that
#: bypass it (another server on the same database).
_RESOLVE_TTL_S = 2.0
_MAX_RESOLVED = 4096
#: How long registration waits for the replicas to say which tenant they were deployed for.
#: The application has just become RUNNING, so its replicas are idle and answer at once; the
#: bound only matters on a loaded machine, and keeps the call well inside the SDK client's
#: default 30 s deadline.
_REGISTER_REPLICA_TIMEOUT_S = 10.0
#: Longest serve application name a deployment registers (the platform's own names are far
#: shorter); keeps refusals, which quote the name, short.
MAX_APPLICATION_NAME_LENGTH = 256
#: The answer to a name that cannot be registered, whatever the reason (Ray Serve has no such
#: application, another tenant's deployment holds the name, or the replicas were deployed for
#: another tenant): one text, so the answer never tells that another tenant uses the name.
_NOT_REGISTRABLE = (
    "Ray Serve has no application named {name!r} deployed for this tenant: "
    "deploy() it before registering"
)


class DeploymentNotFoundError(ServerError, LookupError):
    """No deployment with this id or name visible to the caller."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"deployment {what} not found")


class DeploymentNameHeldError(FailedPreconditionError):
    """Another tenant's record holds this application name (raised by the store)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(_NOT_REGISTRABLE.format(name=name))


class DeploymentStatus(StrEnum):
    """Lifecycle of a serve application, as the platform reports it."""

    DEPLOYING = "deploying"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class ReplicaState(StrEnum):
    """State of one replica, as the platform reports it: always one of these, never unknown."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    UPDATING = "UPDATING"
    RECOVERING = "RECOVERING"
    STOPPING = "STOPPING"

    @classmethod
    def parse(cls, value: object) -> ReplicaState:
        """The state a reported or stored value names.

        Accepts a member's name (``"RUNNING"``), an enum whose ``value`` is one, and the
        ``"ReplicaState.RUNNING"`` form that ``str()`` of Ray's enum gives (which older servers
        stored). Ray Serve's ``PENDING_MIGRATION`` and ``STOPPED`` are replicas on their way
        out (STOPPING). Anything else is STARTING: a replica in a state the platform does not
        know is not one it counts as serving.
        """
        text = str(getattr(value, "value", value)).strip().upper()
        text = text.rpartition(".")[2]
        if text in cls.__members__:
            return cls[text]
        if text in ("PENDING_MIGRATION", "STOPPED"):
            return cls.STOPPING
        logger.warning("unknown replica state %r reported as STARTING", str(value)[:64])
        return cls.STARTING


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica as last observed: Ray Serve's id, state and the models it has loaded.

    ``loaded_models_known`` is False when the replica was not asked or did not answer in
    time: ``loaded_model_ids`` is then empty because it is unknown, not because none is.
    """

    replica_id: str
    state: ReplicaState
    loaded_model_ids: tuple[str, ...] = ()
    loaded_models_known: bool = False


@dataclass(frozen=True)
class DeploymentRecord:
    """A serve application registered by a deployment action."""

    id: int
    tenant: str
    name: str
    plugin: str
    action: str
    job_id: str = ""
    status: DeploymentStatus = DeploymentStatus.RUNNING
    status_message: str = ""
    route_prefix: str = ""
    model_ids: tuple[int, ...] = ()
    ray_actor_options: dict[str, Any] = field(default_factory=dict)
    endpoint_action: str = ""
    create_time: float = 0.0
    update_time: float = 0.0
    replicas: tuple[ReplicaRecord, ...] = ()


@dataclass(frozen=True)
class DeploymentPage:
    """One page of a listing; ``next_page_token`` is empty on the last page."""

    deployments: list[DeploymentRecord]
    next_page_token: str = ""


@dataclass(frozen=True)
class AppObservation:
    """What Ray Serve says about an application right now.

    ``deployed_for``: the (tenant, application name) pairs the replicas that answered in time
    were deployed for (what ``deploy()`` gave them); empty when none answered.
    """

    status: DeploymentStatus
    message: str = ""
    replicas: tuple[ReplicaRecord, ...] = ()
    deployed_for: frozenset[tuple[str, str]] = frozenset()

    def deployed_for_other_than(self, tenant: str, name: str) -> bool:
        """True when a replica says it serves another tenant or another application name."""
        return any(owner != (tenant, name) for owner in self.deployed_for)


class ServeBackend(Protocol):
    """The Ray Serve operations the deployment service needs."""

    async def observe(
        self, app_name: str, *, start: bool = True, replica_timeout_s: float = 5.0
    ) -> AppObservation | None:
        """The application's status and replicas; None when Serve has no such application.

        ``start=False``: answer None instead of starting (or connecting to) Ray when this
        server has not yet. ``replica_timeout_s``: how long the replicas have to answer.
        """
        ...

    async def delete(self, app_name: str) -> None:
        """Delete the application (a missing one is not an error)."""
        ...


class DeploymentStore(Protocol):
    """Persistence of deployment records (SQLite in the embedded server)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def upsert(self, record: DeploymentRecord) -> tuple[DeploymentRecord, bool]: ...

    async def get(self, deployment_id: int) -> DeploymentRecord | None: ...

    async def find_by_name(self, tenant: str, name: str) -> DeploymentRecord | None: ...

    async def holder(self, name: str) -> str | None: ...

    async def find_by_endpoint(
        self, tenant: str, plugin: str, endpoint_action: str
    ) -> list[DeploymentRecord]: ...

    async def list(
        self,
        tenant: str,
        statuses: Sequence[DeploymentStatus],
        plugin: str,
        name: str,
        page_size: int,
        page_token: str,
    ) -> DeploymentPage: ...

    async def update(self, record: DeploymentRecord) -> None: ...

    async def mark_all_live_deleted(self, message: str) -> int: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS serve_applications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    route_prefix TEXT NOT NULL DEFAULT '',
    model_ids TEXT NOT NULL DEFAULT '[]',
    ray_actor_options TEXT NOT NULL DEFAULT '{}',
    endpoint_action TEXT NOT NULL DEFAULT '',
    replicas TEXT NOT NULL DEFAULT '[]',
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    UNIQUE (tenant, name)
);
CREATE INDEX IF NOT EXISTS serve_applications_endpoint
    ON serve_applications (tenant, plugin, endpoint_action);
CREATE INDEX IF NOT EXISTS serve_applications_name ON serve_applications (name);
"""

#: What a record loses its application to when a database written before names had one
#: owner has two live records of one name (the earliest registration keeps it).
_SUPERSEDED = "the application belongs to an earlier registration; run the deployment action again"


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
    """The embedded :class:`DeploymentStore`: a ``serve_applications`` table in SQLite (WAL).

    Shares the server's database file with the other stores but keeps its own connection and
    I/O thread, so neither blocks the event loop nor the other stores' writers for long.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-deployments")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._guard = StorageGuard("deployment store", path)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            conn = self._connection()
            try:
                return fn(conn)
            except BaseException:
                if not release_transaction(conn):
                    self._conn = None  # closed, stuck in a transaction: open a fresh one
                raise

        # A full disk, an I/O error or a long lock leaves as a StorageError (see _storage).
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: self._guard.call(call))

    async def open(self) -> None:
        """Create the file and the table if needed; give every name one live record."""
        self._path.parent.mkdir(parents=True, exist_ok=True)

        def _open(conn: sqlite3.Connection) -> None:
            conn.executescript(_SCHEMA)
            # Databases from before names had a single owner may hold two tenants' live
            # records of one application: the earliest registration keeps it.
            cursor = conn.execute(
                "UPDATE serve_applications SET status = ?, status_message = ?, replicas = '[]', "
                "update_time = ? WHERE status != ? AND EXISTS (SELECT 1 FROM "
                "serve_applications AS earlier WHERE earlier.name = serve_applications.name "
                "AND earlier.tenant != serve_applications.tenant AND earlier.status != ? "
                "AND earlier.id < serve_applications.id)",
                (
                    DeploymentStatus.DELETED.value,
                    _SUPERSEDED,
                    time.time(),
                    DeploymentStatus.DELETED.value,
                    DeploymentStatus.DELETED.value,
                ),
            )
            if cursor.rowcount:
                logger.warning(
                    "%d deployment record(s) held a name another tenant's earlier record "
                    "holds; marked deleted",
                    cursor.rowcount,
                )

        await self._run(_open)

    async def close(self) -> None:
        """Close the connection and stop the I/O thread."""

        def _close(_c: sqlite3.Connection) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(_close)
        self._pool.shutdown(wait=True)

    async def upsert(self, record: DeploymentRecord) -> tuple[DeploymentRecord, bool]:
        """Insert, or update the record of the same (tenant, name); returns it and created.

        Raises :class:`DeploymentNameHeldError` when another tenant's record holds the name
        (checked in the same transaction as the write, so two tenants cannot both get it).
        """

        def _upsert(conn: sqlite3.Connection) -> tuple[DeploymentRecord, bool]:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            try:
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
                conn.execute("COMMIT")
            except BaseException:
                release_transaction(conn)
                raise
            stored = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE id = ?", (new_id,)
            ).fetchone()
            return _row_to_record(stored), created

        return await self._run(_upsert)

    async def get(self, deployment_id: int) -> DeploymentRecord | None:
        """The record with this id, or None."""

        def _get(conn: sqlite3.Connection) -> DeploymentRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE id = ?", (deployment_id,)
            ).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(_get)

    async def find_by_name(self, tenant: str, name: str) -> DeploymentRecord | None:
        """The tenant's record of the application called ``name``, or None."""

        def _find(conn: sqlite3.Connection) -> DeploymentRecord | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM serve_applications WHERE tenant = ? AND name = ?",
                (tenant, name),
            ).fetchone()
            return None if row is None else _row_to_record(row)

        return await self._run(_find)

    async def holder(self, name: str) -> str | None:
        """The tenant whose record holds the application name (any record not DELETED)."""
        return await self._run(lambda conn: _holder(conn, name))

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

        return await self._run(_find)

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

        return await self._run(_list)

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

        await self._run(_update)

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

        return await self._run(_mark)


def _holder(conn: sqlite3.Connection, name: str, other_than: str | None = None) -> str | None:
    query = "SELECT tenant FROM serve_applications WHERE name = ? AND status != ?"
    args: list[Any] = [name, DeploymentStatus.DELETED.value]
    if other_than is not None:
        query += " AND tenant != ?"
        args.append(other_than)
    row = conn.execute(query + " ORDER BY id LIMIT 1", args).fetchone()
    return None if row is None else str(row[0])


class DeploymentService:
    """Lists, inspects, registers and deletes the serve applications of a tenant."""

    def __init__(self, store: DeploymentStore, backend: ServeBackend) -> None:
        self._store = store
        self._backend = backend
        # Infer resolves its target on every call; a store round trip (an I/O thread hop and a
        # query) per call was a visible share of its latency. Only found records are cached.
        self._resolved: dict[tuple[str, str, str, str], tuple[DeploymentRecord, float]] = {}
        self._generation = 0

    def _forget_resolved(self) -> None:
        """Drop cached Infer targets: a record was written."""
        self._generation += 1
        self._resolved.clear()

    async def register_for_job(
        self,
        job: Job | None,
        *,
        name: str,
        plugin: str = "",
        action: str = "",
        route_prefix: str = "",
        model_ids: Iterable[int] = (),
        ray_actor_options: Mapping[str, Any] | None = None,
        endpoint_action: str = "",
    ) -> tuple[DeploymentRecord, bool]:
        """Record the application a running deployment job deployed (``RegisterDeployment``).

        ``job`` is the caller's own job (from its worker credential); None for any other
        caller, who is refused: an application is registered by the job that deployed it,
        never by a client naming one. The record takes the job's tenant, plugin, action and id;
        a request naming another plugin or action is refused. Then as :meth:`register`.
        """
        if job is None:
            raise PermissionDeniedError(
                "RegisterDeployment is for the worker of a deployment job (the SDK's "
                "register_serve_application); run the deployment action with RunAction"
            )
        # PENDING too: the worker runs the action before its event stream is open.
        if job.state.is_terminal:
            raise FailedPreconditionError(
                f"job {job.id!r} is {job.state.value}: only a running job registers"
            )
        if (plugin and plugin != job.plugin) or (action and action != job.action):
            raise PermissionDeniedError(
                "a worker registers the deployment of its own job only "
                f"(plugin {job.plugin!r}, action {job.action!r})"
            )
        return await self.register(
            job.tenant,
            name=name,
            plugin=job.plugin,
            action=job.action,
            job_id=job.id,
            route_prefix=route_prefix,
            model_ids=model_ids,
            ray_actor_options=ray_actor_options,
            endpoint_action=endpoint_action,
        )

    async def register(
        self,
        tenant: str,
        *,
        name: str,
        plugin: str,
        action: str,
        job_id: str = "",
        route_prefix: str = "",
        model_ids: Iterable[int] = (),
        ray_actor_options: Mapping[str, Any] | None = None,
        endpoint_action: str = "",
    ) -> tuple[DeploymentRecord, bool]:
        """Record an application deployed for ``tenant`` (updates the tenant's same-name one).

        Refused with one answer (FAILED_PRECONDITION) when another tenant's record holds the
        name, when Ray Serve has no such application (Ray is never started for this), or when
        its replicas say they were deployed for another tenant or application. A replica that
        does not answer in time (or an application without replicas) is not held against it.
        """
        missing = [
            label
            for label, value in (("name", name), ("plugin", plugin), ("action", action))
            if not value
        ]
        if missing:
            raise InvalidArgumentError(f"RegisterDeployment needs {', '.join(missing)}")
        if len(name) > MAX_APPLICATION_NAME_LENGTH:
            raise InvalidArgumentError(
                f"name is longer than {MAX_APPLICATION_NAME_LENGTH} characters", field="name"
            )
        ids = tuple(int(m) for m in model_ids)
        if any(m <= 0 for m in ids):
            raise InvalidArgumentError("model_ids must be positive")
        refused = FailedPreconditionError(_NOT_REGISTRABLE.format(name=name))
        holder = await self._store.holder(name)
        if holder is not None and holder != tenant:
            raise refused
        observation = await self._backend.observe(
            name, start=False, replica_timeout_s=_REGISTER_REPLICA_TIMEOUT_S
        )
        if observation is None or observation.deployed_for_other_than(tenant, name):
            raise refused
        if not observation.deployed_for:
            logger.info("registering %s: no replica said whom it was deployed for", name)
        record = DeploymentRecord(
            id=0,
            tenant=tenant,
            name=name,
            plugin=plugin,
            action=action,
            job_id=job_id,
            status=observation.status,
            status_message=observation.message,
            route_prefix=route_prefix,
            model_ids=ids,
            ray_actor_options=dict(ray_actor_options or {}),
            endpoint_action=endpoint_action,
            replicas=observation.replicas,
        )
        try:
            stored, created = await self._store.upsert(record)
        except DeploymentNameHeldError:
            # Another tenant registered the name since it was checked above.
            raise refused from None
        self._forget_resolved()
        logger.info(
            "%s deployment %d (%s) for tenant %r",
            "registered" if created else "updated",
            stored.id,
            name,
            tenant,
        )
        return stored, created

    async def check_name_available(self, tenant: str, name: str) -> None:
        """Raise FailedPreconditionError if another tenant's record holds ``name``.

        Checked before a deployment job starts (and before Ray is started for it), so its
        ``deploy()`` never replaces an application another tenant owns.
        """
        holder = await self._store.holder(name)
        if holder is not None and holder != tenant:
            raise FailedPreconditionError(
                f"the serve application name {name!r} is not available to this tenant; "
                "the deployment was not started"
            )

    async def list(
        self,
        tenant: str,
        statuses: Sequence[DeploymentStatus] = (),
        plugin: str = "",
        name: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> DeploymentPage:
        """The tenant's deployments, newest first, as last observed."""
        return await self._store.list(
            tenant, statuses, plugin, name, checked_page_size(page_size), page_token
        )

    async def get(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        """One deployment, refreshed from Ray Serve (status, replicas, loaded models)."""
        record = await self._visible(tenant, deployment_id)
        return await self.refresh(record)

    async def refresh(self, record: DeploymentRecord) -> DeploymentRecord:
        """Update a record's status and replicas from Ray Serve and store them.

        A record whose application is gone, or whose application's replicas say they serve
        another tenant or name (another deployment replaced it), becomes DELETED: it no longer
        shows, deletes or routes to what now runs under that name, and gives the name up.
        """
        if record.status == DeploymentStatus.DELETED:
            return record
        observation = await self._backend.observe(record.name)
        if observation is None or observation.deployed_for_other_than(record.tenant, record.name):
            message = (
                "the application no longer exists in Ray Serve"
                if observation is None
                else "the application was replaced by another deployment; "
                "run the deployment action again"
            )
            updated = replace(
                record,
                status=DeploymentStatus.DELETED,
                status_message=message,
                replicas=(),
                update_time=time.time(),
            )
        else:
            updated = replace(
                record,
                status=observation.status,
                status_message=observation.message,
                replicas=observation.replicas,
                update_time=time.time(),
            )
        if updated != record:
            await self._store.update(updated)
            self._forget_resolved()
        return updated

    async def forget_embedded_ray_applications(self) -> int:
        """At start-up with an embedded Ray: the previous server's Ray, and with it every
        application it served, stopped with that server. Without this, listings would show
        them RUNNING until something refreshed each one."""
        count = await self._store.mark_all_live_deleted(
            "the server's embedded Ray stopped with the previous server process; "
            "run the deployment action again"
        )
        self._forget_resolved()
        if count:
            logger.info("%d deployment(s) of the previous server process marked deleted", count)
        return count

    async def delete(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        """Undeploy: delete the Ray Serve application and mark the record DELETED.

        The application is looked at first: one that is gone, or that another deployment has
        replaced (its replicas serve another tenant), is left alone and only the record is
        marked DELETED.
        """
        record = await self.refresh(await self._visible(tenant, deployment_id))
        if record.status == DeploymentStatus.DELETED:
            return record
        await self._backend.delete(record.name)
        deleted = replace(
            record,
            status=DeploymentStatus.DELETED,
            status_message="deleted",
            replicas=(),
            update_time=time.time(),
        )
        await self._store.update(deleted)
        self._forget_resolved()
        logger.info("deleted deployment %d (%s)", record.id, record.name)
        return deleted

    async def resolve(
        self, tenant: str, application: str | None, plugin: str | None, action: str | None
    ) -> DeploymentRecord:
        """The deployment an Infer call targets: by application name, or by plugin + action.

        Found targets are cached until this service writes a record (or ``_RESOLVE_TTL_S``);
        failures are never cached, so a new deployment is found on the next call.
        """
        key = (tenant, application or "", "" if application else plugin or "", action or "")
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._generation
        record = await self._resolve_uncached(tenant, application, plugin, action)
        # A write that happened while the store was asked may have changed the answer.
        if generation == self._generation:
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[key] = (record, now + _RESOLVE_TTL_S)
        return record

    async def _resolve_uncached(
        self, tenant: str, application: str | None, plugin: str | None, action: str | None
    ) -> DeploymentRecord:
        if application:
            record = await self._store.find_by_name(tenant, application)
            if record is None:
                raise DeploymentNotFoundError(f"named {application!r}")
        elif plugin and action:
            candidates = [
                r
                for r in await self._store.find_by_endpoint(tenant, plugin, action)
                if r.status not in (DeploymentStatus.DELETED, DeploymentStatus.DELETING)
            ]
            if not candidates:
                raise DeploymentNotFoundError(f"of plugin {plugin!r} with endpoint {action!r}")
            if len(candidates) > 1:
                names = ", ".join(sorted(r.name for r in candidates))
                raise FailedPreconditionError(
                    f"plugin {plugin!r} has several deployments of {action!r} ({names}); "
                    "name the application"
                )
            record = candidates[0]
        else:
            raise InvalidArgumentError("Infer needs an application, or a plugin and an action")
        if record.status in (DeploymentStatus.DELETED, DeploymentStatus.DELETING):
            raise FailedPreconditionError(f"deployment {record.name!r} is {record.status.value}")
        return record

    async def _visible(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        if deployment_id <= 0:
            raise InvalidArgumentError("deployment_id must be positive")
        record = await self._store.get(deployment_id)
        if record is None or record.tenant != tenant:
            # Another tenant's deployment is reported exactly like a missing one.
            raise DeploymentNotFoundError(f"#{deployment_id}")
        return record
