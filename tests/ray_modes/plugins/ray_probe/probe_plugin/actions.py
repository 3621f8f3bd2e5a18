"""Actions that report where they ran, fetch a model, crash, hog memory or refuse to stop.

For the Ray-mode tests. In task and job mode the action runs in a worker process that the Ray
task or actor started: its parent process is the Ray worker.
"""

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
    """The Ray node this job's worker runs on, or "" outside Ray (local mode).

    The worker is a child of the Ray worker, not one itself: the platform names the node in
    SYNAPSE_RAY_NODE_ID.
    """
    return os.environ.get("SYNAPSE_RAY_NODE_ID", "")


def _data_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_DATA)[0]


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
            "parent_pid": os.getppid(),
            "mode": current_context().mode,
            "file": __file__,
            "data_limit": _data_limit(),
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
        self.log("about to crash", {"pid": os.getpid(), "parent_pid": os.getppid()})
        # The log goes out on the reporter's thread and plugin code cannot wait for it: give
        # it ample time on a loaded machine (the test checks that it arrived).
        time.sleep(2)
        os._exit(17)


class DieParams(BaseModel):
    how: Literal["exit", "segfault", "sigkill", "ray_kill"]
    code: int = 3
    num_cpus: float | None = None
    resources: dict[str, float] | None = None


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
            # Job mode: the actor running this worker, killed through Ray as an operator would
            # (connecting as a driver of the cluster named by RAY_ADDRESS; the platform names
            # a job's actor synapse-job-<job id>, in the server's namespace).
            import ray

            ray.init(log_to_driver=False)
            name = f"synapse-job-{current_context().job_id}"
            for entry in ray.util.list_named_actors(all_namespaces=True):
                if entry["name"] == name:
                    actor = ray.get_actor(name, namespace=entry["namespace"])
                    ray.kill(actor, no_restart=True)
        time.sleep(60)


class HogParams(BaseModel):
    how: Literal["data", "shared"]
    max_mib: int = 2048
    num_cpus: float | None = None
    memory: float | None = None
    resources: dict[str, float] | None = None


class HogAction(BaseAction[HogParams]):
    """Allocate up to ``max_mib`` (then give up and succeed): heap memory (``data``, which
    RLIMIT_DATA counts) or anonymous shared memory (``shared``, which it does not)."""

    def execute(self) -> dict[str, int]:
        import mmap

        step = 16 << 20
        held: list[object] = []
        for _ in range(self.params.max_mib // 16):
            if self.params.how == "data":
                held.append(bytearray(step))
            else:
                block = mmap.mmap(-1, step)  # MAP_SHARED | MAP_ANONYMOUS
                block.write(b"x" * step)
                held.append(block)
                time.sleep(0.02)
        return {"allocated_mib": len(held) * 16}


class StubbornAction(BaseAction[WhereParams]):
    """Loop forever, ignoring is_cancelled (the platform has to kill it)."""

    def execute(self) -> None:
        self.log("started", {"pid": os.getpid(), "parent_pid": os.getppid()})
        while True:
            time.sleep(0.1)
