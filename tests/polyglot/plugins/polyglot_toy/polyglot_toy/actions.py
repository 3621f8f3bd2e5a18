"""Quick and slow actions whose events a client can predict exactly."""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import BaseModel, Field
from synapse_sdk.plugins import BaseAction

logger = logging.getLogger(__name__)


class CountParams(BaseModel):
    """Params of ``count``: how far to count (bounded so a bad value is a schema error)."""

    n: int = Field(ge=1, le=50)
    label: str = "count"


class CountAction(BaseAction[CountParams]):
    """Counts to ``n``: one progress report and one log event per number, returns the sum."""

    action_name = "count"

    def execute(self) -> dict[str, Any]:
        """Count, report, and return ``{"label", "n", "sum"}``."""
        total = 0
        for i in range(1, self.params.n + 1):
            total += i
            self.log("counted", {"i": i})
            self.set_progress(i, self.params.n, "counting")
        return {"label": self.params.label, "n": self.params.n, "sum": total}


class WaitParams(BaseModel):
    """Params of ``wait``: the longest it runs before giving up on being cancelled."""

    max_seconds: float = Field(default=30.0, gt=0, le=120)


class WaitAction(BaseAction[WaitParams]):
    """Logs that it started, then polls for cancellation until ``max_seconds`` pass."""

    action_name = "wait"

    def execute(self) -> dict[str, Any]:
        """Return ``{"cancelled": bool, "waited": seconds}``; a cancel ends the loop early."""
        self.log("waiting", {"max_seconds": self.params.max_seconds})
        start = time.monotonic()
        while time.monotonic() - start < self.params.max_seconds:
            self.raise_if_cancelled()
            time.sleep(0.05)
        return {"cancelled": False, "waited": time.monotonic() - start}
