"""Replica internals: what a deployed ``BaseServeDeployment`` does for the platform.

One :class:`ReplicaRuntime` per replica instance answers the platform's calls (see
:mod:`synapse_sdk.serving.wire` for the messages):

* ``infer``: reads a request, checks the signed model id, routes it to an endpoint method,
  binds JSON fields and tensors to the method's parameters (validated like FastAPI would),
  runs it (blocking endpoints off the event loop) and encodes the result; every failure
  becomes a typed reply, never a traceback;
* ``load_model``: the ``@serve.multiplexed`` loader's body (verify, download off the event
  loop, then the plugin's ``_get_model``);
* ``info``: who the replica was deployed for and which models it has loaded.

A request whose ``headers`` carry a W3C trace context is answered inside a SERVER span that
continues it (the replica traces as the ``OTEL_*`` variables its deployment handed on say;
see :mod:`synapse_sdk.tracing`), so the server's Infer span and the replica's work are one
trace; the endpoint's own spans nest under it.

How a request maps onto an endpoint:

* ``method`` and ``path`` (default ``POST /``) select the FastAPI route of the deployment's
  ``app`` and so the method to call; without an ``app`` the method ``infer`` is called;
* a JSON object payload becomes keyword arguments (``{"inputs": [...]}`` calls
  ``infer(inputs=[...])``), validated against the method's annotations; a non-object payload
  is passed as the single parameter of a one-parameter method;
* binary tensors are passed as keyword arguments named after the tensor, as numpy arrays
  (``bfloat16`` as a torch tensor, numpy has no such type);
* when the request carried tensors, a numpy/torch result (or a dict of them) is returned as
  binary tensors; otherwise the result is returned as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from synapse_client.codec import TensorCodecError, TensorPayload

from synapse_sdk._json import is_plain_json, to_jsonable
from synapse_sdk.errors import ModelNotFoundError, SynapseError
from synapse_sdk.runtime import ModelBackend, PlatformInfo
from synapse_sdk.serving.model_ids import ServeModelClaims, ServeModelIdError, ServeModelIdVerifier
from synapse_sdk.serving.wire import (
    ErrorKind,
    ProtocolVersionError,
    ReplicaInfo,
    ServeReply,
    ServeRequest,
    WireFormatError,
)
from synapse_sdk.tracing import (
    ATTR_APPLICATION,
    ATTR_MODEL,
    extract_context,
    install_global_tracing,
)

logger = logging.getLogger(__name__)

__all__ = ["ReplicaRuntime", "ServeReplicaConfig"]

#: Verified multiplexed model ids a replica remembers (each until it expires).
_MAX_VERIFIED_IDS = 1024


@dataclass(frozen=True)
class ServeReplicaConfig:
    """What ``deploy()`` gives the replicas: how to verify ids and where models come from.

    ``app_key`` verifies this application's multiplexed model ids (never the server secret).
    ``platform`` is the server models are downloaded from (the signed id is the credential);
    ``models_dir`` serves models from local directories instead, for runs outside a platform.
    """

    app_name: str
    app_key: bytes = field(repr=False)
    tenant: str = ""
    platform: PlatformInfo | None = None
    models_dir: str | None = None
    cache_dir: str | None = None


class _BadRequestError(SynapseError, ValueError):
    """The request does not fit the endpoint (wrong route, arguments or tensors)."""


class _RouteNotFoundError(SynapseError, LookupError):
    """No endpoint for the request's method and path."""


@dataclass(frozen=True, slots=True)
class _BindPlan:
    """What binding a request to one endpoint method needs, computed once per method."""

    label: str
    named: dict[str, inspect.Parameter]
    takes_any: bool
    required: tuple[str, ...]
    hints: dict[str, Any]
    is_coroutine: bool


