"""Event-heavy actions: their cost is the platform's event path, not the plugin's work."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel, Field
from synapse_sdk.plugins import BaseAction


class EmitParams(BaseModel):
    """How many events, how big, and how long to wait for subscribers first."""

    count: int = Field(default=1000, ge=0, le=1_000_000)
    payload_bytes: int = Field(default=64, ge=0, le=65536)
    #: Pause after the first progress event so subscribers can attach before the burst.
    pause_s: float = Field(default=0.0, ge=0, le=60)
    #: Pause between log events (0: back to back), to time single events rather than bursts.
    interval_s: float = Field(default=0.0, ge=0, le=10)
    #: A file to wait for (up to 120 s) after the first progress event: the benchmark creates
    #: it once every subscriber is attached.
    gate: str = ""


class EmitEventsAction(BaseAction[EmitParams]):
    """Reports progress once, pauses, then logs ``count`` events of ``payload_bytes`` each."""

    action_name = "emit"

    def execute(self) -> dict[str, Any]:
        self.set_progress(0, 1, "emit")
        if self.params.pause_s:
            time.sleep(self.params.pause_s)
        if self.params.gate:
            deadline = time.monotonic() + 120
            while not os.path.exists(self.params.gate):
                if time.monotonic() > deadline:
                    raise TimeoutError("the benchmark never opened the gate")
                time.sleep(0.02)
        filler = "x" * self.params.payload_bytes
        for i in range(self.params.count):
            self.log("tick", {"i": i, "pad": filler})
            if self.params.interval_s:
                time.sleep(self.params.interval_s)
        self.set_progress(1, 1, "emit")
        return {"emitted": self.params.count}
