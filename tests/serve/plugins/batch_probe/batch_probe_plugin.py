"""Batched endpoints (the platform's @batched and Ray Serve's @serve.batch) that record each
call they get, so that tests count model calls and check what each batch held."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from synapse_sdk.plugins.actions.inference import (
    BaseDeploymentAction,
    BaseServeDeployment,
    batched,
)

app = FastAPI()
#: One entry per call of a batched endpoint: the endpoint, model, tags and batch size.
CALLS: list[dict[str, Any]] = []


def _record(endpoint: str, model: str, tags: list[str]) -> None:
    CALLS.append({"endpoint": endpoint, "model": model, "tags": list(tags), "size": len(tags)})


class BatchProbeServe(BaseServeDeployment):
    """Models are local directories named by their scale (see the serve probe)."""

    action_name = "batch_probe"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        name = model_info["path"].name
        scale = float(name) if name.isascii() and name.isdigit() else 1.0
        return {"dir": name, "scale": scale}

    @app.post("/")
    @batched
    async def infer(self, x: list[float], tag: list[str]) -> list[dict[str, Any]]:
        """Raises for the whole batch when any x is negative."""
        model = await self.get_model()
        _record("infer", model["dir"], tag)
        if any(v < 0 for v in x):
            raise ValueError("negative input")
        return [{"model": model["dir"], "y": v * model["scale"], "batch": len(x)} for v in x]

    @app.post("/blocking")
    @batched
    def blocking(self, n: list[int], tag: list[str], offset: list[int]) -> list[Any]:
        """A blocking batched endpoint; n == 13 fails alone (an Exception as its output)."""
        _record("blocking", "", tag)
        time.sleep(0.01)
        pairs = zip(n, offset, strict=True)
        return [ValueError("13 is unlucky") if v == 13 else v + o for v, o in pairs]

    @app.post("/short")
    @batched
    async def short(self, x: list[float], tag: list[str]) -> list[float]:
        """Returns one output fewer than it got: a bug every request must hear about."""
        _record("short", "", tag)
        return x[1:]

    @app.post("/serve_batch")
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=60)
    async def serve_batched(
        self, x: list[float], tag: list[str], scale: Any = 1.0
    ) -> list[dict[str, Any]]:
        """Ray Serve's own batching, with its natural list annotations (``scale`` is 1.0 for
        a request that leaves it out)."""
        _record("serve_batch", "", tag)
        return [{"y": v * s, "tag": t} for v, t, s in zip(x, tag, scale, strict=True)]

    @app.post("/calls")
    async def calls(self, tag: str) -> list[dict[str, Any]]:
        """The recorded calls that held a request tagged ``tag`` (or with a tag of that
        prefix followed by a dash)."""
        return [c for c in CALLS if any(t == tag or t.startswith(f"{tag}-") for t in c["tags"])]

    @app.post("/queued")
    async def queued(self) -> int:
        """Requests waiting for a batch in this replica (cancelled ones excluded)."""
        batcher = self._synapse_replica._batcher
        return 0 if batcher is None else batcher.queued()

    @app.post("/sleep")
    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "awake"


class BatchProbeParams(BaseModel):
    model: int = 1
    #: Serve options for this deployment only (``deploy(**overrides)``).
    overrides: dict[str, Any] = {}


class BatchProbeDeploymentAction(BaseDeploymentAction[BatchProbeParams]):
    """Deploys BatchProbeServe with the config's batching, or the params' overrides."""

    action_name = "deploy_batch_probe"
    entrypoint = BatchProbeServe

    def get_ray_actor_options(self) -> dict[str, Any]:
        return {"num_cpus": 0}

    def execute(self) -> dict[str, Any]:
        self.ray_init()
        self.deploy(**self.params.overrides)
        return {"serve_application": self.register_serve_application()}
