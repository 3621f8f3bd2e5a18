"""Round trips and edge cases of the protobuf ↔ dataclass converters."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from synapse.plugin.v1 import job_event_pb2, job_pb2, plugin_pb2
from synapse_client import (
    ActionInfo,
    ActionKind,
    ClientConfigError,
    ErrorOrigin,
    Job,
    JobErrorInfo,
    JobEvent,
    JobState,
    LogEvent,
    LogLevel,
    MetricEvent,
    PluginInfo,
    ProgressEvent,
    ProtocolError,
    RunMode,
    StateChangedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
    TerminalEvent,
)
from synapse_client import _converters as conv

T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ERROR = JobErrorInfo(
    type="my_plugin.errors.ModelMissing",
    message="model 42 missing",
    plugin_traceback="Traceback (most recent call last):\n  ...\n",
    origin=ErrorOrigin.PLUGIN,
    step="load",
    correlation_id="",
)


def test_job_round_trip_full() -> None:
    job = Job(
        id="j1",
        plugin="p",
        action="a",
        state=JobState.FAILED,
        mode=RunMode.TASK,
        plugin_version="1.2.3",
        plugin_sha256="ab" * 32,
        params={"inputs": [1.0, 2.5], "name": "x", "nested": {"flag": True, "none": None}},
        create_time=T0,
        start_time=T0,
        end_time=T0,
        error=ERROR,
        progress_percent=42.5,
        last_seq=17,
        pending_reason="",
        request_id="rid",
        cancel_requested=True,
        result_size_bytes=0,
    )
    message = conv.job_to_proto(job)
    assert message.state == job_pb2.JOB_STATE_FAILED
    assert message.mode == job_pb2.RUN_MODE_TASK
    again = conv.job_from_proto(job_pb2.Job.FromString(message.SerializeToString()))
    assert again == job


def test_job_minimal_leaves_optional_fields_unset() -> None:
    job = conv.job_from_proto(job_pb2.Job(id="j", plugin="p", action="a", state=2))
    assert job.state is JobState.RUNNING
    assert job.mode is None and job.error is None
    assert job.create_time is None and job.params == {}


def test_job_params_json_wins_and_params_travel_as_json() -> None:
    message = job_pb2.Job(id="j", plugin="p", action="a", state=2, params_json=b'{"n": 3}')
    message.params.update({"n": 1})
    assert conv.job_from_proto(message).params == {"n": 3}
    assert json.loads(conv.dict_to_json({"n": 3, "x": [1.5]})) == {"n": 3, "x": [1.5]}
    assert conv.dict_to_json(None) == b""
    with pytest.raises(ClientConfigError):
        conv.dict_to_json({"bad": object()})
    with pytest.raises(ClientConfigError):
        conv.dict_to_json({"nan": float("nan")})
    with pytest.raises(ClientConfigError):
        conv.dict_to_json({"x": [1.0, float("-inf")], "s": "NaN"})
    # The words alone (inside strings) are fine; big ints stay exact.
    text = conv.dict_to_json({"s": "NaN and Infinity", "big": 10**30})
    assert json.loads(text) == {"s": "NaN and Infinity", "big": 10**30}
    assert conv.json_loads(text) == {"s": "NaN and Infinity", "big": 10**30}
    with pytest.raises(ProtocolError):
        conv.job_from_proto(job_pb2.Job(id="j", state=2, params_json=b"[1]"))


EVENTS = [
    StateChangedEvent(state=JobState.RUNNING, reason="worker started"),
    ProgressEvent(category="inference", current=3, total=10, overall_percent=30.0),
    LogEvent(event="model_load", level=LogLevel.WARNING, data={"path": "/m", "n": 2.0}),
    MetricEvent(category="quality", values={"acc": 0.9}),
    StepStartedEvent(name="load", index=0, count=3, weight=0.25),
    StepFinishedEvent(name="load", index=0, status=StepStatus.FAILED, error=ERROR, data={"a": 1.0}),
    StepFinishedEvent(name="ok", index=1, status=StepStatus.SUCCEEDED),
    TerminalEvent(
        state=JobState.SUCCEEDED,
        result_json=b'{"y": [1, 2]}',
        result_size_bytes=13,
        result_inline=True,
        reason="done",
    ),
    TerminalEvent(state=JobState.FAILED, error=ERROR, reason="plugin raised"),
]


@pytest.mark.parametrize("payload", EVENTS, ids=lambda p: type(p).__name__)
def test_event_round_trip(payload: object) -> None:
    event = JobEvent(seq=5, job_id="j1", payload=payload, time=T0)  # type: ignore[arg-type]
    wire = conv.event_to_proto(event).SerializeToString()
    assert conv.event_from_proto(job_event_pb2.JobEvent.FromString(wire)) == event


def test_terminal_inline_result_and_not_inline() -> None:
    assert EVENTS[7].inline_result() == {"y": [1, 2]}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not inline"):
        TerminalEvent(state=JobState.SUCCEEDED, result_size_bytes=10).inline_result()


def test_event_without_kind_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no known kind"):
        conv.event_from_proto(job_event_pb2.JobEvent(seq=1, job_id="j"))


def test_plugin_round_trip_with_schema() -> None:
    plugin = PluginInfo(
        code="p",
        name="P",
        version="1.0",
        category="neural_net",
        description="d",
        actions=(
            ActionInfo(
                name="infer",
                description="runs",
                kind=ActionKind.JOB,
                default_mode=RunMode.LOCAL,
                supported_modes=(RunMode.LOCAL, RunMode.TASK),
                params_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
                progress_categories=("model_load", "inference"),
            ),
            ActionInfo(name="serve", kind=ActionKind.SERVE),
        ),
    )
    wire = conv.plugin_to_proto(plugin).SerializeToString()
    assert conv.plugin_from_proto(plugin_pb2.Plugin.FromString(wire)) == plugin


def test_bad_schema_json_is_a_protocol_error() -> None:
    message = plugin_pb2.Action(name="x", kind=1, params_schema_json="{nope")
    with pytest.raises(ProtocolError, match="invalid params schema"):
        conv.action_from_proto(message)


@pytest.mark.parametrize(
    ("enum_type", "proto_enum"),
    [
        (JobState, job_pb2.JobState),
        (RunMode, job_pb2.RunMode),
        (ErrorOrigin, job_pb2.ErrorOrigin),
        (ActionKind, plugin_pb2.ActionKind),
        (LogLevel, job_event_pb2.LogLevel),
        (StepStatus, job_event_pb2.StepStatus),
    ],
)
def test_every_proto_enum_value_maps(enum_type: type, proto_enum: object) -> None:
    for number in proto_enum.values():  # type: ignore[attr-defined]
        member = conv.enum_from_proto(enum_type, number)
        assert conv.enum_to_proto(member, enum_type) == number


def test_unknown_enum_number_and_missing_state() -> None:
    with pytest.raises(ProtocolError, match="unknown JobState value 99"):
        conv.enum_from_proto(JobState, 99)
    with pytest.raises(ProtocolError, match="without a JobState"):
        conv.job_from_proto(job_pb2.Job(id="j"))


def test_request_side_validation() -> None:
    assert conv.run_mode_to_proto("TASK") == job_pb2.RUN_MODE_TASK
    assert conv.run_mode_to_proto(None) == job_pb2.RUN_MODE_UNSPECIFIED
    with pytest.raises(ClientConfigError, match="unknown run mode 'gpu'"):
        conv.run_mode_to_proto("gpu")
    assert conv.job_states_to_proto(["running", JobState.FAILED]) == [2, 4]
    assert conv.job_states_to_proto("pending") == [1]
    with pytest.raises(ClientConfigError, match="unknown job state"):
        conv.job_states_to_proto("done")
    with pytest.raises(ClientConfigError, match="JSON object"):
        conv.dict_to_struct([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ClientConfigError, match="not JSON-serialisable"):
        conv.dict_to_struct({"x": object()})


def test_inline_result_is_parsed_strictly_with_typed_errors() -> None:
    from synapse_client._jobs import inline_result

    good = TerminalEvent(
        state=JobState.SUCCEEDED,
        result_json=b'{"big": 100000000000000000000001}',
        result_inline=True,
    )
    assert inline_result("j", good) == {"big": 100000000000000000000001}
    assert inline_result("j", TerminalEvent(state=JobState.SUCCEEDED, result_inline=True)) is None
    for bad in (b'{"a": NaN}', b'{"a": 1'):
        with pytest.raises(ProtocolError):
            inline_result("j", TerminalEvent(state=JobState.SUCCEEDED, result_json=bad))
