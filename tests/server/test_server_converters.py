"""Protobuf ↔ domain conversions round-trip without loss."""

from __future__ import annotations

import json

import pytest
from google.protobuf import struct_pb2
from synapse.plugin.v1 import job_event_pb2, job_pb2
from synapse_sdk.events import (
    ErrorInfo,
    LogEvent,
    LogLevel,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
)
from synapse_server.core import (
    ErrorOrigin,
    EventKind,
    InvalidArgumentError,
    Job,
    JobError,
    JobEvent,
    JobState,
    NewEvent,
)
from synapse_server.grpc import _converters as conv

SDK_EVENTS = [
    ProgressEvent(category="inference", current=3, total=7, overall=42.5),
    ProgressEvent(category=None, current=1, total=1, overall=100.0),
    LogEvent(event="loaded", data={"n": 2, "nested": {"ok": True}}, level=LogLevel.WARNING),
    MetricEvent(category="eval", values={"acc": 0.5}),
    StepStartedEvent(name="load", index=0, count=2, weight=0.25),
    StepFinishedEvent(
        name="load",
        index=0,
        status=StepStatus.FAILED,
        error=ErrorInfo(type="ValueError", message="m", traceback="tb"),
        data={"k": "v"},
    ),
    StepFinishedEvent(name="infer", index=1, status=StepStatus.ROLLED_BACK),
]


@pytest.mark.parametrize("event", SDK_EVENTS, ids=lambda e: type(e).__name__)
def test_sdk_event_survives_worker_and_client_hops(event: object) -> None:
    wire = conv.sdk_event_to_worker_pb(event, worker_seq=9)  # type: ignore[arg-type]
    report = conv.worker_event_from_pb(wire)
    assert report.worker_seq == 9
    assert isinstance(report.item, NewEvent)
    stored = JobEvent("j", 5, report.item.kind, report.item.data, report.item.timestamp)
    message = conv.event_to_pb(stored)
    assert message.seq == 5 and message.job_id == "j"
    which = message.WhichOneof("kind")
    if isinstance(event, ProgressEvent):
        assert which == "progress"
        assert (message.progress.category or None) == event.category
        assert (message.progress.current, message.progress.total) == (event.current, event.total)
        assert message.progress.overall_percent == event.overall
    elif isinstance(event, LogEvent):
        assert which == "log" and message.log.event == event.event
        assert message.log.level == job_event_pb2.LOG_LEVEL_WARNING
        assert dict(message.log.data)["nested"]["ok"] is True
    elif isinstance(event, MetricEvent):
        assert which == "metric" and dict(message.metric.values) == {"acc": 0.5}
    elif isinstance(event, StepStartedEvent):
        assert which == "step_started"
        s = message.step_started
        assert (s.name, s.index, s.count, s.weight) == ("load", 0, 2, 0.25)
    else:
        assert isinstance(event, StepFinishedEvent)
        assert which == "step_finished"
        f = message.step_finished
        assert f.name == event.name and f.index == event.index
        if event.error is not None:
            assert f.error.type == "ValueError" and f.error.plugin_traceback == "tb"
            assert f.error.step == "load" and dict(f.data) == {"k": "v"}
        else:
            assert not f.HasField("error")


def test_states_modes_and_errors_round_trip() -> None:
    for state in JobState:
        assert conv.state_from_pb(conv.state_to_pb(state)) is state
    for mode in ("local", "task", "job"):
        assert conv.mode_from_pb(conv.mode_to_pb(mode)) == mode
    assert conv.mode_from_pb(job_pb2.RUN_MODE_UNSPECIFIED) == ""
    with pytest.raises(InvalidArgumentError):
        conv.state_from_pb(job_pb2.JOB_STATE_UNSPECIFIED)
    plugin_error = JobError("E", "msg", ErrorOrigin.PLUGIN, traceback="tb", step="s")
    assert conv.error_from_pb(conv.error_to_pb(plugin_error)) == plugin_error
    platform_error = JobError("WorkerCrashed", "m", ErrorOrigin.PLATFORM, traceback="secret")
    wire = conv.error_to_pb(platform_error)
    assert wire.plugin_traceback == ""  # platform internals never leave the server


