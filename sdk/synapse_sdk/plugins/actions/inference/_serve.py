"""``BaseServeDeployment``: the replica side of a Ray Serve deployment, and its request form.

A serve plugin subclasses :class:`BaseServeDeployment`, implements ``_get_model`` and its
endpoint methods (FastAPI-decorated as in the reference document), and is deployed by
``BaseDeploymentAction.deploy()``. Nothing here imports Ray at module import: ``deploy()``
applies ``@serve.multiplexed`` / ``@serve.ingress`` when it builds the deployment.

How the platform's ``Infer`` reaches an endpoint (the mapping the server relies on):

* the request's ``method`` and ``path`` (default ``POST /``) select the FastAPI route of
  ``app`` and so the method to call; without an ``app`` the method ``infer`` is called;
* a JSON object payload becomes keyword arguments (``{"inputs": [...]}`` calls
  ``infer(inputs=[...])``), validated against the method's annotations like FastAPI would;
  a non-object payload is passed as the single parameter of a one-parameter method;
* binary tensors are passed as keyword arguments named after the tensor, as numpy arrays
  (``bfloat16`` as a torch tensor, numpy has no such type);
* when the request carried tensors, a numpy/torch result (or a dict of them) is returned as
  binary tensors; otherwise the result is returned as JSON.

The model of a request is named by a signed multiplexed model id minted by the server
(see ``_multiplex``); ``get_model()`` verifies it, and ``@serve.multiplexed`` loads each model
once per replica (its loader holds one lock and re-checks the cache, so concurrent first
requests for a model load it once) and evicts the least recently used beyond
``max_models_per_replica``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from synapse_sdk._json import is_plain_json, to_jsonable
from synapse_sdk.errors import ModelNotFoundError, SynapseError
from synapse_sdk.plugins._action import BaseAction
from synapse_sdk.plugins.actions.inference._multiplex import (
    ServeModelClaims,
    ServeModelIdError,
    ServeModelIdVerifier,
)
from synapse_sdk.runtime import ModelBackend, PlatformInfo, RunContext, current_context

logger = logging.getLogger(__name__)

__all__ = [
    "BaseServeDeployment",
    "ServeInferParams",
    "ServeReplicaConfig",
    "ServeReply",
    "ServeRequest",
    "TensorPayload",
]

#: Verified multiplexed model ids a replica remembers (each until it expires).
_MAX_VERIFIED_IDS = 1024

#: Element types a tensor may have on the wire, by numpy name.
TENSOR_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
)


class ServeInferParams(BaseModel):
    """Params of a serve entrypoint run as an action (the reference ``infer_remote`` params).

    ``json`` is the request body (called ``json_body`` in Python, as ``json`` would shadow a
    pydantic method); ``timeout`` is the Infer deadline in seconds.
    """

    model_config = ConfigDict(populate_by_name=True)

    model: int | str | None = None
    method: str = "post"
    json_body: Any = Field(alias="json")
    path: str = "/"
    timeout: float | None = Field(default=None, gt=0)


@dataclass(frozen=True, slots=True)
class TensorPayload:
    """A dense tensor: numpy dtype name, shape and little-endian row-major bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_array(self) -> Any:
        """The tensor as a numpy array (a torch tensor for ``bfloat16``); zero-copy."""
        if self.dtype not in TENSOR_DTYPES:
            raise _BadRequestError(f"tensor '{self.name}': unsupported dtype {self.dtype!r}")
        count = 1
        for dim in self.shape:
            if dim < 0:
                raise _BadRequestError(f"tensor '{self.name}': negative dimension in {self.shape}")
            count *= dim
        if self.dtype == "bfloat16":
            import torch

            if len(self.data) != count * 2:
                raise _BadRequestError(_size_message(self, count * 2))
            if count == 0:
                return torch.empty(self.shape, dtype=torch.bfloat16)
            flat = torch.frombuffer(bytearray(self.data), dtype=torch.bfloat16)
            return flat.reshape(self.shape)
        import numpy as np

        dtype = np.dtype(self.dtype).newbyteorder("<")
        if len(self.data) != count * dtype.itemsize:
            raise _BadRequestError(_size_message(self, count * dtype.itemsize))
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape)

    @classmethod
    def from_array(cls, name: str, value: Any) -> TensorPayload:
        """Encode a numpy array or torch tensor."""
        detach = getattr(value, "detach", None)
        if callable(detach):
            import torch

            tensor = value.detach().cpu().contiguous()
            if tensor.dtype == torch.bfloat16:
                raw = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
                return cls(name, "bfloat16", tuple(tensor.shape), raw)
            value = tensor.numpy()
        import numpy as np

        array = np.ascontiguousarray(value)
        dtype_name = array.dtype.name
        if dtype_name not in TENSOR_DTYPES:
            raise TypeError(f"output '{name}': dtype {dtype_name} cannot be sent as a tensor")
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return cls(name, dtype_name, tuple(int(d) for d in array.shape), little.tobytes())


