"""The client's one exception hierarchy and the one place that converts ``grpc.RpcError``.

Every RPC the client makes runs inside :func:`map_rpc_errors` (sync and async code alike: a
plain ``with`` works inside coroutines and async generators), so callers only ever see
:class:`SynapseClientError` subclasses. The status code → exception class table is built
from each class's ``grpc_status_code`` attribute, so adding a class is the only edit needed.

A connection that fails its TLS set-up also ends as UNAVAILABLE in grpc, like a server that
is down. Those failures are told apart here by grpc's status text and become
:class:`TransportSecurityError` (see its docstring), which is not retried.
"""

from __future__ import annotations

import enum
import logging
import re
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
    "ChannelSecurity",
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
    "TransportSecurityError",
    "TransportSecurityProblem",
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
        # The server's message usually states the violations already ("invalid params for
        # action 'a': count: must be >= 0"): only those it leaves out are added, so each
        # reason reads once.
        violations = [v for v in self.field_violations if v.description not in self.message]
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


class TransportSecurityProblem(enum.Enum):
    """Why a connection failed its set-up: what :class:`TransportSecurityError` diagnosed."""

    #: A plain-text client; the server closed the connection at once: it expects TLS.
    TLS_REQUIRED = "tls_required"
    #: A TLS client without a certificate; the server closed the connection: it wants one.
    CLIENT_CERTIFICATE_REQUIRED = "client_certificate_required"
    #: A TLS client with a certificate; the server closed the connection: it refused it.
    CLIENT_CERTIFICATE_REJECTED = "client_certificate_rejected"
    #: The server closed the connection at once; how this client connected is not known.
    CONNECTION_REJECTED = "connection_rejected"
    #: A TLS client; the server did not answer in TLS (a plain-text server).
    SERVER_NOT_TLS = "server_not_tls"
    #: The server's certificate is not signed by a trusted CA, has expired, ...
    SERVER_CERTIFICATE_UNTRUSTED = "server_certificate_untrusted"
    #: The server's certificate does not name the host connected to.
    SERVER_NAME_MISMATCH = "server_name_mismatch"
    #: Another TLS handshake failure.
    HANDSHAKE_FAILED = "handshake_failed"


@dataclass(frozen=True, slots=True)
class ChannelSecurity:
    """How a channel connects, so a failed set-up can be explained (see ``from_grpc_error``)."""

    tls: bool
    client_certificate: bool = False


# What each problem means, and what to do about it with this library's options.
_PROBLEM_TEXT: dict[TransportSecurityProblem, tuple[str, str]] = {
    TransportSecurityProblem.TLS_REQUIRED: (
        "the server closed the connection during set-up; it most likely requires TLS, and "
        "this client connected in plain text",
        "connect with TLS (tls=True, or a TLSConfig whose root_certificates is the CA that "
        "issued the server's certificate)",
    ),
    TransportSecurityProblem.CLIENT_CERTIFICATE_REQUIRED: (
        "the server closed the TLS connection during set-up; it most likely requires a "
        "client certificate (mutual TLS), and this client presented none",
        "give TLSConfig a certificate_chain and private_key issued by the server's client CA",
    ),
    TransportSecurityProblem.CLIENT_CERTIFICATE_REJECTED: (
        "the server closed the TLS connection during set-up; it most likely rejected this "
        "client's certificate (not issued by a CA it trusts, expired, or not for client use)",
        "use a client certificate issued by the server's client CA",
    ),
    TransportSecurityProblem.CONNECTION_REJECTED: (
        "the server closed the connection during set-up; it most likely requires TLS, or a "
        "client certificate (mutual TLS) that was missing or not accepted",
        "connect with TLS, with a client certificate if the server asks for one",
    ),
    TransportSecurityProblem.SERVER_NOT_TLS: (
        "the TLS handshake failed: the server does not answer in TLS (a plain-text server?)",
        "connect without TLS, or check the address",
    ),
    TransportSecurityProblem.SERVER_CERTIFICATE_UNTRUSTED: (
        "the server's TLS certificate could not be verified",
        "give the CA that issued it as TLSConfig.root_certificates, or have the certificate "
        "renewed if it expired",
    ),
    TransportSecurityProblem.SERVER_NAME_MISMATCH: (
        "the server's TLS certificate does not name the host this client connected to",
        "connect by a name the certificate lists, or set TLSConfig.server_name_override",
    ),
    TransportSecurityProblem.HANDSHAKE_FAILED: (
        "the TLS handshake with the server failed",
        "check the TLS settings of the client and the server",
    ),
}


