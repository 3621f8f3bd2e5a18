"""Actions that report where they ran, crash, or refuse to stop (for the Ray-mode tests)."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction
from synapse_sdk.runtime import current_context


class WhereParams(BaseModel):
    steps: int = 3
    delay: float = 0.0
    num_cpus: float | None = None
    memory: float | None = None
    resources: dict[str, float] | None = None


class WhereAction(BaseAction[WhereParams]):
    """Report ``steps`` numbered progress/log pairs, then where the action ran."""

    def execute(self) -> dict[str, Any]:
        for i in range(1, self.params.steps + 1):
            self.raise_if_cancelled()
            self.log("step", {"i": i})
            self.set_progress(i, self.params.steps, "work")
            if self.params.delay:
                time.sleep(self.params.delay)
        node_id = ""
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return {
            "node_id": node_id,
            "pid": os.getpid(),
            "mode": current_context().mode,
            "file": __file__,
        }


class CrashAction(BaseAction[WhereParams]):
    """Log once, then end the process without reporting."""

    def execute(self) -> None:
        self.log("about to crash")
        time.sleep(0.2)
        os._exit(17)


class StubbornAction(BaseAction[WhereParams]):
    """Loop forever, ignoring is_cancelled (the platform has to kill it)."""

    def execute(self) -> None:
        self.log("started", {"pid": os.getpid()})
        while True:
            time.sleep(0.1)
