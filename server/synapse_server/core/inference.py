"""``InferenceService``: one Infer call, from an authenticated tenant to a serve replica.

Transport-neutral. The service resolves the target deployment (tenant-scoped), mints the
signed multiplexed model id for it (the caller never chooses one), and hands the request to
an :class:`InferenceBackend` (Ray Serve handles in ``synapse_server.ray``). The replica's
typed answer becomes a result or a domain error; the gRPC layer maps those to status codes.

Two calls, for every front end (our ``InferenceService`` servicer, the Open Inference
Protocol one): :meth:`InferenceService.infer` (one answer) and
:meth:`InferenceService.stream` (one result per item an endpoint yields). Both check the
request the same way before anything reaches a replica.

Concurrent ``infer`` calls to an endpoint that batches travel to the replica in groups
(:mod:`synapse_server.core.batching`): one replica call carries many requests, each with its
own reply.

Every call is reported to the metrics facade (application, model, error kind, duration, and
the size of the batch the replica answered it in when its deployment batches) and the
current span (the call's, when traced) gets the application and model; its trace context
travels to the replica in the request's ``headers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace
from synapse_sdk.serving import (
    ErrorKind,
    ServeModelClaims,
    ServeModelIdError,
    ServeModelIdSigner,
    ServeModelIdVerifier,
    ServeReply,
    ServeRequest,
    TensorPayload,
    derive_app_key,
    derive_tenant_key,
    unverified_claims,
)
from synapse_sdk.tracing import ATTR_APPLICATION, ATTR_MODEL, inject_headers

from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
    ServiceUnavailableError,
    quoted,
)
from synapse_server.core._limits import parse_id
from synapse_server.core.batching import GroupBackend, GroupSettings, RequestGrouper
from synapse_server.core.deployments import (
    DeploymentNotFoundError,
    DeploymentRecord,
    DeploymentService,
)
from synapse_server.telemetry import PlatformMetrics, bind_log_context

logger = logging.getLogger(__name__)

__all__ = [
    "EndpointNotFoundError",
    "InferDeadlineExceededError",
    "InferRequestData",
    "InferResult",
    "InferenceBackend",
    "InferenceFailedError",
    "InferenceService",
    "ServeKeyring",
    "ServeProtocolMismatchError",
]

_METHODS = frozenset({"POST", "GET", "PUT", "PATCH", "DELETE"})


class InferDeadlineExceededError(ServerError, TimeoutError):
    """The caller's deadline passed before the replica answered (the request was cancelled)."""


class EndpointNotFoundError(ServerError, LookupError):
    """The application has no such route, or the endpoint reported a missing resource."""


class ServeProtocolMismatchError(FailedPreconditionError):
    """The application's replicas speak another major serve protocol than this server (an
    application deployed with an incompatible synapse-sdk); the message names both."""


