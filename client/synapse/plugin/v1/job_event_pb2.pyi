import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from synapse.plugin.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARNING: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_SUCCEEDED: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_SKIPPED: _ClassVar[StepStatus]
    STEP_STATUS_CANCELLED: _ClassVar[StepStatus]
    STEP_STATUS_ROLLED_BACK: _ClassVar[StepStatus]
    STEP_STATUS_ROLLBACK_FAILED: _ClassVar[StepStatus]
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARNING: LogLevel
LOG_LEVEL_ERROR: LogLevel
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_SUCCEEDED: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_SKIPPED: StepStatus
STEP_STATUS_CANCELLED: StepStatus
STEP_STATUS_ROLLED_BACK: StepStatus
STEP_STATUS_ROLLBACK_FAILED: StepStatus

class StateChangedEvent(_message.Message):
    __slots__ = ("state", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    reason: str
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ProgressEvent(_message.Message):
    __slots__ = ("category", "current", "total", "overall_percent")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OVERALL_PERCENT_FIELD_NUMBER: _ClassVar[int]
    category: str
    current: int
    total: int
    overall_percent: float
    def __init__(self, category: _Optional[str] = ..., current: _Optional[int] = ..., total: _Optional[int] = ..., overall_percent: _Optional[float] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("event", "level", "data")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    event: str
    level: LogLevel
    data: _struct_pb2.Struct
    def __init__(self, event: _Optional[str] = ..., level: _Optional[_Union[LogLevel, str]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class MetricEvent(_message.Message):
    __slots__ = ("category", "values")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    category: str
    values: _struct_pb2.Struct
    def __init__(self, category: _Optional[str] = ..., values: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class StepStartedEvent(_message.Message):
    __slots__ = ("name", "index", "count", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    count: int
    weight: float
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class StepFinishedEvent(_message.Message):
    __slots__ = ("name", "index", "status", "error", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    status: StepStatus
    error: _job_pb2.JobError
    data: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., status: _Optional[_Union[StepStatus, str]] = ..., error: _Optional[_Union[_job_pb2.JobError, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TerminalEvent(_message.Message):
    __slots__ = ("state", "error", "result_json", "result_size_bytes", "result_inline", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_INLINE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    error: _job_pb2.JobError
    result_json: bytes
    result_size_bytes: int
    result_inline: bool
    reason: str
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., error: _Optional[_Union[_job_pb2.JobError, _Mapping]] = ..., result_json: _Optional[bytes] = ..., result_size_bytes: _Optional[int] = ..., result_inline: bool = ..., reason: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "job_id", "time", "state_changed", "progress", "log", "metric", "step_started", "step_finished", "terminal")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    job_id: str
    time: _timestamp_pb2.Timestamp
    state_changed: StateChangedEvent
    progress: ProgressEvent
    log: LogEvent
    metric: MetricEvent
    step_started: StepStartedEvent
    step_finished: StepFinishedEvent
    terminal: TerminalEvent
    def __init__(self, seq: _Optional[int] = ..., job_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed: _Optional[_Union[StateChangedEvent, _Mapping]] = ..., progress: _Optional[_Union[ProgressEvent, _Mapping]] = ..., log: _Optional[_Union[LogEvent, _Mapping]] = ..., metric: _Optional[_Union[MetricEvent, _Mapping]] = ..., step_started: _Optional[_Union[StepStartedEvent, _Mapping]] = ..., step_finished: _Optional[_Union[StepFinishedEvent, _Mapping]] = ..., terminal: _Optional[_Union[TerminalEvent, _Mapping]] = ...) -> None: ...

class Keepalive(_message.Message):
    __slots__ = ("time", "last_seq", "state")
    TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    last_seq: int
    state: _job_pb2.JobState
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ...) -> None: ...
