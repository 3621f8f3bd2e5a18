"""An endpoint that takes and answers binary tensors, and its deployment action.

The endpoint has no FastAPI app: the platform calls ``infer`` for ``POST /``, which is the
route an Open Inference Protocol ``ModelInfer`` reaches. Tensors arrive as keyword arguments
named after them (read-only numpy arrays) and a dict of arrays is answered as tensors; other
keyword arguments come from the JSON payload of an ``Infer`` call or from the ``parameters``
of a ``ModelInfer`` request.
"""

import json
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment

from ._model_files import load_model_dir


class TensorInference(BaseServeDeployment):
    """Runs the requested MLP on ``input`` (``[batch, in_features]``, any numeric type)."""

    action_name = "inference"

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        model = load_model_dir(model_info["path"])
        model.eval()
        config = json.loads((model_info["path"] / "config.json").read_text())
        return model, int(config["in_features"])

    async def infer(self, input: Any, scale: float = 1.0) -> dict[str, Any]:
        """``output`` = the model's prediction for each row of ``input``, times ``scale``."""
        import numpy as np
        import torch

        model, in_features = await self.get_model()
        if input.ndim != 2 or input.shape[1] != in_features:
            # A 4xx answer is the caller's mistake: INVALID_ARGUMENT, with this text.
            raise HTTPException(
                status_code=400,
                detail=f"input must have shape [batch, {in_features}], got {list(input.shape)}",
            )
        if isinstance(input, torch.Tensor):  # bfloat16 arrives as torch (numpy has none)
            batch = input.float()
        else:
            # The array is read-only (it views the request's bytes): copy it for torch.
            batch = torch.tensor(np.asarray(input, dtype=np.float32))
        with torch.no_grad():
            prediction = model(batch)
        return {"output": (prediction * scale).numpy()}


class TensorDeploymentParams(BaseModel):
    model: int
    num_cpus: float = 1


class TensorDeploymentAction(BaseDeploymentAction[TensorDeploymentParams]):
    """Deploy the tensor endpoint to Ray Serve and register it."""

    action_name = "deployment"
    entrypoint = TensorInference

    def execute(self) -> dict[str, Any]:
        self.deploy()
        return {"serve_application": self.register_serve_application()}