def test_params_json_from_pb() -> None:
    text = conv.params_json_from_pb(b'{"n": 5, "s": "\xc3\xa9"}')
    assert json.loads(text) == {"n": 5, "s": "\u00e9"}
    with pytest.raises(InvalidArgumentError, match="not UTF-8"):
        conv.params_json_from_pb(b'{"s": "\xff"}')
    # A Struct's numbers are floats; the text says so, and the params model decides.
    message = struct_pb2.Struct()
    message.update({"n": 5, "xs": [1, "a"]})
    assert json.loads(conv.params_json_from_struct(message)) == {"n": 5.0, "xs": [1.0, "a"]}
    message.update({"bad": float("nan")})
    with pytest.raises(InvalidArgumentError, match="NaN"):
        conv.params_json_from_struct(message)


def test_job_and_terminal_event() -> None:
    job = Job(
        id="j1", tenant="hidden", plugin="p", action="a", params_json='{"x": [1, 2], "s": "t"}',
        plugin_version="1.0", state=JobState.SUCCEEDED, request_id="r", created_at=1.5,
        started_at=2.0, finished_at=3.25, result={"ok": 1}, result_size=8, progress=100.0,
        last_seq=7, plugin_sha256="ab" * 32,
    )  # fmt: skip
    message = conv.job_to_pb(job, with_params=True)
    assert "hidden" not in str(message)
    assert message.plugin_sha256 == "ab" * 32 == conv.job_to_pb(job).plugin_sha256
    assert message.state == job_pb2.JOB_STATE_SUCCEEDED and message.mode == job_pb2.RUN_MODE_LOCAL
    assert dict(message.params)["s"] == "t"
    assert json.loads(message.params_json) == {"x": [1, 2], "s": "t"}
    # The basic view (RunAction, ListJobs, CancelJob) leaves the params out.
    basic = conv.job_to_pb(job)
    assert not basic.HasField("params") and basic.params_json == b""
    assert basic.result_size_bytes == message.result_size_bytes
    assert message.end_time.ToNanoseconds() == 3_250_000_000
    assert message.result_size_bytes == len(b'{"ok":1}') and message.last_seq == 7
    terminal = JobEvent(
        "j1", 7, EventKind.TERMINAL,
        {"state": "SUCCEEDED", "result": {"ok": 1}, "result_size": 8, "result_inline": True},
    )  # fmt: skip
    t = conv.event_to_pb(terminal).terminal
    assert t.result_json == b'{"ok":1}' and t.result_inline and t.result_size_bytes == 8
    # A worker's result travels as its own text, sent byte for byte (spacing, key order).
    text = '{"z": [1, 2.50], "a": "\u00e9"}'
    raw = JobEvent(
        "j1", 7, EventKind.TERMINAL,
        {"state": "SUCCEEDED", "result_json": text, "result_size": 31, "result_inline": True},
    )  # fmt: skip
    t = conv.event_to_pb(raw).terminal
    assert t.result_json == text.encode() and t.result_inline


def test_job_error_keeps_the_plugin_traceback_but_never_a_platform_one() -> None:
    info = ErrorInfo("ValueError", "bad input", "Traceback (most recent call last): ...")
    plugin = conv.error_info_to_pb(info, "load")
    assert (plugin.origin, plugin.plugin_traceback, plugin.step) == (
        job_pb2.ERROR_ORIGIN_PLUGIN,
        info.traceback,
        "load",
    )
    platform = conv.error_info_to_pb(info, plugin=False)
    assert (platform.origin, platform.plugin_traceback, platform.message) == (
        job_pb2.ERROR_ORIGIN_PLATFORM,
        "",
        "bad input",
    )
