"""Python client of the Synapse plugin platform (gRPC).

::

    from synapse_client import Client

    with Client("localhost:50051", token="...") as client:
        job = client.run_action("my_plugin", "batch_inference", {"inputs": [1, 2, 3]})
        for event in job.progress():
            print(event.payload.overall_percent)
        print(job.result(timeout=60))

:class:`AsyncClient` offers the same methods with the same arguments for asyncio code
(awaited; listings and job events as async iterators). Both build every request and read
every answer with the same code, and both take grpc client ``interceptors``. Every failure
is a :class:`SynapseClientError` subclass.
"""

from ._async_client import AsyncClient, AsyncJobHandle
from ._client import Client, JobHandle
from ._config import (
    DEFAULT_PORT,
    ENV_SERVER,
    ENV_TLS,
    ENV_TLS_CA,
    ENV_TLS_CERT,
    ENV_TLS_KEY,
    ENV_TLS_SERVER_NAME,
    ENV_TOKEN,
    RetryPolicy,
    TLSConfig,
    normalize_address,
)
from ._datasets import (
    DatasetChecksumError,
    DatasetColumn,
    DatasetInfo,
    OutputNotFoundError,
)
from ._errors import (
    STATUS_TO_ERROR,
    AbortedError,
    AlreadyExistsError,
    ChannelSecurity,
    ClientConfigError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InternalError,
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ProtocolError,
    RequestCancelledError,
    ResourceExhaustedError,
    RpcFailedError,
    SynapseClientError,
    TransportSecurityError,
    TransportSecurityProblem,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    from_grpc_error,
)
from ._inference import DeploymentInfo, InferResult
from ._models import ModelChecksumError, ModelInfo
from ._types import (
    ActionInfo,
    ActionKind,
    ErrorOrigin,
    EventPayload,
    Job,
    JobErrorInfo,
    JobEvent,
    JobState,
    LogEvent,
    LogLevel,
    MetricEvent,
    PluginInfo,
    ProgressEvent,
    RunMode,
    StateChangedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
    TerminalEvent,
)

__all__ = [
    "AbortedError",
    "ActionInfo",
    "ActionKind",
    "AlreadyExistsError",
    "AsyncClient",
    "AsyncJobHandle",
    "ChannelSecurity",
    "Client",
    "ClientConfigError",
    "DEFAULT_PORT",
    "DataLossError",
    "DatasetChecksumError",
    "DatasetColumn",
    "DatasetInfo",
    "DeadlineExceededError",
    "DeploymentInfo",
    "ENV_SERVER",
    "ENV_TLS",
    "ENV_TLS_CA",
    "ENV_TLS_CERT",
    "ENV_TLS_KEY",
    "ENV_TLS_SERVER_NAME",
    "ENV_TOKEN",
    "ErrorOrigin",
    "EventPayload",
    "FailedPreconditionError",
    "FieldViolation",
    "InferResult",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "JobCancelledError",
    "JobErrorInfo",
    "JobEvent",
    "JobFailedError",
    "JobHandle",
    "JobState",
    "JobTimeoutError",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "ModelChecksumError",
    "ModelInfo",
    "NotFoundError",
    "OutOfRangeError",
    "OutputNotFoundError",
    "PermissionDeniedError",
    "PluginInfo",
    "ProgressEvent",
    "ProtocolError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RpcFailedError",
    "RunMode",
    "STATUS_TO_ERROR",
    "StateChangedEvent",
    "StepFinishedEvent",
    "StepStartedEvent",
    "StepStatus",
    "SynapseClientError",
    "TLSConfig",
    "TerminalEvent",
    "TransportSecurityError",
    "TransportSecurityProblem",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "from_grpc_error",
    "normalize_address",
]
