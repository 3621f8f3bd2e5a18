"""The PostgreSQL database's schema: numbered migrations recorded in ``schema_migrations``.

The tables mirror the SQLite ones (``_sqlite_schema``) column for column, with PostgreSQL's
types: texts stay ``TEXT`` (params, results and event data are kept byte for byte, never as
``jsonb``, which would reformat them), times are seconds since the epoch as
``DOUBLE PRECISION``. Lease times come from the database's clock, so servers with skewed
clocks still agree on whose lease has expired.

Migrations run in one transaction that first takes an advisory lock: servers starting
together on a new database wait for the first one, then find the schema migrated.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from synapse_server.stores._migrations import Migration, StoreSchemaError, checked_migrations

__all__ = ["MIGRATIONS", "applied_versions", "migrate"]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key of schema migrations ("synapse" in ASCII).
_MIGRATION_LOCK = 0x73796E61707365

_INITIAL = (
    """CREATE TABLE jobs (
    ord              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    tenant           TEXT NOT NULL,
    plugin           TEXT NOT NULL,
    action           TEXT NOT NULL,
    mode             TEXT NOT NULL,
    state            TEXT NOT NULL,
    request_id       TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION,
    finished_at      DOUBLE PRECISION,
    result           TEXT,
    error            TEXT,
    reason           TEXT NOT NULL DEFAULT '',
    progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
    plugin_version   TEXT NOT NULL DEFAULT '',
    last_seq         BIGINT NOT NULL DEFAULT 0,
    pending_reason   TEXT NOT NULL DEFAULT '',
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    result_size      BIGINT NOT NULL DEFAULT 0,
    plugin_sha256    TEXT NOT NULL DEFAULT '',
    -- A JSON array of strings (e.g. params keys the action ignored).
    warnings         TEXT NOT NULL DEFAULT '[]'
)""",
    """CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant, request_id)
    WHERE request_id IS NOT NULL""",
    "CREATE INDEX jobs_state ON jobs (state)",
    # Params apart from the row that every batch of events updates (see _sqlite_jobs).
    "CREATE TABLE job_params (job_id TEXT PRIMARY KEY, params TEXT NOT NULL)",
    """CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    ts     DOUBLE PRECISION NOT NULL,
    data   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
)""",
    """CREATE TABLE models (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    framework      TEXT NOT NULL DEFAULT '',
    metadata       TEXT NOT NULL DEFAULT '{}',
    sha256         TEXT NOT NULL,
    size_bytes     BIGINT NOT NULL,
    archive_format TEXT NOT NULL,
    created_at     DOUBLE PRECISION NOT NULL
)""",
    "CREATE INDEX models_tenant ON models (tenant, id)",
    "CREATE INDEX models_sha256 ON models (sha256)",
    """CREATE TABLE serve_applications (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant            TEXT NOT NULL,
    name              TEXT NOT NULL,
    plugin            TEXT NOT NULL,
    action            TEXT NOT NULL,
    job_id            TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL,
    status_message    TEXT NOT NULL DEFAULT '',
    route_prefix      TEXT NOT NULL DEFAULT '',
    model_ids         TEXT NOT NULL DEFAULT '[]',
    ray_actor_options TEXT NOT NULL DEFAULT '{}',
    endpoint_action   TEXT NOT NULL DEFAULT '',
    replicas          TEXT NOT NULL DEFAULT '[]',
    create_time       DOUBLE PRECISION NOT NULL,
    update_time       DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant, name)
)""",
    """CREATE INDEX serve_applications_endpoint
    ON serve_applications (tenant, plugin, endpoint_action)""",
    "CREATE INDEX serve_applications_name ON serve_applications (name)",
)

_LEASES = (
    "ALTER TABLE jobs ADD COLUMN owner_server_id TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE jobs ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX jobs_owner ON jobs (owner_server_id, state)",
    """CREATE TABLE servers (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    host        TEXT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
)""",
)


#: Datasets and job outputs: the columns of the SQLite table (``_sqlite_schema``).
_DATASETS = (
    """CREATE TABLE datasets (
    ord         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    format      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    num_rows    BIGINT NOT NULL,
    columns     TEXT NOT NULL DEFAULT '[]',
    created_at  DOUBLE PRECISION NOT NULL,
    job_id      TEXT NOT NULL DEFAULT '',
    committed   BOOLEAN NOT NULL DEFAULT TRUE
)""",
    "CREATE INDEX datasets_tenant ON datasets (tenant, committed, ord)",
    "CREATE INDEX datasets_name ON datasets (tenant, name, ord)",
    "CREATE INDEX datasets_sha256 ON datasets (sha256)",
    "CREATE INDEX datasets_job ON datasets (job_id) WHERE job_id != ''",
)


def _statements(statements: tuple[str, ...]) -> Any:
    def _apply(conn: Any) -> None:
        for statement in statements:
            conn.execute(statement.encode())

    return _apply


MIGRATIONS: tuple[Migration[Any], ...] = checked_migrations(
    [
        Migration(1, "jobs, events, models and serve applications", _statements(_INITIAL)),
        Migration(2, "job owners, server leases and cancel requests", _statements(_LEASES)),
        Migration(3, "datasets and job outputs", _statements(_DATASETS)),
    ]
)


def applied_versions(conn: Any) -> list[tuple[int, str, float]]:
    """``(version, name, applied_at)`` of every recorded migration, in order."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return []
    return [
        (int(v), str(n), float(t))
        for v, n, t in conn.execute(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
    ]


def migrate(url: str, display: str, connect_timeout: float) -> list[int]:
    """Connect to the database at ``url`` and bring it to the newest schema; the versions
    applied now (blocking: run in a thread).

    Raises ``psycopg.OperationalError`` when the database cannot be reached and
    :class:`StoreSchemaError` when it is newer than this server's schema.
    """
    import psycopg

    applied: list[int] = []
    timeout = max(1, round(connect_timeout))
    with psycopg.connect(url, connect_timeout=timeout) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        current = int(row[0] or 0) if row else 0
        if current > len(MIGRATIONS):
            raise StoreSchemaError(
                f"the database {display} has schema version {current}, newer than this "
                f"server's ({len(MIGRATIONS)}): a newer release wrote it; run that release "
                "or a later one"
            )
        for migration in MIGRATIONS[current:]:
            migration.apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, time.time()),
            )
            applied.append(migration.version)
    if applied:
        logger.info("database %s: applied schema migrations %s", display, applied)
    return applied
