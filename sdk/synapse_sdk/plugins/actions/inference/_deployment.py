"""Deployment actions: configuration side of ``BaseDeploymentAction`` and its step context.

``ray_init``, ``deploy`` and ``register_serve_application`` import Ray only when called; the
deployment mechanics (multiplexed loader, candidate-then-replace rollout) are in
``synapse_sdk.serving._deploy``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from synapse_sdk.plugins._action import BaseAction, P
from synapse_sdk.plugins._models import LocalModelBackend
from synapse_sdk.plugins.enums import PluginCategory
from synapse_sdk.plugins.steps import BaseStepContext
from synapse_sdk.runtime import current_context
from synapse_sdk.serving._deploy import (
    RELEASE_CHECKSUM_ENV,
    RELEASE_CODE_ENV,
    REPLICA_PLATFORM_ADDRESS_ENV,
)

logger = logging.getLogger(__name__)

__all__ = ["BaseDeploymentAction", "DeploymentContext", "DeploymentProgressCategories"]

_ACTOR_OPTION_KEYS = ("num_cpus", "num_gpus", "memory")


@dataclass(frozen=True)
class DeploymentProgressCategories:
    """Progress categories of a deployment run."""

    INITIALIZE: str = "initialize"
    DEPLOY: str = "deploy"
    REGISTER: str = "register"


@dataclass
class DeploymentContext(BaseStepContext):
    """State shared by the steps of a step-based deployment run (fields as documented)."""

    params: dict[str, Any] = field(default_factory=dict)
    model_id: int | None = None
    model: dict[str, Any] | None = None
    model_path: str | None = None
    serve_app_name: str | None = None
    serve_app_id: int | None = None
    route_prefix: str | None = None
    ray_actor_options: dict[str, Any] = field(default_factory=dict)
    deployed: bool = False


class BaseDeploymentAction(BaseAction[P]):
    """Base class of Ray Serve deployment actions (configuration methods only here)."""

    category = PluginCategory.NEURAL_NET
    progress = DeploymentProgressCategories()
    entrypoint: type | None = None

    def get_serve_app_name(self) -> str:
        """Serve application name: ``SYNAPSE_PLUGIN_RELEASE_CODE``, else plugin code/action."""
        from_env = os.environ.get(RELEASE_CODE_ENV)
        if from_env:
            return from_env
        plugin = current_context().plugin_code
        action = self.action_name or type(self).__name__
        return f"{plugin}-{action}" if plugin else action

    def get_route_prefix(self) -> str | None:
        """URL route prefix: ``SYNAPSE_PLUGIN_RELEASE_CHECKSUM`` (None when unset)."""
        return os.environ.get(RELEASE_CHECKSUM_ENV) or None

    def get_ray_actor_options(self) -> dict[str, Any]:
        """``num_cpus``, ``num_gpus`` and ``memory`` from params; 0 is kept, absent is omitted."""
        params = self.params.model_dump()
        return {key: params[key] for key in _ACTOR_OPTION_KEYS if params.get(key) is not None}

    def get_runtime_env(self) -> dict[str, Any]:
        """Ray runtime environment for the deployment; empty by default."""
        return {}

    # Step mode -----------------------------------------------------------------------------

    def create_context(self) -> DeploymentContext:
        """Build the step context: the params, the model id (``model_id`` or ``model``) and the
        application name, route prefix and actor options :meth:`deploy` will use.

        :meth:`deploy` sets ``deployed`` (and the values it actually used) on it, and
        :meth:`register_serve_application` sets ``serve_app_id``. Override to fill it
        differently.
        """
        params = self.params.model_dump()
        model_id = params.get("model_id", params.get("model"))
        return DeploymentContext(
            params=params,
            model_id=model_id
            if isinstance(model_id, int) and not isinstance(model_id, bool)
            else None,
            serve_app_name=self.get_serve_app_name(),
            route_prefix=self.get_route_prefix(),
            ray_actor_options=self.get_ray_actor_options(),
        )

    def prepare_context(self, context: BaseStepContext) -> None:
        """Remember the run's deployment context, for :meth:`deploy` and registration."""
        super().prepare_context(context)
        if isinstance(context, DeploymentContext):
            self._deployment_context = context

    def _step_context(self) -> DeploymentContext | None:
        return getattr(self, "_deployment_context", None)

    # Ray Serve -------------------------------------------------------------------------------

    def get_serve_options(self) -> dict[str, Any]:
        """``serve.deployment`` options: the ``serve:`` mapping of the plugin's config.yaml.

        Recognised keys are Serve's (``num_replicas``, ``max_ongoing_requests``,
        ``max_queued_requests``, ``autoscaling_config`` ...) plus ``max_models_per_replica``
        (the multiplexing LRU size) and dynamic batching: ``max_batch_size``,
        ``batch_wait_timeout_s`` (default 0.01) and ``max_concurrent_batches`` (default 1),
        which apply to the endpoints marked ``@batched``.
        """
        return _plugin_serve_config(type(self))

    def ray_init(self, **kwargs: Any) -> None:
        """Connect to Ray: ``address`` from kwargs, else ``RAY_ADDRESS`` (which the platform
        sets to its own Ray); with neither, a local Ray is started for this process only."""
        import ray

        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options: dict[str, Any] = {"log_to_driver": False, **kwargs}
        address = options.pop("address", None) or os.environ.get("RAY_ADDRESS")
        if address:
            options["address"] = address
        else:
            logger.warning(
                "no Ray address configured: starting a local Ray; its Serve applications end "
                "with this process"
            )
            options.setdefault("include_dashboard", False)
        ray.init(**options)

    def deploy(self, **serve_overrides: Any) -> None:
        """Deploy :attr:`entrypoint` to Ray Serve and wait until it is RUNNING.

        Uses :meth:`get_serve_app_name`, :meth:`get_route_prefix`,
        :meth:`get_ray_actor_options` (0 kept as 0), :meth:`get_runtime_env` and
        :meth:`get_serve_options`; ``serve_overrides`` replace serve options for this
        deployment only (e.g. ``self.deploy(max_batch_size=self.params.batch_size)``).
        Unless set, ``max_queued_requests`` is ``DEFAULT_MAX_QUEUED_REQUESTS`` (1024), and with
        batching ``max_ongoing_requests`` is twice ``max_batch_size`` x
        ``max_concurrent_batches``, so that a replica can hold a full batch while the previous
        one runs. An application of the same name keeps serving until the new version has
        started; a failed deployment raises ``ServeDeploymentError`` with Ray Serve's reason,
        and a bad batching option ``ValueError`` naming it, before anything is deployed.
        """
        from synapse_sdk.plugins.actions.inference._serve import BaseServeDeployment
        from synapse_sdk.runtime import PlatformInfo
        from synapse_sdk.serving._batching import BATCH_OPTION_KEYS, BatchSettings
        from synapse_sdk.serving._deploy import (
            DEFAULT_MAX_QUEUED_REQUESTS,
            build_deployment_class,
            register_plugin_modules_by_value,
            replica_runtime_env,
            run_serve_application,
        )
        from synapse_sdk.serving._replica import ServeReplicaConfig
        from synapse_sdk.serving.model_ids import (
            SERVE_SIGNING_KEY_ENV,
            SERVE_TENANT_ENV,
            ServeModelIdError,
            derive_app_key,
        )

        entrypoint = self.entrypoint
        if not (isinstance(entrypoint, type) and issubclass(entrypoint, BaseServeDeployment)):
            raise TypeError(
                f"{type(self).__name__}.entrypoint must be a BaseServeDeployment subclass, "
                f"got {entrypoint!r}"
            )
        key_hex = os.environ.get(SERVE_SIGNING_KEY_ENV, "")
        if not key_hex:
            raise ServeModelIdError(
                f"deploy() needs the platform's serve signing key ({SERVE_SIGNING_KEY_ENV}); "
                "run the deployment action through a synapse server"
            )
        self.ray_init()
        app_name = self.get_serve_app_name()
        route_prefix = _normalise_prefix(self.get_route_prefix())
        tenant = os.environ.get(SERVE_TENANT_ENV, "")
        ctx = self.run_context
        platform = None
        if ctx.platform is not None:
            # The replicas never get the worker's credential: signed model ids are theirs.
            platform = PlatformInfo(
                address=os.environ.get(REPLICA_PLATFORM_ADDRESS_ENV) or ctx.platform.address,
                tls=ctx.platform.tls,
                root_certificates=ctx.platform.root_certificates,
                tenant=ctx.platform.tenant,
            )
        # Without a platform, replicas read local model directories (``--models-dir`` runs).
        models_dir = (
            ctx.model_backend.root
            if platform is None and isinstance(ctx.model_backend, LocalModelBackend)
            else None
        )
        config = ServeReplicaConfig(
            app_name=app_name,
            app_key=derive_app_key(bytes.fromhex(key_hex), app_name),
            tenant=tenant,
            platform=platform,
            models_dir=None if models_dir is None else str(models_dir),
        )
        serve_options = {**self.get_serve_options(), **serve_overrides}
        max_models = int(
            serve_options.pop("max_models_per_replica", entrypoint.max_models_per_replica)
        )
        batching = BatchSettings.from_options(serve_options)
        for key in BATCH_OPTION_KEYS:
            serve_options.pop(key, None)
        serve_options.setdefault("max_queued_requests", DEFAULT_MAX_QUEUED_REQUESTS)
        if batching is not None:
            per_replica = batching.max_batch_size * batching.max_concurrent_batches
            ongoing = serve_options.setdefault("max_ongoing_requests", max(2 * per_replica, 5))
            if isinstance(ongoing, int) and ongoing < per_replica:
                logger.warning(
                    "max_ongoing_requests (%d) is below max_batch_size x max_concurrent_batches "
                    "(%d): a replica never holds enough requests to fill its batches",
                    ongoing,
                    per_replica,
                )
        actor_options = dict(self.get_ray_actor_options())
        actor_options["runtime_env"] = replica_runtime_env(self.get_runtime_env())
        deployment_cls = build_deployment_class(entrypoint, config, max_models, batching)
        register_plugin_modules_by_value(entrypoint)
        run_serve_application(
            deployment_cls,
            app_name=app_name,
            route_prefix=route_prefix,
            ray_actor_options=actor_options,
            serve_options=serve_options,
            init_args=(platform.address if platform is not None else "",),
        )
        used_options = {k: v for k, v in actor_options.items() if k != "runtime_env"}
        self._serve_deployed = {
            "name": app_name,
            "route_prefix": route_prefix or "",
            "ray_actor_options": used_options,
        }
        context = self._step_context()
        if context is not None:
            context.deployed = True
            context.serve_app_name = app_name
            context.route_prefix = route_prefix
            context.ray_actor_options = dict(used_options)
        logger.info("deployed serve application %s", app_name)

    def register_serve_application(self) -> int | None:
        """Record the deployed application with the platform; its id, or None outside one."""
        deployed = getattr(self, "_serve_deployed", None)
        if deployed is None:
            raise RuntimeError("register_serve_application() needs a successful deploy() first")
        ctx = self.run_context
        if ctx.platform is None:
            logger.info("no platform to register %s with", deployed["name"])
            return None
        entrypoint = self.entrypoint
        model = self.params.model_dump().get("model")
        model_ids = [int(model)] if isinstance(model, int) and not isinstance(model, bool) else []
        with ctx.platform.client() as client:
            info, _ = client.register_deployment(
                deployed["name"],
                ctx.plugin_code or "",
                # The job's action as the platform named it: a worker registers for its own
                # job only, and a class's action_name may differ from its config.yaml key.
                ctx.action_name or self.action_name or "",
                job_id=ctx.job_id or "",
                route_prefix=deployed["route_prefix"],
                model_ids=model_ids,
                ray_actor_options=deployed["ray_actor_options"],
                endpoint_action=getattr(entrypoint, "action_name", "") or "",
            )
        context = self._step_context()
        if context is not None:
            context.serve_app_id = info.id
        return info.id


def _normalise_prefix(prefix: str | None) -> str | None:
    if not prefix:
        return None
    return prefix if prefix.startswith("/") else f"/{prefix}"


def _plugin_serve_config(action_cls: type) -> dict[str, Any]:
    import sys
    from pathlib import Path

    import yaml

    module = sys.modules.get(action_cls.__module__)
    file = getattr(module, "__file__", None)
    if not file:
        return {}
    for directory in list(Path(file).resolve().parents)[:3]:
        config = directory / "config.yaml"
        if config.is_file():
            raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
            serve = raw.get("serve") if isinstance(raw, dict) else None
            return dict(serve) if isinstance(serve, dict) else {}
    return {}
