"""Synapse SDK: write plugin actions once, run them on the console, in tests or on the platform.

Start with :mod:`synapse_sdk.plugins` (actions, plugin loading, ``run_action``),
:mod:`synapse_sdk.plugins.actions.inference` and :mod:`synapse_sdk.plugins.steps`.
"""

from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
    ActionNotFoundError,
    FieldViolation,
    ModelBackendUnavailableError,
    ModelNotFoundError,
    ParamsValidationError,
    PluginConfigError,
    PluginNotFoundError,
    ProgressError,
    ResultNotSerializableError,
    StepRegistryError,
    SynapseError,
)
from synapse_sdk.runtime import RunContext, current_context, is_cancelled, run_context

__all__ = [
    "ActionCancelledError",
    "ActionFailedError",
    "ActionNotFoundError",
    "FieldViolation",
    "ModelBackendUnavailableError",
    "ModelNotFoundError",
    "ParamsValidationError",
    "PluginConfigError",
    "PluginNotFoundError",
    "ProgressError",
    "ResultNotSerializableError",
    "RunContext",
    "StepRegistryError",
    "SynapseError",
    "current_context",
    "is_cancelled",
    "run_context",
]
