"""Deployment mechanics behind ``BaseDeploymentAction.deploy()``: the class Serve runs, the
candidate-then-replace rollout, and the environment the platform gives deployment jobs.

Ray is imported only inside the functions that need it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import typing
from collections.abc import Mapping
from typing import Any

from synapse_sdk.errors import SynapseError
from synapse_sdk.serving._batching import BatchSettings, is_batched
from synapse_sdk.serving._replica import ServeReplicaConfig
from synapse_sdk.serving.wire import INFER_METHOD

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_QUEUED_REQUESTS",
    "DEFAULT_REPLICA_MESSAGE_BYTES",
    "RELEASE_CHECKSUM_ENV",
    "RELEASE_CODE_ENV",
    "REPLICA_MESSAGE_BYTES_ENV",
    "REPLICA_PLATFORM_ADDRESS_ENV",
    "SERVE_OPTION_KEYS",
    "ServeDeploymentError",
    "build_deployment_class",
    "register_plugin_modules_by_value",
    "replica_runtime_env",
    "run_serve_application",
]

#: The serve application name the platform gives a deployment job.
RELEASE_CODE_ENV = "SYNAPSE_PLUGIN_RELEASE_CODE"
#: The route prefix the platform gives a deployment job.
RELEASE_CHECKSUM_ENV = "SYNAPSE_PLUGIN_RELEASE_CHECKSUM"
#: The server address replicas download models from, when the worker's own address (e.g. a
#: Unix socket on the server's machine) is not reachable from the cluster's nodes.
REPLICA_PLATFORM_ADDRESS_ENV = "SYNAPSE_SERVE_PLATFORM_ADDRESS"
#: The largest message, in bytes, a replica exchanges with the platform's Infer router (set
#: by the platform for deployment jobs); without it, :data:`DEFAULT_REPLICA_MESSAGE_BYTES`.
REPLICA_MESSAGE_BYTES_ENV = "SYNAPSE_SERVE_REPLICA_MESSAGE_BYTES"
#: The platform's default Infer message limit (64 MiB) plus room for Serve's framing.
DEFAULT_REPLICA_MESSAGE_BYTES = (64 << 20) + (1 << 20)
#: Ray Serve reads a replica's gRPC message limit (4 MiB by default) from this variable.
_SERVE_REPLICA_LIMIT_VAR = "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"
#: Requests a caller (the platform's Infer router) queues for a deployment while its replicas
#: are busy, unless the plugin sets ``max_queued_requests``: beyond it a call is refused at
#: once (RESOURCE_EXHAUSTED) instead of waiting in a queue that grows without limit (Serve's
#: own default).
DEFAULT_MAX_QUEUED_REQUESTS = 1024

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


def replica_message_bytes() -> int:
    """The largest message this replica exchanges with the platform's Infer router."""
    for name in (_SERVE_REPLICA_LIMIT_VAR, REPLICA_MESSAGE_BYTES_ENV):
        raw = (os.environ.get(name) or "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return DEFAULT_REPLICA_MESSAGE_BYTES


def replica_runtime_env(runtime_env: Mapping[str, Any]) -> dict[str, Any]:
    """``runtime_env`` with the replica's gRPC message limit set (unless the plugin set one),
    and the tracing configuration (``OTEL_*``) of the process that deploys.

    Infer requests reach replicas over Serve's gRPC channel, whose 4 MiB default would refuse
    a tensor the platform accepts; the variable must be in the replica process's
    environment when it imports Serve, which is what a runtime env's ``env_vars`` do. The
    ``OTEL_*`` variables (the platform hands its own to the deployment job) make the replicas
    trace as the platform does, also on a cluster whose nodes were started without them.
    """
    limit = os.environ.get(REPLICA_MESSAGE_BYTES_ENV) or str(DEFAULT_REPLICA_MESSAGE_BYTES)
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.setdefault(_SERVE_REPLICA_LIMIT_VAR, limit)
    for name, value in os.environ.items():
        if name.startswith("OTEL_"):
            env_vars.setdefault(name, value)
    return {**runtime_env, "env_vars": env_vars}


class ServeDeploymentError(SynapseError, RuntimeError):
    """Ray Serve could not deploy the application; ``reason`` is Serve's message."""

    def __init__(self, app_name: str, reason: str) -> None:
        self.app_name = app_name
        self.reason = reason
        super().__init__(f"deploying serve application {app_name!r} failed: {reason}")


def batched_endpoints(entrypoint: type) -> list[str]:
    """Names of the ``@batched`` endpoint methods of a deployment class.

    Raises ``TypeError`` for one that cannot take batches (a generator, or ``**kwargs``).
    """
    import inspect

    names = []
    for name in dir(entrypoint):
        method = getattr(entrypoint, name, None)
        if not callable(method) or not is_batched(method):
            continue
        original = inspect.unwrap(method)
        if inspect.isasyncgenfunction(original) or inspect.isgeneratorfunction(original):
            raise TypeError(
                f"the endpoint {name} is @batched and a generator: batches do not stream"
            )
        params = inspect.signature(method).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise TypeError(f"the @batched endpoint {name} must take named parameters only")
        names.append(name)
    return names


def build_deployment_class(
    entrypoint: type,
    config: ServeReplicaConfig,
    max_models_per_replica: int,
    batching: BatchSettings | None = None,
) -> type:
    """The class Serve runs: ``entrypoint`` (a ``BaseServeDeployment`` subclass) with its
    multiplexed loader, replica config and batch settings.

    Raises ``ValueError`` when ``batching`` is given and no endpoint is ``@batched`` (the
    setting would silently do nothing), ``TypeError`` for an endpoint that cannot batch.
    """
    import inspect

    from ray import serve

    if not (isinstance(entrypoint, type) and callable(getattr(entrypoint, INFER_METHOD, None))):
        raise TypeError(f"entrypoint must be a BaseServeDeployment subclass, got {entrypoint!r}")
    endpoints = batched_endpoints(entrypoint)
    if batching is not None and not endpoints:
        raise ValueError(
            f"max_batch_size is set but no endpoint of {entrypoint.__name__} is marked "
            "@batched (a batched endpoint takes one list per parameter and returns one "
            "output per request)"
        )

    # The loader's name must match the attribute: Serve finds `self` through it.
    async def _synapse_multiplexed_load(self: Any, token: str) -> Any:
        return await self._synapse_load_model(token)

    user_del = getattr(entrypoint, "__del__", None)

    async def _synapse_del(self: Any) -> None:
        # Serve awaits this when it stops the replica (also through serve.ingress's wrapper,
        # which awaits only a coroutine function): the direct endpoint is unregistered, and
        # closed after its calls in flight, before the plugin's own __del__, if any, runs.
        runtime = self.__dict__.get("_synapse_replica")
        if runtime is not None:
            await runtime.close_direct()
        if user_del is not None:
            result = user_del(self)
            if inspect.isawaitable(result):
                await result

    namespace: dict[str, Any] = {
        "__del__": _synapse_del,
        "__module__": entrypoint.__module__,
        "__qualname__": entrypoint.__qualname__,
        "__doc__": entrypoint.__doc__,
        "_synapse_replica_config": config,
        "_synapse_batching": batching,
        "_synapse_multiplexed_load": serve.multiplexed(
            max_num_models_per_replica=max_models_per_replica
        )(_synapse_multiplexed_load),
    }
    cls = type(entrypoint.__name__, (entrypoint,), namespace)
    app = getattr(entrypoint, "app", None)
    if app is not None:
        cls = serve.ingress(app)(cls)
    return typing.cast(type, cls)


def register_plugin_modules_by_value(entrypoint: type) -> None:
    """Ship the plugin's code with the deployment: its modules are not importable in Ray."""
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
