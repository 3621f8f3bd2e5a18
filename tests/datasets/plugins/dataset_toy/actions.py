"""A dataset action that writes its output, then fails, waits for a cancel, or succeeds."""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel
from synapse_sdk.datasets import DatasetRef
from synapse_sdk.plugins.actions.inference import BaseInferenceAction


class CopyThenParams(BaseModel):
    dataset: DatasetRef
    then: Literal["succeed", "fail", "wait"] = "succeed"
    # With "wait": this file is created once the output is written (the test then cancels).
    written: str = ""


class Doubler:
    """Doubles column ``x``."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"doubled": np.asarray(batch["x"]) * 2}


class CopyThenAction(BaseInferenceAction[CopyThenParams]):
    action_name = "copy_then"

    def execute(self) -> dict[str, Any]:
        result = self.map_batches(
            dataset=self.params.dataset,
            predictor=Doubler,
            batch_size=64,
            columns=["x"],
            carry_columns=["id"],
            output="doubled",
        )
        if self.params.then == "fail":
            raise RuntimeError("failing after the output was written")
        if self.params.then == "wait":
            with open(self.params.written, "w") as fh:
                fh.write("written")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                self.raise_if_cancelled()
                time.sleep(0.02)
            raise TimeoutError("never cancelled")
        return {"rows": result.rows, "exists": os.path.exists(self.params.written or "/")}
