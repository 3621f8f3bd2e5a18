"""Deployment actions: configuration side of ``BaseDeploymentAction`` and its step context.

The Ray-dependent parts (``ray_init``, ``deploy``, ``register_serve_application`` and the
serve deployment classes) live with the Ray Serve integration; this module needs no Ray.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from synapse_sdk.plugins._action import BaseAction, P
from synapse_sdk.plugins.enums import PluginCategory
from synapse_sdk.plugins.steps import BaseStepContext
from synapse_sdk.runtime import current_context

logger = logging.getLogger(__name__)

__all__ = ["BaseDeploymentAction", "DeploymentContext", "DeploymentProgressCategories"]

RELEASE_CODE_ENV = "SYNAPSE_PLUGIN_RELEASE_CODE"
RELEASE_CHECKSUM_ENV = "SYNAPSE_PLUGIN_RELEASE_CHECKSUM"
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
