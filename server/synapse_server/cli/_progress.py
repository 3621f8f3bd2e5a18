"""Console rendering of a run's events on stderr (stdout stays for the result JSON).

On a terminal: one progress line redrawn in place (tqdm's meter: percent, bar, elapsed time,
ETA), then the running step and the latest category's count and rate, as much of it as the
terminal's width holds; log, metric and step lines print above it, wrapped to the width, so
no line ever wraps on its own. Elsewhere (a pipe, a file, ``TERM=dumb``) every event is one
plain line, so logs of non-interactive runs stay readable.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
import threading
import time
from collections.abc import Callable
from typing import TextIO

from synapse_sdk.events import (
    Event,
    LogEvent,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
)
from tqdm import tqdm
from tqdm.utils import disp_len, disp_trim

logger = logging.getLogger(__name__)

__all__ = ["ConsoleProgressSink", "console_text", "describe_event"]

_BAR_WIDTH = 30
#: Redraws of the in-place line at most this often (events may come by the thousand per
#: second); the final state is always drawn.
_REDRAW_SECONDS = 0.1
#: The least room the bar itself keeps on the line before the details give way.
_MIN_BAR = 10
_METER = "{percentage:5.1f}%|{bar}| {elapsed}<{remaining}"
#: A category's rate is shown once it has been counting for this long.
_MIN_RATE_SECONDS = 0.5
_CLEAR = "\r\x1b[2K"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ConsoleProgressSink:
    """An event sink that draws an overall progress line plus the latest category's count.

    ``interactive`` (default: whether ``stream`` is a terminal) chooses the in-place line or
    plain lines. ``width`` fixes the line width (default: the terminal's, read at each draw).
    """

    def __init__(
        self,
        stream: TextIO,
        interactive: bool | None = None,
        *,
        width: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interactive = _is_terminal(stream) if interactive is None else interactive
        self._width = width
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._overall = 0.0
        self._categories: dict[str, tuple[int, int]] = {}
        # Per category: when and at which count it was first seen (for its rate).
        self._first_seen: dict[str, tuple[float, int]] = {}
        self._last_category: str | None = None
        self._step: str | None = None
        self._bar_drawn = False
        self._last_draw = float("-inf")
        self._pending = False

    def emit(self, event: Event) -> None:
        """Render one event; never raises into the action."""
        try:
            with self._lock:
                self._render(event)
        except Exception:  # a broken terminal must not fail the run
            logger.debug("could not render event %r", event, exc_info=True)

    def close(self) -> None:
        """Draw the final state and end the in-place line, if one is drawn."""
        with self._lock:
            if self._interactive and (self._bar_drawn or self._pending):
                self._stream.write(_CLEAR + self._line(self._columns()) + "\n")
                self._stream.flush()
                self._bar_drawn = self._pending = False

    # Rendering -------------------------------------------------------------------------------

    def _render(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            self._overall = event.overall
            if event.category is not None:
                self._categories[event.category] = (event.current, event.total)
                self._first_seen.setdefault(event.category, (self._clock(), event.current))
                self._last_category = event.category
            self._draw_bar()
            return
        if isinstance(event, StepStartedEvent):
            # Category counts belong to the step that reported them.
            self._step = f"{event.name} ({event.index + 1}/{event.count})"
            self._last_category = None
        self._print_line(describe_event(event))

    def _columns(self) -> int:
        if self._width is not None:
            return max(self._width, 1)
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return 80

    def _elapsed(self) -> float:
        return max(self._clock() - self._start, 0.0)

    def _details(self) -> list[str]:
        """What the line says besides the meter, most useful first: the latest category's
        count, its rate (joined to the count), the running step."""
        parts = []
        if self._last_category is not None:
            current, total = self._categories[self._last_category]
            parts.append(f"  {self._last_category} {current}/{total}")
            since, first = self._first_seen[self._last_category]
            seconds = self._clock() - since
            if seconds >= _MIN_RATE_SECONDS and current > first:
                parts.append(f" {tqdm.format_sizeof((current - first) / seconds)}/s")
        if self._step is not None:
            parts.append(f"  step {self._step}")
        return parts

    def _line(self, columns: int) -> str:
        """The in-place line, at most ``columns - 1`` wide (the last column would wrap on
        some terminals)."""
        room = max(columns - 1, 1)
        details = ""
        for index, part in enumerate(self._details()):
            if index == 1 and not details and not part.startswith("  "):
                continue  # a rate without its count says nothing
            candidate = details + part
            # The meter without its bar is about 24 columns; the bar keeps _MIN_BAR of them.
            if disp_len(candidate) + 24 + _MIN_BAR <= room:
                details = candidate
        meter = tqdm.format_meter(
            n=self._overall,
            total=100,
            elapsed=self._elapsed(),
            ncols=room - disp_len(details),
            bar_format=_METER,
        )
        return disp_trim(meter + details, room)

    def _plain_line(self) -> str:
        filled = round(_BAR_WIDTH * self._overall / 100.0)
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        text = f"[{bar}] {self._overall:5.1f}%"
        if self._step is not None:
            text += f"  step {self._step}"
        if self._last_category is not None:
            current, total = self._categories[self._last_category]
            text += f"  {self._last_category} {current}/{total}"
        return text + f"  elapsed {tqdm.format_interval(self._elapsed())}"

    def _draw_bar(self) -> None:
        if not self._interactive:
            self._stream.write(self._plain_line() + "\n")
            self._stream.flush()
            return
        now = self._clock()
        if now - self._last_draw < _REDRAW_SECONDS and self._overall < 100.0:
            self._pending = True  # drawn by the next redraw, a printed line or close()
            return
        self._last_draw = now
        self._stream.write(_CLEAR + self._line(self._columns()))
        self._stream.flush()
        self._bar_drawn, self._pending = True, False

    def _print_line(self, line: str) -> None:
        if not self._interactive:
            self._stream.write(line + "\n")
            self._stream.flush()
            return
        columns = self._columns()
        text = "".join(f"{part}\n" for part in _wrap(line, max(columns - 1, 1)))
        if self._bar_drawn or self._pending:
            text = _CLEAR + text + self._line(columns)
            self._bar_drawn, self._pending = True, False
            self._last_draw = self._clock()
        self._stream.write(text)
        self._stream.flush()


def console_text(line: str, stream: TextIO) -> str:
    """``line`` plus newline, wrapped to the terminal's width when ``stream`` is one (a
    message printed beside the progress line must not wrap on its own either)."""
    if not _is_terminal(stream):
        return line + "\n"
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return line + "\n"
    return "".join(f"{part}\n" for part in _wrap(line, max(columns - 1, 1)))


def _wrap(line: str, width: int) -> list[str]:
    """``line`` as lines of at most ``width`` display columns (continuations indented)."""
    if disp_len(line) <= width:
        return [line]
    indent = "  " if width > 8 else ""
    pieces = textwrap.wrap(
        line, width, subsequent_indent=indent, break_on_hyphens=False, drop_whitespace=True
    )
    out: list[str] = []
    for piece in pieces:
        # textwrap counts characters; wide ones (CJK) take two columns.
        while disp_len(piece) > width:
            head = disp_trim(piece, width)
            out.append(head)
            piece = indent + piece[len(head) :]
        out.append(piece)
    return out or [""]


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
