"""Plain-Python views of the wire types: what client users handle instead of protobuf messages.

Conversion to and from protobuf lives in ``_converters`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ActionInfo",
    "ActionKind",
    "ErrorOrigin",
    "EventPayload",
    "Job",
    "JobErrorInfo",
    "JobEvent",
    "JobState",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "PluginInfo",
    "ProgressEvent",
    "RunMode",
    "StateChangedEvent",
    "StepFinishedEvent",
    "StepStartedEvent",
    "StepStatus",
    "TerminalEvent",
]


class JobState(StrEnum):
    """Lifecycle state of a job: PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class RunMode(StrEnum):
    """Where a job runs: a local worker process, a Ray task or a Ray job."""

    LOCAL = "local"
    TASK = "task"
    JOB = "job"


class ErrorOrigin(StrEnum):
    """Whether the plugin's code or the platform caused a failure."""

    UNSPECIFIED = "unspecified"
    PLUGIN = "plugin"
    PLATFORM = "platform"


class ActionKind(StrEnum):
    """``job`` actions run through ``run_action``; ``serve`` ones are deployment classes."""

    JOB = "job"
    SERVE = "serve"


class LogLevel(StrEnum):
    """Severity of a log event."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class StepStatus(StrEnum):
    """How a step of a step-based action ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


@dataclass(frozen=True, slots=True)
class JobErrorInfo:
    """Why a job or step failed. ``plugin_traceback`` is set only when plugin code raised."""

    type: str
    message: str
    plugin_traceback: str = ""
    origin: ErrorOrigin = ErrorOrigin.UNSPECIFIED
    step: str = ""
    correlation_id: str = ""


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """An action a plugin offers; ``params_schema`` is its params' JSON Schema (or None)."""

    name: str
    description: str = ""
    kind: ActionKind = ActionKind.JOB
    default_mode: RunMode | None = None
    supported_modes: tuple[RunMode, ...] = ()
    params_schema: dict[str, Any] | None = None
    progress_categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """A plugin installed on the server, with its actions."""

    code: str
    name: str = ""
    version: str = ""
    category: str = ""
    description: str = ""
    actions: tuple[ActionInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    """One run of one action, as the server last reported it."""

    id: str
    plugin: str
    action: str
    state: JobState
    mode: RunMode | None = None
    plugin_version: str = ""
    # sha256 of the plugin code the job was validated against and ran ("" from older servers).
    plugin_sha256: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    error: JobErrorInfo | None = None
    progress_percent: float = 0.0
    last_seq: int = 0
    pending_reason: str = ""
    request_id: str = ""
    cancel_requested: bool = False
    result_size_bytes: int = 0
    #: What the server noticed about the submission, e.g. "unknown params key 'batchsize'
    #: (ignored)" for each params key the action does not read (bounded; see the contract).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StateChangedEvent:
    """The job entered PENDING or RUNNING (terminal states come as :class:`TerminalEvent`)."""

    state: JobState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``current`` of ``total`` in ``category``; ``overall_percent`` is the whole job's."""

    category: str
    current: int
    total: int
    overall_percent: float


@dataclass(frozen=True, slots=True)
class LogEvent:
    """A structured log record the action emitted."""

    event: str
    level: LogLevel = LogLevel.INFO
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MetricEvent:
    """Metrics the action reported."""

    category: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepStartedEvent:
    """A step started; ``weight`` is its normalised share of overall progress."""

    name: str
    index: int
    count: int
    weight: float


@dataclass(frozen=True, slots=True)
class StepFinishedEvent:
    """A step finished, was skipped, cancelled or rolled back."""

    name: str
    index: int
    status: StepStatus
    error: JobErrorInfo | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TerminalEvent:
    """The job's last event. When ``result_inline`` is false the result must be fetched."""

    state: JobState
    error: JobErrorInfo | None = None
    result_json: bytes = b""
    result_size_bytes: int = 0
    result_inline: bool = False
    #: Why the job ended this way (the cancel reason, "worker exited with signal 9", ...).
    reason: str = ""

    def inline_result(self) -> Any:
        """The parsed result when it travelled inline; raises ``ValueError`` otherwise."""
        if not self.result_inline:
            raise ValueError("the result is not inline; fetch it with GetJobResult")
        return json.loads(self.result_json) if self.result_json else None


EventPayload = (
    StateChangedEvent
    | ProgressEvent
    | LogEvent
    | MetricEvent
    | StepStartedEvent
    | StepFinishedEvent
    | TerminalEvent
)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job: ``seq`` is per job, starting at 1 and gap-free."""

    seq: int
    job_id: str
    payload: EventPayload
    time: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        """True for the job's last event."""
        return isinstance(self.payload, TerminalEvent)