class InferenceFailedError(ServerError):
    """The serve code raised; details are in the replica's log under ``correlation_id``."""

    def __init__(self, message: str, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        super().__init__(message)


@dataclass(frozen=True)
class InferRequestData:
    """An Infer call: target (application, or plugin + action), model, payload, tensors."""

    application: str | None = None
    plugin: str | None = None
    action: str | None = None
    model_id: str = ""
    json: Any = None
    has_json: bool = False
    tensors: tuple[TensorPayload, ...] = ()
    method: str = ""
    path: str = ""
    request_id: str = ""
    timeout_s: float | None = None
    #: Request-scoped context passed on to the replica (trace context, ids).
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResult:
    """The endpoint's answer and which model and application produced it.

    ``batch_size`` is how many requests the endpoint answered in the same call as this one
    (0: not batched), for metrics.
    """

    json: Any
    tensors: tuple[TensorPayload, ...]
    model_id: str
    request_id: str
    application: str
    batch_size: int = 0


@dataclass(frozen=True)
class _Prepared:
    """A checked request, resolved to its deployment and signed model id."""

    record: DeploymentRecord
    model_id: str
    token: str
    request: ServeRequest


class InferenceBackend(GroupBackend, Protocol):
    """Delivers requests to an application's replicas (Ray Serve handles): one
    (:meth:`call`), a group for one model (:meth:`call_group`, serve protocol 1.2), or one
    whose replies stream (:meth:`stream`). ``call`` raises :class:`DeploymentNotFoundError`,
    ``ServiceUnavailableError``, ``ResourceExhaustedError`` (the application's queues are
    full) or :class:`InferDeadlineExceededError`."""

    def stream(
        self,
        app_name: str,
        multiplexed_model_id: str,
        request: ServeRequest,
        timeout_s: float | None,
    ) -> AsyncIterator[ServeReply]:
        """The replica's replies, one per item the endpoint yields; ``timeout_s`` bounds the
        whole stream. Closing the iterator cancels the request in the replica. Raises as
        :meth:`call` does, and :class:`ServeProtocolMismatchError` when the replicas cannot
        stream (an SDK older than serve protocol 1.1)."""
        ...


class ServeKeyring:
    """Derives the serve signing keys from the server secret and caches minted ids.

    An id is reused until 80% of its lifetime has passed: the multiplexed cache of a replica
    is keyed by the id, so minting a fresh one per call would reload the model every call.
    """

    def __init__(self, secret: bytes, ttl_s: float = 3600.0) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._secret = secret
        self._ttl_s = ttl_s
        self._ids: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def tenant_key(self, tenant: str) -> bytes:
        """The key given to a tenant's deployment workers (never the server secret)."""
        return derive_tenant_key(self._secret, tenant)

    def verify(self, token: str) -> ServeModelClaims:
        """The claims of a signed multiplexed model id minted for any tenant and application.

        The unverified tenant and application only pick the key; the signature made with that
        key is what is trusted. Raises :class:`ServeModelIdError` for anything invalid.
        """
        claims = unverified_claims(token)
        tenant, app = claims.get("ten"), claims.get("app")
        if not isinstance(tenant, str) or not isinstance(app, str) or not app:
            raise ServeModelIdError("invalid multiplexed model id: no tenant or application")
        key = derive_app_key(self.tenant_key(tenant), app)
        return ServeModelIdVerifier(key, app, tenant).verify(token)

    def model_id_for(self, tenant: str, app_name: str, model_id: str) -> str:
        """A signed multiplexed model id for ``model_id`` on ``app_name`` of ``tenant``."""
        key = (tenant, app_name, model_id)
        now = time.time()
        with self._lock:
            cached = self._ids.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        signer = ServeModelIdSigner(
            derive_app_key(self.tenant_key(tenant), app_name), app_name, tenant
        )
        token = signer.mint(model_id, ttl_s=self._ttl_s, now=now)
        with self._lock:
            if len(self._ids) > 10_000:
                self._ids = {k: v for k, v in self._ids.items() if v[1] > now}
            self._ids[key] = (token, now + 0.8 * self._ttl_s)
        return token


@dataclass(slots=True)
class _CallLabels:
    """The metric labels of one Infer call, known once its deployment is resolved."""

    application: str = ""
    model: str = ""


def _error_kind(exc: BaseException) -> str:
    """The ``error`` label of a failed call: one of a fixed set, never the message."""
    if isinstance(exc, InvalidArgumentError):
        return "invalid_argument"
    if isinstance(exc, InferDeadlineExceededError):
        return "deadline_exceeded"
    if isinstance(exc, DeploymentNotFoundError | EndpointNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionDeniedError):
        return "permission_denied"
    if isinstance(exc, FailedPreconditionError):
        return "failed_precondition"
    if isinstance(exc, ServiceUnavailableError):
        return "unavailable"
    if isinstance(exc, ResourceExhaustedError):
        return "resource_exhausted"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "internal"


class InferenceService:
    """Runs Infer calls for authenticated tenants; see the module docstring."""

    def __init__(
        self,
        deployments: DeploymentService,
        backend: InferenceBackend,
        keyring: ServeKeyring,
        *,
        metrics: PlatformMetrics | None = None,
    ) -> None:
        self._deployments = deployments
        self._backend = backend
        self._keyring = keyring
        self._metrics = metrics or PlatformMetrics()
        self._grouper = RequestGrouper(backend)

    async def infer(self, tenant: str, request: InferRequestData) -> InferResult:
        """Route ``request`` to its deployment's replica and return the endpoint's answer.

        Raises the domain errors of the module (and ``InvalidArgumentError``,
        ``DeploymentNotFoundError``, ``FailedPreconditionError``, ``PermissionDeniedError``,
        ``ResourceExhaustedError``, ``ServiceUnavailableError``); FAILED_PRECONDITION for an
        endpoint that streams (call :meth:`stream`).
        """
        labels = _CallLabels()
        start = time.perf_counter()
        error = ""
        try:
            prepared = await self._prepare(tenant, request, labels)
            app = prepared.record.name
            grouping = self._grouper.settings_for(app, prepared.request)
            if grouping is None:
                reply = await self._backend.call(
                    app, prepared.token, prepared.request, request.timeout_s
                )
            else:
                reply = await self._grouped(prepared, request.timeout_s, grouping)
            self._grouper.learn(app, prepared.request, reply)
            return self._result(prepared, reply, labels)
        except BaseException as exc:
            error = _error_kind(exc)
            raise
        finally:
            self._metrics.infer_finished(
                labels.application, labels.model, error, time.perf_counter() - start
            )

    async def _grouped(
        self, prepared: _Prepared, timeout_s: float | None, grouping: GroupSettings
    ) -> ServeReply:
        """``prepared``'s reply through a group; the caller's deadline ends its own wait."""
        app = prepared.record.name
        try:
            async with asyncio.timeout(timeout_s):
                return await self._grouper.call(
                    app, prepared.token, prepared.request, timeout_s, grouping
                )
        except InferDeadlineExceededError:
            raise
        except TimeoutError:
            raise InferDeadlineExceededError(
                f"no answer from {app!r} within the deadline ({timeout_s:.3f}s)"
            ) from None

    async def stream(
        self, tenant: str, request: InferRequestData
    ) -> AsyncGenerator[InferResult, None]:
        """Route ``request`` to its deployment and yield a result per item the endpoint yields
        (one for an endpoint that returns). ``request.timeout_s`` bounds the whole stream;
        closing the generator (the caller went away) stops the endpoint's generator in the
        replica. A failure after some items is raised after them, as :meth:`infer` raises it.
        """
        labels = _CallLabels()
        start = time.perf_counter()
        error = ""
        try:
            prepared = await self._prepare(tenant, request, labels)
            replies = self._backend.stream(
                prepared.record.name, prepared.token, prepared.request, request.timeout_s
            )
            async with contextlib.aclosing(_closable(replies)) as items:
                async for reply in items:
                    yield self._result(prepared, reply, labels)
        except GeneratorExit:
            error = "cancelled"
            raise
        except BaseException as exc:
            error = _error_kind(exc)
            raise
        finally:
            self._metrics.infer_finished(
                labels.application, labels.model, error, time.perf_counter() - start
            )

    async def _prepare(
        self, tenant: str, request: InferRequestData, labels: _CallLabels
    ) -> _Prepared:
        """Check the request, resolve its deployment and sign its model id."""
        request_id = request.request_id or uuid.uuid4().hex
        bind_log_context(request_id=request_id)
        method = (request.method or "POST").upper()
        if method not in _METHODS:
            raise InvalidArgumentError(
                f"method must be one of {sorted(_METHODS)}, got {quoted(method)}", field="method"
            )
        path = request.path or "/"
        if not path.startswith("/"):
            raise InvalidArgumentError(
                f"path must start with '/', got {quoted(path)}", field="path"
            )
        names = [t.name for t in request.tensors]
        if len(set(names)) != len(names) or any(not n for n in names):
            raise InvalidArgumentError("tensor names must be non-empty and unique")
        if request.timeout_s is not None and request.timeout_s <= 0:
            raise InferDeadlineExceededError("the deadline passed before the call started")
        # Checked before the deployment is looked up: a malformed id is the caller's mistake
        # whatever the target. ASCII digits only: int() would read "١٢" as 12.
        requested = str(parse_id(request.model_id, "model_id")) if request.model_id else ""
        record = await self._deployments.resolve(
            tenant, request.application, request.plugin, request.action
        )
        model_id = requested or self._default_model_id(record)
        # Labels from the deployment only: a model it was not deployed with is "other".
        labels.application = record.name
        labels.model = model_id if int(model_id) in record.model_ids else "other"
        span = trace.get_current_span()
        headers = request.headers
        if span.get_span_context().is_valid:
            span.set_attributes({ATTR_APPLICATION: record.name, ATTR_MODEL: model_id})
            headers = inject_headers(dict(headers))
        token = self._keyring.model_id_for(tenant, record.name, model_id)
        serve_request = ServeRequest(
            method=method,
            path=path,
            json=request.json,
            has_json=request.has_json,
            tensors=request.tensors,
            request_id=request_id,
            headers=headers,
        )
        return _Prepared(record, model_id, token, serve_request)

    def _result(self, prepared: _Prepared, reply: ServeReply, labels: _CallLabels) -> InferResult:
        if reply.error_kind is not None:
            raise self._error(reply, prepared.record, prepared.request.request_id)
        if reply.batch_size:
            # Observed here, from the replica's reply: the server's one registry holds it
            # (scraped with the rest), under the call's bounded labels.
            self._metrics.infer_batched(labels.application, labels.model, reply.batch_size)
        return InferResult(
            json=reply.json,
            tensors=reply.tensors,
            model_id=prepared.model_id,
            request_id=prepared.request.request_id,
            application=prepared.record.name,
            batch_size=reply.batch_size,
        )

    @staticmethod
    def _default_model_id(record: DeploymentRecord) -> str:
        if len(record.model_ids) == 1:
            return str(record.model_ids[0])
        raise InvalidArgumentError(
            f"model_id is required: deployment {record.name!r} has "
            f"{'no default model' if not record.model_ids else 'several models'}"
        )

    @staticmethod
    def _error(reply: ServeReply, record: DeploymentRecord, request_id: str) -> Exception:
        message = reply.error_message or "the serve endpoint failed"
        kind = reply.error_kind
        if kind == ErrorKind.INVALID_ARGUMENT:
            return InvalidArgumentError(message)
        if kind == ErrorKind.NOT_FOUND:
            return EndpointNotFoundError(message)
        if kind == ErrorKind.PERMISSION_DENIED:
            return PermissionDeniedError(message)
        if kind == ErrorKind.FAILED_PRECONDITION:
            return FailedPreconditionError(message)
        if kind == ErrorKind.UNSUPPORTED_PROTOCOL:
            return ServeProtocolMismatchError(f"application {record.name!r}: {message}")
        logger.warning(
            "Infer on %s failed in the replica (correlation id %s)", record.name, request_id
        )
        return InferenceFailedError(message, request_id)


async def _closable(items: AsyncIterator[ServeReply]) -> AsyncGenerator[ServeReply, None]:
    """``items`` as an async generator whose ``aclose`` also closes ``items``."""
    try:
        async for item in items:
            yield item
    finally:
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()
