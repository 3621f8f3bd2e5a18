"""Events an action emits while it runs.

Plugin code never builds these directly: ``BaseAction.set_progress``, ``log``, ``set_metrics``
and the step orchestrator do. Whoever runs the action (the console, the test harness, a
platform worker) receives them through the :class:`EventSink` of the current run context, so
the same plugin code reports to any of them unchanged.
"""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ErrorInfo",
    "Event",
    "EventSink",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "ProgressEvent",
    "StepFinishedEvent",
    "StepStartedEvent",
    "StepStatus",
]


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure described as data: survives pickling, JSON and the wire, unlike the exception."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        kind = type(exc)
        qualname = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        return cls(
            type=qualname,
            message=str(exc),
            traceback="".join(_traceback.format_exception(exc)),
        )

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``current`` of ``total`` in ``category``; ``overall`` is the whole run's percent (0-100)."""

    category: str | None
    current: int
    total: int
    overall: float


@dataclass(frozen=True, slots=True)
class LogEvent:
    event: str
    data: dict[str, Any] = field(default_factory=dict)
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True, slots=True)
class MetricEvent:
    category: str | None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepStartedEvent:
    name: str
    index: int
    count: int
    weight: float


@dataclass(frozen=True, slots=True)
class StepFinishedEvent:
    name: str
    index: int
    status: StepStatus
    error: ErrorInfo | None = None
    data: dict[str, Any] = field(default_factory=dict)


Event = ProgressEvent | LogEvent | MetricEvent | StepStartedEvent | StepFinishedEvent


@runtime_checkable
class EventSink(Protocol):
    """Receives every event of one run, in order. Must be cheap and must not raise."""

    def emit(self, event: Event) -> None: ...
