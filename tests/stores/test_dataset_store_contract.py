"""The DatasetStore contract, run against every store backend (see conftest.py)."""

from __future__ import annotations

import dataclasses

import pytest
from synapse_server.core import InvalidArgumentError
from synapse_server.core.datasets import (
    DatasetColumn,
    DatasetFormat,
    DatasetRecord,
    DatasetStore,
    new_dataset_id,
)
from synapse_server.stores import Stores

pytestmark = pytest.mark.timeout(60)


def _dataset(
    name: str = "d",
    tenant: str = "t1",
    sha: str = "a",
    fmt: DatasetFormat = DatasetFormat.PARQUET,
    job_id: str = "",
) -> DatasetRecord:
    return DatasetRecord(
        id=new_dataset_id(),
        tenant=tenant,
        name=name,
        format=fmt,
        sha256=sha * 64,
        size_bytes=4321,
        num_rows=10_000_000_000,
        columns=(DatasetColumn("id", "int64"), DatasetColumn("vec ü", "fixed_size_list<x>[3]")),
        created_at=12.5,
        job_id=job_id,
        committed=not job_id,
    )


@pytest.fixture
def datasets(stores: Stores) -> DatasetStore:
    assert stores.datasets is not None
    return stores.datasets


async def test_a_dataset_reads_back_with_every_field(datasets: DatasetStore) -> None:
    for fmt in DatasetFormat:
        record = _dataset(fmt=fmt)
        assert await datasets.insert(record) == record
        assert await datasets.get("t1", record.id) == record


async def test_tenants_see_only_their_datasets(datasets: DatasetStore) -> None:
    mine = await datasets.insert(_dataset(tenant="t1"))
    theirs = await datasets.insert(_dataset(tenant="t2"))
    assert await datasets.get("t2", mine.id) is None
    assert await datasets.get("t1", theirs.id) is None
    assert [d.id for d in (await datasets.list("t2", "", 10, "")).datasets] == [theirs.id]
    assert await datasets.delete("t2", mine.id) is None
    assert await datasets.get("t1", mine.id) == mine
    assert await datasets.delete("t1", mine.id) == mine
    assert await datasets.get("t1", mine.id) is None


async def test_listing_pages_newest_first_by_name(datasets: DatasetStore) -> None:
    records = [await datasets.insert(_dataset(name="a" if i % 2 else "b")) for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await datasets.list("t1", "", 2, token)
        assert len(page.datasets) <= 2
        seen += [d.id for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert seen == [r.id for r in reversed(records)]
    assert [d.id for d in (await datasets.list("t1", "a", 10, "")).datasets] == [
        records[3].id,
        records[1].id,
    ]
    with pytest.raises(InvalidArgumentError):
        await datasets.list("t1", "", 10, "bogus")


async def test_outputs_are_staged_until_committed(datasets: DatasetStore) -> None:
    first = _dataset(name="out", sha="b", job_id="job-1")
    assert await datasets.stage_output(first) is None
    second = _dataset(name="out", sha="c", job_id="job-1")
    assert await datasets.stage_output(second) == first  # replaced
    other = _dataset(name="extra", job_id="job-1")
    await datasets.stage_output(other)
    await datasets.stage_output(_dataset(name="out", job_id="job-2"))
    # Staged: invisible everywhere, counted as references.
    assert await datasets.get("t1", second.id) is None
    assert (await datasets.list("t1", "", 10, "")).datasets == []
    assert await datasets.job_outputs("t1", "job-1") == []
    assert await datasets.staged_jobs() == {"job-1", "job-2"}
    assert await datasets.references("c" * 64) == 1
    assert await datasets.references("b" * 64) == 0
    assert {"a" * 64, "c" * 64} <= await datasets.all_checksums()

    assert await datasets.commit_outputs("job-1") == 2
    committed = [dataclasses.replace(r, committed=True) for r in (other, second)]
    assert await datasets.job_outputs("t1", "job-1") == committed  # by name
    assert await datasets.job_outputs("t2", "job-1") == []
    assert await datasets.get("t1", second.id) == committed[1]
    assert await datasets.discard_outputs("job-1") == []  # committed ones stay

    [dropped] = await datasets.discard_outputs("job-2")
    assert dropped.job_id == "job-2" and not dropped.committed
    assert await datasets.staged_jobs() == set()
    assert await datasets.commit_outputs("job-2") == 0
