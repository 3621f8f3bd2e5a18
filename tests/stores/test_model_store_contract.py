"""The ModelStore contract, run against every store backend (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
from synapse_sdk.models import ArchiveFormat
from synapse_server.core import InvalidArgumentError, Job, JobFilter
from synapse_server.core.models import ModelRecord, ModelStore
from synapse_server.stores import Stores

from tests.stores.conftest import StoreBackend

pytestmark = pytest.mark.timeout(60)


def _model(
    name: str = "m", tenant: str = "t1", sha: str = "a", fmt: ArchiveFormat = ArchiveFormat.ZIP
) -> ModelRecord:
    return ModelRecord(
        id=0,
        tenant=tenant,
        name=name,
        description="a model ü",
        framework="pytorch",
        metadata={"layers": [4, 8], "nested": {"ok": True, "f": 0.5}, "none": None},
        sha256=sha * 64,
        size_bytes=1234,
        archive_format=fmt,
        created_at=12.5,
    )


@pytest.fixture
def models(stores: Stores) -> ModelStore:
    return stores.models


async def test_a_model_reads_back_with_every_field(models: ModelStore) -> None:
    for fmt in ArchiveFormat:
        stored = await models.insert(_model(fmt=fmt))
        assert stored.id > 0
        assert stored == ModelRecord(**{**_model(fmt=fmt).__dict__, "id": stored.id})
        assert await models.get("t1", stored.id) == stored


async def test_ids_increase_and_the_given_id_is_ignored(models: ModelStore) -> None:
    ids = [(await models.insert(ModelRecord(**{**_model().__dict__, "id": 99}))).id]
    ids += [(await models.insert(_model())).id for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert 99 not in ids


async def test_tenants_see_only_their_models(models: ModelStore) -> None:
    mine = await models.insert(_model(tenant="t1"))
    theirs = await models.insert(_model(tenant="t2"))
    assert await models.get("t2", mine.id) is None
    assert await models.get("t1", theirs.id) is None
    assert [m.id for m in (await models.list("t2", "", 10, "")).models] == [theirs.id]
    # Another tenant cannot delete it either; it stays.
    assert await models.delete("t2", mine.id) is None
    assert await models.get("t1", mine.id) == mine
    assert await models.get("t1", 12345) is None


async def test_listings_are_newest_first_filtered_and_paged(models: ModelStore) -> None:
    created = [await models.insert(_model(name="a" if i % 2 else "b")) for i in range(5)]
    await models.insert(_model(tenant="t2"))
    ids = [m.id for m in reversed(created)]
    page = await models.list("t1", "", 2, "")
    assert [m.id for m in page.models] == ids[:2] and page.next_page_token
    page2 = await models.list("t1", "", 2, page.next_page_token)
    page3 = await models.list("t1", "", 2, page2.next_page_token)
    assert [m.id for m in page2.models + page3.models] == ids[2:]
    assert page3.next_page_token == ""
    named = await models.list("t1", "a", 10, "")
    assert [m.id for m in named.models] == [m.id for m in reversed(created) if m.name == "a"]
    assert (await models.list("t1", "none", 10, "")).models == []
    exact = await models.list("t1", "", 5, "")
    assert len(exact.models) == 5 and exact.next_page_token == ""


async def test_a_bad_page_token_is_invalid_argument(stores: Stores) -> None:
    for i in range(2):
        await stores.models.insert(_model())
        await stores.jobs.create_job(Job(id=f"j{i}", tenant="t1", plugin="p", action="a"))
    job_token = (await stores.jobs.list_jobs(JobFilter(), 1, "")).next_page_token
    assert job_token
    for token in ("not-a-token", job_token):
        with pytest.raises(InvalidArgumentError):
            await stores.models.list("t1", "", 10, token)


async def test_delete_returns_what_it_removed(models: ModelStore) -> None:
    model = await models.insert(_model())
    assert await models.delete("t1", model.id) == model
    assert await models.get("t1", model.id) is None
    assert await models.delete("t1", model.id) is None
    # The id is not given out again.
    assert (await models.insert(_model())).id > model.id


async def test_artifact_references_count_every_tenant(models: ModelStore) -> None:
    assert await models.references("a" * 64) == 0
    assert await models.all_checksums() == set()
    first = await models.insert(_model(tenant="t1", sha="a"))
    await models.insert(_model(tenant="t2", sha="a"))
    await models.insert(_model(tenant="t1", sha="b"))
    assert await models.references("a" * 64) == 2
    assert await models.all_checksums() == {"a" * 64, "b" * 64}
    await models.delete("t1", first.id)
    assert await models.references("a" * 64) == 1


async def test_concurrent_inserts_get_distinct_ids(
    backend: StoreBackend, models: ModelStore
) -> None:
    second = await backend.open()
    try:
        stored = await asyncio.gather(
            *(store.insert(_model()) for _ in range(10) for store in (models, second.models))
        )
    finally:
        await second.close()
    assert len({m.id for m in stored}) == 20


async def test_models_survive_a_reopen(backend: StoreBackend) -> None:
    first = await backend.open()
    try:
        model = await first.models.insert(_model())
    finally:
        await first.close()
    second = await backend.open()
    try:
        assert await second.models.get("t1", model.id) == model
    finally:
        await second.close()
