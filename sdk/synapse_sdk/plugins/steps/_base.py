"""Step building blocks: the context shared by a run's steps, a step, and its result."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from synapse_sdk.errors import ActionCancelledError
from synapse_sdk.events import ErrorInfo, LogLevel
from synapse_sdk.runtime import RunContext, current_context

if TYPE_CHECKING:
    from synapse_sdk.plugins._action import BaseAction

logger = logging.getLogger(__name__)

__all__ = ["BaseStep", "BaseStepContext", "StepResult"]


@dataclass(kw_only=True)
class BaseStepContext:
    """State shared by the steps of one run; subclass it with your pipeline's fields.

    Its own fields are keyword-only so subclasses keep their documented positional order.
    ``step_results`` holds the outcome of every step that has run so far, by step name. The
    methods report through the action that runs the steps, so a step reports exactly like the
    action itself.
    """

    step_results: dict[str, StepResult] = field(default_factory=dict, repr=False)
    _action: BaseAction[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def runtime(self) -> RunContext:
        """The run context (job id, sink, cancellation) this step runs in."""
        return current_context()

    def set_progress(self, current: int, total: int, category: str | None = None) -> None:
        """Report progress within the running step; scaled by the step's weight overall."""
        self._require_action().set_progress(current, total, category)

    def log(
        self, event: str, data: dict[str, Any] | None = None, level: LogLevel | str = "info"
    ) -> None:
        """Emit a structured log event."""
        self._require_action().log(event, data, level=level)

    def set_metrics(
        self, values: dict[str, Any] | None = None, category: str | None = None
    ) -> None:
        """Emit metric values."""
        self._require_action().set_metrics(values, category=category)

    def is_cancelled(self) -> bool:
        """True once the run was asked to cancel; long steps should check it."""
        return current_context().cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`ActionCancelledError` if the run was asked to cancel."""
        if self.is_cancelled():
            raise ActionCancelledError()

    def _require_action(self) -> BaseAction[Any]:
        if self._action is None:
            raise RuntimeError(
                "this step context is not attached to a running action; it is attached when "
                "the action's step orchestrator runs it"
            )
        return self._action


C = TypeVar("C", bound=BaseStepContext)


@dataclass
class StepResult:
    """What a step returns. ``data`` is kept in the action result under the step's name.

    ``rollback_data`` is handed back to the step's ``rollback`` if a later step fails.
    ``error_info`` is filled by the orchestrator when the step raised.
    """

    success: bool = True
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rollback_data: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    error_info: ErrorInfo | None = None


class BaseStep(ABC, Generic[C]):
    """One unit of a step-based action.

    ``progress_weight`` is the step's share of the overall progress (weights are normalised over
    the registered steps). ``can_skip`` lets a step opt out at run time; ``rollback`` undoes the
    step when a later step fails or the run is cancelled.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """Unique name of the step within its registry."""

    @property
    def progress_weight(self) -> float:
        """Relative share of overall progress; 1.0 unless overridden."""
        return 1.0

    @abstractmethod
    def execute(self, context: C) -> StepResult:
        """Do the step's work; return ``StepResult(success=False, error=...)`` or raise to fail."""

    def can_skip(self, context: C) -> bool:
        """Return True to skip this step for this run."""
        del context
        return False

    def rollback(self, context: C, result: StepResult) -> None:
        """Undo the step's effects; ``result`` is what :meth:`execute` returned."""
        del context, result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