class TransportSecurityError(UnavailableError):
    """The connection failed its TLS set-up; ``problem`` says how, the message what to do.

    A subclass of :class:`UnavailableError` (grpc reports these as UNAVAILABLE, and code that
    catches that keeps working) that is **not** retryable: trying again cannot help until the
    client's or server's TLS settings change.

    When the server simply closes the connection during set-up, grpc gives no reason; the
    likely one follows from how this client connected (``TLS_REQUIRED`` for a plain-text
    client, ``CLIENT_CERTIFICATE_REQUIRED`` / ``_REJECTED`` for a TLS one). Something else
    that accepts connections and closes them at once (a proxy with no backend) looks the same.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        problem: TransportSecurityProblem = TransportSecurityProblem.HANDSHAKE_FAILED,
        explanation: str = "",
        grpc_message: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.problem = problem
        #: What went wrong, without advice (the CLI adds its own flags as advice).
        self.explanation = explanation or message
        #: grpc's own text, for the curious.
        self.grpc_message = grpc_message


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


# grpc's texts for a failed connection set-up (grpcio 1.85; see the tests for each case).
_CONNECT_FAILED = "failed to connect to all addresses"
_VERIFY_REASON = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")
_NOT_TLS_MARKERS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG")
_CLIENT_CERT_ALERTS = ("ALERT_CERTIFICATE_REQUIRED", "ALERT_HANDSHAKE_FAILURE")
_BAD_CLIENT_CERT_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_DECRYPT_ERROR",
)
_GRPC_TEXT_LIMIT = 300


def _closed_problem(security: ChannelSecurity | None) -> TransportSecurityProblem:
    if security is None:
        return TransportSecurityProblem.CONNECTION_REJECTED
    if not security.tls:
        return TransportSecurityProblem.TLS_REQUIRED
    if not security.client_certificate:
        return TransportSecurityProblem.CLIENT_CERTIFICATE_REQUIRED
    return TransportSecurityProblem.CLIENT_CERTIFICATE_REJECTED


def _transport_problem(
    text: str, security: ChannelSecurity | None
) -> tuple[TransportSecurityProblem, str] | None:
    """``(problem, detail)`` when grpc's text is a failed connection set-up, else None."""
    if not text.startswith(_CONNECT_FAILED):
        return None
    if "Hostname Verification" in text or "No match found for server name" in text:
        return TransportSecurityProblem.SERVER_NAME_MISMATCH, ""
    if "handshake failed" in text.lower() or "SSL_ERROR" in text:
        if any(marker in text for marker in _NOT_TLS_MARKERS):
            return TransportSecurityProblem.SERVER_NOT_TLS, ""
        verify = _VERIFY_REASON.search(text)
        if verify is not None:
            return TransportSecurityProblem.SERVER_CERTIFICATE_UNTRUSTED, verify.group(1).strip()
        if any(alert in text for alert in _CLIENT_CERT_ALERTS + _BAD_CLIENT_CERT_ALERTS):
            return _closed_problem(security), ""
        return TransportSecurityProblem.HANDSHAKE_FAILED, ""
    # The server accepted the TCP connection and closed it before HTTP/2 started: a TLS
    # server that got plain text, or an mTLS server that did not accept the client's
    # certificate (with TLS 1.3 the client learns of that only as a closed socket).
    if text.rstrip().endswith("Socket closed"):
        return _closed_problem(security), ""
    return None


def _transport_security_error(
    code: grpc.StatusCode,
    text: str,
    problem: TransportSecurityProblem,
    detail: str,
) -> TransportSecurityError:
    explanation, advice = _PROBLEM_TEXT[problem]
    if detail:
        explanation = f"{explanation} ({detail[:100]})"
    grpc_text = " ".join(text.split())[:_GRPC_TEXT_LIMIT]
    return TransportSecurityError(
        f"{explanation}; {advice} [grpc: {grpc_text}]",
        code=code,
        problem=problem,
        explanation=explanation,
        grpc_message=grpc_text,
    )


def from_grpc_error(
    error: grpc.RpcError, security: ChannelSecurity | None = None
) -> RpcFailedError:
    """Builds the typed client error for a failed call (sync ``RpcError`` or ``AioRpcError``).

    ``security`` (how the channel connects) lets a connection the server closed during
    set-up be explained precisely (see :class:`TransportSecurityError`).
    """
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

    if code is grpc.StatusCode.UNAVAILABLE and not decoded:
        found = _transport_problem(message, security)
        if found is not None:
            return _transport_security_error(code, message, *found)
    cls = STATUS_TO_ERROR.get(code, UnknownError)
    return cls(message, code=code, details=decoded, correlation_id=correlation_id, reason=reason)


@contextmanager
def map_rpc_errors(security: ChannelSecurity | None = None) -> Iterator[None]:
    """Re-raises any ``grpc.RpcError`` raised inside as the matching :class:`RpcFailedError`.

    ``security``: how the channel connects, for explaining a failed TLS set-up.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_grpc_error(error, security) from error
