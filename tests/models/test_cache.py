"""The per-machine model cache and the platform model backend over a counting source."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.errors import ModelNotFoundError
from synapse_sdk.models import (
    ModelCache,
    ModelIntegrityError,
    PlatformModelBackend,
    UnsafeArchiveError,
    WritableBytes,
    parse_model_id,
)

from tests.models._archives import make_tar, make_zip


class CountingSource:
    """An in-memory ModelSource that counts downloads (optionally serving wrong bytes)."""

    def __init__(self, archives: dict[int, tuple[bytes, str]], corrupt: bool = False) -> None:
        self.archives = archives
        self.downloads = 0
        self.corrupt = corrupt

    def get_model(self, model_id: int) -> dict[str, Any]:
        if model_id not in self.archives:
            raise ModelNotFoundError(model_id)
        data, fmt = self.archives[model_id]
        return {
            "id": model_id,
            "name": f"m{model_id}",
            "file": f"synapse://models/{model_id}",
            "sha256": hashlib.sha256(data).hexdigest(),
            "archive_format": fmt,
        }

    def download_archive(self, model_id: int, out: WritableBytes) -> dict[str, Any]:
        self.downloads += 1
        data, _ = self.archives[model_id]
        out.write(data[:-1] + b"X" if self.corrupt else data)
        return self.get_model(model_id)


@pytest.fixture
def archives(tmp_path: Path) -> dict[int, tuple[bytes, str]]:
    z = make_zip(tmp_path / "a.zip", [("model.pt", b"zip-weights")]).read_bytes()
    t = make_tar(tmp_path / "b.tgz", [("model.pt", b"tar-weights")], gz=True).read_bytes()
    evil = make_zip(tmp_path / "e.zip", [("../evil", b"x")]).read_bytes()
    return {1: (z, "zip"), 2: (t, "tar_gz"), 3: (z, "zip"), 4: (evil, "zip")}


def test_load_model_downloads_once_per_checksum(tmp_path: Path, archives: Any) -> None:
    source = CountingSource(archives)
    backend = PlatformModelBackend(source, ModelCache(tmp_path / "cache"))
    first = backend.load_model(1)
    assert Path(first["path"], "model.pt").read_bytes() == b"zip-weights"
    assert first["name"] == "m1" and first["file"] == "synapse://models/1"
    again = backend.load_model("synapse://models/1")
    assert again["path"] == first["path"] and source.downloads == 1
    # Model 3 has the same archive: same cache entry, still no new download.
    assert backend.load_model(3)["path"] == first["path"] and source.downloads == 1
    # A fresh backend on the same cache directory (another process) also downloads nothing.
    other = PlatformModelBackend(CountingSource(archives), ModelCache(tmp_path / "cache"))
    other.load_model(1)
    assert other._source.downloads == 0  # type: ignore[attr-defined]
    assert Path(backend.load_model(2)["path"], "model.pt").read_bytes() == b"tar-weights"
    assert source.downloads == 2


def test_download_model_into_dir_and_tempdir(tmp_path: Path, archives: Any) -> None:
    source = CountingSource(archives)
    backend = PlatformModelBackend(source, ModelCache(tmp_path / "cache"))
    out = backend.download_model(2, tmp_path / "target")
    assert out == tmp_path / "target" and (out / "model.pt").read_bytes() == b"tar-weights"
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no staging left over
    fresh = backend.download_model(1)
    assert (fresh / "model.pt").read_bytes() == b"zip-weights"
    assert source.downloads == 2


def test_errors(tmp_path: Path, archives: Any) -> None:
    backend = PlatformModelBackend(CountingSource(archives), ModelCache(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match=r"model 99 not found"):
        backend.load_model(99)
    with pytest.raises(ModelNotFoundError, match=r"'abc'"):
        backend.get_model("abc")
    with pytest.raises(ModelNotFoundError):
        parse_model_id(0)
    with pytest.raises(UnsafeArchiveError):
        backend.load_model(4)
    with pytest.raises(UnsafeArchiveError):
        backend.download_model(4, tmp_path / "t4")
    assert list((tmp_path / "t4").iterdir()) == []
    assert not (tmp_path / "evil").exists()

    corrupt = PlatformModelBackend(
        CountingSource(archives, corrupt=True), ModelCache(tmp_path / "cache2")
    )
    with pytest.raises(ModelIntegrityError, match=r"model 1: downloaded archive has sha256"):
        corrupt.load_model(1)
    with pytest.raises(ModelIntegrityError):
        corrupt.download_model(1, tmp_path / "t1")
    # Nothing half-done is left in the cache: the next load retries the download.
    assert [p.name for p in (tmp_path / "cache2").iterdir() if not p.name.startswith(".")] == []


def _load_in_process(cache: str, archive: bytes, counter: Any) -> str:
    class Source(CountingSource):
        def download_archive(self, model_id: int, out: WritableBytes) -> dict[str, Any]:
            with counter.get_lock():
                counter.value += 1
            return super().download_archive(model_id, out)

    backend = PlatformModelBackend(Source({1: (archive, "zip")}), ModelCache(cache))
    return str(backend.load_model(1)["path"])


def test_concurrent_loads_in_processes_download_once(tmp_path: Path, archives: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    procs = [
        ctx.Process(target=_load_in_process, args=(str(tmp_path / "c"), archives[1][0], counter))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert counter.value == 1
    assert (tmp_path / "c" / hashlib.sha256(archives[1][0]).hexdigest() / "model.pt").exists()
