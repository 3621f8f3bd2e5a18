import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_MODE_UNSPECIFIED: _ClassVar[RunMode]
    RUN_MODE_LOCAL: _ClassVar[RunMode]
    RUN_MODE_TASK: _ClassVar[RunMode]
    RUN_MODE_JOB: _ClassVar[RunMode]

class JobView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_VIEW_UNSPECIFIED: _ClassVar[JobView]
    JOB_VIEW_BASIC: _ClassVar[JobView]
    JOB_VIEW_FULL: _ClassVar[JobView]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class ErrorOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_ORIGIN_UNSPECIFIED: _ClassVar[ErrorOrigin]
    ERROR_ORIGIN_PLUGIN: _ClassVar[ErrorOrigin]
    ERROR_ORIGIN_PLATFORM: _ClassVar[ErrorOrigin]
RUN_MODE_UNSPECIFIED: RunMode
RUN_MODE_LOCAL: RunMode
RUN_MODE_TASK: RunMode
RUN_MODE_JOB: RunMode
JOB_VIEW_UNSPECIFIED: JobView
JOB_VIEW_BASIC: JobView
JOB_VIEW_FULL: JobView
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
ERROR_ORIGIN_UNSPECIFIED: ErrorOrigin
ERROR_ORIGIN_PLUGIN: ErrorOrigin
ERROR_ORIGIN_PLATFORM: ErrorOrigin

class JobError(_message.Message):
    __slots__ = ("type", "message", "plugin_traceback", "origin", "step", "correlation_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    message: str
    plugin_traceback: str
    origin: ErrorOrigin
    step: str
    correlation_id: str
    def __init__(self, type: _Optional[str] = ..., message: _Optional[str] = ..., plugin_traceback: _Optional[str] = ..., origin: _Optional[_Union[ErrorOrigin, str]] = ..., step: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "plugin", "plugin_version", "action", "mode", "state", "params", "create_time", "start_time", "end_time", "error", "progress_percent", "last_seq", "pending_reason", "request_id", "cancel_requested", "result_size_bytes", "params_json", "plugin_sha256", "warnings")
    ID_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_SHA256_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    plugin: str
    plugin_version: str
    action: str
    mode: RunMode
    state: JobState
    params: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    error: JobError
    progress_percent: float
    last_seq: int
    pending_reason: str
    request_id: str
    cancel_requested: bool
    result_size_bytes: int
    params_json: bytes
    plugin_sha256: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., plugin: _Optional[str] = ..., plugin_version: _Optional[str] = ..., action: _Optional[str] = ..., mode: _Optional[_Union[RunMode, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., progress_percent: _Optional[float] = ..., last_seq: _Optional[int] = ..., pending_reason: _Optional[str] = ..., request_id: _Optional[str] = ..., cancel_requested: bool = ..., result_size_bytes: _Optional[int] = ..., params_json: _Optional[bytes] = ..., plugin_sha256: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
