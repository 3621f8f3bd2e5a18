"""A step-based BaseDeploymentAction runs its steps with a DeploymentContext (no Ray here).

The real deploy in step mode, which sets ``deployed``, is covered by tests/serve.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from synapse_sdk.plugins import run_action
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, DeploymentContext
from synapse_sdk.plugins.steps import BaseStep, StepRegistry, StepResult
from synapse_sdk.runtime import RunContext


class Params(BaseModel):
    model: int
    num_cpus: float | None = None
    num_gpus: int = 0


class ConfigureStep(BaseStep[DeploymentContext]):
    @property
    def name(self) -> str:
        return "configure"

    def execute(self, context: DeploymentContext) -> StepResult:
        context.set_progress(1, 1, "initialize")
        return StepResult(
            success=True,
            data={
                "context": type(context).__name__,
                "model_id": context.model_id,
                "app": context.serve_app_name,
                "route": context.route_prefix,
                "options": context.ray_actor_options,
                "params": context.params,
                "deployed": context.deployed,
            },
        )


class StepDeployAction(BaseDeploymentAction[Params]):
    action_name = "deployment"

    def setup_steps(self, registry: StepRegistry[Any]) -> None:
        registry.register(ConfigureStep())


def test_steps_get_a_deployment_context_filled_from_params_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYNAPSE_PLUGIN_RELEASE_CODE", "release-3")
    monkeypatch.setenv("SYNAPSE_PLUGIN_RELEASE_CHECKSUM", "abc")
    result = run_action(StepDeployAction, {"model": 7, "num_cpus": 0}, RunContext())
    (step,) = result["steps"]
    assert step["data"] == {
        "context": "DeploymentContext",
        "model_id": 7,
        "app": "release-3",
        "route": "abc",
        # 0 is kept as 0; an unset option is left out.
        "options": {"num_cpus": 0.0, "num_gpus": 0},
        "params": {"model": 7, "num_cpus": 0.0, "num_gpus": 0},
        "deployed": False,
    }
