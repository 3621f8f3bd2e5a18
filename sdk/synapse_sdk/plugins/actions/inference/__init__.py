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
from synapse_sdk.plugins.actions.inference._serve import BaseServeDeployment
from synapse_sdk.serving._batching import batched
from synapse_sdk.serving.model_ids import create_serve_multiplexed_model_id

__all__ = [
    "BaseDeploymentAction",
    "BaseInferenceAction",
    "BaseServeDeployment",
    "DeploymentContext",
    "DeploymentProgressCategories",
    "InferenceContext",
    "InferenceProgressCategories",
    "ModelPath",
    "batched",
    "create_serve_multiplexed_model_id",
]
