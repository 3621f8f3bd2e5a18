"""Echoes every tensor it is given (any dtype), or answers JSON, sleeps or fails on request."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment


class OipProbe(BaseServeDeployment):
    """``POST /`` (what ModelInfer calls): the tensors back under their own names."""

    action_name = "probe"

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        return model_info["path"].name

    async def infer(self, answer: str = "tensors", sleep: float = 0.0, **tensors: Any) -> Any:
        if sleep:
            await asyncio.sleep(sleep)
        if answer == "json":
            return {n: {"shape": list(t.shape), "dtype": str(t.dtype)} for n, t in tensors.items()}
        if answer == "boom":
            raise RuntimeError("secret internal detail")
        return dict(tensors)


class ProbeParams(BaseModel):
    model: int
    num_cpus: float = 0


class ProbeDeploymentAction(BaseDeploymentAction[ProbeParams]):
    """Deploys OipProbe."""

    action_name = "deploy_probe"
    entrypoint = OipProbe

    def execute(self) -> dict[str, Any]:
        self.deploy()
        return {"serve_application": self.register_serve_application()}
