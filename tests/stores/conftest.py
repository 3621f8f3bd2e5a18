"""Store backends under test: the contract tests run once per backend.

A backend is a database URL that :func:`open_stores` understands, fresh for each test. A new
backend joins every contract test (tests/stores/test_*_contract.py) by adding one param to
``backend``. PostgreSQL is a real server the session starts itself (see tests/_postgres.py);
its tests are skipped, saying why, only where PostgreSQL is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from synapse_server.stores import Stores, open_stores, sqlite_url

from tests._postgres import PostgresCluster


@dataclass(frozen=True)
class StoreBackend:
    """One backend's database for one test; :meth:`open` may be called again (a restart,
    or a second server on the same database)."""

    name: str
    url: str

    async def open(self) -> Stores:
        """The stores on this test's database (created and migrated on first use)."""
        return await open_stores(self.url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreBackend]:
    """A fresh database of each backend (a PostgreSQL one is dropped after the test)."""
    if request.param == "sqlite":
        yield StoreBackend("sqlite", sqlite_url(tmp_path / "synapse.db"))
    elif request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        url = cluster.database()
        yield StoreBackend("postgres", url)
        cluster.drop(url)
    else:
        raise AssertionError(f"no fixture for backend {request.param!r}")


@pytest_asyncio.fixture(loop_scope="function")
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    """The backend's stores, open for the test (on the test's own event loop: a PostgreSQL
    pool's tasks run on the loop that opened it)."""
    opened = await backend.open()
    yield opened
    await opened.close()
