"""The SQLite database's schema: numbered migrations, and databases from before them.

A fresh database runs every migration in order. A database written before migrations were
numbered has no ``schema_migrations`` table; its version is read from its tables and columns
(:func:`legacy_version`), recorded, and the migrations after it run. Those releases created
every table and index with ``CREATE ... IF NOT EXISTS`` at each start and added newer columns
with ``ALTER TABLE`` when missing: migration 1 is their tables (all ``IF NOT EXISTS``, and
run again for such a database, to add any table its release did not have yet), migrations 2
and 3 the columns they added, in the order they came.

Everything runs in one ``BEGIN IMMEDIATE`` transaction: another server opening the same file
at the same time waits for it, then finds the schema migrated.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from synapse_server.core.deployments import DeploymentStatus
from synapse_server.stores._migrations import Migration, StoreSchemaError, checked_migrations
from synapse_server.stores._sqlite import transaction

__all__ = ["MIGRATIONS", "applied_versions", "legacy_version", "migrate"]

logger = logging.getLogger(__name__)

_INITIAL = (
    """CREATE TABLE IF NOT EXISTS jobs (
    ord         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    plugin      TEXT NOT NULL,
    action      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    params      TEXT NOT NULL,
    state       TEXT NOT NULL,
    request_id  TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    result      TEXT,
    error       TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    progress    REAL NOT NULL DEFAULT 0,
    plugin_version   TEXT NOT NULL DEFAULT '',
    last_seq         INTEGER NOT NULL DEFAULT 0,
    pending_reason   TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id
    ON jobs (tenant, request_id) WHERE request_id IS NOT NULL""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)",
    # Params live apart from the jobs row: see _sqlite_jobs.
    """CREATE TABLE IF NOT EXISTS job_params (
    job_id      TEXT PRIMARY KEY,
    params      TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS job_events (
    job_id    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    ts        REAL NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS models (
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
)""",
    "CREATE INDEX IF NOT EXISTS models_tenant ON models (tenant, id)",
    "CREATE INDEX IF NOT EXISTS models_sha256 ON models (sha256)",
    """CREATE TABLE IF NOT EXISTS serve_applications (
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
)""",
    """CREATE INDEX IF NOT EXISTS serve_applications_endpoint
    ON serve_applications (tenant, plugin, endpoint_action)""",
    "CREATE INDEX IF NOT EXISTS serve_applications_name ON serve_applications (name)",
)

#: What a record loses its application to when a database written before names had one
#: owner has two live records of one name (the earliest registration keeps it).
SUPERSEDED = "the application belongs to an earlier registration; run the deployment action again"


def _initial(conn: sqlite3.Connection) -> None:
    for statement in _INITIAL:
        conn.execute(statement)


def _result_sizes(conn: sqlite3.Connection) -> None:
    # Jobs are read without their result text; the size tells what get_result would return.
    conn.execute("ALTER TABLE jobs ADD COLUMN result_size INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "UPDATE jobs SET result_size = length(CAST(result AS BLOB)) WHERE result IS NOT NULL"
    )


def _plugin_digests(conn: sqlite3.Connection) -> None:
    # Jobs stored before this keep "" (they run the plugin's loaded code, see
    # PluginCatalog.code).
    conn.execute("ALTER TABLE jobs ADD COLUMN plugin_sha256 TEXT NOT NULL DEFAULT ''")


def _one_owner_per_name(conn: sqlite3.Connection) -> None:
    # Releases before names had a single owner may have stored two tenants' live records of
    # one application: the earliest registration keeps it.
    deleted = DeploymentStatus.DELETED.value
    cursor = conn.execute(
        "UPDATE serve_applications SET status = ?, status_message = ?, replicas = '[]', "
        "update_time = ? WHERE status != ? AND EXISTS (SELECT 1 FROM "
        "serve_applications AS earlier WHERE earlier.name = serve_applications.name "
        "AND earlier.tenant != serve_applications.tenant AND earlier.status != ? "
        "AND earlier.id < serve_applications.id)",
        (deleted, SUPERSEDED, time.time(), deleted, deleted),
    )
    if cursor.rowcount:
        logger.warning(
            "%d deployment record(s) held a name another tenant's earlier record holds; "
            "marked deleted",
            cursor.rowcount,
        )


def _job_warnings(conn: sqlite3.Connection) -> None:
    # A JSON array of strings; jobs stored before this have none.
    conn.execute("ALTER TABLE jobs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]'")


#: The statements of the job ownership migration; the PostgreSQL schema has the same columns.
_LEASES = (
    # The server that runs each unfinished job ("" before servers shared a database).
    "ALTER TABLE jobs ADD COLUMN owner_server_id TEXT NOT NULL DEFAULT ''",
    # Why a cancellation asked on another server than the job's owner was asked.
    "ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_server_id, state)",
    """CREATE TABLE IF NOT EXISTS servers (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    host        TEXT NOT NULL,
    started_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
)""",
)


