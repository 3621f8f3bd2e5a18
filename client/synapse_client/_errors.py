"""The client's one exception hierarchy and the one place that converts ``grpc.RpcError``.

Every RPC the client makes runs inside :func:`map_rpc_errors` (sync and async code alike: a
plain ``with`` works inside coroutines and async generators), so callers only ever see
:class:`SynapseClientError` subclasses. The status code → exception class table is built
from each class's ``grpc_status_code`` attribute, so adding a class is the only edit needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from ._types import JobErrorInfo

logger = logging.getLogger(__name__)

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "ClientConfigError",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobFailedError",
    "JobTimeoutError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ProtocolError",
    "RequestCancelledError",
    "ResourceExhaustedError",
    "STATUS_TO_ERROR",
    "RpcFailedError",
    "SynapseClientError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "from_grpc_error",
    "map_rpc_errors",
]

# Where the server puts the rich status (google.rpc.Status) on a failed call.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Keys under which a correlation id may travel: google.rpc.ErrorInfo metadata, or a trailer.
_CORRELATION_KEYS = ("correlation_id", "x-correlation-id")


class SynapseClientError(Exception):
    """Base of every error the Synapse client raises."""


class ClientConfigError(SynapseClientError, ValueError):
    """The client was configured or called with arguments it cannot use."""


class ProtocolError(SynapseClientError):
    """The server answered something the wire contract rules out (a gap in event seqs...)."""


class JobTimeoutError(SynapseClientError, TimeoutError):
    """``JobHandle.result(timeout=...)`` ran out of time; the job itself keeps running."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g}s")
        self.job_id = job_id
        self.timeout = timeout


class JobFailedError(SynapseClientError):
    """The job ended FAILED. ``error`` has the type, message, step and plugin traceback."""

    def __init__(self, job_id: str, error: JobErrorInfo) -> None:
        where = f" in step {error.step!r}" if error.step else ""
        super().__init__(f"job {job_id} failed{where}: {error.type}: {error.message}")
        self.job_id = job_id
        self.error = error

    @property
    def error_type(self) -> str:
        """The plugin exception's qualified class name, or a platform error code."""
        return self.error.type

    @property
    def message(self) -> str:
        """The failure message (the exception's ``str()`` for plugin errors)."""
        return self.error.message

    @property
    def traceback(self) -> str:
        """The plugin's own traceback; empty for platform failures."""
        return self.error.plugin_traceback

    @property
    def correlation_id(self) -> str:
        """For platform failures: the id operators find the server log record with."""
        return self.error.correlation_id


