"""The sans-IO side of the model calls: :class:`ModelInfo`, uploads and downloads.

:class:`ModelUpload` validates a RegisterModel upload and builds its messages;
:class:`ModelDownload` checks a DownloadModel stream and :class:`DownloadSink` puts its bytes
where the caller asked. The clients do the reading, writing and waiting: blocking in
:class:`~synapse_client.Client`, in worker threads in :class:`~synapse_client.AsyncClient`.
Uploads and downloads are streams and are not retried (an upload creates a new model each
time); their default deadline is none, since their length depends on the archive size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Generic, Protocol, TypeVar

from google.protobuf import struct_pb2
from synapse.plugin.v1 import model_pb2, model_service_pb2

from ._errors import ClientConfigError, DataLossError, ProtocolError
from .codec import python_to_struct, struct_to_python


class _Announced(Protocol):
    """What a download's header announces: the bytes to come."""

    @property
    def sha256(self) -> str: ...

    @property
    def size_bytes(self) -> int: ...


InfoT = TypeVar("InfoT", bound=_Announced)

logger = logging.getLogger(__name__)

__all__ = [
    "DownloadDestination",
    "DownloadSink",
    "ModelChecksumError",
    "ModelDownload",
    "ModelInfo",
    "ModelUpload",
    "file_sha256",
    "model_from_proto",
]

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
        metadata=struct_to_python(message.metadata),
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


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(DEFAULT_UPLOAD_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


#: Where a download goes: a file path, or any object with a ``write(bytes)`` method.
DownloadDestination = str | Path | BinaryIO | _Writable

_MAX_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ModelUpload:
    """A checked RegisterModel upload: the archive to send and its header, chunk by chunk."""

    path: Path
    info: model_service_pb2.ModelUploadInfo
    chunk_size: int

    @classmethod
    def prepare(
        cls,
        archive: str | Path,
        name: str,
        *,
        description: str,
        framework: str,
        metadata: dict[str, Any] | None,
        archive_format: str | None,
        chunk_size: int,
    ) -> ModelUpload:
        """Checks the caller's arguments; raises :class:`ClientConfigError` before any I/O
        but a look at the file."""
        path = Path(archive)
        if not path.is_file():
            raise ClientConfigError(f"{path}: not a file")
        if not 0 < chunk_size <= _MAX_CHUNK:
            raise ClientConfigError("chunk_size must be between 1 byte and 4 MiB")
        fmt = _archive_format(path, archive_format)
        struct = struct_pb2.Struct()
        try:
            python_to_struct(metadata or {}, struct)
        except (ValueError, TypeError) as exc:
            raise ClientConfigError(f"metadata is not a JSON object: {exc}") from exc
        info = model_service_pb2.ModelUploadInfo(
            name=name,
            description=description,
            framework=framework,
            metadata=struct,
            archive_format=fmt,  # type: ignore[arg-type]
        )
        return cls(path, info, chunk_size)

    def header(self, sha256: str) -> model_service_pb2.RegisterModelRequest:
        """The first message: the model's info and the archive's sha256 (which the server
        checks what it received against)."""
        info = model_service_pb2.ModelUploadInfo()
        info.CopyFrom(self.info)
        info.expected_sha256 = sha256
        return model_service_pb2.RegisterModelRequest(info=info)

    @staticmethod
    def chunk(data: bytes) -> model_service_pb2.RegisterModelRequest:
        """A message carrying the next ``data`` of the archive."""
        return model_service_pb2.RegisterModelRequest(chunk=data)


class ArtifactDownload(Generic[InfoT]):
    """Checks one download stream: the header first, then chunks that hash to it.

    ``kind`` names the header field of the stream's messages (``model``, ``dataset``) and
    the artifact in messages; ``convert`` turns that header into its info; a stream whose
    bytes do not match the header raises ``checksum_error``.
    """

    def __init__(
        self,
        artifact_id: object,
        kind: str,
        convert: Callable[[Any], InfoT],
        checksum_error: type[Exception],
    ) -> None:
        self._label = f"{kind} {artifact_id}"
        self._kind = kind
        self._convert = convert
        self._checksum_error = checksum_error
        self._info: InfoT | None = None
        self._digest = hashlib.sha256()
        self._size = 0

    def accept(self, message: Any) -> bytes | None:
        """The file bytes ``message`` carries, to be written; None for the header."""
        kind = message.WhichOneof("kind")
        if kind == self._kind:
            if self._info is not None:
                raise ProtocolError(f"{self._label}: second {self._kind} header")
            self._info = self._convert(getattr(message, kind))
            return None
        if kind == "chunk":
            if self._info is None:
                raise ProtocolError(f"{self._label}: chunk before the header")
            self._digest.update(message.chunk)
            self._size += len(message.chunk)
            return message.chunk  # type: ignore[no-any-return]
        return None

    def finish(self) -> InfoT:
        """The artifact's info, once the stream ended with every byte it announced."""
        info = self._info
        if info is None:
            raise ProtocolError(f"{self._label}: download stream carried no {self._kind}")
        digest = self._digest.hexdigest()
        if digest != info.sha256 or self._size != info.size_bytes:
            raise self._checksum_error(
                f"{self._label}: downloaded {self._size} bytes with sha256 {digest}, "
                f"expected {info.size_bytes} bytes with sha256 {info.sha256}"
            )
        return info


class ModelDownload(ArtifactDownload[ModelInfo]):
    """Checks one DownloadModel stream (see :class:`ArtifactDownload`)."""

    def __init__(self, model_id: int) -> None:
        super().__init__(model_id, "model", model_from_proto, ModelChecksumError)
        self.model_id = model_id


class DownloadSink:
    """Where downloaded bytes go. A path is written as ``NAME.part`` and renamed only once
    the download is complete and checked, so a failed one leaves no file behind; a
    writable object gets the bytes as they come.

    Blocking file I/O: the async client calls these methods in a worker thread, one at a time.
    """

    def __init__(self, dest: DownloadDestination) -> None:
        self._target: Path | None = None
        self._partial: Path | None = None
        self._file: IO[bytes] | None = None
        self._out: _Writable | None = None
        if isinstance(dest, str | Path):
            self._target = Path(dest)
            self._partial = self._target.with_name(self._target.name + ".part")
        else:
            self._out = dest

    def open(self) -> None:
        """Creates the partial file (for a path)."""
        if self._partial is not None:
            self._file = self._out = open(self._partial, "wb")  # noqa: SIM115 (closed in commit/discard)

    def write(self, data: bytes) -> None:
        """Writes the next bytes of the archive."""
        assert self._out is not None, "open() first"
        self._out.write(data)

    def commit(self) -> None:
        """Moves a complete download to its path."""
        if self._file is not None and self._partial is not None and self._target is not None:
            self._file.close()
            os.replace(self._partial, self._target)

    def discard(self) -> None:
        """Removes what a download that did not complete left (nothing after commit)."""
        if self._file is not None:
            self._file.close()
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
