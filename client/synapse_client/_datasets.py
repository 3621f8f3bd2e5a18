"""The sans-IO side of the dataset calls: :class:`DatasetInfo`, uploads, downloads, outputs.

:class:`DatasetUpload` checks an UploadDataset upload and builds its messages;
:class:`DatasetDownload` checks a DownloadDataset stream (bytes against the announced sha256);
:func:`pick_output` chooses a job output by name. The clients do the reading, writing and
waiting (blocking in :class:`~synapse_client.Client`, in worker threads in
:class:`~synapse_client.AsyncClient`); downloads go through ``DownloadSink`` like models'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from synapse.plugin.v1 import dataset_pb2, dataset_service_pb2

from ._errors import ClientConfigError, DataLossError, SynapseClientError
from ._models import ArtifactDownload

__all__ = [
    "DatasetChecksumError",
    "DatasetColumn",
    "DatasetDownload",
    "DatasetInfo",
    "DatasetUpload",
    "OutputNotFoundError",
    "dataset_from_proto",
    "pick_output",
]

_FORMATS = {
    "parquet": dataset_pb2.DATASET_FORMAT_PARQUET,
    "jsonl": dataset_pb2.DATASET_FORMAT_JSONL,
    "npy": dataset_pb2.DATASET_FORMAT_NPY,
}
_FORMAT_NAMES = {number: name for name, number in _FORMATS.items()}
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SUFFIXES[".npy"] = "npy"
_MAX_CHUNK = 4 * 1024 * 1024


class DatasetChecksumError(DataLossError):
    """Downloaded dataset bytes do not hash to the dataset's sha256."""


class OutputNotFoundError(SynapseClientError, LookupError):
    """The job has no output of that name (or no output at all, or several and none named)."""


@dataclass(frozen=True)
class DatasetColumn:
    """One column of a dataset's schema (``type`` in Arrow notation, e.g. ``double``)."""

    name: str
    type: str


@dataclass(frozen=True)
class DatasetInfo:
    """A stored dataset (uploaded, or a job's output: ``job_id`` set) as the server says."""

    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    num_rows: int
    columns: tuple[DatasetColumn, ...] = ()
    created_at: datetime | None = None
    job_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what ``synapse dataset get`` prints)."""
        return {
            "id": self.id,
            "name": self.name,
            "format": self.format,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "num_rows": self.num_rows,
            "columns": [{"name": c.name, "type": c.type} for c in self.columns],
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "job_id": self.job_id,
        }


def dataset_from_proto(message: dataset_pb2.Dataset) -> DatasetInfo:
    """``synapse.plugin.v1.Dataset`` → :class:`DatasetInfo`."""
    return DatasetInfo(
        id=message.id,
        name=message.name,
        format=_FORMAT_NAMES.get(message.format, "unspecified"),
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        num_rows=message.num_rows,
        columns=tuple(DatasetColumn(c.name, c.type) for c in message.columns),
        created_at=(
            message.create_time.ToDatetime(tzinfo=UTC) if message.HasField("create_time") else None
        ),
        job_id=message.job_id,
    )


def dataset_format(path: Path, fmt: str | None) -> int:
    """The wire format for ``fmt``, or (None) the file's extension; Parquet otherwise."""
    if fmt is None:
        fmt = _SUFFIXES.get(path.suffix.lower(), "parquet")
    key = fmt.lower().lstrip(".")
    if key == "ndjson":
        key = "jsonl"
    if key not in _FORMATS:
        raise ClientConfigError(f"unknown dataset format {fmt!r} (parquet, jsonl, npy)")
    return _FORMATS[key]


@dataclass(frozen=True)
class DatasetUpload:
    """A checked UploadDataset upload: the file to send and its header, chunk by chunk."""

    path: Path
    info: dataset_service_pb2.DatasetUploadInfo
    chunk_size: int

    @classmethod
    def prepare(
        cls, path: str | Path, name: str | None, fmt: str | None, chunk_size: int
    ) -> DatasetUpload:
        """Checks the caller's arguments (ClientConfigError) before any I/O but a look at
        the file. ``name`` defaults to the file's name without its extension."""
        file = Path(path)
        if not file.is_file():
            raise ClientConfigError(f"{file}: not a file")
        if not 0 < chunk_size <= _MAX_CHUNK:
            raise ClientConfigError("chunk_size must be between 1 byte and 4 MiB")
        info = dataset_service_pb2.DatasetUploadInfo(
            name=file.stem if name is None else name,
            format=dataset_format(file, fmt),  # type: ignore[arg-type]
        )
        return cls(file, info, chunk_size)

    def header(self, sha256: str) -> dataset_service_pb2.UploadDatasetRequest:
        """The first message: name, format and the file's sha256 (checked by the server)."""
        info = dataset_service_pb2.DatasetUploadInfo()
        info.CopyFrom(self.info)
        info.expected_sha256 = sha256
        return dataset_service_pb2.UploadDatasetRequest(info=info)

    @staticmethod
    def chunk(data: bytes) -> dataset_service_pb2.UploadDatasetRequest:
        """A message carrying the next ``data`` of the file."""
        return dataset_service_pb2.UploadDatasetRequest(chunk=data)


class DatasetDownload(ArtifactDownload[DatasetInfo]):
    """Checks one DownloadDataset stream (see :class:`ArtifactDownload`)."""

    def __init__(self, dataset_id: str) -> None:
        super().__init__(dataset_id, "dataset", dataset_from_proto, DatasetChecksumError)
        self.dataset_id = dataset_id


def pick_output(job_id: str, outputs: Sequence[DatasetInfo], name: str | None) -> DatasetInfo:
    """The output called ``name``, or (None) the job's only output."""
    names = [o.name for o in outputs]
    if name is None:
        if len(outputs) == 1:
            return outputs[0]
        if not outputs:
            raise OutputNotFoundError(
                f"job {job_id} has no outputs (only a job that succeeded keeps what it wrote)"
            )
        raise OutputNotFoundError(f"job {job_id} has several outputs {names}: name one")
    for output in outputs:
        if output.name == name:
            return output
    raise OutputNotFoundError(f"job {job_id} has no output {name!r} (outputs: {names})")
