"""The plugin-author API: actions, plugin loading and the runner.

``BaseAction`` and the step classes define actions; ``load_plugin`` / ``discover_plugins``
find them; ``run_action`` runs one inside a :class:`~synapse_sdk.runtime.RunContext`.
"""

from synapse_sdk.plugins._action import (
    AnyParams,
    BaseAction,
    check_params_json,
    validate_params,
    validate_params_json,
)
from synapse_sdk.plugins._loader import (
    ActionSpec,
    Plugin,
    discover_plugins,
    load_plugin,
    plugin_directories,
    unload_plugin,
)
from synapse_sdk.plugins._models import LocalModelBackend, ModelPath
from synapse_sdk.plugins._runner import params_json_schema, params_model, run_action
from synapse_sdk.plugins._unknown import unknown_params_keys, unknown_params_warnings
from synapse_sdk.plugins.enums import PluginCategory

__all__ = [
    "ActionSpec",
    "AnyParams",
    "BaseAction",
    "LocalModelBackend",
    "ModelPath",
    "Plugin",
    "PluginCategory",
    "check_params_json",
    "discover_plugins",
    "load_plugin",
    "params_json_schema",
    "params_model",
    "plugin_directories",
    "run_action",
    "unknown_params_keys",
    "unknown_params_warnings",
    "unload_plugin",
    "validate_params",
    "validate_params_json",
]