def _job_leases(conn: sqlite3.Connection) -> None:
    for statement in _LEASES:
        conn.execute(statement)


#: The statements of the datasets migration; the PostgreSQL schema has the same columns.
_DATASETS = (
    # ``ord`` orders listings (newest first) and pages; ``id`` is the public "ds-..." id.
    # A job output is staged (committed 0) until its job succeeds.
    """CREATE TABLE IF NOT EXISTS datasets (
    ord         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    format      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    num_rows    INTEGER NOT NULL,
    columns     TEXT NOT NULL DEFAULT '[]',
    created_at  REAL NOT NULL,
    job_id      TEXT NOT NULL DEFAULT '',
    committed   INTEGER NOT NULL DEFAULT 1
)""",
    "CREATE INDEX IF NOT EXISTS datasets_tenant ON datasets (tenant, committed, ord)",
    "CREATE INDEX IF NOT EXISTS datasets_name ON datasets (tenant, name, ord)",
    "CREATE INDEX IF NOT EXISTS datasets_sha256 ON datasets (sha256)",
    "CREATE INDEX IF NOT EXISTS datasets_job ON datasets (job_id) WHERE job_id != ''",
)


def _datasets(conn: sqlite3.Connection) -> None:
    for statement in _DATASETS:
        conn.execute(statement)


MIGRATIONS: tuple[Migration[sqlite3.Connection], ...] = checked_migrations(
    [
        Migration(1, "jobs, events, models and serve applications", _initial),
        Migration(2, "jobs.result_size", _result_sizes),
        Migration(3, "jobs.plugin_sha256", _plugin_digests),
        Migration(4, "one live owner per serve application name", _one_owner_per_name),
        Migration(5, "jobs.warnings", _job_warnings),
        Migration(6, "job owners, server leases and cancel requests", _job_leases),
        Migration(7, "datasets and job outputs", _datasets),
    ]
)

_OUR_TABLES = frozenset({"jobs", "job_params", "job_events", "models", "serve_applications"})
# The columns each pre-migration version added to jobs (version 1 had none of them).
_LEGACY_JOB_COLUMNS = ((2, "result_size"), (3, "plugin_sha256"))


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def legacy_version(conn: sqlite3.Connection) -> int:
    """The schema version of a database written before migrations were numbered.

    0 for a database without any of the stores' tables (a new file). Otherwise the newest
    version whose columns the jobs table has, all of them (a database without a jobs table
    is at version 1: migration 1 creates it).
    """
    tables = _tables(conn)
    if not tables & _OUR_TABLES:
        return 0
    columns = (
        {row[1] for row in conn.execute("PRAGMA table_info(jobs)")} if "jobs" in tables else set()
    )
    version = 1
    for added_in, column in _LEGACY_JOB_COLUMNS:
        if column not in columns:
            break
        version = added_in
    return version


def applied_versions(conn: sqlite3.Connection) -> list[tuple[int, str, float]]:
    """``(version, name, applied_at)`` of every recorded migration, in order."""
    if "schema_migrations" not in _tables(conn):
        return []
    return [
        (int(v), str(n), float(t))
        for v, n, t in conn.execute(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
    ]


def _record(conn: sqlite3.Connection, migration: Migration[sqlite3.Connection]) -> None:
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, time.time()),
    )


def _current_version(conn: sqlite3.Connection, path: Path) -> int:
    if "schema_migrations" in _tables(conn):
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)
    found = legacy_version(conn)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at REAL NOT NULL)"
    )
    if found:
        logger.info(
            "database %s was written before numbered migrations: found at schema version %d",
            path,
            found,
        )
        # Its release created the tables it knew at each start; those it did not know yet
        # are created now (migration 1 is IF NOT EXISTS throughout).
        _initial(conn)
        for migration in MIGRATIONS[:found]:
            _record(conn, migration)
    return found


def migrate(conn: sqlite3.Connection, path: Path) -> list[int]:
    """Bring the database on ``conn`` (the file at ``path``) to the newest schema; the
    versions applied now.

    Raises :class:`StoreSchemaError` when the database is newer than this server's schema.
    """
    applied: list[int] = []
    with transaction(conn, immediate=True):
        current = _current_version(conn, path)
        if current > len(MIGRATIONS):
            raise StoreSchemaError(
                f"the database {path} has schema version {current}, newer than this server's "
                f"({len(MIGRATIONS)}): a newer release wrote it; run that release or a later one"
            )
        for migration in MIGRATIONS[current:]:
            migration.apply(conn)
            _record(conn, migration)
            applied.append(migration.version)
    if applied:
        logger.info("database %s: applied schema migrations %s", path, applied)
    return applied
