"""The server's domain errors, on top of the SDK's hierarchy.

The SDK's errors (``ParamsValidationError``, ``PluginNotFoundError``, ``ActionNotFoundError``,
``ModelNotFoundError`` ...) are raised as they are; the ones here cover what only the platform
can say. The gRPC layer maps every one of them to a status code in a single table.
"""

from __future__ import annotations

from synapse_sdk.errors import SynapseError

__all__ = [
    "QUOTE_CHARS",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "JobAlreadyFinishedError",
    "JobNotFoundError",
    "JobOwnershipLostError",
    "PermissionDeniedError",
    "RequestIdConflictError",
    "ResourceExhaustedError",
    "ServerError",
    "ServiceUnavailableError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "UnauthenticatedError",
    "quoted",
]

#: How many characters of a caller's value an error message quotes at most.
QUOTE_CHARS = 64


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` quoted for an error message or a log line: at most ``limit`` characters of it.

    Every message that names caller input goes through here, so a huge id or name is never
    copied into an error (which grew the server by several copies of it per request, and
    made a status too large for the caller's metadata limit). A cut value says how long it
    was.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class ServerError(SynapseError):
    """Base of the errors only the platform raises."""


class JobNotFoundError(ServerError, LookupError):
    """No job with this id visible to the caller (another tenant's job is reported the same)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {quoted(job_id)} not found")


class InvalidArgumentError(ServerError, ValueError):
    """A request field is malformed (other than action params, see ParamsValidationError).

    ``field`` names the offending request field (e.g. ``page_size``) when there is one; the
    gRPC layer reports it as a ``google.rpc.BadRequest`` field violation.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class RequestIdConflictError(ServerError):
    """A request id was reused by the same tenant for a different request."""


class FailedPreconditionError(ServerError):
    """The request is valid but the target is not in a state that allows it."""


class JobAlreadyFinishedError(FailedPreconditionError):
    """Something tried to add to the history of a job that already ended."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {quoted(job_id)} has already finished")


class JobOwnershipLostError(FailedPreconditionError):
    """This server no longer owns the job: another server took it over after this one's
    lease expired (it could not reach the database in time), so nothing it writes for the job
    is stored any more."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {quoted(job_id)} is now run by another server")


class ResourceExhaustedError(ServerError):
    """A limit was hit: a message over the size allowed for its RPC, a value over its bound.

    The message names the limit, so the caller knows what to change.
    """


class UnauthenticatedError(ServerError):
    """The call carries no valid credential."""


class PermissionDeniedError(ServerError):
    """The credential is valid but does not allow this call."""


class ServiceUnavailableError(ServerError):
    """The server cannot take the request now (shutting down, executor gone); retry later."""


class StorageError(ServerError):
    """The server could not write (or read) its own storage: the call changed nothing.

    ``cause`` names the failure in a few words (``no space left on device``, ``database is
    locked``); the message never carries paths or SQL. Retrying later is safe.
    """

    def __init__(self, cause: str, message: str) -> None:
        self.cause = cause
        super().__init__(message)


class StorageFullError(StorageError):
    """The data directory's file system is full (ENOSPC, SQLITE_FULL): RESOURCE_EXHAUSTED."""

    def __init__(self) -> None:
        super().__init__(
            "no space left on device",
            "no space left on device: the server's data directory is full; "
            "retry once space is freed",
        )


class StorageUnavailableError(StorageError):
    """A transient storage failure (I/O error, database locked too long): UNAVAILABLE."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause, f"the server's storage is unavailable ({cause}); retry later")
