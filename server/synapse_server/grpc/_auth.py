"""Bearer-token authentication: who is calling, set for the handler in a ContextVar.

Client tokens map to tenants (configured token → tenant table). Worker credentials (minted by
the server per job) are accepted only for ``WorkerService`` and the model download RPCs a
worker needs. A signed serve model id (minted by the server for one model of one serve
application) is accepted only for ``GetModel``/``DownloadModel`` of that one model: it is how
a platform-deployed replica downloads the model it serves. Without configured tokens every
client call runs as tenant ``default``. Health checking and reflection need no token. Tokens
never appear in logs or errors.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from synapse_sdk.serving import ServeModelIdError, looks_like_serve_model_id

from synapse_server.core import (
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from synapse_server.core._credentials import WorkerClaims, WorkerCredentialIssuer
from synapse_server.core.inference import ServeKeyring
from synapse_server.grpc._errors import end_with_status, status_for
from synapse_server.grpc._requests import RejectedRequest, RequestGuard

__all__ = [
    "DEFAULT_TENANT",
    "AuthInterceptor",
    "Principal",
    "current_principal",
]

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"

_WORKER_SERVICE = "/synapse.plugin.v1.WorkerService/"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Methods a worker credential may call besides WorkerService (model downloads from a run).
WORKER_METHODS = frozenset(
    {
        "/synapse.plugin.v1.ModelService/GetModel",
        "/synapse.plugin.v1.ModelService/DownloadModel",
        # A deployment action registers its application; a serve entrypoint run as an
        # action (infer_remote) calls Infer as its job's tenant.
        "/synapse.plugin.v1.DeploymentService/RegisterDeployment",
        "/synapse.plugin.v1.InferenceService/Infer",
    }
)
#: Methods a signed serve model id may call, each for the id's own model only.
SERVE_MODEL_METHODS = frozenset(
    {
        "/synapse.plugin.v1.ModelService/GetModel",
        "/synapse.plugin.v1.ModelService/DownloadModel",
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a client tenant, a worker of one job (with that job's tenant), or a serve
    replica holding a signed id for one model (``serve_model_id``)."""

    tenant: str
    worker: WorkerClaims | None = None
    serve_model_id: str | None = None


_principal: ContextVar[Principal | None] = ContextVar("synapse_principal", default=None)