def _size_message(tensor: TensorPayload, expected: int) -> str:
    return (
        f"tensor '{tensor.name}': {len(tensor.data)} bytes of data, expected {expected} for "
        f"shape {list(tensor.shape)} and dtype {tensor.dtype}"
    )


@dataclass(frozen=True, slots=True)
class ServeRequest:
    """One Infer call as the replica receives it (built by the server's router)."""

    method: str = "POST"
    path: str = "/"
    json: Any = None
    has_json: bool = False
    tensors: tuple[TensorPayload, ...] = ()
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ServeReply:
    """The replica's answer. Failures are values (``error_kind``), never a traceback."""

    json: Any = None
    tensors: tuple[TensorPayload, ...] = ()
    error_kind: str | None = None
    error_message: str = ""


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


class BaseServeDeployment(BaseAction[ServeInferParams]):
    """Base class of Ray Serve inference deployments (see the module docstring).

    Built two ways: by Ray Serve with the platform address (``backend_url``), as a replica;
    or by the action runner with params, as the ``inference`` action, whose ``execute`` calls
    :meth:`infer_remote` (the platform's ``Infer``).
    """

    action_name: ClassVar[str] = "inference"
    #: The FastAPI app whose routes decorate the endpoint methods (optional).
    app: ClassVar[Any] = None
    #: LRU size of the per-replica model cache (``@serve.multiplexed``).
    max_models_per_replica: ClassVar[int] = 3
    #: Set by ``deploy()`` on the class it deploys.
    _synapse_replica_config: ClassVar[ServeReplicaConfig | None] = None

    def __init__(self, backend_url: str | Mapping[str, Any] | BaseModel | None = None) -> None:
        if isinstance(backend_url, str):
            super().__init__(ServeInferParams.model_construct())
            self.backend_url: str | None = backend_url
        else:
            super().__init__(backend_url)
            self.backend_url = None
        # Kept for code written against the reference SDK; models are cached by
        # @serve.multiplexed, never in this dict.
        self._model_cache: dict[str, Any] = {}
        self._synapse_load_counts: dict[str, int] = {}
        self._synapse_verifier: ServeModelIdVerifier | None = None
        # Verified ids by token: the server reuses one id per model for most of its lifetime,
        # so re-checking the HS256 signature on every request only repeated the same answer.
        self._synapse_verified: dict[str, ServeModelClaims] = {}
        self._synapse_backend: ModelBackend | None = None
        self._synapse_adapters: dict[Any, Any] = {}

    # Plugin API ---------------------------------------------------------------------------

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        """Build the model object from its artifacts (``model_info['path']`` is a Path)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _get_model()")

    async def get_model(self) -> Any:
        """The model named by the current request, loaded once per replica (LRU-cached).

        Raises :class:`ServeModelIdError` when the request's model id is missing, forged,
        expired or minted for another tenant or application.
        """
        from ray import serve

        token = serve.get_multiplexed_model_id()
        self._synapse_claims(token)
        loader = getattr(self, "_synapse_multiplexed_load", None)
        if loader is None or not getattr(loader, "_serve_multiplexed_function", False):
            raise RuntimeError(
                f"{type(self).__name__} was not deployed by BaseDeploymentAction.deploy() "
                "(no multiplexed model loader)"
            )
        return await loader(token)

    def execute(self) -> Any:
        """As an action: forward the params to the deployed endpoint through ``Infer``."""
        return type(self).infer_remote(self.params.model_dump(by_alias=False), self.run_context)

    @classmethod
    def infer_remote(cls, params: Mapping[str, Any], ctx: RunContext | None = None) -> Any:
        """Call the deployed endpoint through the platform's ``Infer`` and return its answer.

        ``params``: ``model`` (model id), ``method`` (default ``post``), ``json`` (the body),
        optional ``path`` and ``timeout`` (seconds). The deployment is found by this plugin's
        code and ``action_name``. Needs a platform (``ctx.platform``): the run's server address
        and credential.
        """
        run = ctx if ctx is not None else current_context()
        values = dict(params)
        parsed = ServeInferParams.model_validate(values)
        platform = run.platform
        if platform is None:
            raise ServeModelIdError(
                "infer_remote needs the platform (run the action with --server, or use "
                "synapse_client.Client.infer)"
            )
        if not run.plugin_code:
            raise ValueError("infer_remote needs the plugin code of the run to find the deployment")
        with platform.client(timeout=None) as client:
            answer = client.infer(
                plugin=run.plugin_code,
                action=cls.action_name,
                model=parsed.model,
                json=parsed.json_body,
                method=parsed.method,
                path=parsed.path,
                timeout=parsed.timeout,
            )
        return answer.json

    # Replica internals (called by the platform's router) ----------------------------------

    async def _synapse_load_model(self, token: str) -> Any:
        """Load one model: verify, download off the event loop, then ``_get_model``.

        ``deploy()`` wraps this with ``@serve.multiplexed`` as ``_synapse_multiplexed_load``.
        """
        claims = self._synapse_claims(token)
        self._synapse_load_counts[claims.model_id] = (
            self._synapse_load_counts.get(claims.model_id, 0) + 1
        )
        info = await asyncio.to_thread(self._synapse_fetch_model, claims, token)
        logger.info("loading model %s into replica of %s", claims.model_id, claims.app)
        return await self._get_model(info)

    def _synapse_fetch_model(self, claims: ServeModelClaims, token: str) -> dict[str, Any]:
        backend = self._synapse_model_backend(token)
        info = dict(backend.load_model(claims.model_id))
        info["path"] = Path(info["path"])
        return info

    def _synapse_model_backend(self, token: str) -> ModelBackend:
        config = self._synapse_config()
        if config.models_dir is not None:
            if self._synapse_backend is None:
                from synapse_sdk.plugins._models import LocalModelBackend

                self._synapse_backend = LocalModelBackend(root=config.models_dir)
            return self._synapse_backend
        if config.platform is None:
            raise RuntimeError("the deployment has neither a platform nor a models directory")
        from synapse_sdk.models._backend import PlatformModelBackend

        # The signed id is the download credential: it only grants this one model.
        platform = PlatformInfo(
            address=config.platform.address,
            token=token,
            tls=config.platform.tls,
            root_certificates=config.platform.root_certificates,
            tenant=config.tenant or None,
        )
        return PlatformModelBackend.from_platform(platform, cache_dir=config.cache_dir)

    def _synapse_config(self) -> ServeReplicaConfig:
        config = type(self)._synapse_replica_config
        if config is None:
            raise RuntimeError(
                f"{type(self).__name__} was not deployed by BaseDeploymentAction.deploy()"
            )
        return config

    def _synapse_claims(self, token: str) -> ServeModelClaims:
        cached = self._synapse_verified.get(token) if isinstance(token, str) else None
        # Valid strictly before ``exp``, as the verifier itself decides.
        if cached is not None and time.time() < cached.expires_at:
            return cached
        claims = self._synapse_verifier_for_app().verify(token)
        if len(self._synapse_verified) >= _MAX_VERIFIED_IDS:
            self._synapse_verified.clear()
        self._synapse_verified[token] = claims
        return claims

    def _synapse_verifier_for_app(self) -> ServeModelIdVerifier:
        if self._synapse_verifier is None:
            config = self._synapse_config()
            self._synapse_verifier = ServeModelIdVerifier(
                config.app_key, config.app_name, config.tenant
            )
        return self._synapse_verifier

    async def _synapse_replica_info(self) -> dict[str, Any]:
        """This replica's id, the model ids it has loaded, and the tenant and application it
        was deployed for (for DeploymentService, which checks who owns an application)."""
        from ray import serve

        loaded: list[str] = []
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        if wrapper is not None and self._synapse_verifier is not None:
            for token in list(wrapper.models):
                try:
                    loaded.append(self._synapse_verifier.verify(token).model_id)
                except ServeModelIdError:
                    continue
        context = serve.get_replica_context()
        config = type(self)._synapse_replica_config
        return {
            "replica_id": context.replica_id.unique_id,
            "tenant": config.tenant if config is not None else None,
            "app_name": config.app_name if config is not None else None,
            "loaded_model_ids": sorted(set(loaded)),
            "load_counts": dict(self._synapse_load_counts),
        }

    async def _synapse_infer(self, request: ServeRequest) -> ServeReply:
        """Run one Infer request; every failure becomes a typed reply, never a traceback."""
        from ray import serve

        try:
            # Every request, not only those that load a model: an id minted for another
            # tenant or application (whose application this one has replaced under the same
            # name) never reaches the endpoint's code.
            self._synapse_claims(serve.get_multiplexed_model_id())
            method = self._synapse_route(request.method, request.path)
            plan = self._synapse_plan(method)
            args, kwargs = self._synapse_bind(method, request, plan)
            if plan.is_coroutine:
                result = await method(*args, **kwargs)
            else:
                # A blocking endpoint must not stall the replica's event loop.
                result = await asyncio.to_thread(functools.partial(method, *args, **kwargs))
                if inspect.isawaitable(result):
                    result = await result
            return _encode_reply(result, binary=bool(request.tensors))
        except ServeModelIdError as exc:
            return ServeReply(error_kind="permission_denied", error_message=str(exc))
        except _RouteNotFoundError as exc:
            return ServeReply(error_kind="not_found", error_message=str(exc))
        except (_BadRequestError, ValidationError) as exc:
            return ServeReply(error_kind="invalid_argument", error_message=str(exc))
        except ModelNotFoundError as exc:
            return ServeReply(error_kind="not_found", error_message=str(exc))
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 500:
                # FastAPI's HTTPException: the endpoint rejected the request on purpose.
                detail = getattr(exc, "detail", "") or str(exc)
                kind = "not_found" if status == 404 else "invalid_argument"
                return ServeReply(error_kind=kind, error_message=str(detail))
            correlation = request.request_id or uuid.uuid4().hex
            logger.exception("serve endpoint failed (correlation id %s)", correlation)
            return ServeReply(
                error_kind="internal",
                error_message=(
                    f"the serve endpoint raised {type(exc).__name__} (correlation id {correlation})"
                ),
            )

    def _synapse_route(self, method: str, path: str) -> Any:
        verb = (method or "POST").upper()
        route_path = path or "/"
        app = type(self).app
        if app is None:
            infer = getattr(self, "infer", None)
            if verb == "POST" and route_path == "/" and callable(infer):
                return infer
            raise _RouteNotFoundError(
                f"no endpoint for {verb} {route_path} (the deployment has no app)"
            )
        table = self._synapse_adapters.get("routes")
        if table is None:
            table = self._synapse_adapters["routes"] = _route_table(app)
        name = table.get((verb, route_path))
        bound = getattr(self, name, None) if name else None
        if bound is None or not callable(bound):
            raise _RouteNotFoundError(f"no endpoint for {verb} {route_path}")
        return bound

    def _synapse_plan(self, method: Any) -> _BindPlan:
        # Keyed by the underlying function: bound methods are new objects on every lookup.
        key = ("plan", getattr(method, "__func__", method))
        plan = self._synapse_adapters.get(key)
        if plan is None:
            params = list(inspect.signature(method).parameters.values())
            named = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            plan = _BindPlan(
                label=f"{method.__name__}({', '.join(named)})",
                named=named,
                takes_any=any(p.kind == p.VAR_KEYWORD for p in params),
                required=tuple(p.name for p in named.values() if p.default is p.empty),
                hints=self._synapse_hints(method),
                is_coroutine=inspect.iscoroutinefunction(method),
            )
            self._synapse_adapters[key] = plan
        return typing.cast(_BindPlan, plan)

    def _synapse_bind(
        self, method: Any, request: ServeRequest, plan: _BindPlan | None = None
    ) -> tuple[list[Any], dict[str, Any]]:
        if plan is None:
            plan = self._synapse_plan(method)
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
            kwargs[name] = self._synapse_validate(method, name, hint, value)
        for tensor in request.tensors:
            if tensor.name in kwargs:
                raise _BadRequestError(f"'{tensor.name}' given both in json and as a tensor")
            if tensor.name not in named and not takes_any:
                raise _BadRequestError(f"unexpected tensor '{tensor.name}' for {plan.label}")
            kwargs[tensor.name] = tensor.to_array()
        missing = [name for name in plan.required if name not in kwargs]
        if missing:
            raise _BadRequestError(f"missing field(s) for {method.__name__}: {', '.join(missing)}")
        return [], kwargs

    def _synapse_hints(self, method: Any) -> dict[str, Any]:
        func = getattr(method, "__func__", method)
        key = ("hints", func)
        cached = self._synapse_adapters.get(key)
        if cached is None:
            try:
                cached = typing.get_type_hints(func)
            except Exception:
                # Unresolvable annotations: pass values through as FastAPI-free callers would.
                cached = {}
            cached.pop("return", None)
            self._synapse_adapters[key] = cached
        return typing.cast(dict[str, Any], cached)

    def _synapse_validate(self, method: Any, name: str, hint: Any, value: Any) -> Any:
        if hint is None or hint is Any:
            return value
        key = ("adapter", hint)
        adapter = self._synapse_adapters.get(key)
        if adapter is None:
            try:
                adapter = TypeAdapter(hint)
            except Exception:
                return value
            self._synapse_adapters[key] = adapter
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in (name, *first.get("loc", ())))
            raise _BadRequestError(f"field '{where}': {first.get('msg', 'invalid')}") from None


def _route_table(app: Any) -> dict[tuple[str, str], str]:
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


# Deployment (called by BaseDeploymentAction.deploy) ----------------------------------------

#: serve.deployment options a plugin's ``config.yaml`` may set under ``serve:``.
SERVE_OPTION_KEYS = frozenset(
    {
        "num_replicas",
        "max_ongoing_requests",
        "max_queued_requests",
        "autoscaling_config",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "graceful_shutdown_wait_loop_s",
        "user_config",
    }
)


class ServeDeploymentError(SynapseError, RuntimeError):
    """Ray Serve could not deploy the application; ``reason`` is Serve's message."""

    def __init__(self, app_name: str, reason: str) -> None:
        self.app_name = app_name
        self.reason = reason
        super().__init__(f"deploying serve application {app_name!r} failed: {reason}")


