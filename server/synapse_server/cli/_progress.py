"""Console rendering of a run's events on stderr (stdout stays for the result JSON)."""

from __future__ import annotations

import json
import logging
import threading
from typing import TextIO

from synapse_sdk.events import (
    Event,
    LogEvent,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
)

logger = logging.getLogger(__name__)

__all__ = ["ConsoleProgressSink", "describe_event"]

_BAR_WIDTH = 30


class ConsoleProgressSink:
    """An event sink that draws an overall progress bar plus the latest category's count.

    On a terminal the bar is redrawn in place and other events print above it; otherwise every
    event is one line, so logs of non-interactive runs stay readable.
    """

    def __init__(self, stream: TextIO, interactive: bool | None = None) -> None:
        self._stream = stream
        self._interactive = stream.isatty() if interactive is None else interactive
        self._lock = threading.Lock()
        self._overall = 0.0
        self._categories: dict[str, tuple[int, int]] = {}
        self._last_category: str | None = None
        self._step: str | None = None
        self._bar_drawn = False

    def emit(self, event: Event) -> None:
        """Render one event; never raises into the action."""
        try:
            with self._lock:
                self._render(event)
        except Exception:  # a broken terminal must not fail the run
            logger.debug("could not render event %r", event, exc_info=True)

    def close(self) -> None:
        """End the in-place bar line, if one is drawn."""
        with self._lock:
            if self._interactive and self._bar_drawn:
                self._stream.write("\n")
                self._stream.flush()
                self._bar_drawn = False

    def _render(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            self._overall = event.overall
            if event.category is not None:
                self._categories[event.category] = (event.current, event.total)
                self._last_category = event.category
            self._draw_bar()
            return
        if isinstance(event, StepStartedEvent):
            # Category counts belong to the step that reported them.
            self._step = f"{event.name} ({event.index + 1}/{event.count})"
            self._last_category = None
        self._print_line(describe_event(event))

    def _bar_text(self) -> str:
        filled = round(_BAR_WIDTH * self._overall / 100.0)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        text = f"[{bar}] {self._overall:5.1f}%"
        if self._step is not None:
            text += f"  step {self._step}"
        if self._last_category is not None:
            current, total = self._categories[self._last_category]
            text += f"  {self._last_category} {current}/{total}"
        return text

    def _draw_bar(self) -> None:
        if self._interactive:
            self._stream.write("\r\x1b[2K" + self._bar_text())
            self._bar_drawn = True
        else:
            self._stream.write(self._bar_text() + "\n")
        self._stream.flush()

    def _print_line(self, line: str) -> None:
        if self._interactive and self._bar_drawn:
            self._stream.write("\r\x1b[2K" + line + "\n" + self._bar_text())
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


def describe_event(event: Event) -> str:
    """One line for a log, metric or step event (progress goes to the bar instead)."""
    if isinstance(event, LogEvent):
        data = f" {json.dumps(event.data, default=str)}" if event.data else ""
        return f"log [{event.level.value}] {event.event}{data}"
    if isinstance(event, MetricEvent):
        where = f" {event.category}" if event.category else ""
        return f"metrics{where} {json.dumps(event.values, default=str)}"
    if isinstance(event, StepStartedEvent):
        return (
            f"step {event.index + 1}/{event.count} {event.name} started (weight {event.weight:.2f})"
        )
    if isinstance(event, StepFinishedEvent):
        detail = f": {event.error.type}: {event.error.message}" if event.error else ""
        return f"step {event.index + 1} {event.name} {event.status.value}{detail}"
    return repr(event)
