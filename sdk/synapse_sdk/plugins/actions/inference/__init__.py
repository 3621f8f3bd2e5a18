"""Inference actions: batch (``BaseInferenceAction``) and deployment configuration.

Import path kept from the reference document: ``synapse_sdk.plugins.actions.inference``.
"""

from synapse_sdk.plugins._models import ModelPath
from synapse_sdk.plugins.actions.inference._deployment import (
    BaseDeploymentAction,
    DeploymentContext,
    DeploymentProgressCategories,
)
from synapse_sdk.plugins.actions.inference._inference import (
    BaseInferenceAction,
    InferenceContext,
    InferenceProgressCategories,
)

__all__ = [
    "BaseDeploymentAction",
    "BaseInferenceAction",
    "DeploymentContext",
    "DeploymentProgressCategories",
    "InferenceContext",
    "InferenceProgressCategories",
    "ModelPath",
]
