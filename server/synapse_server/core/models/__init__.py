"""The model registry: metadata in a store, archives content-addressed in the data directory."""

from synapse_server.core.artifacts import (
    ArtifactStore,
    ArtifactTooLargeError,
    PendingArtifact,
)
from synapse_server.core.models._records import (
    ModelPage,
    ModelRecord,
    ModelUploadSpec,
    model_file_reference,
)
from synapse_server.core.models._service import (
    ModelRegistryLimits,
    ModelRegistryService,
    ModelUsageCheck,
)
from synapse_server.core.models._store import ModelStore

__all__ = [
    "ArtifactStore",
    "ArtifactTooLargeError",
    "ModelPage",
    "ModelRecord",
    "ModelRegistryLimits",
    "ModelRegistryService",
    "ModelStore",
    "ModelUploadSpec",
    "ModelUsageCheck",
    "PendingArtifact",
    "model_file_reference",
]
