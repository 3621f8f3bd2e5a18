"""The CLI's console progress rendering, interactive and line-by-line."""

from __future__ import annotations

import io

from synapse_sdk.events import LogEvent, ProgressEvent, StepStartedEvent
from synapse_server.cli._progress import ConsoleProgressSink


def test_interactive_bar_is_redrawn_in_place() -> None:
    stream = io.StringIO()
    sink = ConsoleProgressSink(stream, interactive=True)
    sink.emit(StepStartedEvent(name="infer", index=0, count=1, weight=1.0))
    sink.emit(ProgressEvent(category="inference", current=1, total=4, overall=25.0))
    sink.emit(LogEvent(event="note", data={"k": 1}))
    sink.emit(ProgressEvent(category="inference", current=4, total=4, overall=100.0))
    sink.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") >= 3
    assert 'log [info] note {"k": 1}\n' in text
    assert text.endswith("100.0%  step infer (1/1)  inference 4/4\n")


def test_non_interactive_prints_one_line_per_event() -> None:
    stream = io.StringIO()
    sink = ConsoleProgressSink(stream, interactive=False)
    sink.emit(ProgressEvent(category="model_load", current=1, total=3, overall=33.3))
    sink.emit(ProgressEvent(category=None, current=1, total=1, overall=100.0))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "\r" not in stream.getvalue()
    assert lines[0].endswith(" 33.3%  model_load 1/3")
    assert lines[1].startswith("[" + "#" * 30 + "] 100.0%")
