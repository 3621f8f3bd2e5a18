"""Batch inference over a stored dataset: the model runs batch by batch over the rows of a
Parquet (or JSON Lines, or .npy) dataset and writes a Parquet output, ``predictions``.

Nothing travels as JSON: the platform hands the runner a local copy of the dataset, the
runner reads it in ``batch_size`` slices as numpy arrays, and each batch's predictions are
appended to the output file as they come. The output has one row per input row, in input
order, with the input's ``id`` column first when it has one. The model is loaded once per
predictor (once per worker process here; once per actor where a runner runs a pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from synapse_sdk.datasets import DatasetRef
from synapse_sdk.plugins.actions.inference import BaseInferenceAction
from synapse_sdk.runtime import current_context

from ._model_files import load_model_dir

#: The input column carried to the output, when the dataset has it.
ID_COLUMN = "id"
OUTPUT = "predictions"


class DatasetInferenceParams(BaseModel):
    model_id: int
    dataset: DatasetRef
    batch_size: int = Field(default=1024, gt=0)
    # One column holding each row's feature vector (a list column, or a 2-D .npy's "data"),
    # or several scalar columns stacked in this order.
    feature_columns: list[str] = Field(default_factory=lambda: ["data"], min_length=1)
    # Intra-op threads for torch; None keeps torch's default.
    num_threads: int | None = Field(default=None, gt=0)


class MLPPredictor:
    """Loads the model once; maps a batch of feature columns to a ``prediction`` column."""

    def __init__(
        self, model_dir: str, feature_columns: list[str], num_threads: int | None = None
    ) -> None:
        import torch

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self._torch = torch
        self._model = load_model_dir(Path(model_dir))
        self._model.eval()
        self._columns = list(feature_columns)

    def features(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The batch's feature matrix, ``(rows, features)`` float32."""
        if len(self._columns) == 1:
            matrix = np.asarray(batch[self._columns[0]])
            if matrix.ndim == 1:
                matrix = matrix.reshape(-1, 1)
        else:
            matrix = np.stack([np.asarray(batch[c]) for c in self._columns], axis=1)
        # A copy: Arrow's buffers are read-only, which torch warns about (a few bytes a row).
        return np.array(matrix, dtype=np.float32, order="C", copy=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        inputs = self._torch.from_numpy(self.features(batch))
        with self._torch.no_grad():
            predictions = self._model(inputs)
        return {"prediction": predictions.numpy()}


class DatasetInferenceAction(BaseInferenceAction[DatasetInferenceParams]):
    """Batch inference over a dataset, writing job output ``predictions`` (Parquet)."""

    action_name = "batch_inference_dataset"

    def execute(self) -> dict[str, Any]:
        params = self.params
        model_info = self.load_model(params.model_id)
        datasets = current_context().datasets
        # Which columns the dataset has decides whether its ids ride along; the platform
        # resolves the reference once (map_batches gets the same local copy).
        columns = datasets.resolve(params.dataset).columns if datasets is not None else ()
        missing = [c for c in params.feature_columns if c not in columns]
        if datasets is not None and missing:
            raise ValueError(
                f"feature_columns {missing} are not columns of the dataset (it has "
                f"{list(columns)[:20]})"
            )
        carry = (
            [ID_COLUMN] if ID_COLUMN in columns and ID_COLUMN not in params.feature_columns else []
        )
        result = self.map_batches(
            dataset=params.dataset,
            predictor=MLPPredictor,
            predictor_kwargs={
                "model_dir": str(model_info["path"]),
                "feature_columns": params.feature_columns,
                "num_threads": params.num_threads,
            },
            batch_size=params.batch_size,
            batch_format="numpy",
            columns=params.feature_columns,
            carry_columns=carry,
            output=OUTPUT,
        )
        return {"output": result.output, "rows": result.rows, "batches": result.batches}
