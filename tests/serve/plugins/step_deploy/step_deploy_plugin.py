"""A step-mode BaseDeploymentAction: its steps share a DeploymentContext."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import (
    BaseDeploymentAction,
    BaseServeDeployment,
    DeploymentContext,
)
from synapse_sdk.plugins.steps import BaseStep, StepRegistry, StepResult

app = FastAPI()


class PongServe(BaseServeDeployment):
    """Answers without a model."""

    action_name = "pong"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        return model_info

    @app.post("/")
    async def infer(self) -> str:
        return "pong"


class Params(BaseModel):
    model: int = 1
    num_cpus: float = 0


class ConfigureStep(BaseStep[DeploymentContext]):
    @property
    def name(self) -> str:
        return "configure"

    @property
    def progress_weight(self) -> float:
        return 0.2

    def execute(self, context: DeploymentContext) -> StepResult:
        return StepResult(
            success=True,
            data={"context": type(context).__name__, "deployed": context.deployed},
        )


class DeployStep(BaseStep[DeploymentContext]):
    def __init__(self, action: StepDeploymentAction) -> None:
        self._action = action

    @property
    def name(self) -> str:
        return "deploy"

    @property
    def progress_weight(self) -> float:
        return 0.6

    def execute(self, context: DeploymentContext) -> StepResult:
        self._action.ray_init()
        self._action.deploy()
        return StepResult(
            success=True,
            data={
                "deployed": context.deployed,
                "app": context.serve_app_name,
                "options": context.ray_actor_options,
            },
        )


class RegisterStep(BaseStep[DeploymentContext]):
    def __init__(self, action: StepDeploymentAction) -> None:
        self._action = action

    @property
    def name(self) -> str:
        return "register"

    @property
    def progress_weight(self) -> float:
        return 0.2

    def execute(self, context: DeploymentContext) -> StepResult:
        app_id = self._action.register_serve_application()
        return StepResult(success=True, data={"id": app_id, "context_id": context.serve_app_id})


class StepDeploymentAction(BaseDeploymentAction[Params]):
    """Deploys PongServe in three steps."""

    action_name = "deploy_steps"
    entrypoint = PongServe

    def setup_steps(self, registry: StepRegistry[Any]) -> None:
        registry.register(ConfigureStep())
        registry.register(DeployStep(self))
        registry.register(RegisterStep(self))
