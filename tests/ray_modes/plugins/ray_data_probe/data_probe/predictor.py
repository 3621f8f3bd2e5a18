"""A row-wise predictor (exact in any batching) that can record where it ran, fail or dawdle."""

import os
import time
from pathlib import Path

import numpy as np

from .scale import weights


class RowPredictor:
    """y = x @ w (float64, row by row: exact whatever the batch), plus the row sum.

    ``record_dir``: each call writes a file named after the node and the batch's first id.
    ``fail_at``: the batch holding this id raises. ``delay``: seconds to sleep per batch.
    """

    def __init__(self, features=3, record_dir=None, fail_at=None, delay=0.0):
        self.w = weights(features)
        self.record_dir = Path(record_dir) if record_dir else None
        self.fail_at = fail_at
        self.delay = delay
        self.node = ""
        if self.record_dir is not None:
            import ray

            self.node = ray.get_runtime_context().get_node_id()
            (self.record_dir / f"actor-{os.getpid()}-{self.node}").write_text(self.node)

    def __call__(self, batch):
        ids = batch["id"]
        if self.fail_at is not None and self.fail_at in set(ids.tolist()):
            check_row(self.fail_at)
        if self.delay:
            time.sleep(self.delay)
        x = np.stack([batch[name] for name in sorted(k for k in batch if k != "id")], axis=1)
        if self.record_dir is not None:
            (self.record_dir / f"batch-{int(ids[0])}-{self.node}").write_text(self.node)
        return {"y": (x * self.w).sum(axis=1), "double_id": ids * 2}


def check_row(row):
    raise ValueError(f"cannot predict row {row}")
