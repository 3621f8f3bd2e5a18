from google.protobuf import struct_pb2 as _struct_pb2
from synapse.plugin.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JsonFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JSON_FORMAT_UNSPECIFIED: _ClassVar[JsonFormat]
    JSON_FORMAT_STRUCT: _ClassVar[JsonFormat]
    JSON_FORMAT_TEXT: _ClassVar[JsonFormat]
JSON_FORMAT_UNSPECIFIED: JsonFormat
JSON_FORMAT_STRUCT: JsonFormat
JSON_FORMAT_TEXT: JsonFormat

class ActionTarget(_message.Message):
    __slots__ = ("plugin", "action")
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    plugin: str
    action: str
    def __init__(self, plugin: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("application", "action", "model_id", "json", "inputs", "method", "path", "request_id", "json_text", "response_json_format")
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_TEXT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FORMAT_FIELD_NUMBER: _ClassVar[int]
    application: str
    action: ActionTarget
    model_id: str
    json: _struct_pb2.Value
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    method: str
    path: str
    request_id: str
    json_text: bytes
    response_json_format: JsonFormat
    def __init__(self, application: _Optional[str] = ..., action: _Optional[_Union[ActionTarget, _Mapping]] = ..., model_id: _Optional[str] = ..., json: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., request_id: _Optional[str] = ..., json_text: _Optional[bytes] = ..., response_json_format: _Optional[_Union[JsonFormat, str]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("json", "outputs", "model_id", "request_id", "application", "json_text")
    JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_FIELD_NUMBER: _ClassVar[int]
    JSON_TEXT_FIELD_NUMBER: _ClassVar[int]
    json: _struct_pb2.Value
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    model_id: str
    request_id: str
    application: str
    json_text: bytes
    def __init__(self, json: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., model_id: _Optional[str] = ..., request_id: _Optional[str] = ..., application: _Optional[str] = ..., json_text: _Optional[bytes] = ...) -> None: ...

class InferStreamRequest(_message.Message):
    __slots__ = ("request",)
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    request: InferRequest
    def __init__(self, request: _Optional[_Union[InferRequest, _Mapping]] = ...) -> None: ...

class InferStreamResponse(_message.Message):
    __slots__ = ("item", "index")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    item: InferResponse
    index: int
    def __init__(self, item: _Optional[_Union[InferResponse, _Mapping]] = ..., index: _Optional[int] = ...) -> None: ...
