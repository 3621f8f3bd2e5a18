"""Endpoints that sleep, raise, echo tensors, count model loads and stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from synapse_sdk.plugins.actions.inference import BaseDeploymentAction, BaseServeDeployment

app = FastAPI()
#: Tags of /sleep calls cancelled in this replica process.
CANCELLED: set[str] = set()
#: Tags of /sleep calls that reached this replica process.
STARTED: set[str] = set()
#: Tags of streams whose generator was closed (finished, cancelled or abandoned).
STREAMS_CLOSED: set[str] = set()
#: Items each tagged stream has produced so far.
PRODUCED: dict[str, int] = {}


class ProbeServe(BaseServeDeployment):
    """Loads "models" slowly (so concurrent first requests overlap) and serves probes."""

    action_name = "probe"
    app = app

    async def _get_model(self, model_info: dict[str, Any]) -> Any:
        await asyncio.sleep(0.3)
        name = model_info["path"].name
        # Local model directories are named by their scale; a model the platform downloaded
        # (a directory named by its checksum) scales by 1.
        scale = float(name) if name.isascii() and name.isdigit() else 1.0
        return {"dir": name, "scale": scale}

    @app.post("/")
    async def infer(self, x: list[float]) -> dict[str, Any]:
        model = await self.get_model()
        return {"model": model["dir"], "y": [v * model["scale"] for v in x]}

    @app.post("/sleep")
    async def sleep(self, seconds: float, tag: str = "") -> str:
        STARTED.add(tag)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            CANCELLED.add(tag)
            raise
        return "awake"

    @app.post("/started")
    async def started(self) -> list[str]:
        """Tags of the sleeps that reached this replica."""
        return sorted(STARTED)

    @app.post("/cancelled")
    async def cancelled(self) -> list[str]:
        """Tags of the sleeps that were cancelled in this replica."""
        return sorted(CANCELLED)

    @app.post("/boom")
    async def boom(self) -> None:
        raise RuntimeError("secret internal detail")

    @app.post("/double")
    async def double(self, x: Any) -> Any:
        model = await self.get_model()
        return x * model["scale"]

    @app.post("/echo")
    async def echo(self, value: Any) -> dict[str, Any]:
        """The value as the endpoint received it, with the Python type of each number."""

        def types(item: Any) -> Any:
            if isinstance(item, dict):
                return {k: types(v) for k, v in item.items()}
            if isinstance(item, list):
                return [types(v) for v in item]
            return type(item).__name__

        return {"value": value, "types": types(value)}

    @app.post("/count")
    async def count(
        self, n: int, delay: float = 0.0, tag: str = "", fail_at: int = -1, size: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields n items (``size`` bytes of padding each); raises at item ``fail_at``."""
        model = await self.get_model()
        try:
            for i in range(n):
                if i == fail_at:
                    raise RuntimeError("secret stream detail")
                PRODUCED[tag] = i + 1
                yield {"i": i, "model": model["dir"], "pad": "x" * size}
                if delay:
                    await asyncio.sleep(delay)
        finally:
            STREAMS_CLOSED.add(tag)

    @app.post("/count_blocking")
    def count_blocking(self, n: int, delay: float = 0.0, tag: str = "") -> Iterator[int]:
        """A blocking generator (advanced in worker threads)."""
        try:
            for i in range(n):
                PRODUCED[tag] = i + 1
                yield i
                time.sleep(delay)
        finally:
            STREAMS_CLOSED.add(tag)

    @app.post("/streams_closed")
    async def streams_closed(self) -> list[str]:
        return sorted(STREAMS_CLOSED)

    @app.post("/produced")
    async def produced(self, tag: str) -> int:
        return PRODUCED.get(tag, 0)


class ProbeParams(BaseModel):
    model: int = 1
    num_cpus: float = 0


class ProbeDeploymentAction(BaseDeploymentAction[ProbeParams]):
    """Deploys ProbeServe."""

    action_name = "deploy_probe"
    entrypoint = ProbeServe

    def execute(self) -> dict[str, Any]:
        self.ray_init()
        self.deploy()
        return {"serve_application": self.register_serve_application()}