class ReplicaRuntime:
    """The platform side of one deployed replica (see the module docstring).

    ``deployment`` is the ``BaseServeDeployment`` instance: its class carries the
    ``ServeReplicaConfig`` set by ``deploy()`` (``_synapse_replica_config``), its ``app`` the
    routes, and its ``_get_model`` builds models.
    """

    def __init__(self, deployment: Any) -> None:
        self._deployment = deployment
        self.load_counts: dict[str, int] = {}
        self._verifier: ServeModelIdVerifier | None = None
        # Verified ids by token: the server reuses one id per model for most of its lifetime,
        # so re-checking the HS256 signature on every request only repeated the same answer.
        self._verified: dict[str, ServeModelClaims] = {}
        self._backend: ModelBackend | None = None
        self._adapters: dict[Any, Any] = {}
        # This process's spans, when its environment asks for them (set up once per process).
        install_global_tracing("replica")

    # Models ----------------------------------------------------------------------------------

    def config(self) -> ServeReplicaConfig:
        """The replica config ``deploy()`` set; RuntimeError when it was deployed otherwise."""
        config = type(self._deployment)._synapse_replica_config
        if config is None:
            raise RuntimeError(
                f"{type(self._deployment).__name__} was not deployed by "
                "BaseDeploymentAction.deploy()"
            )
        return typing.cast(ServeReplicaConfig, config)

    def claims(self, token: str) -> ServeModelClaims:
        """The claims of a request's signed model id (remembered until they expire)."""
        cached = self._verified.get(token) if isinstance(token, str) else None
        # Valid strictly before ``exp``, as the verifier itself decides.
        if cached is not None and time.time() < cached.expires_at:
            return cached
        claims = self._verifier_for_app().verify(token)
        if len(self._verified) >= _MAX_VERIFIED_IDS:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verifier_for_app(self) -> ServeModelIdVerifier:
        if self._verifier is None:
            config = self.config()
            self._verifier = ServeModelIdVerifier(config.app_key, config.app_name, config.tenant)
        return self._verifier

    async def load_model(self, token: str) -> Any:
        """Load one model: verify, download off the event loop, then ``_get_model``.

        ``deploy()`` wraps this with ``@serve.multiplexed`` as ``_synapse_multiplexed_load``.
        """
        claims = self.claims(token)
        self.load_counts[claims.model_id] = self.load_counts.get(claims.model_id, 0) + 1
        info = await asyncio.to_thread(self._fetch_model, claims, token)
        logger.info("loading model %s into replica of %s", claims.model_id, claims.app)
        return await self._deployment._get_model(info)

    def _fetch_model(self, claims: ServeModelClaims, token: str) -> dict[str, Any]:
        backend = self._model_backend(token)
        info = dict(backend.load_model(claims.model_id))
        info["path"] = Path(info["path"])
        return info

    def _model_backend(self, token: str) -> ModelBackend:
        config = self.config()
        if config.models_dir is not None:
            if self._backend is None:
                from synapse_sdk.plugins._models import LocalModelBackend

                self._backend = LocalModelBackend(root=config.models_dir)
            return self._backend
        if config.platform is None:
            raise RuntimeError("the deployment has neither a platform nor a models directory")
        from synapse_sdk.models import PlatformModelBackend

        # The signed id is the download credential: it only grants this one model.
        platform = PlatformInfo(
            address=config.platform.address,
            token=token,
            tls=config.platform.tls,
            root_certificates=config.platform.root_certificates,
            tenant=config.tenant or None,
        )
        return PlatformModelBackend.from_platform(platform, cache_dir=config.cache_dir)

    def info(self) -> dict[str, Any]:
        """This replica's :class:`ReplicaInfo`, as its wire answer."""
        from ray import serve

        loaded: list[str] = []
        wrapper = getattr(self._deployment, "__serve_multiplex_wrapper", None)
        if wrapper is not None and self._verifier is not None:
            for token in list(wrapper.models):
                try:
                    loaded.append(self._verifier.verify(token).model_id)
                except ServeModelIdError:
                    continue
        context = serve.get_replica_context()
        config = type(self._deployment)._synapse_replica_config
        return ReplicaInfo(
            replica_id=context.replica_id.unique_id,
            tenant=config.tenant if config is not None else None,
            app_name=config.app_name if config is not None else None,
            loaded_model_ids=tuple(sorted(set(loaded))),
            load_counts=dict(self.load_counts),
        ).to_wire()

    # Requests --------------------------------------------------------------------------------

    async def infer(self, message: Any) -> dict[str, Any]:
        """Answer one request message with a reply message (see the module docstring)."""
        try:
            request = ServeRequest.from_wire(message)
        except ProtocolVersionError as exc:
            return ServeReply.unsupported(exc).to_wire()
        except WireFormatError as exc:
            logger.warning("a serve request could not be read: %s", exc)
            return ServeReply(
                error_kind=ErrorKind.INTERNAL,
                error_message=f"the replica could not read the request: {exc}",
            ).to_wire()
        parent = extract_context(request.headers) if request.headers else None
        if parent is None:
            return (await self.answer(request)).to_wire()
        return (await self._traced_answer(request, parent)).to_wire()

    async def _traced_answer(self, request: ServeRequest, parent: Any) -> ServeReply:
        from opentelemetry import trace

        config = type(self._deployment)._synapse_replica_config
        attributes = {"rpc.method": request.path, "http.request.method": request.method}
        if config is not None:
            attributes[ATTR_APPLICATION] = config.app_name
        with trace.get_tracer("synapse_sdk.serving").start_as_current_span(
            f"serve {request.method} {request.path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            from ray import serve

            # The model is the signed id's (answer() refuses the request if it is invalid).
            with contextlib.suppress(ServeModelIdError):
                span.set_attribute(
                    ATTR_MODEL, self.claims(serve.get_multiplexed_model_id()).model_id
                )
            reply = await self.answer(request)
            if reply.error_kind is not None:
                span.set_attribute("synapse.error_kind", str(reply.error_kind))
                if reply.error_kind == ErrorKind.INTERNAL:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, "internal"))
            return reply

    async def answer(self, request: ServeRequest) -> ServeReply:
        """Run one request; every failure becomes a typed reply, never a traceback."""
        from ray import serve

        try:
            # Every request, not only those that load a model: an id minted for another
            # tenant or application (whose application this one has replaced under the same
            # name) never reaches the endpoint's code.
            self.claims(serve.get_multiplexed_model_id())
            method = self._route(request.method, request.path)
            plan = self._plan(method)
            args, kwargs = self._bind(method, request, plan)
            if plan.is_coroutine:
                result = await method(*args, **kwargs)
            else:
                # A blocking endpoint must not stall the replica's event loop.
                result = await asyncio.to_thread(functools.partial(method, *args, **kwargs))
                if inspect.isawaitable(result):
                    result = await result
            return _encode_reply(result, binary=bool(request.tensors))
        except ServeModelIdError as exc:
            return ServeReply(error_kind=ErrorKind.PERMISSION_DENIED, error_message=str(exc))
        except _RouteNotFoundError as exc:
            return ServeReply(error_kind=ErrorKind.NOT_FOUND, error_message=str(exc))
        except (_BadRequestError, ValidationError) as exc:
            return ServeReply(error_kind=ErrorKind.INVALID_ARGUMENT, error_message=str(exc))
        except ModelNotFoundError as exc:
            return ServeReply(error_kind=ErrorKind.NOT_FOUND, error_message=str(exc))
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 500:
                # FastAPI's HTTPException: the endpoint rejected the request on purpose.
                detail = getattr(exc, "detail", "") or str(exc)
                kind = ErrorKind.NOT_FOUND if status == 404 else ErrorKind.INVALID_ARGUMENT
                return ServeReply(error_kind=kind, error_message=str(detail))
            correlation = request.request_id or uuid.uuid4().hex
            logger.exception("serve endpoint failed (correlation id %s)", correlation)
            return ServeReply(
                error_kind=ErrorKind.INTERNAL,
                error_message=(
                    f"the serve endpoint raised {type(exc).__name__} (correlation id {correlation})"
                ),
            )

    def _route(self, method: str, path: str) -> Any:
        verb = (method or "POST").upper()
        route_path = path or "/"
        deployment = self._deployment
        app = type(deployment).app
        if app is None:
            infer = getattr(deployment, "infer", None)
            if verb == "POST" and route_path == "/" and callable(infer):
                return infer
            raise _RouteNotFoundError(
                f"no endpoint for {verb} {route_path} (the deployment has no app)"
            )
        table = self._adapters.get("routes")
        if table is None:
            table = self._adapters["routes"] = route_table(app)
        name = table.get((verb, route_path))
        bound = getattr(deployment, name, None) if name else None
        if bound is None or not callable(bound):
            raise _RouteNotFoundError(f"no endpoint for {verb} {route_path}")
        return bound

    def _plan(self, method: Any) -> _BindPlan:
        # Keyed by the underlying function: bound methods are new objects on every lookup.
        key = ("plan", getattr(method, "__func__", method))
        plan = self._adapters.get(key)
        if plan is None:
            params = list(inspect.signature(method).parameters.values())
            named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            plan = _BindPlan(
                label=f"{method.__name__}({', '.join(named)})",
                named=named,
                takes_any=any(p.kind == p.VAR_KEYWORD for p in params),
                required=tuple(p.name for p in named.values() if p.default is p.empty),
                hints=self._hints(method),
                is_coroutine=inspect.iscoroutinefunction(method),
            )
            self._adapters[key] = plan
        return typing.cast(_BindPlan, plan)

    def _bind(
        self, method: Any, request: ServeRequest, plan: _BindPlan
    ) -> tuple[list[Any], dict[str, Any]]:
        named, takes_any, hints = plan.named, plan.takes_any, plan.hints
        json_kwargs: dict[str, Any] = {}
        if request.has_json and request.json is not None:
            if isinstance(request.json, Mapping):
                json_kwargs = {str(k): v for k, v in request.json.items()}
            elif len(named) == 1:
                json_kwargs = {next(iter(named)): request.json}
            else:
                raise _BadRequestError(
                    f"the payload must be a JSON object mapping onto the parameters of {plan.label}"
                )
        kwargs: dict[str, Any] = {}
        for name, value in json_kwargs.items():
            if name not in named and not takes_any:
                raise _BadRequestError(f"unexpected field '{name}' for {plan.label}")
            hint = hints.get(name)
            kwargs[name] = self._validate(name, hint, value)
        for tensor in request.tensors:
            if tensor.name in kwargs:
                raise _BadRequestError(f"'{tensor.name}' given both in json and as a tensor")
            if tensor.name not in named and not takes_any:
                raise _BadRequestError(f"unexpected tensor '{tensor.name}' for {plan.label}")
            try:
                kwargs[tensor.name] = tensor.to_array()
            except TensorCodecError as exc:
                raise _BadRequestError(str(exc)) from None
        missing = [name for name in plan.required if name not in kwargs]
        if missing:
            raise _BadRequestError(f"missing field(s) for {method.__name__}: {', '.join(missing)}")
        return [], kwargs

    def _hints(self, method: Any) -> dict[str, Any]:
        func = getattr(method, "__func__", method)
        key = ("hints", func)
        cached = self._adapters.get(key)
        if cached is None:
            try:
                cached = typing.get_type_hints(func)
            except Exception:
                # Unresolvable annotations: pass values through as FastAPI-free callers would.
                cached = {}
            cached.pop("return", None)
            self._adapters[key] = cached
        return typing.cast(dict[str, Any], cached)

    def _validate(self, name: str, hint: Any, value: Any) -> Any:
        if hint is None or hint is Any:
            return value
        key = ("adapter", hint)
        adapter = self._adapters.get(key)
        if adapter is None:
            try:
                adapter = TypeAdapter(hint)
            except Exception:
                return value
            self._adapters[key] = adapter
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *first.get("loc", ())))
            raise _BadRequestError(f"field '{where}': {first.get('msg', 'invalid')}") from None


