"""Actions that report where they ran, fetch a model, crash, or refuse to stop (Ray-mode tests)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction
from synapse_sdk.plugins.actions.inference import BaseInferenceAction
from synapse_sdk.runtime import current_context


class WhereParams(BaseModel):
    steps: int = 3
    delay: float = 0.0
    num_cpus: float | None = None
    memory: float | None = None
    resources: dict[str, float] | None = None


def _ray_node_id() -> str:
    """The Ray node this process runs on, or "" outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except ImportError:
        pass
    return ""


class WhereAction(BaseAction[WhereParams]):
    """Report ``steps`` numbered progress/log pairs, then where the action ran."""

    def execute(self) -> dict[str, Any]:
        for i in range(1, self.params.steps + 1):
            self.raise_if_cancelled()
            self.log("step", {"i": i})
            self.set_progress(i, self.params.steps, "work")
            if self.params.delay:
                time.sleep(self.params.delay)
        node_id = _ray_node_id()
        return {
            "node_id": node_id,
            "pid": os.getpid(),
            "mode": current_context().mode,
            "file": __file__,
        }


class ModelParams(BaseModel):
    model_id: int | str
    how: Literal["load", "download"] = "load"
    file: str = "weights.bin"
    num_cpus: float | None = None
    resources: dict[str, float] | None = None


class ModelDigestAction(BaseInferenceAction[ModelParams]):
    """Fetch a model from the platform (``load_model`` or ``download_model``) and hash a file.

    Returns the sha256 of ``file`` inside the extracted model, the directory it was read from
    and the node that ran it, so a test can check the bytes really came through the platform.
    """

    def execute(self) -> dict[str, Any]:
        if self.params.how == "load":
            info = self.load_model(self.params.model_id)
            directory = Path(info["path"])
            name = str(info["name"])
        else:
            directory = self.download_model(self.params.model_id)
            name = str(self.get_model(self.params.model_id)["name"])
        data = (directory / self.params.file).read_bytes()
        return {
            "name": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "path": str(directory),
            "files": sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")),
            "node_id": _ray_node_id(),
            "mode": current_context().mode,
        }


class CrashAction(BaseAction[WhereParams]):
    """Log once, then end the process without reporting."""

    def execute(self) -> None:
        self.log("about to crash")
        # The log goes out on the reporter's thread and plugin code cannot wait for it: give
        # it ample time on a loaded machine (the test checks that it arrived).
        time.sleep(2)
        os._exit(17)


class DieParams(BaseModel):
    how: Literal["exit", "segfault", "sigkill", "ray_kill"]
    code: int = 3


class DieAction(BaseAction[DieParams]):
    """End the worker process without reporting, the way ``how`` says."""

    def execute(self) -> None:
        if self.params.how == "exit":
            os._exit(self.params.code)
        if self.params.how == "segfault":
            ctypes.string_at(0)
        if self.params.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.params.how == "ray_kill":
            # Job mode: the worker's own actor, killed through Ray as an operator would.
            import ray

            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
        time.sleep(60)


class StubbornAction(BaseAction[WhereParams]):
    """Loop forever, ignoring is_cancelled (the platform has to kill it)."""

    def execute(self) -> None:
        self.log("started", {"pid": os.getpid()})
        while True:
            time.sleep(0.1)
