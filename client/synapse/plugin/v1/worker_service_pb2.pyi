import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from synapse.plugin.v1 import dataset_pb2 as _dataset_pb2
from synapse.plugin.v1 import job_pb2 as _job_pb2
from synapse.plugin.v1 import job_event_pb2 as _job_event_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetAssignmentRequest(_message.Message):
    __slots__ = ("job_id", "worker_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class GetAssignmentResponse(_message.Message):
    __slots__ = ("job_id", "plugin", "plugin_version", "action", "params", "mode", "cancel_requested", "params_json", "plugin_sha256", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_SHA256_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    plugin: str
    plugin_version: str
    action: str
    params: _struct_pb2.Struct
    mode: _job_pb2.RunMode
    cancel_requested: bool
    params_json: bytes
    plugin_sha256: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, job_id: _Optional[str] = ..., plugin: _Optional[str] = ..., plugin_version: _Optional[str] = ..., action: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., mode: _Optional[_Union[_job_pb2.RunMode, str]] = ..., cancel_requested: bool = ..., params_json: _Optional[bytes] = ..., plugin_sha256: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ReportEventsOpen(_message.Message):
    __slots__ = ("job_id", "worker_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker_id: str
    def __init__(self, job_id: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class WorkerFinished(_message.Message):
    __slots__ = ("state", "error", "result_size_bytes")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    error: _job_pb2.JobError
    result_size_bytes: int
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., error: _Optional[_Union[_job_pb2.JobError, _Mapping]] = ..., result_size_bytes: _Optional[int] = ...) -> None: ...

class WorkerEvent(_message.Message):
    __slots__ = ("worker_seq", "time", "progress", "log", "metric", "step_started", "step_finished", "result_chunk", "finished")
    WORKER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    worker_seq: int
    time: _timestamp_pb2.Timestamp
    progress: _job_event_pb2.ProgressEvent
    log: _job_event_pb2.LogEvent
    metric: _job_event_pb2.MetricEvent
    step_started: _job_event_pb2.StepStartedEvent
    step_finished: _job_event_pb2.StepFinishedEvent
    result_chunk: ResultChunk
    finished: WorkerFinished
    def __init__(self, worker_seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_job_event_pb2.ProgressEvent, _Mapping]] = ..., log: _Optional[_Union[_job_event_pb2.LogEvent, _Mapping]] = ..., metric: _Optional[_Union[_job_event_pb2.MetricEvent, _Mapping]] = ..., step_started: _Optional[_Union[_job_event_pb2.StepStartedEvent, _Mapping]] = ..., step_finished: _Optional[_Union[_job_event_pb2.StepFinishedEvent, _Mapping]] = ..., result_chunk: _Optional[_Union[ResultChunk, _Mapping]] = ..., finished: _Optional[_Union[WorkerFinished, _Mapping]] = ...) -> None: ...

class WorkerEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WorkerEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[WorkerEvent, _Mapping]]] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("open", "event", "events")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    open: ReportEventsOpen
    event: WorkerEvent
    events: WorkerEventBatch
    def __init__(self, open: _Optional[_Union[ReportEventsOpen, _Mapping]] = ..., event: _Optional[_Union[WorkerEvent, _Mapping]] = ..., events: _Optional[_Union[WorkerEventBatch, _Mapping]] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("acked_worker_seq", "cancel_requested")
    ACKED_WORKER_SEQ_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    acked_worker_seq: int
    cancel_requested: bool
    def __init__(self, acked_worker_seq: _Optional[int] = ..., cancel_requested: bool = ...) -> None: ...

class JobOutputInfo(_message.Message):
    __slots__ = ("job_id", "name", "local_file")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FILE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    local_file: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., local_file: _Optional[str] = ...) -> None: ...

class UploadJobOutputRequest(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: JobOutputInfo
    chunk: bytes
    def __init__(self, info: _Optional[_Union[JobOutputInfo, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadJobOutputResponse(_message.Message):
    __slots__ = ("output",)
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    output: _dataset_pb2.Dataset
    def __init__(self, output: _Optional[_Union[_dataset_pb2.Dataset, _Mapping]] = ...) -> None: ...
