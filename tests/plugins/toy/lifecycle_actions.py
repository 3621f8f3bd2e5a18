"""Toy actions for lifecycle tests: a job that takes a while, one that hands out its credential."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, Field
from synapse_sdk.plugins import BaseAction


class NapParams(BaseModel):
    """Params of the nap action."""

    seconds: float = Field(ge=0, le=120)


class NapAction(BaseAction[NapParams]):
    """Logs that it started, sleeps ``seconds`` (stopping early when cancelled), succeeds."""

    action_name = "nap"

    def execute(self) -> dict[str, float]:
        self.log("napping", {"seconds": self.params.seconds})
        deadline = time.monotonic() + self.params.seconds
        while time.monotonic() < deadline:
            self.raise_if_cancelled()
            time.sleep(0.02)
        return {"slept": self.params.seconds}


class HoldCredentialParams(BaseModel):
    """Params of the hold_credential action."""

    path: str


class HoldCredentialAction(BaseAction[HoldCredentialParams]):
    """Writes its job's worker credential to ``path`` (0600), then waits to be cancelled.

    Lets a test use a real worker credential while the job runs and after it ended.
    """

    action_name = "hold_credential"

    def execute(self) -> None:
        token = self.run_context.platform.token if self.run_context.platform else None
        partial = self.params.path + ".part"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token or "")
        os.replace(partial, self.params.path)  # the reader never sees half a token
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.raise_if_cancelled()
            time.sleep(0.02)


class HogParams(BaseModel):
    """Params of the memory hogs."""

    max_mib: int = Field(default=2048, ge=1, le=8192)


class TorchHogAction(BaseAction[HogParams]):
    """Asks torch for one tensor of ``max_mib`` MiB (torch raises a RuntimeError, not a
    MemoryError, when its CPU allocator fails)."""

    action_name = "torch_hog"

    def execute(self) -> dict[str, int]:
        import torch

        tensor = torch.empty(self.params.max_mib << 20, dtype=torch.uint8)
        tensor.fill_(1)
        return {"allocated_mib": self.params.max_mib}


class SharedHogAction(BaseAction[HogParams]):
    """Fills anonymous shared memory, which a data limit does not count, 16 MiB at a time, up
    to ``max_mib`` (then it gives up and succeeds)."""

    action_name = "shared_hog"

    def execute(self) -> dict[str, int]:
        import mmap

        step = 16 << 20
        held = []
        for _ in range(self.params.max_mib // 16):
            block = mmap.mmap(-1, step)  # MAP_SHARED | MAP_ANONYMOUS
            block.write(b"x" * step)
            held.append(block)
            time.sleep(0.02)
        return {"allocated_mib": len(held) * 16}


class LimitsAction(BaseAction):
    """Returns the data-memory limit its worker process runs under (-1: none)."""

    action_name = "limits"

    def execute(self) -> dict[str, int]:
        import resource

        return {"data_limit": resource.getrlimit(resource.RLIMIT_DATA)[0]}
