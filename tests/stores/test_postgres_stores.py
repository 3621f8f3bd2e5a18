"""What the PostgreSQL backend does beside the shared contract: its numbered migrations, text
it cannot hold, and a database that goes away and comes back."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import pytest_asyncio
from synapse_server.core import InvalidArgumentError, Job, StorageUnavailableError
from synapse_server.stores import StoreSchemaError, open_stores
from synapse_server.stores._postgres_schema import MIGRATIONS, applied_versions

from tests._postgres import PostgresCluster

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="function")]


@pytest_asyncio.fixture(loop_scope="function")
async def url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.database("pg")


def _versions(url: str) -> list[tuple[int, str, float]]:
    with psycopg.connect(url) as conn:
        return applied_versions(conn)


async def test_a_new_database_runs_every_migration_once(url: str) -> None:
    before = time.time()
    # Servers starting together on a new database: one migrates, the others wait for it.
    opened = await asyncio.gather(*(open_stores(url) for _ in range(4)))
    for stores in opened:
        await stores.close()
    versions = _versions(url)
    assert [(v, n) for v, n, _ in versions] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(before <= applied <= time.time() for _, _, applied in versions)
    stores = await open_stores(url)
    await stores.close()
    assert _versions(url) == versions


async def test_a_database_of_a_newer_release_is_refused(url: str) -> None:
    stores = await open_stores(url)
    await stores.close()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (%s, 'from the future', 0)",
            (len(MIGRATIONS) + 1,),
        )
    secret_url = url.replace("synapse@", "synapse:hunter2@")
    with pytest.raises(StoreSchemaError) as refused:
        await open_stores(secret_url)
    message = str(refused.value)
    assert f"schema version {len(MIGRATIONS) + 1}" in message and "newer release" in message
    assert "hunter2" not in message


async def test_text_with_nul_characters_is_an_invalid_argument(url: str) -> None:
    stores = await open_stores(url)
    try:
        job = Job(id="j1", tenant="t1", plugin="p", action="a", request_id="a\x00b")
        with pytest.raises(InvalidArgumentError, match="NUL"):
            await stores.jobs.create_job(job)
        assert await stores.jobs.get_job("j1") is None
    finally:
        await stores.close()


async def test_a_database_that_goes_away_answers_unavailable_then_recovers(
    url: str, postgres_cluster: PostgresCluster
) -> None:
    stores = await open_stores(url)
    try:
        await stores.jobs.create_job(Job(id="j1", tenant="t1", plugin="p", action="a"))
        postgres_cluster.stop("fast")
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StorageUnavailableError):
                    await stores.jobs.get_job("j1")
                # Refused quickly, not after the pool's whole acquire timeout.
                assert time.monotonic() - started < 3.0
        finally:
            postgres_cluster.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                job = await stores.jobs.get_job("j1")
                break
            except StorageUnavailableError:
                assert time.monotonic() < deadline, "the store did not recover"
                await asyncio.sleep(0.2)
        assert job is not None and job.id == "j1"
    finally:
        await stores.close()