def route_table(app: Any) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> endpoint method name, for every route of a FastAPI app.

    Walks included routers too: ``serve.ingress`` moves class-method routes into one.
    """
    table: dict[tuple[str, str], str] = {}

    def _walk(routes: Any, prefix: str) -> None:
        for route in routes or ():
            endpoint = getattr(route, "endpoint", None)
            methods = getattr(route, "methods", None)
            if endpoint is not None and methods:
                path = prefix + str(getattr(route, "path", ""))
                for verb in methods:
                    table.setdefault((verb.upper(), path or "/"), endpoint.__name__)
                continue
            nested = getattr(route, "original_router", None)
            extra = str(getattr(route, "prefix", "") or "")
            if nested is not None:
                _walk(getattr(nested, "routes", ()), prefix + extra)
            elif getattr(route, "routes", None) is not None:
                _walk(route.routes, prefix + str(getattr(route, "path", "") or ""))

    _walk(getattr(app, "routes", ()), "")
    return table


def _is_array(value: Any) -> bool:
    return callable(getattr(value, "tolist", None)) and hasattr(value, "shape")


def _encode_reply(result: Any, binary: bool) -> ServeReply:
    if binary:
        if _is_array(result):
            return ServeReply(tensors=(TensorPayload.from_array("output", result),))
        if isinstance(result, Mapping) and result and all(_is_array(v) for v in result.values()):
            return ServeReply(
                tensors=tuple(TensorPayload.from_array(str(k), v) for k, v in result.items())
            )
    # Most endpoints already answer plain JSON; converting it would only copy it.
    return ServeReply(json=result if is_plain_json(result) else to_jsonable(result, "result"))
