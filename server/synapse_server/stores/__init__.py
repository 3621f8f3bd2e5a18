"""The stores: where jobs, events, models, deployments and datasets are kept.

The core defines one protocol per aggregate (``JobStore``, ``ModelStore``,
``DeploymentStore``, ``DatasetStore``) and never imports this package; the composition root
opens the stores the ``database_url`` setting names (:func:`open_stores`) and hands them to
the services.
Two backends: SQLite (the embedded default, one file in WAL mode, one server) and PostgreSQL
(several servers share the database; ``_postgres*``). Each versions its schema by numbered
migrations recorded in the database (``_sqlite_schema``, ``_postgres_schema``).
"""

from synapse_server.stores._factory import (
    SUPPORTED_SCHEMES,
    Stores,
    open_stores,
    sqlite_database_path,
    sqlite_url,
)
from synapse_server.stores._migrations import StoreSchemaError
from synapse_server.stores._postgres import PostgresOptions, display_url
from synapse_server.stores._sqlite_database import SqliteDatabase
from synapse_server.stores._sqlite_datasets import SqliteDatasetStore
from synapse_server.stores._sqlite_deployments import SqliteDeploymentStore
from synapse_server.stores._sqlite_jobs import SqliteJobStore
from synapse_server.stores._sqlite_models import SqliteModelStore

__all__ = [
    "SUPPORTED_SCHEMES",
    "PostgresOptions",
    "SqliteDatabase",
    "SqliteDatasetStore",
    "SqliteDeploymentStore",
    "SqliteJobStore",
    "SqliteModelStore",
    "StoreSchemaError",
    "display_url",
    "Stores",
    "open_stores",
    "sqlite_database_path",
    "sqlite_url",
]
