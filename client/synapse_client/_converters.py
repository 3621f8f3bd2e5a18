"""All protobuf ↔ client dataclass conversion, in both directions.

The client needs only the ``from_proto`` direction at runtime; the ``to_proto`` one exists so
that tests can round-trip every type and so that the two can never drift apart silently.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import pydantic_core
from google.protobuf import struct_pb2, timestamp_pb2
from synapse.plugin.v1 import job_event_pb2, job_pb2, plugin_pb2

from ._errors import ClientConfigError, ProtocolError
from ._types import (
    ActionInfo,
    ActionKind,
    ErrorOrigin,
    EventPayload,
    Job,
    JobErrorInfo,
    JobEvent,
    JobState,
    LogEvent,
    LogLevel,
    MetricEvent,
    PluginInfo,
    ProgressEvent,
    RunMode,
    StateChangedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
    TerminalEvent,
)
from .codec import python_to_struct, struct_to_python

logger = logging.getLogger(__name__)

__all__ = [
    "action_from_proto",
    "action_to_proto",
    "dict_from_struct",
    "dict_to_json",
    "dict_to_struct",
    "enum_from_proto",
    "enum_to_proto",
    "event_from_proto",
    "event_to_proto",
    "job_error_from_proto",
    "job_error_to_proto",
    "job_from_proto",
    "job_states_to_proto",
    "job_to_proto",
    "plugin_from_proto",
    "plugin_to_proto",
    "run_mode_to_proto",
]

E = TypeVar("E", bound=StrEnum)

# Each client enum ↔ its proto enum: the proto value names are PREFIX + the member name.
_ENUM_PREFIXES: dict[type[StrEnum], tuple[Any, str]] = {
    JobState: (job_pb2.JobState, "JOB_STATE_"),
    RunMode: (job_pb2.RunMode, "RUN_MODE_"),
    ErrorOrigin: (job_pb2.ErrorOrigin, "ERROR_ORIGIN_"),
    ActionKind: (plugin_pb2.ActionKind, "ACTION_KIND_"),
    LogLevel: (job_event_pb2.LogLevel, "LOG_LEVEL_"),
    StepStatus: (job_event_pb2.StepStatus, "STEP_STATUS_"),
}


def enum_from_proto(enum_type: type[E], value: int) -> E | None:
    """Proto enum number → client enum member; None for ``*_UNSPECIFIED``.

    Raises :class:`ProtocolError` for a number this client does not know (a newer server).
    """
    proto_enum, prefix = _ENUM_PREFIXES[enum_type]
    try:
        name = proto_enum.Name(value)
    except ValueError:
        raise ProtocolError(f"unknown {enum_type.__name__} value {value}") from None
    member = name.removeprefix(prefix)
    if member == "UNSPECIFIED" and "UNSPECIFIED" not in enum_type.__members__:
        return None
    return enum_type[member]


def _required_enum(enum_type: type[E], value: int, what: str) -> E:
    member = enum_from_proto(enum_type, value)
    if member is None:
        raise ProtocolError(f"server sent {what} without a {enum_type.__name__}")
    return member


def enum_to_proto(member: StrEnum | None, enum_type: type[StrEnum]) -> Any:
    """Client enum member (None = unspecified) → proto enum number (typed Any: each proto
    enum has its own ValueType in the stubs, and this serves all of them)."""
    proto_enum, prefix = _ENUM_PREFIXES[enum_type]
    return proto_enum.Value(prefix + (member.name if member is not None else "UNSPECIFIED"))


def run_mode_to_proto(mode: RunMode | str | None) -> Any:
    """A run mode as accepted by the client API (enum, its string value, or None)."""
    if mode is None or isinstance(mode, RunMode):
        return enum_to_proto(mode, RunMode)
    try:
        return enum_to_proto(RunMode(mode.lower()), RunMode)
    except ValueError:
        choices = ", ".join(m.value for m in RunMode)
        raise ClientConfigError(f"unknown run mode {mode!r}; expected one of {choices}") from None


def job_states_to_proto(states: JobState | str | list[JobState | str] | None) -> list[Any]:
    """State filter for ListJobs: one state, several, or None for any."""
    if states is None:
        return []
    items = [states] if isinstance(states, JobState | str) else list(states)
    out: list[Any] = []
    for item in items:
        try:
            state = item if isinstance(item, JobState) else JobState(item.lower())
        except ValueError:
            choices = ", ".join(s.value for s in JobState)
            raise ClientConfigError(
                f"unknown job state {item!r}; expected one of {choices}"
            ) from None
        out.append(enum_to_proto(state, JobState))
    return out


def dict_from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """``google.protobuf.Struct`` → dict (numbers come back as floats, as Struct stores them).

    ``ValueError`` for NaN or infinity, which JSON cannot hold (as ``json_format`` does).
    """
    return struct_to_python(struct)


def dict_to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    """dict → ``google.protobuf.Struct``; raises :class:`ClientConfigError` for non-JSON values."""
    struct = struct_pb2.Struct()
    if data is None:
        return struct
    if not isinstance(data, dict):
        raise ClientConfigError(f"params must be a JSON object (dict), got {type(data).__name__}")
    try:
        python_to_struct(data, struct)
    except (ValueError, TypeError) as exc:
        raise ClientConfigError(f"params are not JSON-serialisable: {exc}") from exc
    return struct


def _time_from_proto(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _set_time(message: Any, name: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, name).FromDatetime(value)


def job_error_from_proto(message: job_pb2.JobError) -> JobErrorInfo:
    """``JobError`` → :class:`JobErrorInfo`."""
    return JobErrorInfo(
        type=message.type,
        message=message.message,
        plugin_traceback=message.plugin_traceback,
        origin=enum_from_proto(ErrorOrigin, message.origin) or ErrorOrigin.UNSPECIFIED,
        step=message.step,
        correlation_id=message.correlation_id,
    )


def job_error_to_proto(error: JobErrorInfo) -> job_pb2.JobError:
    """:class:`JobErrorInfo` → ``JobError``."""
    return job_pb2.JobError(
        type=error.type,
        message=error.message,
        plugin_traceback=error.plugin_traceback,
        origin=enum_to_proto(error.origin, ErrorOrigin),
        step=error.step,
        correlation_id=error.correlation_id,
    )


def _optional_error(message: Any) -> JobErrorInfo | None:
    return job_error_from_proto(message.error) if message.HasField("error") else None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing a large JSON document allocates hundreds of thousands of containers, and each
    # collection they trigger traverses every tracked object of the process (the caller's
    # inputs included): several times the cost of the parse. JSON data has no cycles to find.
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def json_loads(data: bytes | str) -> Any:
    """Strict JSON text → data (exact big ints; NaN/Infinity are rejected with ValueError)."""
    with _gc_paused():
        return pydantic_core.from_json(data, allow_inf_nan=False)


def dict_to_json(data: dict[str, Any] | None) -> bytes:
    """dict → UTF-8 JSON object text (``b""`` for None); :class:`ClientConfigError` if not JSON."""
    if data is None:
        return b""
    if not isinstance(data, dict):
        raise ClientConfigError(f"params must be a JSON object (dict), got {type(data).__name__}")
    try:
        # pydantic-core's serialiser: about 15x faster than json.dumps for large params.
        text = pydantic_core.to_json(data, inf_nan_mode="constants")
    except (ValueError, TypeError) as exc:
        raise ClientConfigError(f"params are not JSON-serialisable: {exc}") from exc
    # Non-finite floats come out as NaN/Infinity tokens, which JSON does not have; only text
    # that contains those words (maybe inside strings) needs the strict re-parse.
    if b"NaN" in text or b"Infinity" in text:
        try:
            json_loads(text)
        except ValueError:
            raise ClientConfigError(
                "params are not JSON-serialisable: NaN and Infinity are not JSON numbers"
            ) from None
    return text


def _job_params(message: job_pb2.Job) -> dict[str, Any]:
    if not message.params_json:
        return dict_from_struct(message.params)
    try:
        value = json_loads(message.params_json)
    except ValueError as exc:
        raise ProtocolError(f"job {message.id}: params_json is not JSON") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"job {message.id}: params_json is not a JSON object")
    return value


def job_from_proto(message: job_pb2.Job) -> Job:
    """``Job`` → :class:`Job`."""
    return Job(
        id=message.id,
        plugin=message.plugin,
        plugin_version=message.plugin_version,
        plugin_sha256=message.plugin_sha256,
        action=message.action,
        mode=enum_from_proto(RunMode, message.mode),
        state=_required_enum(JobState, message.state, f"job {message.id}"),
        params=_job_params(message),
        create_time=_time_from_proto(message, "create_time"),
        start_time=_time_from_proto(message, "start_time"),
        end_time=_time_from_proto(message, "end_time"),
        error=_optional_error(message),
        progress_percent=message.progress_percent,
        last_seq=message.last_seq,
        pending_reason=message.pending_reason,
        request_id=message.request_id,
        cancel_requested=message.cancel_requested,
        result_size_bytes=message.result_size_bytes,
        warnings=tuple(message.warnings),
    )


def job_to_proto(job: Job) -> job_pb2.Job:
    """:class:`Job` → ``Job``."""
    message = job_pb2.Job(
        id=job.id,
        plugin=job.plugin,
        plugin_version=job.plugin_version,
        plugin_sha256=job.plugin_sha256,
        action=job.action,
        mode=enum_to_proto(job.mode, RunMode),
        state=enum_to_proto(job.state, JobState),
        params=dict_to_struct(job.params),
        progress_percent=job.progress_percent,
        last_seq=job.last_seq,
        pending_reason=job.pending_reason,
        request_id=job.request_id,
        cancel_requested=job.cancel_requested,
        result_size_bytes=job.result_size_bytes,
        warnings=job.warnings,
    )
    _set_time(message, "create_time", job.create_time)
    _set_time(message, "start_time", job.start_time)
    _set_time(message, "end_time", job.end_time)
    if job.error is not None:
        message.error.CopyFrom(job_error_to_proto(job.error))
    return message


def _payload_from_proto(message: job_event_pb2.JobEvent) -> EventPayload:
    kind = message.WhichOneof("kind")
    if kind == "state_changed":
        sc = message.state_changed
        return StateChangedEvent(
            state=_required_enum(JobState, sc.state, "a state change"), reason=sc.reason
        )
    if kind == "progress":
        p = message.progress
        return ProgressEvent(
            category=p.category,
            current=p.current,
            total=p.total,
            overall_percent=p.overall_percent,
        )
    if kind == "log":
        lg = message.log
        return LogEvent(
            event=lg.event,
            level=enum_from_proto(LogLevel, lg.level) or LogLevel.INFO,
            data=dict_from_struct(lg.data),
        )
    if kind == "metric":
        return MetricEvent(
            category=message.metric.category, values=dict_from_struct(message.metric.values)
        )
    if kind == "step_started":
        ss = message.step_started
        return StepStartedEvent(name=ss.name, index=ss.index, count=ss.count, weight=ss.weight)
    if kind == "step_finished":
        sf = message.step_finished
        return StepFinishedEvent(
            name=sf.name,
            index=sf.index,
            status=_required_enum(StepStatus, sf.status, f"step {sf.name!r} end"),
            error=_optional_error(sf),
            data=dict_from_struct(sf.data),
        )
    if kind == "terminal":
        t = message.terminal
        return TerminalEvent(
            state=_required_enum(JobState, t.state, "a terminal event"),
            error=_optional_error(t),
            result_json=t.result_json,
            result_size_bytes=t.result_size_bytes,
            result_inline=t.result_inline,
            reason=t.reason,
        )
    raise ProtocolError(f"job event {message.seq} of job {message.job_id} has no known kind")


def event_from_proto(message: job_event_pb2.JobEvent) -> JobEvent:
    """``JobEvent`` → :class:`JobEvent`."""
    return JobEvent(
        seq=message.seq,
        job_id=message.job_id,
        time=_time_from_proto(message, "time"),
        payload=_payload_from_proto(message),
    )


def event_to_proto(event: JobEvent) -> job_event_pb2.JobEvent:
    """:class:`JobEvent` → ``JobEvent``."""
    message = job_event_pb2.JobEvent(seq=event.seq, job_id=event.job_id)
    _set_time(message, "time", event.time)
    p = event.payload
    if isinstance(p, StateChangedEvent):
        message.state_changed.state = enum_to_proto(p.state, JobState)
        message.state_changed.reason = p.reason
    elif isinstance(p, ProgressEvent):
        message.progress.CopyFrom(
            job_event_pb2.ProgressEvent(
                category=p.category,
                current=p.current,
                total=p.total,
                overall_percent=p.overall_percent,
            )
        )
    elif isinstance(p, LogEvent):
        message.log.CopyFrom(
            job_event_pb2.LogEvent(
                event=p.event, level=enum_to_proto(p.level, LogLevel), data=dict_to_struct(p.data)
            )
        )
    elif isinstance(p, MetricEvent):
        message.metric.CopyFrom(
            job_event_pb2.MetricEvent(category=p.category, values=dict_to_struct(p.values))
        )
    elif isinstance(p, StepStartedEvent):
        message.step_started.CopyFrom(
            job_event_pb2.StepStartedEvent(
                name=p.name, index=p.index, count=p.count, weight=p.weight
            )
        )
    elif isinstance(p, StepFinishedEvent):
        message.step_finished.CopyFrom(
            job_event_pb2.StepFinishedEvent(
                name=p.name,
                index=p.index,
                status=enum_to_proto(p.status, StepStatus),
                data=dict_to_struct(p.data),
            )
        )
        if p.error is not None:
            message.step_finished.error.CopyFrom(job_error_to_proto(p.error))
    else:
        message.terminal.CopyFrom(
            job_event_pb2.TerminalEvent(
                state=enum_to_proto(p.state, JobState),
                result_json=p.result_json,
                result_size_bytes=p.result_size_bytes,
                result_inline=p.result_inline,
                reason=p.reason,
            )
        )
        if p.error is not None:
            message.terminal.error.CopyFrom(job_error_to_proto(p.error))
    return message


def action_from_proto(message: plugin_pb2.Action) -> ActionInfo:
    """``Action`` → :class:`ActionInfo` (the params schema parsed from its JSON text)."""
    schema: dict[str, Any] | None = None
    if message.params_schema_json:
        try:
            schema = json.loads(message.params_schema_json)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"action {message.name!r} has an invalid params schema") from exc
    return ActionInfo(
        name=message.name,
        description=message.description,
        kind=_required_enum(ActionKind, message.kind, f"action {message.name!r}"),
        default_mode=enum_from_proto(RunMode, message.default_mode),
        supported_modes=tuple(
            _required_enum(RunMode, m, f"action {message.name!r}") for m in message.supported_modes
        ),
        params_schema=schema,
        progress_categories=tuple(message.progress_categories),
    )


def action_to_proto(action: ActionInfo) -> plugin_pb2.Action:
    """:class:`ActionInfo` → ``Action``."""
    return plugin_pb2.Action(
        name=action.name,
        description=action.description,
        kind=enum_to_proto(action.kind, ActionKind),
        default_mode=enum_to_proto(action.default_mode, RunMode),
        supported_modes=[enum_to_proto(m, RunMode) for m in action.supported_modes],
        params_schema_json=(
            json.dumps(action.params_schema) if action.params_schema is not None else ""
        ),
        progress_categories=list(action.progress_categories),
    )


def plugin_from_proto(message: plugin_pb2.Plugin) -> PluginInfo:
    """``Plugin`` → :class:`PluginInfo`."""
    return PluginInfo(
        code=message.code,
        name=message.name,
        version=message.version,
        category=message.category,
        description=message.description,
        actions=tuple(action_from_proto(a) for a in message.actions),
    )


def plugin_to_proto(plugin: PluginInfo) -> plugin_pb2.Plugin:
    """:class:`PluginInfo` → ``Plugin``."""
    return plugin_pb2.Plugin(
        code=plugin.code,
        name=plugin.name,
        version=plugin.version,
        category=plugin.category,
        description=plugin.description,
        actions=[action_to_proto(a) for a in plugin.actions],
    )