class JobCancelledError(SynapseClientError):
    """The job ended CANCELLED before producing a result."""

    def __init__(self, job_id: str, reason: str = "") -> None:
        text = f"job {job_id} was cancelled" + (f": {reason}" if reason else "")
        super().__init__(text)
        self.job_id = job_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad request field, decoded from ``google.rpc.BadRequest``."""

    field: str
    description: str


class RpcFailedError(SynapseClientError):
    """An RPC ended with a non-OK status. Subclasses name the status code."""

    grpc_status_code: ClassVar[grpc.StatusCode | None] = None
    #: Whether sending the same request again may succeed (the client retries these itself
    #: only where the call is idempotent).
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: list[Any] | None = None,
        correlation_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.grpc_status_code
        #: Decoded google.rpc detail messages (BadRequest, ErrorInfo, ...), unknown ones as Any.
        self.details: list[Any] = details or []
        #: The server's id for this failure, to quote when asking an operator to look it up.
        self.correlation_id = correlation_id
        #: ``google.rpc.ErrorInfo.reason`` when the server sent one (a stable machine code).
        self.reason = reason

    def __str__(self) -> str:
        code = self.code.name if self.code is not None else "UNKNOWN"
        text = f"{code}: {self.message}"
        if self.correlation_id:
            text += f" (correlation id {self.correlation_id})"
        return text


class RequestCancelledError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.CANCELLED


class UnknownError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(RpcFailedError):
    """The request was rejected; ``field_violations`` says which fields and why."""

    grpc_status_code = grpc.StatusCode.INVALID_ARGUMENT

    @property
    def field_violations(self) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        for detail in self.details:
            if isinstance(detail, error_details_pb2.BadRequest):
                out.extend(
                    FieldViolation(field=v.field, description=v.description)
                    for v in detail.field_violations
                )
        return out

    def __str__(self) -> str:
        text = super().__str__()
        violations = self.field_violations
        if violations:
            text += " [" + "; ".join(f"{v.field}: {v.description}" for v in violations) + "]"
        return text


class DeadlineExceededError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.ABORTED


class OutOfRangeError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(RpcFailedError):
    """The server failed unexpectedly; quote ``correlation_id`` to find it in its logs."""

    grpc_status_code = grpc.StatusCode.INTERNAL


class UnavailableError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DataLossError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.DATA_LOSS


class UnauthenticatedError(RpcFailedError):
    grpc_status_code = grpc.StatusCode.UNAUTHENTICATED


def _status_classes() -> dict[grpc.StatusCode, type[RpcFailedError]]:
    table: dict[grpc.StatusCode, type[RpcFailedError]] = {}
    pending: list[type[RpcFailedError]] = [RpcFailedError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # Only the class that names a code owns it; refinements (a checksum failure that is a
        # DataLossError) are raised explicitly, never chosen by status code.
        code = cls.__dict__.get("grpc_status_code")
        if code is not None:
            if code in table:
                raise TypeError(f"{cls.__name__} and {table[code].__name__} both claim {code}")
            table[code] = cls
    return table


#: grpc.StatusCode → the exception class the client raises for it.
STATUS_TO_ERROR: dict[grpc.StatusCode, type[RpcFailedError]] = _status_classes()

# The rich-status detail types the client knows how to decode.
_DETAIL_TYPES: tuple[type[Any], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def _metadata_pairs(metadata: Any) -> Iterable[tuple[str, Any]]:
    # Sync calls return a tuple of (key, value) pairs; grpc.aio returns a Metadata object
    # that iterates the same pairs. Either may be None when the call never got trailers.
    if metadata is None:
        return ()
    return [(str(k), v) for k, v in metadata]


def _unpack(detail: any_pb2.Any) -> Any:
    for detail_type in _DETAIL_TYPES:
        if detail.Is(detail_type.DESCRIPTOR):
            message = detail_type()
            detail.Unpack(message)
            return message
    return detail


def from_grpc_error(error: grpc.RpcError) -> RpcFailedError:
    """Builds the typed client error for a failed call (sync ``RpcError`` or ``AioRpcError``)."""
    code_fn = getattr(error, "code", None)
    code: grpc.StatusCode = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(error, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(error)
    trailers_fn = getattr(error, "trailing_metadata", None)
    trailers = _metadata_pairs(trailers_fn() if callable(trailers_fn) else None)

    decoded: list[Any] = []
    correlation_id: str | None = None
    reason: str | None = None
    for key, value in trailers:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a corrupt trailer must not hide the real status code
                logger.warning("could not decode %s trailer", _STATUS_DETAILS_KEY)
                continue
            decoded.extend(_unpack(d) for d in status.details)
        elif key in _CORRELATION_KEYS and correlation_id is None:
            correlation_id = value.decode() if isinstance(value, bytes) else str(value)
    for detail in decoded:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason = reason or detail.reason or None
            for meta_key in _CORRELATION_KEYS:
                if meta_key in detail.metadata and correlation_id is None:
                    correlation_id = detail.metadata[meta_key]
        elif isinstance(detail, error_details_pb2.RequestInfo):
            correlation_id = correlation_id or detail.request_id or None

    cls = STATUS_TO_ERROR.get(code, UnknownError)
    return cls(message, code=code, details=decoded, correlation_id=correlation_id, reason=reason)


@contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Re-raises any ``grpc.RpcError`` raised inside as the matching :class:`RpcFailedError`."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_grpc_error(error) from error
