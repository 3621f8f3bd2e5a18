"""The batching benchmark's deployment: one model, three ways to call it.

The model stands for a network on an accelerator: each call holds the device alone (a lock)
for a fixed ``CALL_COST_S`` (a forward pass whose time hardly depends on the batch size, as
on a GPU that is not saturated) plus a matrix product per row, so that a batch of n costs far
less than n calls. The sleep is what makes the cost independent of this machine's CPU load.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from synapse_sdk.plugins.actions.inference import (
    BaseDeploymentAction,
    BaseServeDeployment,
    batched,
)

app = FastAPI()

CALL_COST_S = 0.02
WIDTH = 64
_WEIGHTS = np.random.default_rng(7).standard_normal((WIDTH, WIDTH))
_DEVICE = threading.Lock()


def run_model(rows: list[list[float]]) -> list[list[float]]:
    """One call of the model on a batch of rows (each of WIDTH values)."""
    with _DEVICE:
        time.sleep(CALL_COST_S)
        out = np.asarray(rows, dtype=np.float64) @ _WEIGHTS
    return out.tolist()


class BenchBatchServe(BaseServeDeployment):
    """The same model behind the platform's @batched and behind Ray Serve's @serve.batch."""

    action_name = "endpoint"
    app = app

    @app.post("/")
    @batched
    def infer(self, row: list[list[float]]) -> list[list[float]]:
        """The platform's dynamic batching (batches of one without batching settings)."""
        return run_model(row)

    @app.post("/serve_batch")
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def serve_batched(self, row: list[list[float]]) -> list[list[float]]:
        """Ray Serve's own batching, with the settings the bench gives the platform's."""
        return run_model(row)


class DeployParams(BaseModel):
    #: The Serve application's name (the bench deploys the class twice).
    app_name: str
    #: The registered model the application serves (the bench's model ignores its files).
    model: int
    #: Serve options of this deployment (batching settings among them).
    overrides: dict[str, Any] = {}


class DeployBenchBatchAction(BaseDeploymentAction[DeployParams]):
    """Deploys BenchBatchServe with the given Serve options."""

    action_name = "deploy"
    entrypoint = BenchBatchServe

    def get_serve_app_name(self) -> str:
        return self.params.app_name

    def get_route_prefix(self) -> str | None:
        return None  # called through Infer and a handle only, never over HTTP

    def get_ray_actor_options(self) -> dict[str, Any]:
        return {"num_cpus": 0}

    def execute(self) -> dict[str, Any]:
        self.ray_init()
        self.deploy(**self.params.overrides)
        return {"serve_application": self.register_serve_application()}
