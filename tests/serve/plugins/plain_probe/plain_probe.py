"""A deployment with no FastAPI app: every request calls ``infer`` (Serve runs the class as
it is, without ``serve.ingress``'s wrapper)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment


class PlainServe(BaseServeDeployment):
    """Sleeps ``seconds``, then answers with the model's directory name."""

    action_name = "plain"

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        return model_info["path"].name

    async def infer(self, seconds: float = 0.0) -> dict[str, Any]:
        model = await self.get_model()
        await asyncio.sleep(seconds)
        return {"model": model, "slept": seconds}


class PlainParams(BaseModel):
    model: int = 1


class PlainDeploymentAction(BaseDeploymentAction[PlainParams]):
    """Deploys PlainServe."""

    action_name = "deploy_plain"
    entrypoint = PlainServe

    def execute(self) -> dict[str, Any]:
        self.ray_init()
        self.deploy()
        return {"serve_application": self.register_serve_application()}
