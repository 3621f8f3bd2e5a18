"""A TorchScript endpoint and its deployment action (the serve action is ``inference``)."""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment

app = FastAPI()


class TorchEndpoint(BaseServeDeployment):
    """Predicts with the requested TorchScript model."""

    action_name = "inference"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        import torch

        model = torch.jit.load(str(model_info["path"] / "model.pt"))
        model.eval()
        return model

    @app.post("/")
    async def infer(self, inputs: list[dict]) -> list[dict]:
        import torch

        model = await self.get_model()
        with torch.no_grad():
            return [{"prediction": model(torch.tensor(i["data"])).tolist()} for i in inputs]


class EndpointParams(BaseModel):
    model: int
    num_cpus: float = 0


class EndpointDeploymentAction(BaseDeploymentAction[EndpointParams]):
    """Deploy the endpoint and register it."""

    action_name = "deployment"
    entrypoint = TorchEndpoint

    def execute(self) -> dict[str, Any]:
        self.deploy()
        return {"serve_application": self.register_serve_application()}
