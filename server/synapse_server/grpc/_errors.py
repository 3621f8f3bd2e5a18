"""The one place that turns domain errors into gRPC statuses.

``map_errors`` wraps every servicer method (unary and streaming): a known error becomes its
status code with the error's message; ``ParamsValidationError`` also carries a
``google.rpc.BadRequest`` with one field violation per bad field in the rich status details;
anything else becomes INTERNAL with a correlation id that is logged with the traceback on the
server and never sends the traceback to the caller.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from synapse_sdk.errors import (
    ActionNotFoundError,
    ModelNotFoundError,
    ParamsValidationError,
    PluginConfigError,
    PluginNotFoundError,
)
from synapse_sdk.models import ArchiveError, ModelIntegrityError

from synapse_server.core import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobNotFoundError,
    PermissionDeniedError,
    RequestIdConflictError,
    ServiceUnavailableError,
    StorageFullError,
    StorageUnavailableError,
    UnauthenticatedError,
)
from synapse_server.core.deployments import DeploymentNotFoundError
from synapse_server.core.inference import (
    EndpointNotFoundError,
    InferDeadlineExceededError,
    InferenceFailedError,
)
from synapse_server.core.models import ArtifactTooLargeError

__all__ = ["ERROR_STATUS", "map_errors", "status_for"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Domain error → status code; the first matching class (in order) wins.
ERROR_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ParamsValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (PluginNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ActionNotFoundError, grpc.StatusCode.NOT_FOUND),
    (JobNotFoundError, grpc.StatusCode.NOT_FOUND),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (DeploymentNotFoundError, grpc.StatusCode.NOT_FOUND),
    (EndpointNotFoundError, grpc.StatusCode.NOT_FOUND),
    (InferDeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    # Its message carries the replica's correlation id, never the traceback.
    (InferenceFailedError, grpc.StatusCode.INTERNAL),
    (ModelIntegrityError, grpc.StatusCode.DATA_LOSS),
    (ArtifactTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ArchiveError, grpc.StatusCode.INVALID_ARGUMENT),
    (RequestIdConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (PluginConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ServiceUnavailableError, grpc.StatusCode.UNAVAILABLE),
    # The server's own storage failed (nothing was changed): retry later.
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageUnavailableError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: BaseException) -> grpc.Status:
    """The status a caller gets for ``exc`` (INTERNAL + correlation id when unknown)."""
    for kind, code in ERROR_STATUS:
        if isinstance(exc, kind):
            status = status_pb2.Status(code=code.value[0], message=str(exc))
            correlation_id = getattr(exc, "correlation_id", None)
            if isinstance(correlation_id, str) and correlation_id:
                status.details.append(_correlation_detail(correlation_id))
            violations = _field_violations(exc)
            if violations:
                detail = any_pb2.Any()
                detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
                status.details.append(detail)
            return rpc_status.to_status(status)
    correlation = uuid.uuid4().hex
    logger.error("internal error [%s]", correlation, exc_info=exc)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal server error (correlation id {correlation})",
            details=[_correlation_detail(correlation)],
        )
    )


def _field_violations(exc: BaseException) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """One violation per bad field, named by its path in the request (``params.<field>``)."""
    violation = error_details_pb2.BadRequest.FieldViolation
    if isinstance(exc, ParamsValidationError):
        return [
            violation(field=f"params.{v.field}" if v.field else "params", description=v.description)
            for v in exc.violations
        ]
    field = getattr(exc, "field", None)
    if isinstance(exc, InvalidArgumentError) and field:
        return [violation(field=field, description=str(exc))]
    return []


def _correlation_detail(correlation_id: str) -> any_pb2.Any:
    """A ``google.rpc.ErrorInfo`` carrying the id under which the server logged the failure.

    Clients read it from the details instead of parsing the message text.
    """
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason="INTERNAL",
            domain="synapse.plugin.v1",
            metadata={"correlation_id": correlation_id},
        )
    )
    return detail


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    status = status_for(exc)
    await context.abort_with_status(status)


def map_errors(method: F) -> F:
    """Decorate a servicer method (coroutine or async generator) to map errors to statuses."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(
            self: Any, request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:
                await _abort(context, exc)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return unary_wrapper  # type: ignore[return-value]
