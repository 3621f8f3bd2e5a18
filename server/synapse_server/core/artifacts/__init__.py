"""Content-addressed artifact files shared by every registry (models, datasets, job outputs)."""

from synapse_server.core.artifacts._files import (
    ArtifactStore,
    ArtifactTooLargeError,
    PendingArtifact,
)
from synapse_server.core.artifacts._references import (
    ArtifactReferrer,
    ChecksumTally,
    SharedArtifacts,
)

__all__ = [
    "ArtifactReferrer",
    "ArtifactStore",
    "ArtifactTooLargeError",
    "ChecksumTally",
    "PendingArtifact",
    "SharedArtifacts",
]
