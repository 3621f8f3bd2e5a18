"""The transport-neutral model registry: SQLite metadata plus content-addressed artifacts."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models import ArchiveFormat, ExtractionLimits, ModelIntegrityError
from synapse_server.core import InvalidArgumentError
from synapse_server.core.models import (
    ArtifactTooLargeError,
    ModelRegistryLimits,
    ModelRegistryService,
    ModelUploadSpec,
)
from synapse_server.stores import SqliteModelStore

from tests.models._archives import make_tar, make_zip


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[ModelRegistryService]:
    store = SqliteModelStore(tmp_path / "synapse.db")
    await store.open()
    service = ModelRegistryService.for_data_dir(
        store,
        tmp_path,
        ModelRegistryLimits(max_archive_bytes=200_000, extraction=ExtractionLimits(1_000_000)),
    )
    await service.open()
    yield service
    await store.close()


def _spec(name: str = "mlp", fmt: str = "zip", **kw: object) -> ModelUploadSpec:
    return ModelUploadSpec(name=name, archive_format=ArchiveFormat(fmt), **kw)  # type: ignore[arg-type]


def _blobs(root: Path) -> Iterable[Path]:
    return [p for p in (root / "models" / "sha256").glob("*/*") if p.is_file()]


async def test_register_get_download_delete(registry: ModelRegistryService, tmp_path: Path) -> None:
    data = make_zip(tmp_path / "m.zip", [("model.pt", b"w" * 5000)]).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    spec = _spec(description="d", framework="pytorch", metadata={"k": [1, 2]}, expected_sha256=sha)
    model = await registry.register("t1", spec, _chunks(data))
    assert model.id > 0 and model.sha256 == sha and model.size_bytes == len(data)
    assert model.file == f"synapse://models/{model.id}"
    assert (await registry.get("t1", model.id)).to_dict()["metadata"] == {"k": [1, 2]}
    record, chunks = await registry.download("t1", model.id, chunk_size=777)
    assert record.id == model.id and await _collect(chunks) == data

    # Tenants are isolated: another tenant sees "not found", never the model.
    with pytest.raises(ModelNotFoundError, match=str(model.id)):
        await registry.get("t2", model.id)
    with pytest.raises(ModelNotFoundError):
        await registry.delete("t2", model.id)

    await registry.delete("t1", model.id)
    with pytest.raises(ModelNotFoundError):
        await registry.download("t1", model.id)
    assert _blobs(tmp_path) == []


async def test_identical_archives_share_one_artifact(
    registry: ModelRegistryService, tmp_path: Path
) -> None:
    data = make_tar(tmp_path / "m.tgz", [("model.pt", b"abc")], gz=True).read_bytes()
    a = await registry.register("t1", _spec("a", "tar_gz"), _chunks(data))
    b = await registry.register("t2", _spec("b", "tar_gz"), _chunks(data))
    assert a.sha256 == b.sha256 and len(_blobs(tmp_path)) == 1
    await registry.delete("t1", a.id)
    assert len(_blobs(tmp_path)) == 1  # still used by b
    _, chunks = await registry.download("t2", b.id)
    assert await _collect(chunks) == data
    await registry.delete("t2", b.id)
    assert _blobs(tmp_path) == []


async def test_upload_errors(registry: ModelRegistryService, tmp_path: Path) -> None:
    data = make_zip(tmp_path / "m.zip", [("model.pt", b"w")]).read_bytes()
    with pytest.raises(InvalidArgumentError, match=r"name is required"):
        await registry.register("t", _spec(" "), _chunks(data))
    with pytest.raises(InvalidArgumentError, match=r"empty"):
        await registry.register("t", _spec(), _chunks(b""))
    with pytest.raises(ModelIntegrityError, match=r"expected " + "0" * 64):
        await registry.register("t", _spec(expected_sha256="0" * 64), _chunks(data))
    with pytest.raises(InvalidArgumentError, match=r"expected_sha256"):
        await registry.register("t", _spec(expected_sha256="XYZ"), _chunks(data))
    with pytest.raises(InvalidArgumentError, match=r"declared as tar but the content is zip"):
        await registry.register("t", _spec(fmt="tar"), _chunks(data))
    with pytest.raises(ArtifactTooLargeError, match=r"200000 bytes"):
        await registry.register("t", _spec(), _chunks(b"x" * 300_000, 50_000))
    bomb = make_zip(tmp_path / "b.zip", [("z", b"\0" * 2_000_000)]).read_bytes()
    with pytest.raises(InvalidArgumentError, match=r"uncompressed size exceeds"):
        await registry.register("t", _spec(), _chunks(bomb))
    evil = make_zip(tmp_path / "e.zip", [("../x", b"1")]).read_bytes()
    with pytest.raises(InvalidArgumentError, match=r"escapes"):
        await registry.register("t", _spec(), _chunks(evil))
    corrupt = bytearray(make_zip(tmp_path / "c.zip", [("m", bytes(range(256)) * 100)]).read_bytes())
    corrupt[60:200] = b"\1" * 140
    with pytest.raises(InvalidArgumentError, match=r"corrupt"):
        await registry.register("t", _spec(), _chunks(bytes(corrupt)))
    with pytest.raises(InvalidArgumentError, match=r"metadata.x: non-finite"):
        await registry.register("t", _spec(metadata={"x": float("nan")}), _chunks(data))
    # Nothing from the failed uploads is left behind.
    assert _blobs(tmp_path) == []
    assert list((tmp_path / "models" / "tmp").iterdir()) == []


async def test_list_pagination_and_filter(registry: ModelRegistryService, tmp_path: Path) -> None:
    data = make_zip(tmp_path / "m.zip", [("model.pt", b"w")]).read_bytes()
    ids = [(await registry.register("t", _spec(f"m{i % 2}"), _chunks(data))).id for i in range(5)]
    await registry.register("other", _spec("m0"), _chunks(data))
    page = await registry.list("t", page_size=2)
    seen = [m.id for m in page.models]
    while page.next_page_token:
        page = await registry.list("t", page_size=2, page_token=page.next_page_token)
        seen += [m.id for m in page.models]
    assert seen == sorted(ids, reverse=True)
    assert [m.name for m in (await registry.list("t", name="m0")).models] == ["m0"] * 3
    with pytest.raises(InvalidArgumentError, match=r"page_size"):
        await registry.list("t", page_size=5000)
    with pytest.raises(InvalidArgumentError, match=r"page_token"):
        await registry.list("t", page_token="garbage!")


async def test_damaged_artifact_is_not_served(
    registry: ModelRegistryService, tmp_path: Path
) -> None:
    data = make_zip(tmp_path / "m.zip", [("model.pt", b"w" * 3000)]).read_bytes()
    model = await registry.register("t", _spec(), _chunks(data))
    (blob,) = _blobs(tmp_path)
    blob.chmod(0o644)
    blob.write_bytes(data[:-1] + b"!")
    _, chunks = await registry.download("t", model.id, chunk_size=1000)
    with pytest.raises(ModelIntegrityError, match=r"no longer matches"):
        await _collect(chunks)
    blob.unlink()
    with pytest.raises(ModelIntegrityError, match=r"missing"):
        await registry.download("t", model.id)


async def test_restart_keeps_models_and_drops_orphans(tmp_path: Path) -> None:
    data = make_zip(tmp_path / "m.zip", [("model.pt", b"w")]).read_bytes()
    store = SqliteModelStore(tmp_path / "synapse.db")
    await store.open()
    service = ModelRegistryService.for_data_dir(store, tmp_path)
    await service.open()
    model = await service.register("t", _spec(), _chunks(data))
    orphan = tmp_path / "models" / "sha256" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    (tmp_path / "models" / "tmp" / "upload-x").write_bytes(b"partial")
    await store.close()

    store = SqliteModelStore(tmp_path / "synapse.db")
    await store.open()
    service = ModelRegistryService.for_data_dir(store, tmp_path)
    await service.open()
    _, chunks = await service.download("t", model.id)
    assert await _collect(chunks) == data
    assert not orphan.exists()
    assert list((tmp_path / "models" / "tmp").iterdir()) == []
    await store.close()
