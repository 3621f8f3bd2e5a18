"""Actions of the Ray Data probe plugin."""

from typing import Any

from pydantic import BaseModel
from synapse_sdk.datasets import DatasetRef, LocalDatasets
from synapse_sdk.plugins.actions.inference import BaseInferenceAction
from synapse_sdk.runtime import current_context

from .predictor import RowPredictor


class MapParams(BaseModel):
    dataset: DatasetRef
    batch_size: int = 100
    concurrency: int = 1
    actor_num_cpus: float = 1.0
    record_dir: str | None = None
    fail_at: int | None = None
    delay: float = 0.0
    barrier: int = 0
    # Resolve the dataset reference over these local files, outputs into output_dir (tests
    # that run without the platform's dataset store).
    local_files: dict[str, str] | None = None
    output_dir: str | None = None


class MapAction(BaseInferenceAction[MapParams]):
    """``map_batches`` of RowPredictor over ``dataset`` into the output ``predictions``."""

    def execute(self) -> dict[str, Any]:
        params = self.params
        if params.local_files is not None:
            current_context().datasets = LocalDatasets(
                params.local_files, output_dir=params.output_dir or "."
            )
        result = self.map_batches(
            dataset=params.dataset,
            predictor=RowPredictor,
            predictor_kwargs={
                "record_dir": params.record_dir,
                "fail_at": params.fail_at,
                "delay": params.delay,
                "barrier": params.barrier,
            },
            batch_size=params.batch_size,
            columns=["id", "a", "b", "c"],
            carry_columns=["id", "name"],
            output="predictions",
            concurrency=params.concurrency,
            num_cpus=params.actor_num_cpus,
        )
        return {
            "output": result.output,
            "rows": result.rows,
            "batches": result.batches,
            "runner": type(current_context().batch_runner).__name__,
        }