def current_principal() -> Principal:
    """The authenticated caller of the current RPC."""
    principal = _principal.get()
    if principal is None:
        raise UnauthenticatedError("no authenticated caller for this call")
    return principal


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Resolves the caller from ``authorization: Bearer`` metadata for every RPC.

    Its handler re-wrap is also where every request passes the ``guard``'s checks (size,
    decoding, string lengths; see ``_requests``) before any servicer code runs.
    """

    def __init__(
        self,
        tokens: Mapping[str, str],
        credentials: WorkerCredentialIssuer,
        serve_keys: ServeKeyring | None = None,
        guard: RequestGuard | None = None,
    ) -> None:
        self._tokens = dict(tokens)
        self._guard = guard or RequestGuard()
        self._credentials = credentials
        self._serve_keys = serve_keys

    def _lookup_token(self, token: str) -> str | None:
        # Compare every configured token in constant time so timing reveals nothing.
        tenant = None
        for known, known_tenant in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                tenant = known_tenant
        return tenant

    def authenticate(self, method: str, metadata: Any) -> Principal | None:
        """The principal for a call of ``method``; raises the error the caller gets."""
        if method.startswith(_OPEN_PREFIXES):
            return None
        token = _bearer(metadata)
        if token and WorkerCredentialIssuer.looks_like_worker_credential(token):
            claims = self._credentials.verify(token)
            if not (method.startswith(_WORKER_SERVICE) or method in WORKER_METHODS):
                raise PermissionDeniedError("a worker credential cannot call this method")
            return Principal(tenant=claims.tenant, worker=claims)
        if token and self._serve_keys is not None and looks_like_serve_model_id(token):
            return self._serve_principal(method, token)
        if method.startswith(_WORKER_SERVICE):
            raise UnauthenticatedError("WorkerService needs a worker credential")
        if not self._tokens:
            return Principal(tenant=DEFAULT_TENANT)
        if not token:
            raise UnauthenticatedError("missing bearer token (authorization: Bearer <token>)")
        tenant = self._lookup_token(token)
        if tenant is None:
            raise UnauthenticatedError("invalid bearer token")
        return Principal(tenant=tenant)

    def _serve_principal(self, method: str, token: str) -> Principal:
        assert self._serve_keys is not None
        try:
            claims = self._serve_keys.verify(token)
        except ServeModelIdError as exc:
            raise UnauthenticatedError(f"invalid serve model credential: {exc}") from None
        if method not in SERVE_MODEL_METHODS:
            raise PermissionDeniedError("a serve model credential can only fetch its model")
        return Principal(tenant=claims.tenant, serve_model_id=claims.model_id)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler so it runs with the caller set (or is refused)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        try:
            principal = self.authenticate(method, handler_call_details.invocation_metadata)
            failure: Exception | None = None
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            principal, failure = None, exc
            logger.info("rejected call to %s: %s", method, exc)
        return _wrap(handler, principal, failure, self._guard, method)


def _check_serve_scope(principal: Principal | None, request: Any) -> None:
    # The interceptor sees no request message, so the one-model scope is checked here.
    if principal is None or principal.serve_model_id is None:
        return
    requested = str(getattr(request, "model_id", ""))
    if requested != principal.serve_model_id:
        raise PermissionDeniedError(
            f"this serve model credential grants model {principal.serve_model_id} only"
        )


def _wrap(
    handler: grpc.RpcMethodHandler,
    principal: Principal | None,
    failure: Exception | None,
    guard: RequestGuard,
    method: str,
) -> grpc.RpcMethodHandler:
    # grpc.aio runs each RPC in its own task (own context copy), so setting the ContextVar
    # in the handler cannot leak into another call; streaming handlers need no reset.
    # Refusals end the call with end_with_status (no AbortError: see there). The auth failure
    # is answered first: an unauthenticated caller learns nothing about what the server makes
    # of its request bytes.
    deserializer = guard.deserializer(method, handler.request_deserializer)

    def refusal(request: Any = None) -> grpc.Status | None:
        if failure is not None:
            return status_for(failure)
        if isinstance(request, RejectedRequest):
            return status_for(request.error)
        try:
            _check_serve_scope(principal, request)
        except PermissionDeniedError as exc:
            logger.info("rejected serve model credential: %s", exc)
            return status_for(exc)
        return None

    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            status = refusal(request)
            if status is not None:
                end_with_status(context, status)
                return None
            token = _principal.set(principal)
            try:
                return await inner_uu(request, context)
            finally:
                _principal.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            status = refusal(request)
            if status is not None:
                end_with_status(context, status)
                return
            _principal.set(principal)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, deserializer, handler.response_serializer
        )
    # Streamed requests: a refused message raises its domain error from the request
    # iterator. Our servicers map it like any other error; a handler that lets it escape
    # (reflection) is answered here, from the handler's own task: an abort from another
    # task can collide with the handler's pending send.
    if handler.stream_stream is not None:
        inner_ss = handler.stream_stream

        async def stream_stream(
            request_iterator: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            status = refusal()
            if status is None:
                _principal.set(principal)
                try:
                    async for item in inner_ss(guard.checked(request_iterator), context):
                        yield item
                    return
                except (InvalidArgumentError, ResourceExhaustedError) as exc:
                    status = status_for(exc)
            end_with_status(context, status)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, deserializer, handler.response_serializer
        )
    inner_su = handler.stream_unary

    async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        status = refusal()
        if status is None:
            token = _principal.set(principal)
            try:
                return await inner_su(guard.checked(request_iterator), context)
            except (InvalidArgumentError, ResourceExhaustedError) as exc:
                status = status_for(exc)
            finally:
                _principal.reset(token)
        end_with_status(context, status)
        return None

    return grpc.stream_unary_rpc_method_handler(
        stream_unary, deserializer, handler.response_serializer
    )
