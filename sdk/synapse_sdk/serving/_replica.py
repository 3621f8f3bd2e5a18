"""Replica internals: what a deployed ``BaseServeDeployment`` does for the platform.

One :class:`ReplicaRuntime` per replica instance answers the platform's calls (see
:mod:`synapse_sdk.serving.wire` for the messages):

* ``infer``: reads a request, checks the signed model id, routes it to an endpoint method,
  binds JSON fields and tensors to the method's parameters (validated like FastAPI would),
  runs it (blocking endpoints off the event loop) and encodes the result; every failure
  becomes a typed reply, never a traceback;
* ``infer_group``: answers a list of requests for one model (the server's grouping of
  concurrent calls to a batched endpoint), each as ``infer`` does, in one call;
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
import collections.abc
import contextlib
import contextvars
import dataclasses
import inspect
import logging
import math
import threading
import time
import typing
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from synapse_client.codec import TensorCodecError, TensorPayload

from synapse_sdk._json import is_plain_json, to_jsonable
from synapse_sdk.errors import ModelNotFoundError, SynapseError
from synapse_sdk.runtime import ModelBackend, PlatformInfo
from synapse_sdk.serving._batching import (
    BatchOutputError,
    EndpointBatcher,
    call_endpoint,
    is_batched,
    is_serve_batch,
    run_unqueued,
)
from synapse_sdk.serving._direct import DirectEndpoint, direct_enabled
from synapse_sdk.serving.model_ids import ServeModelClaims, ServeModelIdError, ServeModelIdVerifier
from synapse_sdk.serving.wire import (
    MAX_GROUP_SIZE,
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
#: How long the server held the group being answered, gathering it (0: not in a group).
_GROUP_WAITED: contextvars.ContextVar[float] = contextvars.ContextVar(
    "synapse_group_waited", default=0.0
)


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


class _NotUnaryError(SynapseError, RuntimeError):
    """The endpoint yields: a unary Infer cannot answer it."""


@dataclass(frozen=True, slots=True)
class _BindPlan:
    """What binding a request to one endpoint method needs, computed once per method.

    ``hints`` are what each request's values are validated against: for a batched endpoint,
    the element types of its list annotations. ``batched``: queued by the platform
    (``@batched``); ``complete``: every parameter is passed, defaults included, in signature
    order (``@batched`` and Ray's ``@serve.batch``); ``streams``: a generator.
    """

    label: str
    named: dict[str, inspect.Parameter]
    takes_any: bool
    required: tuple[str, ...]
    hints: dict[str, Any]
    is_coroutine: bool
    streams: bool = False
    batched: bool = False
    complete: bool = False


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
        # Made at the first traced request (the provider is global and set just above): a
        # get_tracer per request cost about as much as the span itself.
        self._tracer: Any = None
        self._batcher: EndpointBatcher | None = None
        # The direct endpoint (synapse_sdk.serving._direct), opened once the replica runs.
        self.direct: DirectEndpoint | None = None
        self._direct_task: asyncio.Task[None] | None = None
        self._open_direct_soon()

    # The direct endpoint ----------------------------------------------------------------------

    def _open_direct_soon(self) -> None:
        """Open the direct endpoint on the replica's event loop, when this instance is a
        Serve replica of a deployment made by ``deploy()`` (Serve runs the constructor on
        that loop) and the environment allows it."""
        config = type(self._deployment)._synapse_replica_config
        if config is None or not direct_enabled():
            return
        try:
            loop = asyncio.get_running_loop()
            from ray import serve

            serve_app = serve.get_replica_context().app_name
        except Exception:  # no loop, no Ray, or not inside a replica: nothing to open
            return
        if serve_app != config.app_name:
            # A candidate deploy() runs under another name until it has proven it starts:
            # it takes no traffic of the application it would replace.
            return
        self._direct_task = loop.create_task(self._open_direct())

    async def _open_direct(self) -> None:
        from synapse_sdk.serving._deploy import replica_message_bytes

        endpoint = self.direct = DirectEndpoint(
            self, self.config().app_name, replica_message_bytes()
        )
        try:
            await endpoint.start()
        except Exception:
            logger.warning(
                "the direct endpoint did not open; the replica is reached through Serve only",
                exc_info=True,
            )
            self.direct = None
            await endpoint.stop(0)

    async def close_direct(self) -> None:
        """Unregister and close the direct endpoint (after its calls in flight).

        An endpoint still opening is let finish first: cancelled half-way, its server could
        go on and its registration land after this.
        """
        task, self._direct_task = self._direct_task, None
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        endpoint, self.direct = self.direct, None
        if endpoint is not None:
            await endpoint.stop()

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

    async def infer_group(self, messages: Any, waited_s: Any = 0.0) -> list[dict[str, Any]]:
        """Answer a list of request messages for one model with a list of reply messages, in
        order (protocol 1.2). Each request is answered as :meth:`infer` answers it (its own
        checks, trace context and error). ``waited_s`` is how long the server already held
        the group gathering it: the requests join the endpoint's batch queue as if they had
        arrived that long ago, so the batch wait is not paid twice."""
        if not isinstance(messages, list | tuple) or not 1 <= len(messages) <= MAX_GROUP_SIZE:
            logger.warning("a serve request group could not be read: not a list of requests")
            # One reply for any number of requests: the server fails the whole group.
            return [
                ServeReply(
                    error_kind=ErrorKind.INTERNAL,
                    error_message=(
                        f"the replica could not read the request group: not a list of 1 to "
                        f"{MAX_GROUP_SIZE} requests"
                    ),
                ).to_wire()
            ]
        waited = float(waited_s) if type(waited_s) in (int, float) else 0.0
        token = _GROUP_WAITED.set(waited if math.isfinite(waited) and waited > 0 else 0.0)
        try:
            # Each answer's task copies this context. None of them suspends before joining
            # its batch queue, so the whole group is queued before the queue's batch forms.
            return list(await asyncio.gather(*(self.infer(message) for message in messages)))
        finally:
            _GROUP_WAITED.reset(token)

    async def _traced_answer(self, request: ServeRequest, parent: Any) -> ServeReply:
        from opentelemetry import trace

        config = type(self._deployment)._synapse_replica_config
        attributes = {"rpc.method": request.path, "http.request.method": request.method}
        if config is not None:
            attributes[ATTR_APPLICATION] = config.app_name
        if self._tracer is None:
            self._tracer = trace.get_tracer("synapse_sdk.serving")
        with self._tracer.start_as_current_span(
            f"serve {request.method} {request.path}",
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes=attributes,
        ) as span:
            from ray import serve

            # The model is the signed id's (answer() refuses the request if it is invalid).
            if span.is_recording():
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
        try:
            endpoint, plan, kwargs, model_id = self._prepare(request)
            if plan.streams:
                raise _NotUnaryError(
                    f"the endpoint {plan.label} streams its answer: call InferStream"
                )
            if plan.batched:
                result, batch_size = await self._call_batched(endpoint, plan, kwargs, model_id)
                settings = type(self._deployment)._synapse_batching
                reply = _encode_reply(result, binary=bool(request.tensors), batch_size=batch_size)
                if settings is None:
                    return reply
                # Tells the server it may gather concurrent requests to this endpoint.
                group = (settings.max_batch_size, float(settings.batch_wait_timeout_s))
                return dataclasses.replace(reply, group=group)
            result = await call_endpoint(endpoint, plan.is_coroutine, kwargs)
            return _encode_reply(result, binary=bool(request.tensors))
        except Exception as exc:
            return self._failure(exc, request)

    async def stream(self, message: Any) -> AsyncGenerator[dict[str, Any], None]:
        """Answer one request message with a reply message per item the endpoint yields.

        An endpoint that returns instead of yielding answers one reply; a failure is the last
        reply. Closing this generator (the caller's deadline or cancellation) closes the
        endpoint's generator: ``finally`` blocks in it run.
        """
        try:
            request = ServeRequest.from_wire(message)
        except ProtocolVersionError as exc:
            yield ServeReply.unsupported(exc).to_wire()
            return
        except WireFormatError as exc:
            logger.warning("a serve request could not be read: %s", exc)
            yield ServeReply(
                error_kind=ErrorKind.INTERNAL,
                error_message=f"the replica could not read the request: {exc}",
            ).to_wire()
            return
        try:
            endpoint, plan, kwargs, _ = self._prepare(request)
        except Exception as exc:
            yield self._failure(exc, request).to_wire()
            return
        if not plan.streams:
            yield (await self.answer(request)).to_wire()
            return
        binary = bool(request.tensors)
        try:
            async with contextlib.aclosing(_iterate(endpoint(**kwargs))) as items:
                async for item in items:
                    reply = _encode_reply(item, binary=binary)
                    yield reply.to_wire()
        except Exception as exc:
            yield self._failure(exc, request).to_wire()

    def _prepare(self, request: ServeRequest) -> tuple[Any, _BindPlan, dict[str, Any], str]:
        """The endpoint, its plan, the bound arguments and the verified model id."""
        from ray import serve

        # Every request, not only those that load a model: an id minted for another
        # tenant or application (whose application this one has replaced under the same
        # name) never reaches the endpoint's code.
        claims = self.claims(serve.get_multiplexed_model_id())
        endpoint = self._route(request.method, request.path)
        plan = self._plan(endpoint)
        return endpoint, plan, self._bind(endpoint, request, plan), claims.model_id

    async def _call_batched(
        self, endpoint: Any, plan: _BindPlan, kwargs: dict[str, Any], model_id: str
    ) -> tuple[Any, int]:
        """A request to a ``@batched`` endpoint: queued with others of its model when the
        deployment configures batching, else called alone as a batch of one."""
        settings = type(self._deployment)._synapse_batching
        if settings is None:
            return await run_unqueued(endpoint, plan.label, kwargs), 0
        if self._batcher is None:
            self._batcher = EndpointBatcher(settings)
        return await self._batcher.submit(
            endpoint, plan.label, model_id, kwargs, waited_s=_GROUP_WAITED.get()
        )

    def _failure(self, exc: Exception, request: ServeRequest) -> ServeReply:
        """The typed reply for a request that failed with ``exc``."""
        if isinstance(exc, ServeModelIdError):
            return ServeReply(error_kind=ErrorKind.PERMISSION_DENIED, error_message=str(exc))
        if isinstance(exc, _RouteNotFoundError | ModelNotFoundError):
            return ServeReply(error_kind=ErrorKind.NOT_FOUND, error_message=str(exc))
        if isinstance(exc, _BadRequestError | ValidationError):
            return ServeReply(error_kind=ErrorKind.INVALID_ARGUMENT, error_message=str(exc))
        if isinstance(exc, _NotUnaryError):
            return ServeReply(error_kind=ErrorKind.FAILED_PRECONDITION, error_message=str(exc))
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            # FastAPI's HTTPException: the endpoint rejected the request on purpose.
            detail = getattr(exc, "detail", "") or str(exc)
            kind = ErrorKind.NOT_FOUND if status == 404 else ErrorKind.INVALID_ARGUMENT
            return ServeReply(error_kind=kind, error_message=str(detail))
        correlation = request.request_id or uuid.uuid4().hex
        if isinstance(exc, BatchOutputError):
            # The endpoint's own bug, and its whole message is about the batch's shape.
            logger.error("%s (correlation id %s)", exc, correlation)
            return ServeReply(
                error_kind=ErrorKind.INTERNAL,
                error_message=f"{exc} (correlation id {correlation})",
            )
        logger.error("serve endpoint failed (correlation id %s)", correlation, exc_info=exc)
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
            plan = self._adapters[key] = self._new_plan(method)
        return typing.cast(_BindPlan, plan)

    def _new_plan(self, method: Any) -> _BindPlan:
        params = list(inspect.signature(method).parameters.values())
        named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        label = f"{method.__name__}({', '.join(named)})"
        hints = self._hints(method)
        original = inspect.unwrap(getattr(method, "__func__", method))
        batched, serve_batch = is_batched(method), is_serve_batch(method)
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
        if batched or serve_batch:
            # One value per parameter per request, so every request binds the same names.
            if takes_any:
                raise TypeError(f"the batched endpoint {label} cannot take **kwargs")
            # Each request is checked against the element type of the batched annotation.
            hints = {name: _element_type(hint) for name, hint in hints.items()}
        return _BindPlan(
            label=label,
            named=named,
            takes_any=takes_any,
            required=tuple(p.name for p in named.values() if p.default is p.empty),
            hints=hints,
            is_coroutine=inspect.iscoroutinefunction(method),
            streams=inspect.isasyncgenfunction(original) or inspect.isgeneratorfunction(original),
            batched=batched and not serve_batch,
            complete=batched or serve_batch,
        )

    def _bind(self, method: Any, request: ServeRequest, plan: _BindPlan) -> dict[str, Any]:
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
        if plan.complete:
            # Batched calls gather one list per parameter: every request names them all, in
            # the signature's order (Ray's @serve.batch pairs values by position).
            return {name: kwargs.get(name, param.default) for name, param in named.items()}
        return kwargs

    def _hints(self, method: Any) -> dict[str, Any]:
        # The original function: a decorator's wrapper (e.g. @serve.batch) copies the
        # annotations but resolves them in its own module's globals.
        func = inspect.unwrap(getattr(method, "__func__", method))
        key = ("hints", func)
        cached = self._adapters.get(key)
        if cached is None:
            cached = _resolve_hints(func)
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


def _resolve_hints(func: Any) -> dict[str, Any]:
    """The parameters' type hints of ``func``, each resolved on its own.

    A plugin's module is pickled by value into the replica, and a function pickled that way
    keeps only the globals its code uses: names used only in annotations (``Any``, a model
    class) are gone, so resolving all annotations at once fails on the first missing name,
    and an unresolved one would let every value through unvalidated. Each annotation is
    resolved alone, with ``typing``'s names as a fallback; one that still cannot be resolved
    is left out (its values pass through, as for an unannotated parameter).
    """
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        namespace = {**vars(typing), **getattr(func, "__globals__", {})}
        hints = {}
        for name, annotation in getattr(func, "__annotations__", {}).items():
            try:
                hints[name] = (
                    eval(annotation, namespace) if isinstance(annotation, str) else annotation
                )
            except Exception:
                continue
    hints.pop("return", None)
    return hints


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


def _encode_reply(result: Any, binary: bool, batch_size: int = 0) -> ServeReply:
    if binary:
        if _is_array(result):
            return ServeReply(
                tensors=(TensorPayload.from_array("output", result),), batch_size=batch_size
            )
        if isinstance(result, Mapping) and result and all(_is_array(v) for v in result.values()):
            return ServeReply(
                tensors=tuple(TensorPayload.from_array(str(k), v) for k, v in result.items()),
                batch_size=batch_size,
            )
    # Most endpoints already answer plain JSON; converting it would only copy it.
    return ServeReply(
        json=result if is_plain_json(result) else to_jsonable(result, "result"),
        batch_size=batch_size,
    )


def _element_type(hint: Any) -> Any:
    """``T`` of a batched parameter's ``list[T]`` (or ``Sequence[T]``); Any otherwise."""
    origin = typing.get_origin(hint)
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return args[0] if len(args) == 1 else Any
    return Any


async def _iterate(items: Any) -> AsyncGenerator[Any, None]:
    """The items of an endpoint's generator; a blocking one advances in a worker thread.

    Closing this generator closes the endpoint's: at once for an async generator, and for a
    blocking one as soon as the ``next()`` running in its thread returns (a generator cannot
    be closed while it runs).
    """
    if inspect.isasyncgen(items):
        async with contextlib.aclosing(items) as agen:
            async for item in agen:
                yield item
        return
    if not inspect.isgenerator(items):
        # The endpoint returned an iterable instead of being a generator function.
        for item in items:
            yield item
        return
    stepper = _SyncStepper(items)
    try:
        while True:
            item = await asyncio.to_thread(stepper.step)
            if item is _DONE:
                return
            yield item
    finally:
        stepper.close()


_DONE = object()


class _SyncStepper:
    """Advances a blocking generator in worker threads; closable from the event loop."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self._lock = threading.Lock()
        self._closed = False

    def step(self) -> Any:
        with self._lock:
            if self._closed:
                return _DONE
            try:
                item = next(self._generator)
            except StopIteration:
                return _DONE
            if self._closed:
                # Closed while next() ran: the caller is gone, close it here, in this thread.
                self._generator.close()
                return _DONE
            return item

    def close(self) -> None:
        self._closed = True
        # A step running in a thread closes the generator itself when its next() returns.
        if self._lock.acquire(blocking=False):
            try:
                self._generator.close()
            finally:
                self._lock.release()
