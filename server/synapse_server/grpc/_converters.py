"""Protobuf ↔ domain conversion for jobs, events, the catalog and worker reports.

Server side: domain jobs, events and catalog entries to ``synapse.plugin.v1`` messages, and
requests back to domain values. Worker side: SDK events to ``WorkerEvent`` messages, and
``WorkerEvent`` messages to the core's ``WorkerReport``. Struct and Value conversion is
``synapse_client.codec``'s (shared with the client and the replicas); this module only turns
its errors into the core's ``InvalidArgumentError``. The other service areas have their own
converter modules beside this one (``_inference_converters``, ``_deployment_converters``,
``_model_converters``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from synapse.plugin.v1 import (
    action_service_pb2,
    job_event_pb2,
    job_pb2,
    plugin_pb2,
    worker_service_pb2,
)
from synapse_client import codec
from synapse_client.codec import NonFiniteNumberError, python_to_struct
from synapse_sdk.events import (
    ErrorInfo,
    Event,
    LogEvent,
    LogLevel,
    MetricEvent,
    ProgressEvent,
    StepFinishedEvent,
    StepStartedEvent,
    StepStatus,
)
from synapse_sdk.jsonutil import dump_json

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
from synapse_server.core._catalog import ActionInfo, ActionKind, PluginInfo
from synapse_server.core._jobs import (
    ResultChunk,
    WorkerFinished,
    WorkerReport,
    result_json_bytes,
)

__all__ = [
    "error_from_pb",
    "error_to_pb",
    "event_to_pb",
    "job_to_pb",
    "keepalive_to_pb",
    "mode_from_pb",
    "mode_to_pb",
    "params_json_from_pb",
    "params_json_from_struct",
    "plugin_to_pb",
    "sdk_event_to_worker_pb",
    "state_from_pb",
    "state_to_pb",
    "struct_from_dict",
    "struct_to_python",
    "value_to_python",
    "worker_event_from_pb",
]

logger = logging.getLogger(__name__)

_MODES: dict[str, job_pb2.RunMode] = {
    "local": job_pb2.RUN_MODE_LOCAL,
    "task": job_pb2.RUN_MODE_TASK,
    "job": job_pb2.RUN_MODE_JOB,
}
_MODES_BACK: dict[int, str] = {v: k for k, v in _MODES.items()}

_STATES: dict[JobState, job_pb2.JobState] = {
    JobState.PENDING: job_pb2.JOB_STATE_PENDING,
    JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: job_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}
_STATES_BACK: dict[int, JobState] = {v: k for k, v in _STATES.items()}

_ORIGINS = {
    ErrorOrigin.PLUGIN: job_pb2.ERROR_ORIGIN_PLUGIN,
    ErrorOrigin.PLATFORM: job_pb2.ERROR_ORIGIN_PLATFORM,
}
_ORIGINS_BACK = {v: k for k, v in _ORIGINS.items()}

_LEVELS = {
    LogLevel.DEBUG: job_event_pb2.LOG_LEVEL_DEBUG,
    LogLevel.INFO: job_event_pb2.LOG_LEVEL_INFO,
    LogLevel.WARNING: job_event_pb2.LOG_LEVEL_WARNING,
    LogLevel.ERROR: job_event_pb2.LOG_LEVEL_ERROR,
}
_LEVELS_BACK = {v: k for k, v in _LEVELS.items()}
_LEVELS_BACK[job_event_pb2.LOG_LEVEL_UNSPECIFIED] = LogLevel.INFO

_STEP_STATUSES = {
    StepStatus.SUCCEEDED: job_event_pb2.STEP_STATUS_SUCCEEDED,
    StepStatus.FAILED: job_event_pb2.STEP_STATUS_FAILED,
    StepStatus.SKIPPED: job_event_pb2.STEP_STATUS_SKIPPED,
    StepStatus.CANCELLED: job_event_pb2.STEP_STATUS_CANCELLED,
    StepStatus.ROLLED_BACK: job_event_pb2.STEP_STATUS_ROLLED_BACK,
    StepStatus.ROLLBACK_FAILED: job_event_pb2.STEP_STATUS_ROLLBACK_FAILED,
}
_STEP_STATUSES_BACK = {v: k for k, v in _STEP_STATUSES.items()}

_ACTION_KINDS = {
    ActionKind.JOB: plugin_pb2.ACTION_KIND_JOB,
    ActionKind.SERVE: plugin_pb2.ACTION_KIND_SERVE,
}


# Scalars -------------------------------------------------------------------------------------


def mode_to_pb(mode: str) -> job_pb2.RunMode:
    """Domain mode name → RunMode."""
    try:
        return _MODES[mode]
    except KeyError:
        raise ValueError(f"unknown run mode {mode!r}") from None


def mode_from_pb(value: int) -> str:
    """RunMode → domain mode name; "" for RUN_MODE_UNSPECIFIED (the action's default)."""
    if value == job_pb2.RUN_MODE_UNSPECIFIED:
        return ""
    try:
        return _MODES_BACK[value]
    except KeyError:
        raise InvalidArgumentError(f"unknown run mode {value}") from None


def state_to_pb(state: JobState) -> job_pb2.JobState:
    """Domain state → JobState enum value."""
    return _STATES[state]


def state_from_pb(value: int) -> JobState:
    """JobState enum value → domain state (INVALID_ARGUMENT for unspecified/unknown)."""
    try:
        return _STATES_BACK[value]
    except KeyError:
        raise InvalidArgumentError(f"not a job state: {value}") from None


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _seconds(ts: timestamp_pb2.Timestamp, field: str = "time") -> float:
    """A request's timestamp in seconds; InvalidArgumentError when it is not a valid one
    (nanos outside 0..999,999,999 or a date outside years 1..9999)."""
    try:
        return ts.ToNanoseconds() / 1e9
    except ValueError:
        raise InvalidArgumentError(f"{field} is not a valid timestamp", field=field) from None


def struct_from_dict(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A JSON-like mapping → Struct."""
    return python_to_struct(data) if data else struct_pb2.Struct()


def value_to_python(message: struct_pb2.Value, field: str = "json") -> Any:
    """A ``google.protobuf.Value`` of a request as plain Python (``synapse_client.codec``).

    The one converter of every Struct and Value a request carries: a NaN or infinite number,
    which a Struct can carry and JSON cannot, raises :class:`InvalidArgumentError` naming
    its path under ``field`` (``json.inputs[2]``).
    """
    try:
        return codec.value_to_python(message, field)
    except NonFiniteNumberError as exc:
        raise InvalidArgumentError(str(exc), field=exc.field) from None


def struct_to_python(message: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` of a request as a dict; see :func:`value_to_python`."""
    try:
        return codec.struct_to_python(message, field)
    except NonFiniteNumberError as exc:
        raise InvalidArgumentError(str(exc), field=exc.field) from None


def params_json_from_struct(message: struct_pb2.Struct) -> str:
    """Struct → JSON object text (numbers arrive as floats, as Struct carries them).

    InvalidArgumentError for NaN or infinity, which a Struct can carry and JSON cannot.
    """
    return dump_json(struct_to_python(message, "params")).decode()


def params_json_from_pb(data: bytes, field: str = "params_json") -> str:
    """UTF-8 bytes → text; InvalidArgumentError if not UTF-8.

    Whether the text is one JSON object is checked where the params are validated (one
    parse, see PluginCatalog.check_params_json).
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{field} is not UTF-8: {exc}", field=field) from None


# Errors --------------------------------------------------------------------------------------


def error_to_pb(error: JobError) -> job_pb2.JobError:
    """Domain JobError → pb; platform errors never carry a traceback."""
    return job_pb2.JobError(
        type=error.type,
        message=error.message,
        plugin_traceback=error.traceback if error.origin is ErrorOrigin.PLUGIN else "",
        origin=_ORIGINS[error.origin],
        step=error.step,
        correlation_id=error.correlation_id,
    )


def error_from_pb(message: job_pb2.JobError) -> JobError:
    """pb JobError → domain (unspecified origin is treated as a platform error)."""
    return JobError(
        type=message.type,
        message=message.message,
        origin=_ORIGINS_BACK.get(message.origin, ErrorOrigin.PLATFORM),
        traceback=message.plugin_traceback,
        step=message.step,
        correlation_id=message.correlation_id,
    )


def error_info_to_pb(info: ErrorInfo, step: str = "", *, plugin: bool = True) -> job_pb2.JobError:
    """A failure as a JobError: the plugin's (with its traceback) or the platform's (without)."""
    return job_pb2.JobError(
        type=info.type,
        message=info.message,
        plugin_traceback=info.traceback if plugin else "",
        origin=job_pb2.ERROR_ORIGIN_PLUGIN if plugin else job_pb2.ERROR_ORIGIN_PLATFORM,
        step=step,
    )


# Jobs and events -----------------------------------------------------------------------------


def job_to_pb(job: Job, *, with_params: bool = False) -> job_pb2.Job:
    """Domain Job → pb Job (the tenant is never exposed).

    ``with_params`` is JOB_VIEW_FULL: params are sent both as a Struct (for older clients) and
    as JSON text; otherwise they are left out.
    """
    message = job_pb2.Job(
        id=job.id,
        plugin=job.plugin,
        plugin_version=job.plugin_version,
        plugin_sha256=job.plugin_sha256,
        action=job.action,
        mode=mode_to_pb(job.mode),
        state=state_to_pb(job.state),
        create_time=_timestamp(job.created_at),
        start_time=_timestamp(job.started_at),
        end_time=_timestamp(job.finished_at),
        progress_percent=job.progress,
        last_seq=job.last_seq,
        pending_reason=job.pending_reason if job.state is JobState.PENDING else "",
        request_id=job.request_id or "",
        cancel_requested=job.cancel_requested,
        result_size_bytes=job.result_size if job.state is JobState.SUCCEEDED else 0,
        warnings=job.warnings,
    )
    if job.error is not None and job.state is JobState.FAILED:
        message.error.CopyFrom(error_to_pb(job.error))
    if with_params:
        message.params.CopyFrom(struct_from_dict(job.params))
        message.params_json = job.params_json.encode()
    return message


def event_to_pb(event: JobEvent) -> job_event_pb2.JobEvent:
    """Stored domain event → pb JobEvent."""
    message = job_event_pb2.JobEvent(
        seq=event.seq, job_id=event.job_id, time=_timestamp(event.timestamp)
    )
    data = event.data
    kind = event.kind
    if kind is EventKind.STATE:
        message.state_changed.CopyFrom(
            job_event_pb2.StateChangedEvent(
                state=state_to_pb(JobState(data["state"])), reason=data.get("reason", "")
            )
        )
    elif kind is EventKind.TERMINAL:
        terminal = job_event_pb2.TerminalEvent(
            state=state_to_pb(JobState(data["state"])),
            reason=data.get("reason", ""),
            result_size_bytes=int(data.get("result_size", 0)),
            result_inline=bool(data.get("result_inline", False)),
        )
        if terminal.result_inline:
            text = data.get("result_json")
            # Terminal events stored by earlier versions hold the parsed "result" instead.
            terminal.result_json = (
                text.encode() if isinstance(text, str) else result_json_bytes(data.get("result"))
            )
        if data.get("error"):
            terminal.error.CopyFrom(error_to_pb(JobError.from_dict(data["error"])))
        message.terminal.CopyFrom(terminal)
    elif kind is EventKind.PROGRESS:
        message.progress.CopyFrom(
            job_event_pb2.ProgressEvent(
                category=data.get("category") or "",
                current=int(data["current"]),
                total=int(data["total"]),
                overall_percent=float(data.get("overall", 0.0)),
            )
        )
    elif kind is EventKind.LOG:
        message.log.CopyFrom(
            job_event_pb2.LogEvent(
                event=data["event"],
                level=_LEVELS[LogLevel(data.get("level", "info"))],
                data=struct_from_dict(data.get("data")),
            )
        )
    elif kind is EventKind.METRIC:
        message.metric.CopyFrom(
            job_event_pb2.MetricEvent(
                category=data.get("category") or "", values=struct_from_dict(data.get("values"))
            )
        )
    elif kind is EventKind.STEP_STARTED:
        message.step_started.CopyFrom(
            job_event_pb2.StepStartedEvent(
                name=data["name"],
                index=int(data["index"]),
                count=int(data["count"]),
                weight=float(data["weight"]),
            )
        )
    elif kind is EventKind.STEP_FINISHED:
        step = job_event_pb2.StepFinishedEvent(
            name=data["name"],
            index=int(data["index"]),
            status=_STEP_STATUSES[StepStatus(data["status"])],
            data=struct_from_dict(data.get("data")),
        )
        if data.get("error"):
            step.error.CopyFrom(error_to_pb(JobError.from_dict(data["error"])))
        message.step_finished.CopyFrom(step)
    else:  # pragma: no cover - exhaustive over EventKind
        raise ValueError(f"unknown event kind {kind}")
    return message


def keepalive_to_pb(job: Job) -> job_event_pb2.Keepalive:
    """A keepalive carrying the job's newest seq and state."""
    return job_event_pb2.Keepalive(
        time=_timestamp(time.time()), last_seq=job.last_seq, state=state_to_pb(job.state)
    )


# Catalog -------------------------------------------------------------------------------------


def _action_to_pb(action: ActionInfo) -> plugin_pb2.Action:
    return plugin_pb2.Action(
        name=action.name,
        description=action.description,
        kind=_ACTION_KINDS[action.kind],
        default_mode=(
            mode_to_pb(action.default_mode) if action.default_mode else job_pb2.RUN_MODE_UNSPECIFIED
        ),
        supported_modes=[mode_to_pb(m) for m in action.supported_modes],
        params_schema_json=json.dumps(action.params_schema, sort_keys=True)
        if action.params_schema
        else "",
        progress_categories=list(action.progress_categories),
    )


def plugin_to_pb(plugin: PluginInfo) -> plugin_pb2.Plugin:
    """Catalog entry → pb Plugin (actions sorted by name)."""
    return plugin_pb2.Plugin(
        code=plugin.code,
        name=plugin.name,
        version=plugin.version,
        category=plugin.category,
        description=plugin.description,
        actions=[_action_to_pb(a) for a in sorted(plugin.actions, key=lambda a: a.name)],
    )


def list_actions_response(plugins: list[PluginInfo]) -> action_service_pb2.ListActionsResponse:
    """Catalog listing → ListActionsResponse."""
    return action_service_pb2.ListActionsResponse(plugins=[plugin_to_pb(p) for p in plugins])


# Worker events -------------------------------------------------------------------------------


def _step_error_dict(message: job_pb2.JobError) -> dict[str, str]:
    return {
        "type": message.type,
        "message": message.message,
        "origin": ErrorOrigin.PLUGIN.value,
        "traceback": message.plugin_traceback,
        "step": message.step,
        "correlation_id": "",
    }


def sdk_event_to_worker_pb(event: Event, worker_seq: int) -> worker_service_pb2.WorkerEvent:
    """An SDK event emitted by an action → the WorkerEvent that reports it."""
    message = worker_service_pb2.WorkerEvent(worker_seq=worker_seq, time=_timestamp(time.time()))
    if isinstance(event, ProgressEvent):
        message.progress.CopyFrom(
            job_event_pb2.ProgressEvent(
                category=event.category or "",
                current=event.current,
                total=event.total,
                overall_percent=event.overall,
            )
        )
    elif isinstance(event, LogEvent):
        message.log.CopyFrom(
            job_event_pb2.LogEvent(
                event=event.event,
                level=_LEVELS[LogLevel(event.level)],
                data=struct_from_dict(event.data),
            )
        )
    elif isinstance(event, MetricEvent):
        message.metric.CopyFrom(
            job_event_pb2.MetricEvent(
                category=event.category or "", values=struct_from_dict(event.values)
            )
        )
    elif isinstance(event, StepStartedEvent):
        message.step_started.CopyFrom(
            job_event_pb2.StepStartedEvent(
                name=event.name, index=event.index, count=event.count, weight=event.weight
            )
        )
    elif isinstance(event, StepFinishedEvent):
        step = job_event_pb2.StepFinishedEvent(
            name=event.name,
            index=event.index,
            status=_STEP_STATUSES[StepStatus(event.status)],
            data=struct_from_dict(event.data),
        )
        if event.error is not None:
            step.error.CopyFrom(error_info_to_pb(event.error, event.name))
        message.step_finished.CopyFrom(step)
    else:
        raise TypeError(f"not an SDK event: {event!r}")
    return message


def _finite(number: float, field: str) -> float:
    if math.isinf(number) or math.isnan(number):
        raise InvalidArgumentError(f"{field}: {number} is not a finite number", field=field)
    return number


def worker_event_from_pb(message: worker_service_pb2.WorkerEvent) -> WorkerReport:
    """A WorkerEvent → the core's WorkerReport (INVALID_ARGUMENT when malformed)."""
    which = message.WhichOneof("kind")
    ts = _seconds(message.time) if message.HasField("time") else time.time()
    item: NewEvent | ResultChunk | WorkerFinished
    if which == "progress":
        p = message.progress
        item = NewEvent(
            EventKind.PROGRESS,
            {
                "category": p.category or None,
                "current": p.current,
                "total": p.total,
                "overall": _finite(p.overall_percent, "progress.overall_percent"),
            },
            ts,
        )
    elif which == "log":
        log = message.log
        item = NewEvent(
            EventKind.LOG,
            {
                "event": log.event,
                "level": _LEVELS_BACK.get(log.level, LogLevel.INFO).value,
                "data": struct_to_python(log.data, "log.data"),
            },
            ts,
        )
    elif which == "metric":
        metric = message.metric
        item = NewEvent(
            EventKind.METRIC,
            {
                "category": metric.category or None,
                "values": struct_to_python(metric.values, "metric.values"),
            },
            ts,
        )
    elif which == "step_started":
        s = message.step_started
        item = NewEvent(
            EventKind.STEP_STARTED,
            {
                "name": s.name,
                "index": s.index,
                "count": s.count,
                "weight": _finite(s.weight, "step_started.weight"),
            },
            ts,
        )
    elif which == "step_finished":
        f = message.step_finished
        if f.status not in _STEP_STATUSES_BACK:
            raise InvalidArgumentError("step_finished without a status")
        item = NewEvent(
            EventKind.STEP_FINISHED,
            {
                "name": f.name,
                "index": f.index,
                "status": _STEP_STATUSES_BACK[f.status].value,
                "error": _step_error_dict(f.error) if f.HasField("error") else None,
                "data": struct_to_python(f.data, "step_finished.data"),
            },
            ts,
        )
    elif which == "result_chunk":
        item = ResultChunk(offset=message.result_chunk.offset, data=message.result_chunk.data)
    elif which == "finished":
        fin = message.finished
        item = WorkerFinished(
            state=state_from_pb(fin.state),
            error=error_from_pb(fin.error) if fin.HasField("error") else None,
            result_size=fin.result_size_bytes,
        )
    else:
        raise InvalidArgumentError("worker event without a kind")
    return WorkerReport(worker_seq=message.worker_seq, item=item)
