"""Row-wise predictors (exact in any batching) that record where they ran, fail or dawdle."""

import os
import time
from pathlib import Path

import numpy as np

from .scale import weights


class RowPredictor:
    """y = x @ w (float64, row by row: exact whatever the batch), plus the doubled id.

    ``record_dir``: each actor writes ``actor-<pid>-<node>`` once and each call writes
    ``batch-<first id>-<node>``. ``fail_at``: the batch holding this id raises (from
    ``check_row``, so the traceback names a plugin function). ``delay``: seconds per batch.
    ``barrier``: the constructor returns once that many actors have recorded themselves, so
    that no actor of the pool gets every batch before the others are ready.
    """

    def __init__(self, features=3, record_dir=None, fail_at=None, delay=0.0, barrier=0):
        self.w = weights(features)
        self.record_dir = Path(record_dir) if record_dir else None
        self.fail_at = fail_at
        self.delay = delay
        self.node = _node_id() if self.record_dir is not None else ""
        if self.record_dir is not None:
            (self.record_dir / f"actor-{os.getpid()}-{self.node}").write_text(self.node)
            deadline = time.monotonic() + 60
            while len(list(self.record_dir.glob("actor-*"))) < barrier:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"fewer than {barrier} actors started within 60 s")
                time.sleep(0.05)

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


class MatrixPredictor:
    """For ``.npy`` inputs (one column ``data`` of rows of values): y = row @ w, row sums."""

    def __init__(self, features=3):
        self.w = weights(features)

    def __call__(self, batch):
        data = batch["data"]
        return {"y": (data * self.w).sum(axis=1), "total": data.sum(axis=1)}


def check_row(row):
    raise ValueError(f"cannot predict row {row}")


def _node_id():
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return "local"
