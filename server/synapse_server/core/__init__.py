"""The transport-neutral core of the platform: jobs, events, store protocols, plugins and
executors.

Nothing here imports grpc or generated protobuf code; the gRPC layer converts at its edge.
Nothing here knows a database either: the stores (``synapse_server.stores``) implement the
protocols defined here (``JobStore``, ``models.ModelStore``, ``deployments.DeploymentStore``,
``datasets.DatasetStore``).
"""

from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobAlreadyFinishedError,
    JobNotFoundError,
    JobOwnershipLostError,
    PermissionDeniedError,
    RequestIdConflictError,
    ResourceExhaustedError,
    ServerError,
    ServiceUnavailableError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnauthenticatedError,
)
from synapse_server.core._hub import EventHub, NewEvent
from synapse_server.core._models import (
    KEEPALIVE,
    TERMINAL_STATES,
    ErrorOrigin,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobPage,
    JobState,
    Keepalive,
)
from synapse_server.core._store import ClaimedJob, JobStore, ServerRecord, StoreNotifications

__all__ = [
    "KEEPALIVE",
    "TERMINAL_STATES",
    "ErrorOrigin",
    "EventHub",
    "EventKind",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "Job",
    "JobAlreadyFinishedError",
    "JobError",
    "JobEvent",
    "JobFilter",
    "JobNotFoundError",
    "JobOwnershipLostError",
    "JobPage",
    "JobState",
    "JobStore",
    "ClaimedJob",
    "ServerRecord",
    "StoreNotifications",
    "Keepalive",
    "NewEvent",
    "PermissionDeniedError",
    "RequestIdConflictError",
    "ResourceExhaustedError",
    "ServerError",
    "ServiceUnavailableError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "UnauthenticatedError",
]
