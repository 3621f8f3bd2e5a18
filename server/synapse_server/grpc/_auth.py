"""Bearer-token authentication: who is calling, set for the handler in a ContextVar.

Client tokens map to tenants (configured token → tenant table). Worker credentials (minted by
the server per job) are accepted only for ``WorkerService`` and the model download RPCs a
worker needs. A signed serve model id (minted by the server for one model of one serve
application) is accepted only for ``GetModel``/``DownloadModel`` of that one model: it is how
a platform-deployed replica downloads the model it serves. Without configured tokens every
client call runs as tenant ``default``. Health checking and reflection need no token, nor do
the Open Inference Protocol's own health checks (``ServerLive``, ``ServerReady``); its other
RPCs take the same tokens and tenants as the platform's API. Tokens never appear in logs or
errors.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from synapse_sdk.serving import ServeModelIdError, looks_like_serve_model_id

from synapse_server.core import PermissionDeniedError, UnauthenticatedError
from synapse_server.core._credentials import WorkerClaims, WorkerCredentialIssuer
from synapse_server.core.inference import ServeKeyring
from synapse_server.grpc._interceptors import CallInterceptor, Metadata

__all__ = [
    "DEFAULT_TENANT",
    "OPEN_METHODS",
    "AuthInterceptor",
    "Principal",
    "current_principal",
]

logger = logging.getLogger(__name__)

DEFAULT_TENANT = "default"

_WORKER_SERVICE = "/synapse.plugin.v1.WorkerService/"
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Methods anyone may call: the Open Inference Protocol's liveness and readiness checks, which
#: say no more than health checking does (probes send no token).
OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
#: Methods a worker credential may call besides WorkerService (model and dataset downloads
#: from a run, as the job's tenant; a job's outputs go up through WorkerService).
WORKER_METHODS = frozenset(
    {
        "/synapse.plugin.v1.ModelService/GetModel",
        "/synapse.plugin.v1.ModelService/DownloadModel",
        "/synapse.plugin.v1.DatasetService/GetDataset",
        "/synapse.plugin.v1.DatasetService/ListDatasets",
        "/synapse.plugin.v1.DatasetService/DownloadDataset",
        # A deployment action registers its application; a serve entrypoint run as an
        # action (infer_remote) calls Infer as its job's tenant, and a job may stream.
        "/synapse.plugin.v1.DeploymentService/RegisterDeployment",
        "/synapse.plugin.v1.InferenceService/Infer",
        "/synapse.plugin.v1.InferenceService/InferStream",
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


class AuthInterceptor(CallInterceptor[Principal]):
    """Resolves the caller from ``authorization: Bearer`` metadata for every RPC.

    An entry of the server's interceptor chain (``_interceptors``): a refused caller is
    answered before anything else; an accepted one's :class:`Principal` is set for the handler.
    """

    def __init__(
        self,
        tokens: Mapping[str, str],
        credentials: WorkerCredentialIssuer,
        serve_keys: ServeKeyring | None = None,
    ) -> None:
        self._tokens = dict(tokens)
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
        if method.startswith(_OPEN_PREFIXES) or method in OPEN_METHODS:
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

    def start_call(self, method: str, metadata: Metadata) -> Principal | None:
        """The caller (None for health and reflection); refuses unknown callers."""
        try:
            return self.authenticate(method, metadata)
        except (UnauthenticatedError, PermissionDeniedError) as exc:
            logger.info("rejected call to %s: %s", method, exc)
            raise

    def enter(self, call: Principal) -> None:
        """Set the caller for the handler (:func:`current_principal`)."""
        # The call's task has a context of its own (see CallInterceptor.enter), so the value
        # needs no reset; resetting from a streaming handler's finaliser could even run in
        # another context.
        _principal.set(call)

    def check(self, call: Principal, request: Any) -> None:
        """A serve model credential's request must be for its one model."""
        # The metadata says nothing of the request message, so the scope is checked here.
        # Streamed requests (None here) are never one model's: refused as well.
        if call.serve_model_id is None:
            return
        requested = str(getattr(request, "model_id", ""))
        if requested != call.serve_model_id:
            error = PermissionDeniedError(
                f"this serve model credential grants model {call.serve_model_id} only"
            )
            logger.info("rejected serve model credential: %s", error)
            raise error
