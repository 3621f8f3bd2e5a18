"""A dataset action that writes its output, then fails, waits for a cancel, hangs (to be
killed), or succeeds."""

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
    then: Literal["succeed", "fail", "wait", "hang"] = "succeed"
    # With "wait" or "hang": this file is created once the output is written (the test then
    # cancels, or kills the process whose pid "hang" writes into it).
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
        if self.params.then == "hang":
            with open(self.params.written, "w") as fh:
                fh.write(str(os.getpid()))
            time.sleep(60)  # deaf to a cancel: only a kill ends it
            raise TimeoutError("never killed")
        if self.params.then == "wait":
            with open(self.params.written, "w") as fh:
                fh.write("written")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                self.raise_if_cancelled()
                time.sleep(0.02)
            raise TimeoutError("never cancelled")
        return {"rows": result.rows, "exists": os.path.exists(self.params.written or "/")}
