"""Protobuf ↔ domain conversion for the ModelService (Structs through ``_converters``)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from synapse.plugin.v1 import model_pb2, model_service_pb2
from synapse_sdk.models import ArchiveFormat

from synapse_server.core import InvalidArgumentError
from synapse_server.core.models import ModelPage, ModelRecord, ModelUploadSpec
from synapse_server.grpc._converters import struct_from_dict, struct_to_python

__all__ = [
    "archive_format_from_pb",
    "archive_format_to_pb",
    "list_models_response",
    "model_to_pb",
    "upload_spec_from_pb",
]

_TO_PB = {
    ArchiveFormat.ZIP: model_pb2.ARCHIVE_FORMAT_ZIP,
    ArchiveFormat.TAR: model_pb2.ARCHIVE_FORMAT_TAR,
    ArchiveFormat.TAR_GZ: model_pb2.ARCHIVE_FORMAT_TAR_GZ,
}
_FROM_PB = {number: fmt for fmt, number in _TO_PB.items()}


def archive_format_to_pb(fmt: ArchiveFormat) -> model_pb2.ArchiveFormat:
    """Domain archive format → wire enum."""
    return _TO_PB[fmt]


def archive_format_from_pb(value: int) -> ArchiveFormat:
    """Wire enum → domain archive format; UNSPECIFIED or unknown numbers are rejected."""
    try:
        return _FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgumentError(
            "archive_format is required (ARCHIVE_FORMAT_ZIP, _TAR or _TAR_GZ)"
        ) from None


def model_to_pb(record: ModelRecord) -> model_pb2.Model:
    """A registered model as its wire message."""
    metadata = struct_from_dict(record.metadata)
    created = timestamp_pb2.Timestamp()
    created.FromNanoseconds(int(record.created_at * 1e9))
    return model_pb2.Model(
        id=record.id,
        name=record.name,
        description=record.description,
        framework=record.framework,
        metadata=metadata,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        archive_format=archive_format_to_pb(record.archive_format),
        file=record.file,
        create_time=created,
    )


def upload_spec_from_pb(info: model_service_pb2.ModelUploadInfo) -> ModelUploadSpec:
    """The first RegisterModel message as an upload spec."""
    return ModelUploadSpec(
        name=info.name,
        archive_format=archive_format_from_pb(info.archive_format),
        description=info.description,
        framework=info.framework,
        metadata=struct_to_python(info.metadata, "info.metadata"),
        expected_sha256=info.expected_sha256.lower(),
    )


def list_models_response(page: ModelPage) -> model_service_pb2.ListModelsResponse:
    """A page of models as the ListModels response."""
    return model_service_pb2.ListModelsResponse(
        models=[model_to_pb(m) for m in page.models], next_page_token=page.next_page_token
    )