def build_deployment_class(
    entrypoint: type[BaseServeDeployment],
    config: ServeReplicaConfig,
    max_models_per_replica: int,
) -> type[BaseServeDeployment]:
    """The class Serve runs: ``entrypoint`` with its multiplexed loader and replica config."""
    from ray import serve

    if not (isinstance(entrypoint, type) and issubclass(entrypoint, BaseServeDeployment)):
        raise TypeError(f"entrypoint must be a BaseServeDeployment subclass, got {entrypoint!r}")

    # The loader's name must match the attribute: Serve finds `self` through it.
    async def _synapse_multiplexed_load(self: BaseServeDeployment, token: str) -> Any:
        return await self._synapse_load_model(token)

    namespace: dict[str, Any] = {
        "__module__": entrypoint.__module__,
        "__qualname__": entrypoint.__qualname__,
        "__doc__": entrypoint.__doc__,
        "_synapse_replica_config": config,
        "_synapse_multiplexed_load": serve.multiplexed(
            max_num_models_per_replica=max_models_per_replica
        )(_synapse_multiplexed_load),
    }
    cls = type(entrypoint.__name__, (entrypoint,), namespace)
    if entrypoint.app is not None:
        cls = serve.ingress(entrypoint.app)(cls)
    return typing.cast(type[BaseServeDeployment], cls)


