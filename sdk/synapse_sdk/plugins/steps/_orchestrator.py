"""Runs a registry's steps: weighted progress, skip, failure, rollback, cancellation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic

from synapse_sdk._json import to_jsonable
from synapse_sdk.errors import (
    ActionCancelledError,
    ActionFailedError,
    ResultNotSerializableError,
    StepRegistryError,
)
from synapse_sdk.events import (
    ErrorInfo,
    LogEvent,
    LogLevel,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
)
from synapse_sdk.plugins._progress import ProgressTracker
from synapse_sdk.plugins.steps._base import BaseStep, C, StepResult
from synapse_sdk.plugins.steps._registry import StepRegistry
from synapse_sdk.runtime import current_context

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

__all__ = ["StepOrchestrator", "StepOutcome"]


@dataclass
class StepOutcome:
    """How one step ended, as reported in the action result."""

    name: str
    status: StepStatus
    data: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``name``, ``status``, ``data`` and ``error`` (or None)."""
        return {
            "name": self.name,
            "status": self.status.value,
            "data": self.data,
            "error": self.error.to_dict() if self.error else None,
        }


class _StepFailure(Exception):
    """Internal: carries a failing step's description out of the per-step handler."""

    def __init__(self, info: ErrorInfo, cause: BaseException | None) -> None:
        super().__init__(info.message)
        self.info = info
        self.cause = cause


class StepOrchestrator(Generic[C]):
    """Executes the steps of one run in order against one context.

    Overall progress: each step owns ``weight / sum(weights)`` of the run (equal shares when all
    weights are 0); a step's own ``set_progress`` calls move the bar within its share. A failing
    step (``success=False`` or an exception) stops the run and the steps that completed before
    it are rolled back in reverse order; a rollback that raises is reported (event and
    ``ActionFailedError.rollback_errors``) without replacing the original failure. Cancellation
    is checked before every step and rolls back the same way.
    """

    def __init__(self, registry: StepRegistry[C], context: C, tracker: ProgressTracker) -> None:
        self._steps = registry.steps
        self._context = context
        self._tracker = tracker

    def run(self) -> list[StepOutcome]:
        """Run every step; return the outcomes or raise ActionFailedError/ActionCancelledError."""
        steps = self._steps
        shares = _normalised_weights(steps)
        count = len(steps)
        ctx = current_context()
        outcomes: list[StepOutcome] = []
        completed: list[tuple[int, BaseStep[C], StepResult]] = []
        start = 0.0
        for index, step in enumerate(steps):
            name = step.name
            if ctx.cancel_event.is_set():
                errors = self._rollback(completed)
                raise ActionCancelledError(
                    f"action cancelled before step '{name}'" + _rollback_suffix(errors),
                    step=name,
                )
            share = shares[index]
            end = 1.0 if index == count - 1 else start + share
            ctx.emit(StepStartedEvent(name=name, index=index, count=count, weight=share))
            self._tracker.enter_span(start, share)
            try:
                result = self._run_one(step)
            except ActionCancelledError as exc:
                ctx.emit(StepFinishedEvent(name=name, index=index, status=StepStatus.CANCELLED))
                errors = self._rollback(completed)
                raise ActionCancelledError(
                    f"action cancelled in step '{name}'" + _rollback_suffix(errors), step=name
                ) from exc
            except _StepFailure as failure:
                ctx.emit(
                    StepFinishedEvent(
                        name=name, index=index, status=StepStatus.FAILED, error=failure.info
                    )
                )
                errors = self._rollback(completed)
                raise ActionFailedError(failure.info, step=name, rollback_errors=errors) from (
                    failure.cause
                )
            self._context.step_results[name] = result
            if result.skipped:
                ctx.emit(StepFinishedEvent(name=name, index=index, status=StepStatus.SKIPPED))
                outcomes.append(StepOutcome(name=name, status=StepStatus.SKIPPED))
            else:
                data = result.data
                ctx.emit(
                    StepFinishedEvent(
                        name=name, index=index, status=StepStatus.SUCCEEDED, data=data
                    )
                )
                outcomes.append(StepOutcome(name=name, status=StepStatus.SUCCEEDED, data=data))
                completed.append((index, step, result))
            self._tracker.advance_to(end, index + 1, count, None)
            start = end
        return outcomes

    def _run_one(self, step: BaseStep[C]) -> StepResult:
        name = step.name
        try:
            if step.can_skip(self._context):
                return StepResult(success=True, skipped=True)
            result = step.execute(self._context)
        except ActionCancelledError:
            raise
        except Exception as exc:
            raise _StepFailure(ErrorInfo.from_exception(exc), exc) from exc
        if not isinstance(result, StepResult):
            exc = TypeError(
                f"step '{name}' returned {type(result).__name__} from execute(); "
                "it must return a StepResult"
            )
            raise _StepFailure(ErrorInfo.from_exception(exc), exc)
        if result.skipped:
            return result
        if not result.success:
            info = result.error_info or ErrorInfo(
                type="StepFailed",
                message=result.error or f"step '{name}' returned success=False without an error",
            )
            result.error_info = info
            raise _StepFailure(info, None)
        try:
            result.data = to_jsonable(result.data, f"steps.{name}.data")
        except ResultNotSerializableError as exc:
            raise _StepFailure(ErrorInfo.from_exception(exc), exc) from exc
        return result

    def _rollback(
        self, completed: list[tuple[int, BaseStep[C], StepResult]]
    ) -> list[tuple[str, ErrorInfo]]:
        ctx = current_context()
        errors: list[tuple[str, ErrorInfo]] = []
        for index, step, result in reversed(completed):
            name = step.name
            try:
                step.rollback(self._context, result)
            except Exception as exc:
                info = ErrorInfo.from_exception(exc)
                errors.append((name, info))
                logger.warning("rollback of step %r failed: %s", name, info.message)
                ctx.emit(
                    StepFinishedEvent(
                        name=name, index=index, status=StepStatus.ROLLBACK_FAILED, error=info
                    )
                )
                ctx.emit(
                    LogEvent(
                        event="rollback_failed",
                        data={"step": name, "error": info.to_dict()},
                        level=LogLevel.ERROR,
                    )
                )
                continue
            ctx.emit(StepFinishedEvent(name=name, index=index, status=StepStatus.ROLLED_BACK))
        return errors


def _normalised_weights(steps: list[BaseStep[Any]]) -> list[float]:
    weights: list[float] = []
    for step in steps:
        weight = step.progress_weight
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise StepRegistryError(
                f"step '{step.name}' has a non-numeric progress_weight {weight!r}"
            )
        if not math.isfinite(weight) or weight < 0:
            raise StepRegistryError(
                f"step '{step.name}' has progress_weight {weight!r}; it must be finite and >= 0"
            )
        weights.append(float(weight))
    total = sum(weights)
    if not weights:
        return []
    if total == 0:
        return [1.0 / len(weights)] * len(weights)
    return [w / total for w in weights]


def _rollback_suffix(errors: list[tuple[str, ErrorInfo]]) -> str:
    if not errors:
        return ""
    failed = ", ".join(f"'{name}' ({info.type}: {info.message})" for name, info in errors)
    return f" (rollback failed for {failed})"
