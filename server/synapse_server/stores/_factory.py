"""The stores a server uses, chosen by its database URL (the ``database_url`` setting).

``sqlite:///<path>`` (the default: ``<data dir>/synapse.db``) is the embedded SQLite file; a
relative path is taken from the working directory, as ``--data-dir`` is: one server per
database. ``postgresql://...`` (or ``postgres://``) is a PostgreSQL database that several
servers share. A URL of another scheme is a settings error that names the scheme, never the
rest of the URL (it may carry a password).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from synapse_server.core import JobStore, StoreNotifications
from synapse_server.core.datasets import DatasetStore
from synapse_server.core.deployments import DeploymentStore
from synapse_server.core.models import ModelStore
from synapse_server.settings import SettingsError
from synapse_server.stores._postgres import POSTGRES_SCHEMES, PostgresOptions
from synapse_server.stores._sqlite_database import SqliteDatabase
from synapse_server.stores._sqlite_datasets import SqliteDatasetStore
from synapse_server.stores._sqlite_deployments import SqliteDeploymentStore
from synapse_server.stores._sqlite_jobs import SqliteJobStore
from synapse_server.stores._sqlite_models import SqliteModelStore

__all__ = ["SUPPORTED_SCHEMES", "Stores", "open_stores", "sqlite_database_path", "sqlite_url"]

logger = logging.getLogger(__name__)

#: The URL schemes :func:`open_stores` knows.
SUPPORTED_SCHEMES = ("sqlite", *POSTGRES_SCHEMES)
_SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class Stores:
    """The server's stores, one per aggregate, all on one database.

    ``shared``: several servers may use the database at once (PostgreSQL), so jobs are owned
    by leases; ``notifications`` tells a server what the others store (``None`` for SQLite).
    """

    jobs: JobStore
    models: ModelStore
    deployments: DeploymentStore
    shared: bool = False
    notifications: StoreNotifications | None = None
    #: ``None`` only for stores built without one (tests); the DatasetService needs it.
    datasets: DatasetStore | None = None

    async def close(self) -> None:
        """Close every store (each is closed even when another fails to)."""
        errors: list[BaseException] = []
        stores: list[JobStore | ModelStore | DeploymentStore | DatasetStore] = [
            self.jobs,
            self.models,
            self.deployments,
        ]
        if self.datasets is not None:
            stores.append(self.datasets)
        for store in stores:
            try:
                await store.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def sqlite_url(path: Path) -> str:
    """The database URL of the SQLite file at ``path``."""
    return f"{_SQLITE_PREFIX}{path}"


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise SettingsError(
            "database_url must be a URL such as sqlite:///path/to/synapse.db "
            "(the default is the file synapse.db in the data directory)"
        )
    return scheme.lower()


def sqlite_database_path(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names; ``None`` for a PostgreSQL URL.

    Raises :class:`SettingsError` for a URL that is not one or whose scheme is unsupported.
    """
    scheme = _scheme(url)
    if scheme not in SUPPORTED_SCHEMES:
        raise SettingsError(
            f"database_url: unsupported scheme {scheme[:20]!r} (supported: "
            f"{', '.join(SUPPORTED_SCHEMES)})"
        )
    if scheme in POSTGRES_SCHEMES:
        _check_postgres_url(url)
        return None
    if not url.lower().startswith(_SQLITE_PREFIX) or len(url) == len(_SQLITE_PREFIX):
        raise SettingsError(
            "database_url: a SQLite URL names its file after three slashes: "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = url[len(_SQLITE_PREFIX) :]
    if path == ":memory:" or "?" in path:
        raise SettingsError(
            "database_url: the SQLite database must be a plain file path (no in-memory "
            "database, no query options): the server keeps its jobs there across restarts"
        )
    return Path(path)


def _check_postgres_url(url: str) -> None:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise SettingsError(
            "database_url: a PostgreSQL database needs the postgres extra "
            "(pip install 'synapse-platform[postgres]')"
        ) from None
    try:
        conninfo_to_dict(url)
    except Exception:
        # The driver's message may quote the URL, password included.
        raise SettingsError(
            "database_url: not a valid PostgreSQL URL (postgresql://user:password@host:port/db)"
        ) from None


async def open_stores(url: str, postgres: PostgresOptions | None = None) -> Stores:
    """Open the stores for the database at ``url`` (schema created or migrated first).

    ``postgres``: pool size and time limits of a PostgreSQL database.

    Raises :class:`SettingsError` for an unusable URL, ``StoreSchemaError`` for a database a
    newer release wrote, ``StorageError`` when the storage fails (a database that cannot be
    reached: ``StorageUnavailableError`` naming it, without credentials).
    """
    path = sqlite_database_path(url)
    if path is None:
        return await _open_postgres(url, postgres)
    # One database, shared: one writer and one reader thread for the file (see SqliteDatabase).
    database = SqliteDatabase(path)
    jobs, models, deployments, datasets = (
        SqliteJobStore(database),
        SqliteModelStore(database),
        SqliteDeploymentStore(database),
        SqliteDatasetStore(database),
    )
    opened: list[
        SqliteJobStore | SqliteModelStore | SqliteDeploymentStore | SqliteDatasetStore
    ] = []
    try:
        for store in (jobs, models, deployments, datasets):
            await store.open()
            opened.append(store)
    except BaseException:
        for store in reversed(opened):
            with contextlib.suppress(Exception):
                await store.close()
        raise
    logger.info("stores opened on %s", path)
    return Stores(jobs=jobs, models=models, deployments=deployments, datasets=datasets)


async def _open_postgres(url: str, options: PostgresOptions | None) -> Stores:
    from synapse_server.stores._postgres import PostgresDatabase
    from synapse_server.stores._postgres_datasets import PostgresDatasetStore
    from synapse_server.stores._postgres_deployments import PostgresDeploymentStore
    from synapse_server.stores._postgres_jobs import PostgresJobStore
    from synapse_server.stores._postgres_models import PostgresModelStore
    from synapse_server.stores._postgres_notify import PostgresNotifications

    database = PostgresDatabase(url, options)
    stores = (
        PostgresJobStore(database),
        PostgresModelStore(database),
        PostgresDeploymentStore(database),
        PostgresDatasetStore(database),
    )
    opened: list[
        PostgresJobStore | PostgresModelStore | PostgresDeploymentStore | PostgresDatasetStore
    ] = []
    try:
        for store in stores:
            await store.open()
            opened.append(store)
    except BaseException:
        for store in reversed(opened):
            with contextlib.suppress(Exception):
                await store.close()
        raise
    logger.info("stores opened on %s", database.display)
    return Stores(
        jobs=stores[0],
        models=stores[1],
        deployments=stores[2],
        datasets=stores[3],
        shared=True,
        notifications=PostgresNotifications(database),
    )
