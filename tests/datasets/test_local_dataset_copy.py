"""A worker on the server's machine copies a dataset from the server's artifact store.

The copy must be exactly the stored file the server named (by sha256, for the job's tenant),
and anything else (no store given, a missing, damaged, linked or odd file) falls back to the
download through the server. Its output goes the other way: the worker names the finished
file in its scratch directory and sends the bytes only when the server will not copy it. The
real paths run in test_dataset_jobs_e2e.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from synapse.plugin.v1 import dataset_pb2, worker_service_pb2
from synapse_server.core import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from synapse_server.core._scratch import JOB_SCRATCH_ENV, LOCAL_ARTIFACTS_ENV
from synapse_server.core.artifacts._files import blob_path
from synapse_server.grpc._errors import status_for
from synapse_server.worker._datasets import WorkerDatasets

DATA = b"PAR1" + bytes(range(256)) * 5000 + b"PAR1"
SHA = hashlib.sha256(DATA).hexdigest()


class _Client:
    """DatasetService as the worker sees it: one dataset; downloads are counted."""

    def __init__(self, sha256: str = SHA) -> None:
        self.sha256 = sha256
        self.downloads: list[str] = []

    def get_dataset(self, ref: str) -> Any:
        return SimpleNamespace(
            id=ref,
            sha256=self.sha256,
            format="parquet",
            num_rows=3,
            columns=[SimpleNamespace(name="x")],
        )

    def download_dataset(self, dataset_id: str, path: Path) -> None:
        self.downloads.append(dataset_id)
        Path(path).write_bytes(DATA)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server's blob directory, holding DATA under its sha256, named to the worker."""
    blobs = tmp_path / "store" / "sha256"
    stored = blob_path(blobs, SHA)
    stored.parent.mkdir(parents=True)
    stored.write_bytes(DATA)
    stored.chmod(0o444)
    monkeypatch.setenv(LOCAL_ARTIFACTS_ENV, str(blobs))
    monkeypatch.setenv(JOB_SCRATCH_ENV, str(tmp_path / "scratch"))
    return blobs


def _resolve(client: _Client) -> Path:
    datasets = WorkerDatasets(None, "job-1", None, ())  # type: ignore[arg-type]
    datasets._client = client
    return Path(datasets.resolve("ds-0123").path)


def test_the_stored_file_is_copied_not_downloaded(store: Path) -> None:
    client = _Client()
    path = _resolve(client)
    assert client.downloads == [] and path.read_bytes() == DATA
    stored = blob_path(store, SHA)
    # A copy of its own: the job may write to it, the store's file stays as it was.
    assert not os.path.samefile(path, stored)
    path.write_bytes(b"changed by the job")
    assert stored.read_bytes() == DATA
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left


def test_without_a_store_the_file_is_downloaded(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOCAL_ARTIFACTS_ENV)
    client = _Client()
    assert _resolve(client).read_bytes() == DATA and client.downloads == ["ds-0123"]


def test_a_damaged_stored_file_is_downloaded_instead(store: Path) -> None:
    stored = blob_path(store, SHA)
    stored.chmod(0o644)
    stored.write_bytes(DATA[:-1] + b"X")
    client = _Client()
    path = _resolve(client)
    assert client.downloads == ["ds-0123"] and path.read_bytes() == DATA
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_missing_stored_file_is_downloaded(store: Path) -> None:
    blob_path(store, SHA).unlink()
    client = _Client()
    assert _resolve(client).read_bytes() == DATA and client.downloads == ["ds-0123"]


def test_a_symlink_in_the_store_is_not_followed(store: Path, tmp_path: Path) -> None:
    # Even to a file with the right bytes: the worker reads regular files of the store only.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(DATA)
    stored = blob_path(store, SHA)
    stored.unlink()
    stored.symlink_to(elsewhere)
    client = _Client()
    assert _resolve(client).read_bytes() == DATA and client.downloads == ["ds-0123"]


def test_a_directory_in_the_store_is_not_read(store: Path) -> None:
    stored = blob_path(store, SHA)
    stored.unlink()
    stored.mkdir()
    client = _Client()
    assert _resolve(client).read_bytes() == DATA and client.downloads == ["ds-0123"]


