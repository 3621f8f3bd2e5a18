"""Server-side grouping of concurrent Infer calls to batched endpoints (see
:mod:`synapse_server.core.batching._grouper`)."""

from synapse_server.core.batching._grouper import (
    MAX_GROUP_WAIT_S,
    GroupBackend,
    GroupNotSupportedError,
    GroupSettings,
    RequestGrouper,
)

__all__ = [
    "MAX_GROUP_WAIT_S",
    "GroupBackend",
    "GroupNotSupportedError",
    "GroupSettings",
    "RequestGrouper",
]
