"""Model methods of the client: register (streamed upload), get, list, download, delete.

:class:`ModelsMixin` is one of :class:`~synapse_client.Client`'s bases; it uses the core's
channel, stubs and retrying unary call. Uploads and downloads are streams and are not retried
(an upload creates a new model each time); their default deadline is none, since their length
depends on the archive size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from google.protobuf import json_format, struct_pb2
from synapse.plugin.v1 import model_pb2, model_service_pb2, model_service_pb2_grpc

from ._errors import ClientConfigError, DataLossError, ProtocolError, map_rpc_errors

logger = logging.getLogger(__name__)

__all__ = ["ModelChecksumError", "ModelInfo", "ModelsMixin", "model_from_proto"]

DEFAULT_UPLOAD_CHUNK = 1024 * 1024

_FORMATS = {
    "zip": model_pb2.ARCHIVE_FORMAT_ZIP,
    "tar": model_pb2.ARCHIVE_FORMAT_TAR,
    "tar_gz": model_pb2.ARCHIVE_FORMAT_TAR_GZ,
}
_FORMAT_NAMES = {number: name for name, number in _FORMATS.items()}
_SUFFIXES = (("tar.gz", "tar_gz"), ("tgz", "tar_gz"), ("tar", "tar"), ("zip", "zip"))


class ModelChecksumError(DataLossError):
    """Downloaded model bytes do not hash to the model's sha256."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as the server describes it."""

    id: int
    name: str
    sha256: str
    size_bytes: int
    archive_format: str
    file: str
    description: str = ""
    framework: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, the shape the SDK's ``get_model`` returns."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "framework": self.framework,
            "metadata": dict(self.metadata),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "archive_format": self.archive_format,
            "file": self.file,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


def model_from_proto(message: model_pb2.Model) -> ModelInfo:
    """``synapse.plugin.v1.Model`` → :class:`ModelInfo`."""
    return ModelInfo(
        id=message.id,
        name=message.name,
        description=message.description,
        framework=message.framework,
        metadata=json_format.MessageToDict(message.metadata),
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        archive_format=_FORMAT_NAMES.get(message.archive_format, "unspecified"),
        file=message.file,
        created_at=(
            message.create_time.ToDatetime(tzinfo=UTC) if message.HasField("create_time") else None
        ),
    )