def register_plugin_modules_by_value(entrypoint: type) -> None:
    """Ship the plugin's code with the deployment: its modules are not importable in Ray."""
    import sys

    from ray import cloudpickle

    module_name = entrypoint.__module__
    top = module_name.split(".", 1)[0]
    if top.startswith("_synapse_plugin_") and top in sys.modules:
        cloudpickle.register_pickle_by_value(sys.modules[top])
    elif module_name == "__main__" or module_name not in sys.modules:
        return
    elif getattr(sys.modules[module_name], "__spec__", None) is None:
        cloudpickle.register_pickle_by_value(sys.modules[module_name])


def run_serve_application(
    deployment_cls: type,
    *,
    app_name: str,
    route_prefix: str | None,
    ray_actor_options: Mapping[str, Any],
    serve_options: Mapping[str, Any],
    init_args: tuple[Any, ...],
    timeout_s: float = 300.0,
) -> None:
    """Deploy and wait until RUNNING; an existing application is replaced only when the new
    version has proven it starts (it is first run as a candidate under another name)."""
    from ray import serve

    unknown = set(serve_options) - SERVE_OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown serve options: {', '.join(sorted(unknown))}")
    name = getattr(deployment_cls, "__name__", "Deployment")
    deployment: Any = serve.deployment(
        deployment_cls, name=name, ray_actor_options=dict(ray_actor_options), **serve_options
    )
    existing = serve.status().applications.get(app_name)
    if existing is not None and str(existing.status.value) in ("RUNNING", "UNHEALTHY"):
        candidate = f"{app_name}--candidate"
        try:
            serve._run(
                deployment.bind(*init_args), name=candidate, route_prefix=None, _blocking=False
            )
            _wait_running(candidate, timeout_s)
        finally:
            try:
                serve.delete(candidate)
            except Exception:
                logger.warning("could not delete candidate application %s", candidate)
    serve._run(
        deployment.bind(*init_args), name=app_name, route_prefix=route_prefix, _blocking=False
    )
    _wait_running(app_name, timeout_s)


def _wait_running(app_name: str, timeout_s: float) -> None:
    import time

    from ray import serve

    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        status = serve.status().applications.get(app_name)
        state = str(status.status.value) if status is not None else "NOT_STARTED"
        if state == "RUNNING":
            return
        if state == "DEPLOY_FAILED" and status is not None:
            reason = status.message or "; ".join(
                d.message for d in status.deployments.values() if d.message
            )
            raise ServeDeploymentError(app_name, reason or "no reason given by Ray Serve")
        if time.monotonic() > deadline:
            raise ServeDeploymentError(app_name, f"not RUNNING after {timeout_s:.0f}s ({state})")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
