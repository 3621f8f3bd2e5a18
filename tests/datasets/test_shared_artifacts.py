"""Datasets and models share one content-addressed artifact store: a file is removed only
once no registry uses it, and the orphan sweep at start keeps every registry's files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from synapse_sdk.models import ArchiveFormat
from synapse_server.core.datasets import DatasetRegistryService, DatasetUploadSpec
from synapse_server.core.models import ModelRecord, ModelRegistryService
from synapse_server.stores import SqliteDatabase, SqliteDatasetStore, SqliteModelStore

from tests.datasets._files import write_parquet


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _open(root: Path) -> tuple[ModelRegistryService, DatasetRegistryService, list[object]]:
    database = SqliteDatabase(root / "synapse.db")
    models_store, datasets_store = SqliteModelStore(database), SqliteDatasetStore(database)
    await models_store.open()
    await datasets_store.open()
    models = ModelRegistryService.for_data_dir(models_store, root)
    datasets = DatasetRegistryService(datasets_store, models.artifacts)
    await models.open()  # the orphan sweep
    await datasets.open()
    return models, datasets, [models_store, datasets_store]


async def _close(stores: list[object]) -> None:
    for store in stores:
        await store.close()  # type: ignore[attr-defined]


async def test_the_sweep_at_start_keeps_dataset_files(tmp_path: Path) -> None:
    models, datasets, stores = await _open(tmp_path)
    source = write_parquet(tmp_path / "a.parquet", 50)
    record = await datasets.upload("t", DatasetUploadSpec("a"), _chunks(source.read_bytes()))
    await _close(stores)
    # A restart: the model registry sweeps files no registry references.
    models, datasets, stores = await _open(tmp_path)
    _, chunks = await datasets.download("t", record.id)
    assert b"".join([c async for c in chunks]) == source.read_bytes()
    assert datasets.stored_bytes() == source.stat().st_size and models.stored_bytes() == 0
    await _close(stores)


async def test_a_file_both_registries_use_stays_until_the_last_goes(tmp_path: Path) -> None:
    models, datasets, stores = await _open(tmp_path)
    source = write_parquet(tmp_path / "b.parquet", 60)
    record = await datasets.upload("t", DatasetUploadSpec("b"), _chunks(source.read_bytes()))
    # A model row whose archive has the same bytes (stored as the registry would).
    model_store = stores[0]
    assert isinstance(model_store, SqliteModelStore)
    model = await model_store.insert(
        ModelRecord(
            id=0,
            tenant="t",
            name="same bytes",
            description="",
            framework="",
            metadata={},
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            archive_format=ArchiveFormat.ZIP,
        )
    )
    blob = tmp_path / "models" / "sha256" / record.sha256[:2] / record.sha256
    await models.delete("t", model.id)
    assert blob.is_file()  # the dataset still uses it
    await models.open()
    assert blob.is_file()
    await datasets.delete("t", record.id)
    assert not blob.exists()
    assert datasets.stored_bytes() == 0
    await _close(stores)


async def test_a_second_server_counts_the_others_files_once_it_refreshes(tmp_path: Path) -> None:
    _, datasets_a, stores_a = await _open(tmp_path)
    models_b, datasets_b, stores_b = await _open(tmp_path)  # the same database and directory
    source = write_parquet(tmp_path / "c.parquet", 70)
    await datasets_a.upload("t", DatasetUploadSpec("c"), _chunks(source.read_bytes()))
    size = source.stat().st_size
    assert datasets_a.stored_bytes() == size and datasets_b.stored_bytes() == 0
    await datasets_b.refresh_stored()
    await models_b.refresh_stored()
    assert datasets_b.stored_bytes() == size and models_b.stored_bytes() == 0
    await _close(stores_a)
    await _close(stores_b)


async def test_staged_outputs_of_ended_jobs_go_at_start(tmp_path: Path) -> None:
    _, datasets, stores = await _open(tmp_path)
    data = write_parquet(tmp_path / "s.parquet", 10).read_bytes()
    for job_id in ("job-running", "job-ended"):
        await datasets.stage_output("t", job_id, "out", _chunks(data))
    dataset_store = stores[1]
    assert isinstance(dataset_store, SqliteDatasetStore)

    async def over(job_id: str) -> bool:
        return job_id == "job-ended"

    # A server sharing the database: only the ended job's output goes.
    await datasets.open(over)
    assert await dataset_store.staged_jobs() == {"job-running"}
    # A server that owns every job: all of them.
    await datasets.open()
    assert await dataset_store.staged_jobs() == set()
    await _close(stores)
