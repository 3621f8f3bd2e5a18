"""Step-based batch inference: load the model, infer in batches, postprocess (weighted).

The model itself is resolved before the steps (``prepare_context`` puts its local directory in
``context.model_path``); the load step turns that directory into a torch module
(``_model_files.load_model_dir``: safetensors, torch.export or TorchScript).
"""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from synapse_sdk.plugins.actions.inference import BaseInferenceAction, InferenceContext
from synapse_sdk.plugins.steps import BaseStep, StepRegistry, StepResult

from ._batching import infer_batch, iter_batches
from ._model_files import load_model_dir


class StepBatchInferenceParams(BaseModel):
    model_id: int
    inputs: list[dict[str, Any]]
    batch_size: int = Field(default=32, gt=0)
    # Round predictions to this many decimals in the postprocess step; None keeps them.
    round_digits: int | None = Field(default=None, ge=0)


@dataclass
class BatchContext(InferenceContext):
    """The document's InferenceContext plus the loaded torch module."""

    module: Any = None


class LoadModelStep(BaseStep[BatchContext]):
    @property
    def name(self) -> str:
        return "load_model"

    @property
    def progress_weight(self) -> float:
        return 0.1

    def execute(self, context: BatchContext) -> StepResult:
        if context.model_path is None:
            return StepResult(success=False, error="no model_path: the run has no model backend")
        module = load_model_dir(context.model_path)
        module.eval()
        context.module = module
        return StepResult(success=True, data={"model_path": str(context.model_path)})


class InferenceStep(BaseStep[BatchContext]):
    @property
    def name(self) -> str:
        return "inference"

    @property
    def progress_weight(self) -> float:
        return 0.8

    def execute(self, context: BatchContext) -> StepResult:
        module = context.module
        total = max(1, -(-len(context.requests) // context.batch_size))
        for index, batch in enumerate(iter_batches(context.requests, context.batch_size), 1):
            context.raise_if_cancelled()
            context.results.extend(infer_batch(module, batch))
            context.processed_count += len(batch)
            context.set_progress(index, total, "inference")
        return StepResult(success=True, data={"batches": total})


class PostprocessStep(BaseStep[BatchContext]):
    @property
    def name(self) -> str:
        return "postprocess"

    @property
    def progress_weight(self) -> float:
        return 0.1

    def execute(self, context: BatchContext) -> StepResult:
        digits = context.params.get("round_digits")
        for item in context.results:
            prediction = item["prediction"]
            item["label"] = max(range(len(prediction)), key=prediction.__getitem__)
            if digits is not None:
                item["prediction"] = [round(v, digits) for v in prediction]
        context.module = None
        return StepResult(success=True)


class StepBatchInferenceAction(BaseInferenceAction[StepBatchInferenceParams]):
    """Step-based batch inference over a registered torch model."""

    action_name = "batch_inference_steps"

    def create_context(self) -> BatchContext:
        base = super().create_context()
        return BatchContext(**{f: getattr(base, f) for f in base.__dataclass_fields__})

    def setup_steps(self, registry: StepRegistry[BatchContext]) -> None:
        registry.register(LoadModelStep())
        registry.register(InferenceStep())
        registry.register(PostprocessStep())
