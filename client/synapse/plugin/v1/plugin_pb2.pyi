from synapse.plugin.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_KIND_UNSPECIFIED: _ClassVar[ActionKind]
    ACTION_KIND_JOB: _ClassVar[ActionKind]
    ACTION_KIND_SERVE: _ClassVar[ActionKind]
ACTION_KIND_UNSPECIFIED: ActionKind
ACTION_KIND_JOB: ActionKind
ACTION_KIND_SERVE: ActionKind

class Action(_message.Message):
    __slots__ = ("name", "description", "kind", "default_mode", "supported_modes", "params_schema_json", "progress_categories")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_MODES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    kind: ActionKind
    default_mode: _job_pb2.RunMode
    supported_modes: _containers.RepeatedScalarFieldContainer[_job_pb2.RunMode]
    params_schema_json: str
    progress_categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[ActionKind, str]] = ..., default_mode: _Optional[_Union[_job_pb2.RunMode, str]] = ..., supported_modes: _Optional[_Iterable[_Union[_job_pb2.RunMode, str]]] = ..., params_schema_json: _Optional[str] = ..., progress_categories: _Optional[_Iterable[str]] = ...) -> None: ...

class Plugin(_message.Message):
    __slots__ = ("code", "name", "version", "category", "description", "actions")
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    code: str
    name: str
    version: str
    category: str
    description: str
    actions: _containers.RepeatedCompositeFieldContainer[Action]
    def __init__(self, code: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., category: _Optional[str] = ..., description: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[Action, _Mapping]]] = ...) -> None: ...
