"""Protobuf ↔ domain conversion for the DatasetService (and job outputs)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from synapse.plugin.v1 import dataset_pb2, dataset_service_pb2

from synapse_server.core import InvalidArgumentError
from synapse_server.core.datasets import (
    DatasetFormat,
    DatasetPage,
    DatasetRecord,
    DatasetUploadSpec,
)

__all__ = [
    "dataset_format_from_pb",
    "dataset_format_to_pb",
    "dataset_to_pb",
    "list_datasets_response",
    "upload_spec_from_pb",
]

_TO_PB = {
    DatasetFormat.PARQUET: dataset_pb2.DATASET_FORMAT_PARQUET,
    DatasetFormat.JSONL: dataset_pb2.DATASET_FORMAT_JSONL,
    DatasetFormat.NPY: dataset_pb2.DATASET_FORMAT_NPY,
}
_FROM_PB = {number: fmt for fmt, number in _TO_PB.items()}


def dataset_format_to_pb(fmt: DatasetFormat) -> dataset_pb2.DatasetFormat:
    """Domain dataset format → wire enum."""
    return _TO_PB[fmt]


def dataset_format_from_pb(value: int) -> DatasetFormat:
    """Wire enum → domain format; UNSPECIFIED is Parquet, an unknown number is refused."""
    if value == dataset_pb2.DATASET_FORMAT_UNSPECIFIED:
        return DatasetFormat.PARQUET
    try:
        return _FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgumentError(
            f"unsupported dataset format {value} (DATASET_FORMAT_PARQUET, _JSONL or _NPY)",
            field="info.format",
        ) from None


def dataset_to_pb(record: DatasetRecord) -> dataset_pb2.Dataset:
    """A dataset as its wire message."""
    created = timestamp_pb2.Timestamp()
    created.FromNanoseconds(int(record.created_at * 1e9))
    return dataset_pb2.Dataset(
        id=record.id,
        name=record.name,
        format=dataset_format_to_pb(record.format),
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        num_rows=record.num_rows,
        columns=[dataset_pb2.DatasetColumn(name=c.name, type=c.type) for c in record.columns],
        create_time=created,
        job_id=record.job_id,
    )


def upload_spec_from_pb(info: dataset_service_pb2.DatasetUploadInfo) -> DatasetUploadSpec:
    """The first UploadDataset message as an upload spec."""
    return DatasetUploadSpec(
        name=info.name,
        format=dataset_format_from_pb(info.format),
        expected_sha256=info.expected_sha256.lower(),
    )


def list_datasets_response(page: DatasetPage) -> dataset_service_pb2.ListDatasetsResponse:
    """A page of datasets as the ListDatasets response."""
    return dataset_service_pb2.ListDatasetsResponse(
        datasets=[dataset_to_pb(d) for d in page.datasets], next_page_token=page.next_page_token
    )
