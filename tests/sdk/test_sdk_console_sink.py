"""The CLI's console progress rendering: in place on a terminal (fitted to its width), plain
lines elsewhere; and the console script on a real pseudo-terminal of 45 columns."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from synapse_sdk.events import LogEvent, ProgressEvent, StepStartedEvent
from synapse_server.cli._progress import ConsoleProgressSink

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _screen_lines(text: str) -> list[str]:
    """What each terminal row ends up showing: ANSI codes dropped, a carriage return starts
    the row again."""
    rows = []
    for row in _ANSI.sub("", text).split("\n"):
        rows.append(row.split("\r")[-1])
    return rows


def test_interactive_line_is_redrawn_in_place_with_elapsed_eta_and_rate() -> None:
    stream, clock = io.StringIO(), Clock()
    sink = ConsoleProgressSink(stream, interactive=True, width=100, clock=clock)
    sink.emit(StepStartedEvent(name="infer", index=0, count=1, weight=1.0))
    clock.now = 1.0
    sink.emit(ProgressEvent(category="inference", current=1, total=4, overall=25.0))
    sink.emit(LogEvent(event="note", data={"k": 1}))
    clock.now = 3.0
    sink.emit(ProgressEvent(category="inference", current=3, total=4, overall=75.0))
    clock.now = 4.0
    sink.emit(ProgressEvent(category="inference", current=4, total=4, overall=100.0))
    sink.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") >= 3
    assert 'log [info] note {"k": 1}\n' in text
    rows = _screen_lines(text)
    assert rows[-1] == ""
    last = rows[-2]
    # percent, bar, elapsed<ETA, then the category's count and rate and the step.
    assert last.startswith("100.0%|"), last
    assert "| 00:04<00:00" in last and "inference 4/4 1.00/s" in last
    assert last.endswith("step infer (1/1)"), last
    at_75 = next(r for r in text.split("\r\x1b[2K") if r.startswith(" 75.0%"))
    assert "00:03<00:01" in at_75 and "inference 3/4 1.00/s" in at_75


def test_redraws_are_throttled_but_the_end_is_drawn() -> None:
    stream, clock = io.StringIO(), Clock()
    sink = ConsoleProgressSink(stream, interactive=True, width=80, clock=clock)
    for i in range(1, 1000):
        sink.emit(ProgressEvent(category="x", current=i, total=1000, overall=i / 10))
    assert stream.getvalue().count("\r\x1b[2K") == 1  # all within one redraw interval
    sink.close()
    assert _screen_lines(stream.getvalue())[-2].startswith(" 99.9%|")


@pytest.mark.parametrize("width", [20, 30, 45, 60, 120])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    stream, clock = io.StringIO(), Clock()
    sink = ConsoleProgressSink(stream, interactive=True, width=width, clock=clock)
    sink.emit(StepStartedEvent(name="a_rather_long_step_name", index=1, count=3, weight=0.5))
    for i in range(1, 30):
        clock.now += 0.5
        sink.emit(ProgressEvent(category="inference_batches", current=i, total=30, overall=i * 3))
        sink.emit(LogEvent(event="batch", data={"index": i, "note": "x" * 70 + " 한국어" * 8}))
    sink.close()
    for row in _screen_lines(stream.getvalue()):
        assert len(row) + sum(1 for c in row if "\uac00" <= c <= "\ud7a3") < width, row


def test_non_interactive_prints_one_line_per_event() -> None:
    stream, clock = io.StringIO(), Clock()
    sink = ConsoleProgressSink(stream, interactive=False, clock=clock)
    clock.now = 65.0
    sink.emit(ProgressEvent(category="model_load", current=1, total=3, overall=33.3))
    sink.emit(ProgressEvent(category=None, current=1, total=1, overall=100.0))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert lines[0].endswith(" 33.3%  model_load 1/3  elapsed 01:05")
    assert lines[1].startswith("[" + "#" * 30 + "] 100.0%")


def _run_in_pty(*argv: str, columns: int) -> tuple[int, str]:
    """Run the console script with stderr and stdout on a pseudo-terminal of ``columns``."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    env["TERM"] = "xterm"
    proc = subprocess.Popen(
        [SYNAPSE, *argv], stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            if not ready:
                break
            try:
                data = os.read(primary, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        os.close(primary)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "server"])
def test_a_45_column_terminal_gets_no_wrapped_line(
    remote: bool, request: pytest.FixtureRequest
) -> None:
    where = ["--server", request.getfixturevalue("platform_server").address] if remote else []
    chatty = ("chatty", "--params", '{"events": 300, "batchsize": 1}')
    quick = ("quick", "--params", '{"count": 3, "label": "a label", "batch_size_typo": 1}')
    for action, *params in (chatty, quick):
        plugin = "toy" if remote else str(TOY)
        code, text = _run_in_pty(
            "plugin", "run", action, "--plugin", plugin, *params, *where, columns=45
        )
        assert code == 0, text
        rows = _screen_lines(text.replace("\r\n", "\n"))
        assert any("100.0%|" in row for row in rows), rows  # the in-place line was drawn
        assert any(row.startswith("warning: unknown params key") for row in rows), rows
        too_wide = [row for row in rows if len(row) > 45]
        assert not too_wide, too_wide
