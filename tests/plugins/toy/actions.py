"""Toy actions for platform tests: each one exercises one way an action can behave."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from synapse_sdk.plugins import BaseAction
from synapse_sdk.plugins.steps import BaseStep, BaseStepContext, StepRegistry, StepResult


class QuickParams(BaseModel):
    """Params of the quick action."""

    count: int = Field(ge=0)
    label: str
    big: int = 0


class QuickAction(BaseAction[QuickParams]):
    """Reports progress and a log, returns a small result (or a big one with ``big``)."""

    action_name = "quick"

    def execute(self) -> dict[str, Any]:
        for i in range(1, self.params.count + 1):
            self.set_progress(i, self.params.count, "work")
        self.log("done", {"label": self.params.label})
        result: dict[str, Any] = {"label": self.params.label, "count": self.params.count}
        if self.params.big:
            result["blob"] = "x" * self.params.big
        return result


class WhoAmIAction(BaseAction):
    """Returns the ids of the process it runs in and of that process's parent."""

    action_name = "whoami"

    def execute(self) -> dict[str, int]:
        return {"pid": os.getpid(), "ppid": os.getppid()}


class FailingAction(BaseAction):
    """Raises a ValueError."""

    action_name = "fail"

    def execute(self) -> None:
        raise ValueError("toy failure")


class ExitAction(BaseAction):
    """Ends the worker process abruptly with os._exit(7)."""

    action_name = "exit"

    def execute(self) -> None:
        os._exit(7)


class SegfaultAction(BaseAction):
    """Dereferences a null pointer."""

    action_name = "segfault"

    def execute(self) -> None:
        ctypes.string_at(0)


class MemoryHogAction(BaseAction):
    """Allocates memory until it runs out."""

    action_name = "memory_hog"

    def execute(self) -> None:
        hoard = []
        while True:
            hoard.append(bytearray(64 * 1024 * 1024))


@dataclass
class SlowContext(BaseStepContext):
    """Shared state of the slow step-based action."""

    done: list[str] = field(default_factory=list)


class _RecordStep(BaseStep[SlowContext]):
    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def execute(self, context: SlowContext) -> StepResult:
        context.done.append(self._name)
        return StepResult(success=True, data={"step": self._name})

    def rollback(self, context: SlowContext, result: StepResult) -> None:
        context.log("rolled_back", {"step": self._name})


class _WaitStep(BaseStep[SlowContext]):
    @property
    def name(self) -> str:
        return "wait"

    def execute(self, context: SlowContext) -> StepResult:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if context.is_cancelled():
                context.raise_if_cancelled()
            time.sleep(0.02)
        return StepResult(success=True)


class SlowStepsAction(BaseAction):
    """Two quick steps, then a step that waits (up to 60 s) for cancellation."""

    action_name = "slow"

    def setup_steps(self, registry: StepRegistry[Any]) -> None:
        registry.register(_RecordStep("first"))
        registry.register(_RecordStep("second"))
        registry.register(_WaitStep())

    def create_context(self) -> SlowContext:
        return SlowContext()


class StubbornAction(BaseAction):
    """Ignores cancellation: sleeps for 60 seconds."""

    action_name = "stubborn"

    def execute(self) -> None:
        self.log("started")
        time.sleep(60)


class ChattyParams(BaseModel):
    """Params of the chatty action."""

    events: int = 1000


class ChattyAction(BaseAction[ChattyParams]):
    """Emits many progress and log events as fast as it can."""

    action_name = "chatty"

    def execute(self) -> dict[str, int]:
        n = self.params.events
        for i in range(1, n + 1):
            self.set_progress(i, n, "flood")
            if i % 10 == 0:
                self.log("tick", {"i": i})
        return {"events": n}


class GatedParams(BaseModel):
    """Params of the gated action."""

    gate: str
    then: str = ""
    #: No "waiting" log: the job's first event is "opened".
    quiet: bool = False


class GatedAction(BaseAction[GatedParams]):
    """Waits (up to 60 s, or until cancelled) for the file ``gate`` to exist, logs "opened",
    then waits the same way for ``then`` (when given) and returns."""

    action_name = "gated"

    def execute(self) -> dict[str, str]:
        if not self.params.quiet:
            self.log("waiting", {"gate": self.params.gate})
        self._wait(self.params.gate)
        self.log("opened")
        if self.params.then:
            self._wait(self.params.then)
        return {"gate": "opened"}

    def _wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError("the gate never opened")
            self.raise_if_cancelled()
            time.sleep(0.02)


class StrictParams(BaseModel):
    """Params that refuse keys the model does not declare."""

    model_config = ConfigDict(extra="forbid")

    count: int = 1


class StrictAction(BaseAction[StrictParams]):
    """Returns its count; an unknown params key is an error, not a warning."""

    action_name = "strict"

    def execute(self) -> dict[str, int]:
        return {"count": self.params.count}
