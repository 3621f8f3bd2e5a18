"""The stores: where jobs, events, models and deployments are kept.

The core defines one protocol per aggregate (``JobStore``, ``ModelStore``,
``DeploymentStore``) and never imports this package; the composition root opens the stores
the ``database_url`` setting names (:func:`open_stores`) and hands them to the services.
Today's backend is SQLite: one file in WAL mode whose schema is versioned by numbered
migrations (``_sqlite_schema``).
"""

from synapse_server.stores._factory import (
    SUPPORTED_SCHEMES,
    Stores,
    open_stores,
    sqlite_database_path,
    sqlite_url,
)
from synapse_server.stores._migrations import StoreSchemaError
from synapse_server.stores._sqlite_database import SqliteDatabase
from synapse_server.stores._sqlite_deployments import SqliteDeploymentStore
from synapse_server.stores._sqlite_jobs import SqliteJobStore
from synapse_server.stores._sqlite_models import SqliteModelStore

__all__ = [
    "SUPPORTED_SCHEMES",
    "SqliteDatabase",
    "SqliteDeploymentStore",
    "SqliteJobStore",
    "SqliteModelStore",
    "StoreSchemaError",
    "Stores",
    "open_stores",
    "sqlite_database_path",
    "sqlite_url",
]
