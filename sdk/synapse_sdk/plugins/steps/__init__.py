"""Step-based actions: register steps in ``setup_steps`` and the orchestrator runs them.

Import path kept from the reference document: ``synapse_sdk.plugins.steps``.
"""

from synapse_sdk.plugins.steps._base import BaseStep, BaseStepContext, StepResult
from synapse_sdk.plugins.steps._orchestrator import StepOrchestrator, StepOutcome
from synapse_sdk.plugins.steps._registry import StepRegistry

__all__ = [
    "BaseStep",
    "BaseStepContext",
    "StepOrchestrator",
    "StepOutcome",
    "StepRegistry",
    "StepResult",
]