def _archive_format(path: Path, archive_format: str | None) -> int:
    if archive_format is None:
        lowered = path.name.lower()
        for suffix, name in _SUFFIXES:
            if lowered.endswith("." + suffix):
                archive_format = name
                break
        else:
            raise ClientConfigError(
                f"{path.name}: cannot tell the archive format from the name; pass "
                "archive_format='zip', 'tar' or 'tar_gz'"
            )
    key = archive_format.lower().replace(".", "_")
    if key not in _FORMATS:
        raise ClientConfigError(f"unknown archive format {archive_format!r} (zip, tar, tar_gz)")
    return _FORMATS[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(DEFAULT_UPLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


if TYPE_CHECKING:
    from ._core import ClientCore

    _MixinBase = ClientCore
else:
    # At run time the mixin adds methods only; ClientCore comes from Client's other base.
    _MixinBase = object


class ModelsMixin(_MixinBase):
    """ModelService methods; mixed into :class:`~synapse_client.Client` next to ClientCore."""

    def _models(self) -> model_service_pb2_grpc.ModelServiceStub:
        return self._stub(model_service_pb2_grpc.ModelServiceStub)

    def register_model(
        self,
        archive: str | Path,
        name: str,
        *,
        description: str = "",
        framework: str = "",
        metadata: dict[str, Any] | None = None,
        archive_format: str | None = None,
        chunk_size: int = DEFAULT_UPLOAD_CHUNK,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Uploads an archive file (``.zip``, ``.tar``, ``.tar.gz``) as a new model.

        The archive's sha256 is computed first and sent along, so the server verifies what it
        received. Pack a directory first (``synapse model register DIR`` does it for you).
        """
        path = Path(archive)
        if not path.is_file():
            raise ClientConfigError(f"{path}: not a file")
        if not 0 < chunk_size <= 4 * 1024 * 1024:
            raise ClientConfigError("chunk_size must be between 1 byte and 4 MiB")
        fmt = _archive_format(path, archive_format)
        struct = struct_pb2.Struct()
        try:
            struct.update(metadata or {})
        except (ValueError, TypeError) as exc:
            raise ClientConfigError(f"metadata is not a JSON object: {exc}") from exc
        info = model_service_pb2.ModelUploadInfo(
            name=name,
            description=description,
            framework=framework,
            metadata=struct,
            archive_format=fmt,  # type: ignore[arg-type]
            expected_sha256=_sha256(path),
        )

        def requests() -> Iterator[model_service_pb2.RegisterModelRequest]:
            yield model_service_pb2.RegisterModelRequest(info=info)
            with open(path, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    yield model_service_pb2.RegisterModelRequest(chunk=chunk)

        with map_rpc_errors(self._config.security):
            response = self._models().RegisterModel(
                requests(), timeout=timeout, metadata=self._config.metadata
            )
        model = model_from_proto(response.model)
        logger.info("registered model %d (%s)", model.id, model.name)
        return model

    def get_model(self, model_id: int, timeout: float | None = None) -> ModelInfo:
        """One model's metadata; raises :class:`NotFoundError` for an unknown id."""
        response = self._call(
            self._models().GetModel, model_service_pb2.GetModelRequest(model_id=model_id), timeout
        )
        return model_from_proto(response.model)

    def list_models(self, name: str | None = None, page_size: int = 0) -> Iterator[ModelInfo]:
        """Models, newest first, fetching further pages as the iteration reaches them."""
        request = model_service_pb2.ListModelsRequest(name=name or "", page_size=page_size)
        while True:
            response = self._call(self._models().ListModels, request)
            for message in response.models:
                yield model_from_proto(message)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def download_model(
        self,
        model_id: int,
        dest: str | Path | BinaryIO | _Writable,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> ModelInfo:
        """Streams the model's archive into ``dest`` (a file path or a writable object).

        The bytes are checked against the model's sha256; a mismatch raises
        :class:`ModelChecksumError` and, for a path, leaves no file behind.
        """
        if isinstance(dest, str | Path):
            target = Path(dest)
            partial = target.with_name(target.name + ".part")
            try:
                with open(partial, "wb") as fh:
                    model = self._download_into(model_id, fh, chunk_size, timeout)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
            return model
        return self._download_into(model_id, dest, chunk_size, timeout)

    def _download_into(
        self, model_id: int, out: _Writable, chunk_size: int, timeout: float | None
    ) -> ModelInfo:
        request = model_service_pb2.DownloadModelRequest(
            model_id=model_id, chunk_size_bytes=chunk_size
        )
        call = self._models().DownloadModel(
            request, timeout=timeout, metadata=self._config.metadata
        )
        model: ModelInfo | None = None
        digest = hashlib.sha256()
        size = 0
        try:
            with map_rpc_errors(self._config.security):
                for message in call:
                    kind = message.WhichOneof("kind")
                    if kind == "model":
                        if model is not None:
                            raise ProtocolError(f"model {model_id}: second model header")
                        model = model_from_proto(message.model)
                    elif kind == "chunk":
                        if model is None:
                            raise ProtocolError(f"model {model_id}: chunk before the header")
                        digest.update(message.chunk)
                        size += len(message.chunk)
                        out.write(message.chunk)
        finally:
            call.cancel()
        if model is None:
            raise ProtocolError(f"model {model_id}: download stream carried no model")
        if digest.hexdigest() != model.sha256 or size != model.size_bytes:
            raise ModelChecksumError(
                f"model {model_id}: downloaded {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.size_bytes} bytes with sha256 {model.sha256}"
            )
        return model

    def delete_model(self, model_id: int, timeout: float | None = None) -> None:
        """Deletes a model (its artifact goes once no other model shares it)."""
        self._call(
            self._models().DeleteModel,
            model_service_pb2.DeleteModelRequest(model_id=model_id),
            timeout,
        )