def test_a_malformed_digest_is_downloaded(store: Path) -> None:
    # The server's answer decides the file name; one that is no sha256 names no stored file.
    client = _Client(sha256="Z" * 64)
    _resolve(client)
    assert client.downloads == ["ds-0123"]


class _Refusal(grpc.RpcError):
    """What the worker's stub raises for ``error`` raised in the server: the status the
    server's error mapping gives it, details included."""

    def __init__(self, error: Exception) -> None:
        self._status = status_for(error)

    def code(self) -> grpc.StatusCode:
        return self._status.code  # type: ignore[no-any-return]

    def details(self) -> str:
        return self._status.details  # type: ignore[no-any-return]

    def trailing_metadata(self) -> Any:
        return self._status.trailing_metadata


class _WorkerStub:
    """UploadJobOutput as the worker sees it: ``refuse`` answers a hand-over by file name,
    ``fail`` any upload."""

    def __init__(self, refuse: Exception | None = None, fail: Exception | None = None) -> None:
        self.refuse, self.fail = refuse, fail
        self.calls: list[tuple[str, int]] = []  # (local_file, bytes sent)

    def UploadJobOutput(self, requests: Any, metadata: Any) -> Any:
        first, *rest = list(requests)
        self.calls.append((first.info.local_file, sum(len(r.chunk) for r in rest)))
        if first.info.local_file and self.refuse is not None:
            raise _Refusal(self.refuse)
        if self.fail is not None:
            raise _Refusal(self.fail)
        return worker_service_pb2.UploadJobOutputResponse(output=dataset_pb2.Dataset(num_rows=3))


def _commit(stub: _WorkerStub) -> Path:
    datasets = WorkerDatasets(None, "job-1", stub, ())  # type: ignore[arg-type]
    sink = datasets.open_sink("predictions")
    Path(sink.path).parent.mkdir(parents=True, exist_ok=True)
    Path(sink.path).write_bytes(DATA)
    sink.commit(3)
    return Path(sink.path)


def test_a_local_worker_names_its_output_file(store: Path) -> None:
    stub = _WorkerStub()
    path = _commit(stub)
    assert stub.calls == [(path.name, 0)]  # the name, not one byte


@pytest.mark.parametrize(
    "refusal",
    [
        FailedPreconditionError("job j's worker has no scratch directory on this machine"),
        InvalidArgumentError("local_file: not a regular file", field="info.local_file"),
    ],
)
def test_a_refused_hand_over_sends_the_bytes(store: Path, refusal: Exception) -> None:
    stub = _WorkerStub(refuse=refusal)
    path = _commit(stub)
    assert stub.calls == [(path.name, 0), ("", len(DATA))]


@pytest.mark.parametrize(
    "error",
    [
        PermissionDeniedError("this worker credential is for another job"),
        # The upload's own errors: sending the bytes would get them again.
        InvalidArgumentError("name is required", field="info.name"),
        InvalidArgumentError("not a valid Parquet file: bad footer"),
    ],
)
def test_any_other_error_of_the_hand_over_fails_the_commit(store: Path, error: Exception) -> None:
    stub = _WorkerStub(refuse=error)
    with pytest.raises(grpc.RpcError):
        _commit(stub)
    assert len(stub.calls) == 1


def test_the_fallback_upload_reports_its_own_error(store: Path) -> None:
    stub = _WorkerStub(
        refuse=FailedPreconditionError("no scratch directory"),
        fail=FailedPreconditionError("job 'job-1' has already finished"),
    )
    with pytest.raises(grpc.RpcError) as err:
        _commit(stub)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert len(stub.calls) == 2


def test_a_worker_in_a_directory_the_server_did_not_choose_sends_the_bytes(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray workers, or a worker without the local store: the server cannot read their files.
    monkeypatch.delenv(LOCAL_ARTIFACTS_ENV)
    stub = _WorkerStub()
    _commit(stub)
    assert stub.calls == [("", len(DATA))]
