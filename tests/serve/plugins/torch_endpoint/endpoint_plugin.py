"""A ``torch.export`` endpoint and its deployment action (the serve action is ``inference``).

The model directory holds ``model.pt2``: the program keeps its graph, so the replica needs no
class of the model (the example plugins' loader, which also reads safetensors weights into
their own class, is tested with the torch-serve example).
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment

app = FastAPI()


class TorchEndpoint(BaseServeDeployment):
    """Predicts with the requested exported model (a float32 batch in, a batch out)."""

    action_name = "inference"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        import torch

        # An exported program runs as exported (eval mode); its module refuses eval().
        return torch.export.load(str(model_info["path"] / "model.pt2")).module()

    @app.post("/")
    async def infer(self, inputs: list[dict]) -> list[dict]:
        import torch

        model = await self.get_model()
        batch = torch.tensor([i["data"] for i in inputs], dtype=torch.float32)
        with torch.no_grad():
            return [{"prediction": row} for row in model(batch).tolist()]


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
