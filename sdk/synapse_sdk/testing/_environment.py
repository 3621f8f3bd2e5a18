"""``ActionEnvironment``: run an action in-process and capture everything it reports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

from synapse_sdk.events import (
    Event,
    LogEvent,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
)
from synapse_sdk.plugins._action import BaseAction
from synapse_sdk.plugins._runner import run_action
from synapse_sdk.runtime import ModelBackend, PlatformInfo, RunContext

logger = logging.getLogger(__name__)

__all__ = ["ActionEnvironment", "RecordingSink"]

E = TypeVar("E")


class RecordingSink:
    """An event sink that keeps every event in order and optionally calls a hook per event."""

    def __init__(self, on_event: Callable[[Event], None] | None = None) -> None:
        self.events: list[Event] = []
        self._on_event = on_event
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        """Record ``event``, then call the hook (which may, for example, cancel the run)."""
        with self._lock:
            self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)


class ActionEnvironment:
    """Runs actions in-process for plugin authors' tests.

    ``run`` executes one action with the given params through the same runner the platform
    uses and returns its JSON-ready result (or raises the same typed errors). ``events`` holds
    everything the last run emitted; ``cancel()`` may be called from another thread or from
    ``on_event`` to cancel the run in flight (or, before ``run``, the next run).
    """

    def __init__(
        self,
        model_backend: ModelBackend | None = None,
        on_event: Callable[[Event], None] | None = None,
        plugin_code: str | None = None,
        platform: PlatformInfo | None = None,
    ) -> None:
        self.model_backend = model_backend
        self.plugin_code = plugin_code
        self.platform = platform
        self._on_event = on_event
        self._cancel_event = threading.Event()
        self._sink = RecordingSink(on_event)
        self.context: RunContext | None = None

    @property
    def events(self) -> list[Event]:
        """Events of the latest run, in emission order."""
        return list(self._sink.events)

    def cancel(self) -> None:
        """Ask the running (or next) action to cancel."""
        self._cancel_event.set()

    def run(
        self,
        action_cls: type[BaseAction[Any]],
        params: Mapping[str, Any] | BaseModel | None = None,
        model_backend: ModelBackend | None = None,
    ) -> dict[str, Any]:
        """Run ``action_cls`` with ``params``; events of any previous run are cleared."""
        self._sink = RecordingSink(self._on_event)
        self.context = RunContext(
            sink=self._sink,
            cancel_event=self._cancel_event,
            job_id=None,
            plugin_code=self.plugin_code,
            action_name=action_cls.action_name or None,
            model_backend=model_backend if model_backend is not None else self.model_backend,
            platform=self.platform,
            mode="test",
        )
        try:
            return run_action(action_cls, params, self.context)
        finally:
            # A cancel aimed at this run must not leak into the next one.
            self._cancel_event.clear()

    def events_of(self, kind: type[E]) -> list[E]:
        """Events of one type."""
        return [event for event in self._sink.events if isinstance(event, kind)]

    def progress_events(self) -> list[ProgressEvent]:
        """Progress events in order."""
        return self.events_of(ProgressEvent)

    def log_events(self) -> list[LogEvent]:
        """Log events in order."""
        return self.events_of(LogEvent)

    def metric_events(self) -> list[MetricEvent]:
        """Metric events in order."""
        return self.events_of(MetricEvent)

    def step_events(self) -> list[StepStartedEvent | StepFinishedEvent]:
        """Step started/finished events in order."""
        return [
            event
            for event in self._sink.events
            if isinstance(event, StepStartedEvent | StepFinishedEvent)
        ]
