"""Step orchestration: weighted progress, skip, failure with rollback, cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel
from synapse_sdk.errors import ActionCancelledError, ActionFailedError, StepRegistryError
from synapse_sdk.events import Event, StepFinishedEvent, StepStatus
from synapse_sdk.plugins import BaseAction
from synapse_sdk.plugins.steps import BaseStep, BaseStepContext, StepRegistry, StepResult
from synapse_sdk.testing import ActionEnvironment


@dataclass
class TrackContext(BaseStepContext):
    journal: list[str] = field(default_factory=list)


class Params(BaseModel):
    fail_at: str | None = None
    fail_by_result: bool = False
    skip: list[str] = []
    broken_rollback: list[str] = []


class RecordStep(BaseStep[TrackContext]):
    """Reports ``ticks`` progress updates, records execute/rollback in the journal."""

    def __init__(self, name: str, weight: float, params: Params, ticks: int = 2) -> None:
        self._name = name
        self._weight = weight
        self._params = params
        self._ticks = ticks

    @property
    def name(self) -> str:
        return self._name

    @property
    def progress_weight(self) -> float:
        return self._weight

    def can_skip(self, context: TrackContext) -> bool:
        return self._name in self._params.skip

    def execute(self, context: TrackContext) -> StepResult:
        context.journal.append(f"run:{self._name}")
        for tick in range(1, self._ticks + 1):
            context.set_progress(tick, self._ticks, "work")
        if self._params.fail_at == self._name:
            if self._params.fail_by_result:
                return StepResult(success=False, error=f"{self._name} said no")
            explode(self._name)
        return StepResult(data={"step": self._name}, rollback_data={"undo": self._name})

    def rollback(self, context: TrackContext, result: StepResult) -> None:
        context.journal.append(f"rollback:{result.rollback_data['undo']}")
        JOURNAL.append(f"rollback:{self._name}")
        if self._name in self._params.broken_rollback:
            raise RuntimeError(f"cannot undo {self._name}")


def explode(name: str) -> None:
    raise KeyError(f"boom in {name}")


JOURNAL: list[str] = []


class PipelineAction(BaseAction[Params]):
    action_name = "pipeline"

    def create_context(self) -> TrackContext:
        return TrackContext()

    def setup_steps(self, registry: StepRegistry[TrackContext]) -> None:
        registry.register(RecordStep("a", 1, self.params))
        registry.register(RecordStep("b", 3, self.params))
        registry.register(RecordStep("c", 0, self.params, ticks=0))
        registry.register(RecordStep("d", 6, self.params))


@pytest.fixture(autouse=True)
def _clear_journal() -> None:
    JOURNAL.clear()


def test_weights_drive_overall_progress() -> None:
    env = ActionEnvironment()
    result = env.run(PipelineAction, {})
    overall = [e.overall for e in env.progress_events()]
    assert overall == sorted(overall)
    assert overall[-1] == 100.0
    # a = 10%, b = 30%, c = 0%, d = 60%: halfway through b is 10 + 15.
    assert overall == pytest.approx([5, 10, 10, 25, 40, 40, 40, 70, 100, 100])
    assert [s["name"] for s in result["steps"]] == ["a", "b", "c", "d"]
    assert result["steps"][1]["data"] == {"step": "b"}


def test_skipped_steps_are_reported_and_count_as_done() -> None:
    env = ActionEnvironment()
    result = env.run(PipelineAction, {"skip": ["b"]})
    assert [s["status"] for s in result["steps"]] == [
        "succeeded",
        "skipped",
        "succeeded",
        "succeeded",
    ]
    finished = [e for e in env.events if isinstance(e, StepFinishedEvent)]
    assert finished[1].status is StepStatus.SKIPPED
    assert env.progress_events()[-1].overall == 100.0


def test_raising_step_rolls_back_earlier_steps_in_reverse_and_keeps_traceback() -> None:
    env = ActionEnvironment()
    with pytest.raises(ActionFailedError) as info:
        env.run(PipelineAction, {"fail_at": "d"})
    err = info.value
    assert err.step == "d"
    assert err.error.type == "KeyError"
    assert "boom in d" in err.error.message
    assert "in explode" in err.error.traceback and "raise KeyError" in err.error.traceback
    assert isinstance(err.__cause__, KeyError)
    assert JOURNAL == ["rollback:c", "rollback:b", "rollback:a"]
    statuses = [(e.name, e.status) for e in env.events if isinstance(e, StepFinishedEvent)]
    assert statuses[-4:] == [
        ("d", StepStatus.FAILED),
        ("c", StepStatus.ROLLED_BACK),
        ("b", StepStatus.ROLLED_BACK),
        ("a", StepStatus.ROLLED_BACK),
    ]
    # No completion is reported for a failed run: the last progress is d's own report.
    assert env.progress_events()[-1].category == "work"


def test_result_failure_stops_the_run() -> None:
    env = ActionEnvironment()
    with pytest.raises(ActionFailedError) as info:
        env.run(PipelineAction, {"fail_at": "b", "fail_by_result": True})
    assert info.value.error.message == "b said no"
    assert info.value.step == "b"
    assert JOURNAL == ["rollback:a"]
    assert "run:c" not in str(env.events)


def test_failing_rollback_does_not_hide_the_original_error() -> None:
    env = ActionEnvironment()
    with pytest.raises(ActionFailedError) as info:
        env.run(PipelineAction, {"fail_at": "d", "broken_rollback": ["b"]})
    err = info.value
    assert err.error.type == "KeyError"
    assert [(name, e.message) for name, e in err.rollback_errors] == [("b", "cannot undo b")]
    assert "boom in d" in str(err) and "cannot undo b" in str(err)
    assert JOURNAL == ["rollback:c", "rollback:b", "rollback:a"]
    statuses = {e.name: e.status for e in env.events if isinstance(e, StepFinishedEvent)}
    assert statuses["b"] is StepStatus.ROLLBACK_FAILED
    assert statuses["a"] is StepStatus.ROLLED_BACK


def test_cancel_between_steps_rolls_back_and_reports_cancelled() -> None:
    cancels: list[str] = []

    def cancel_after_b(event: Event) -> None:
        if isinstance(event, StepFinishedEvent) and event.name == "b" and not cancels:
            cancels.append(event.name)
            env.cancel()

    env = ActionEnvironment(on_event=cancel_after_b)
    with pytest.raises(ActionCancelledError) as info:
        env.run(PipelineAction, {})
    assert info.value.step == "c"
    assert JOURNAL == ["rollback:b", "rollback:a"]
    assert all(getattr(e, "name", None) != "c" for e in env.step_events())
    # The cancel belonged to that run only.
    assert env.run(PipelineAction, {})["steps"][-1]["status"] == "succeeded"


def test_step_can_observe_cancellation() -> None:
    class Wait(BaseStep[BaseStepContext]):
        name = "wait"  # type: ignore[assignment]

        def execute(self, context: BaseStepContext) -> StepResult:
            env.cancel()
            context.raise_if_cancelled()
            return StepResult()

    class Once(BaseAction[Params]):
        action_name = "once"

        def setup_steps(self, registry: StepRegistry[Any]) -> None:
            registry.register(Wait())

    env = ActionEnvironment()
    with pytest.raises(ActionCancelledError, match="cancelled in step 'wait'"):
        env.run(Once, {})
    assert [e.status for e in env.events if isinstance(e, StepFinishedEvent)] == [
        StepStatus.CANCELLED
    ]


def test_registry_operations() -> None:
    params = Params()
    registry: StepRegistry[TrackContext] = StepRegistry()
    registry.register(RecordStep("a", 1, params)).register(RecordStep("c", 1, params))
    registry.insert_before("c", RecordStep("b", 1, params))
    registry.insert_after("c", RecordStep("d", 1, params))
    registry.insert_before("a", RecordStep("start", 1, params))
    assert registry.names == ["start", "a", "b", "c", "d"]
    assert registry.unregister("b").name == "b"
    assert registry.names == ["start", "a", "c", "d"]
    with pytest.raises(StepRegistryError, match="already registered"):
        registry.register(RecordStep("a", 1, params))
    with pytest.raises(StepRegistryError, match="no step named 'zzz'"):
        registry.insert_after("zzz", RecordStep("e", 1, params))
    with pytest.raises(StepRegistryError, match="no step named 'b'"):
        registry.unregister("b")


def test_negative_weight_is_rejected() -> None:
    class Bad(BaseAction[Params]):
        action_name = "bad"

        def setup_steps(self, registry: StepRegistry[Any]) -> None:
            registry.register(RecordStep("a", -1, self.params))

    with pytest.raises(ActionFailedError, match="progress_weight -1"):
        ActionEnvironment().run(Bad, {})


def test_non_serialisable_step_data_fails_the_step_naming_the_key() -> None:
    class Data(BaseStep[BaseStepContext]):
        name = "data"  # type: ignore[assignment]

        def execute(self, context: BaseStepContext) -> StepResult:
            return StepResult(data={"handle": object()})

    class Act(BaseAction[Params]):
        action_name = "act"

        def setup_steps(self, registry: StepRegistry[Any]) -> None:
            registry.register(Data())

    with pytest.raises(ActionFailedError) as info:
        ActionEnvironment().run(Act, {})
    assert info.value.error.type == "synapse_sdk.errors.ResultNotSerializableError"
    assert "steps.data.data.handle" in info.value.error.message
