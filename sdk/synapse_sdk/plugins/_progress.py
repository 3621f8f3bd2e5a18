"""Overall-progress bookkeeping shared by simple and step-based runs."""

from __future__ import annotations

import logging
import operator

from synapse_sdk.errors import ProgressError
from synapse_sdk.events import ProgressEvent
from synapse_sdk.runtime import current_context

logger = logging.getLogger(__name__)

__all__ = ["ProgressTracker"]


class ProgressTracker:
    """Maps ``set_progress`` calls to the run's overall percent.

    The run is a line from 0 to 1. The active *span* is the share of that line the code now
    running owns: the whole line in simple mode, a step's normalised weight in step mode (and
    an empty span before the first step, so model resolution does not move the bar). Within the
    span, ``current/total`` of the latest call places the overall percent; it never goes down.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._width = 1.0
        self._overall = 0.0

    @property
    def overall(self) -> float:
        """The overall percent reported so far (0-100)."""
        return self._overall

    def enter_span(self, start: float, width: float) -> None:
        """Give the code about to run the share ``[start, start + width]`` of the run."""
        self._start = start
        self._width = width

    def report(self, current: int, total: int, category: str | None) -> ProgressEvent:
        """Validate, update the overall percent and emit one progress event."""
        total_i = _as_int(total)
        if total_i is None or total_i <= 0:
            raise ProgressError(f"set_progress: total must be a positive integer, got {total!r}")
        current_i = _as_int(current)
        if current_i is None or not 0 <= current_i <= total_i:
            raise ProgressError(
                f"set_progress: current must be an integer between 0 and total ({total}), "
                f"got {current!r}"
            )
        candidate = 100.0 * (self._start + self._width * current_i / total_i)
        return self._emit(min(candidate, 100.0), current_i, total_i, category)

    def advance_to(self, fraction: float, current: int, total: int, category: str | None) -> None:
        """Move the overall percent to ``fraction`` of the run (used at step boundaries)."""
        self._emit(min(100.0 * fraction, 100.0), current, total, category)

    def complete(self, current: int = 1, total: int = 1, category: str | None = None) -> None:
        """Report exactly 100 percent: the run finished successfully."""
        self._overall = 100.0
        current_context().emit(
            ProgressEvent(category=category, current=current, total=total, overall=100.0)
        )

    def _emit(
        self, candidate: float, current: int, total: int, category: str | None
    ) -> ProgressEvent:
        self._overall = max(self._overall, round(candidate, 6))
        event = ProgressEvent(
            category=category, current=current, total=total, overall=self._overall
        )
        current_context().emit(event)
        return event


def _as_int(value: object) -> int | None:
    # operator.index accepts int-like values (numpy integers) but not floats or bools' lookalikes.
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
