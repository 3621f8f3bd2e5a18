from google.protobuf import struct_pb2 as _struct_pb2
from synapse.plugin.v1 import job_pb2 as _job_pb2
from synapse.plugin.v1 import job_event_pb2 as _job_event_pb2
from synapse.plugin.v1 import plugin_pb2 as _plugin_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListActionsRequest(_message.Message):
    __slots__ = ("plugin",)
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    def __init__(self, plugin: _Optional[str] = ...) -> None: ...

class ListActionsResponse(_message.Message):
    __slots__ = ("plugins",)
    PLUGINS_FIELD_NUMBER: _ClassVar[int]
    plugins: _containers.RepeatedCompositeFieldContainer[_plugin_pb2.Plugin]
    def __init__(self, plugins: _Optional[_Iterable[_Union[_plugin_pb2.Plugin, _Mapping]]] = ...) -> None: ...

class RunActionRequest(_message.Message):
    __slots__ = ("plugin", "action", "params", "mode", "request_id", "params_json")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    action: str
    params: _struct_pb2.Struct
    mode: _job_pb2.RunMode
    request_id: str
    params_json: bytes
    def __init__(self, plugin: _Optional[str] = ..., action: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., mode: _Optional[_Union[_job_pb2.RunMode, str]] = ..., request_id: _Optional[str] = ..., params_json: _Optional[bytes] = ...) -> None: ...

class RunActionResponse(_message.Message):
    __slots__ = ("job", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    created: bool
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., created: bool = ...) -> None: ...

class StreamProgressRequest(_message.Message):
    __slots__ = ("job_id", "after_seq", "replay_only", "max_events_per_message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    REPLAY_ONLY_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_seq: int
    replay_only: bool
    max_events_per_message: int
    def __init__(self, job_id: _Optional[str] = ..., after_seq: _Optional[int] = ..., replay_only: bool = ..., max_events_per_message: _Optional[int] = ...) -> None: ...

class StreamProgressResponse(_message.Message):
    __slots__ = ("event", "keepalive", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: _job_event_pb2.JobEvent
    keepalive: _job_event_pb2.Keepalive
    events: JobEventBatch
    def __init__(self, event: _Optional[_Union[_job_event_pb2.JobEvent, _Mapping]] = ..., keepalive: _Optional[_Union[_job_event_pb2.Keepalive, _Mapping]] = ..., events: _Optional[_Union[JobEventBatch, _Mapping]] = ...) -> None: ...

class JobEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_job_event_pb2.JobEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_job_event_pb2.JobEvent, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id", "view")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    view: _job_pb2.JobView
    def __init__(self, job_id: _Optional[str] = ..., view: _Optional[_Union[_job_pb2.JobView, str]] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "plugin", "action", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_job_pb2.JobState]
    plugin: str
    action: str
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_job_pb2.JobState, str]]] = ..., plugin: _Optional[str] = ..., action: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobResultRequest(_message.Message):
    __slots__ = ("job_id", "chunk_size_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    chunk_size_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., chunk_size_bytes: _Optional[int] = ...) -> None: ...

class GetJobResultResponse(_message.Message):
    __slots__ = ("offset", "data", "total_size_bytes")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size_bytes: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size_bytes: _Optional[int] = ...) -> None: ...
