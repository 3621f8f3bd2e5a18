"""The reference document's "Example: Model Deployment", with two changes.

* ``_get_model`` loads with ``load_model_dir`` (a safetensors ``state_dict``, a
  ``torch.export`` program or TorchScript) instead of the document's ``torch.load`` of a
  pickled module, which can run code and which torch refuses by default since 2.6 (see
  ``_model_files``);
* ``DeploymentParams`` adds ``num_cpus`` and defaults ``num_gpus`` to 0, so it deploys on a
  CPU-only machine.

Everything else (FastAPI app, ``get_model()``, the deployment action) is the document's code.
"""

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import (
    BaseDeploymentAction,
    BaseServeDeployment,
)

from ._model_files import load_model_dir

app = FastAPI()


class PyTorchInference(BaseServeDeployment):
    """PyTorch inference deployment.

    The @serve.deployment and @serve.ingress(app) decorators are applied
    automatically by BaseDeploymentAction.deploy().
    """

    action_name = "inference"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        model = load_model_dir(model_info["path"])
        model.eval()
        return model

    @app.post("/")
    async def infer(self, inputs: list[dict]) -> list[dict]:
        model = await self.get_model()

        import torch

        results = []
        for inp in inputs:
            tensor = torch.tensor(inp["data"])
            with torch.no_grad():
                prediction = model(tensor)
            results.append({"prediction": prediction.tolist()})

        return results


class DeploymentParams(BaseModel):
    model: int
    num_gpus: int = 0
    num_cpus: float = 1


class MyDeploymentAction(BaseDeploymentAction[DeploymentParams]):
    """Deploy PyTorch model to Ray Serve."""

    action_name = "deployment"
    entrypoint = PyTorchInference

    def execute(self) -> dict[str, Any]:
        # Initialize Ray
        self.ray_init()
        self.set_progress(1, 3, self.progress.INITIALIZE)

        # Deploy to Ray Serve
        self.deploy()
        self.set_progress(2, 3, self.progress.DEPLOY)

        # Register with backend
        app_id = self.register_serve_application()
        self.set_progress(3, 3, self.progress.REGISTER)

        return {"serve_application": app_id}
