"""Domain records of the job system: jobs, their states and the events they emit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from synapse_sdk.jsonutil import load_json

__all__ = [
    "TERMINAL_STATES",
    "ErrorOrigin",
    "EventKind",
    "Job",
    "JobEvent",
    "JobFilter",
    "JobPage",
    "JobError",
    "JobState",
    "Keepalive",
    "KEEPALIVE",
]


class JobState(StrEnum):
    """PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """True for the three end states."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class EventKind(StrEnum):
    """What a stored job event is. The ``TERMINAL`` event is always a job's last.

    Payload (``JobEvent.data``) per kind:

    - ``state``: ``state`` (PENDING or RUNNING), ``reason``
    - ``terminal``: ``state``, ``result`` (SUCCEEDED), ``error`` (:meth:`JobError.to_dict`,
      FAILED), ``reason`` (why it was cancelled or failed)
    - ``progress``: ``category``, ``current``, ``total``, ``overall``
    - ``log``: ``event``, ``level``, ``data``
    - ``metric``: ``category``, ``values``
    - ``step_started``: ``name``, ``index``, ``count``, ``weight``
    - ``step_finished``: ``name``, ``index``, ``status``, ``error``, ``data``
    """

    STATE = "state"
    TERMINAL = "terminal"
    PROGRESS = "progress"
    LOG = "log"
    METRIC = "metric"
    STEP_STARTED = "step_started"
    STEP_FINISHED = "step_finished"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One stored event; ``seq`` is per job, starts at 1 and has no gaps."""

    job_id: str
    seq: int
    kind: EventKind
    data: dict[str, Any]
    timestamp: float = field(default_factory=time.time)

    @property
    def is_terminal(self) -> bool:
        """True for the event that ends the job (and its streams)."""
        return self.kind is EventKind.TERMINAL


class Keepalive:
    """Yielded by a subscription that has been idle for its keepalive interval."""

    _instance: Keepalive | None = None

    def __new__(cls) -> Keepalive:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEPALIVE"


KEEPALIVE = Keepalive()


class ErrorOrigin(StrEnum):
    """Whether the plugin's code or the platform caused a failure."""

    PLUGIN = "plugin"
    PLATFORM = "platform"


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job (or step) failed. Platform errors carry a correlation id, never a traceback."""

    type: str
    message: str
    origin: ErrorOrigin
    traceback: str = ""
    step: str = ""
    correlation_id: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON form, as stored."""
        return {
            "type": self.type,
            "message": self.message,
            "origin": self.origin.value,
            "traceback": self.traceback,
            "step": self.step,
            "correlation_id": self.correlation_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        """Inverse of :meth:`to_dict`."""
        return cls(
            type=str(data.get("type", "")),
            message=str(data.get("message", "")),
            origin=ErrorOrigin(data.get("origin", ErrorOrigin.PLATFORM.value)),
            traceback=str(data.get("traceback", "")),
            step=str(data.get("step", "")),
            correlation_id=str(data.get("correlation_id", "")),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A run of one action: what was asked, by which tenant, and how it ended."""

    id: str
    tenant: str
    plugin: str
    action: str
    # The params as the text of one JSON object: the only form a job keeps (see ``params``).
    params_json: str = field(default="{}", repr=False)
    plugin_version: str = ""
    # sha256 of the plugin code snapshot the job was validated against and runs (see
    # ``_plugin_code``); "" for jobs stored before digests were recorded.
    plugin_sha256: str = ""
    mode: str = "local"
    state: JobState = JobState.PENDING
    request_id: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: JobError | None = None
    reason: str = ""
    progress: float = 0.0
    last_seq: int = 0
    pending_reason: str = ""
    cancel_requested: bool = False
    # Warnings about the submission, fixed when it is accepted (unknown params keys, see
    # PluginCatalog.check_params_json).
    warnings: tuple[str, ...] = ()
    # The result's JSON text when already known ("" otherwise), so that a large result is
    # serialised once and not again for storage and clients.
    result_json: str = field(default="", compare=False, repr=False)
    # Size in bytes of the result's JSON text once SUCCEEDED: known without the text, which
    # jobs read from the store do not carry.
    result_size: int = 0

    @property
    def params(self) -> dict[str, Any]:
        """The params, parsed from ``params_json`` on each access.

        A job keeps only the text: parsed, 100k batch inputs are ~50 MB of Python objects
        that every full pass of the cyclic collector would traverse for as long as the job is
        held, while the server itself only validates them once and passes the text on.
        """
        value = load_json(self.params_json)
        if not isinstance(value, dict):
            # Submitted params are checked to be an object: this is a damaged stored row.
            raise ValueError(f"job {self.id}: stored params are not a JSON object")
        return value

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs to list; ``None`` fields do not filter. ``tenant=None`` means every tenant."""

    tenant: str | None = None
    states: frozenset[JobState] = frozenset()
    plugin: str | None = None
    action: str | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of jobs, newest first, and the token of the next page ("" at the end)."""

    jobs: list[Job]
    next_page_token: str
