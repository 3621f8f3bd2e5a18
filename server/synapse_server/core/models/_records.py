"""Domain records of the model registry."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from synapse_sdk.models import ArchiveFormat

__all__ = ["ModelPage", "ModelRecord", "ModelUploadSpec", "model_file_reference"]


def model_file_reference(model_id: int) -> str:
    """The artifact reference a model's ``file`` carries; the SDK resolves it via the platform."""
    return f"synapse://models/{model_id}"


@dataclass(frozen=True)
class ModelUploadSpec:
    """What a caller says about an archive it is about to upload."""

    name: str
    archive_format: ArchiveFormat
    description: str = ""
    framework: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    expected_sha256: str = ""


@dataclass(frozen=True)
class ModelRecord:
    """A registered model of one tenant: its metadata and the artifact it points to."""

    id: int
    tenant: str
    name: str
    description: str
    framework: str
    metadata: dict[str, Any]
    sha256: str
    size_bytes: int
    archive_format: ArchiveFormat
    created_at: float = field(default_factory=time.time)

    @property
    def file(self) -> str:
        """Reference to the artifact (``synapse://models/<id>``)."""
        return model_file_reference(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The metadata dict the SDK's ``get_model`` returns (no tenant)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "framework": self.framework,
            "metadata": dict(self.metadata),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "archive_format": self.archive_format.value,
            "file": self.file,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ModelPage:
    """One page of a model listing, newest first."""

    models: list[ModelRecord]
    next_page_token: str = ""
