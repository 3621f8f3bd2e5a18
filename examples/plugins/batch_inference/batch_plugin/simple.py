"""The reference document's BatchInferenceAction, extended with progress per batch.

Two deliberate changes from the document's code: the model is loaded by ``load_model_dir``
(a safetensors ``state_dict``, a ``torch.export`` program or TorchScript; never a pickled module,
which the document's ``torch.load`` expects: see ``_model_files``), and ``set_progress`` is
called after every batch instead of once after the loop.
"""

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from synapse_sdk.plugins.actions.inference import BaseInferenceAction

from ._batching import run_batches
from ._model_files import load_model_dir


class BatchInferenceParams(BaseModel):
    model_id: int
    inputs: list[dict[str, Any]]
    batch_size: int = Field(default=32, gt=0)
    # Intra-op threads for torch; None keeps torch's default.
    num_threads: int | None = Field(default=None, gt=0)


class BatchInferenceAction(BaseInferenceAction[BatchInferenceParams]):
    """Batch inference action for PyTorch models."""

    action_name = "batch_inference"

    def execute(self) -> dict[str, Any]:
        if self.params.num_threads is not None:
            torch.set_num_threads(self.params.num_threads)

        # Step 1: Load model
        model_info = self.load_model(self.params.model_id)
        model_path = Path(model_info["path"])
        model = load_model_dir(model_path)
        model.eval()
        self.set_progress(1, 3, self.progress.MODEL_LOAD)

        # Step 2: Run inference in batches, reporting progress after each batch
        results = run_batches(
            model,
            self.params.inputs,
            self.params.batch_size,
            on_batch=lambda done, total: self.set_progress(done, total, self.progress.INFERENCE),
        )

        # Step 3: Post-process
        self.set_progress(3, 3, self.progress.POSTPROCESS)

        return {
            "results": results,
            "processed_count": len(results),
        }
