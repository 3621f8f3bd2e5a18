from google.protobuf import struct_pb2 as _struct_pb2
from synapse.plugin.v1 import deployment_pb2 as _deployment_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("statuses", "plugin", "name", "page_size", "page_token")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[_deployment_pb2.DeploymentStatus]
    plugin: str
    name: str
    page_size: int
    page_token: str
    def __init__(self, statuses: _Optional[_Iterable[_Union[_deployment_pb2.DeploymentStatus, str]]] = ..., plugin: _Optional[str] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[_deployment_pb2.Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[_deployment_pb2.Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: int
    def __init__(self, deployment_id: _Optional[int] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _deployment_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_deployment_pb2.Deployment, _Mapping]] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: int
    def __init__(self, deployment_id: _Optional[int] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: _deployment_pb2.Deployment
    def __init__(self, deployment: _Optional[_Union[_deployment_pb2.Deployment, _Mapping]] = ...) -> None: ...

class RegisterDeploymentRequest(_message.Message):
    __slots__ = ("name", "plugin", "action", "job_id", "route_prefix", "model_ids", "ray_actor_options", "endpoint_action")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    RAY_ACTOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ACTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    plugin: str
    action: str
    job_id: str
    route_prefix: str
    model_ids: _containers.RepeatedScalarFieldContainer[int]
    ray_actor_options: _struct_pb2.Struct
    endpoint_action: str
    def __init__(self, name: _Optional[str] = ..., plugin: _Optional[str] = ..., action: _Optional[str] = ..., job_id: _Optional[str] = ..., route_prefix: _Optional[str] = ..., model_ids: _Optional[_Iterable[int]] = ..., ray_actor_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., endpoint_action: _Optional[str] = ...) -> None: ...

class RegisterDeploymentResponse(_message.Message):
    __slots__ = ("deployment", "created")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    deployment: _deployment_pb2.Deployment
    created: bool
    def __init__(self, deployment: _Optional[_Union[_deployment_pb2.Deployment, _Mapping]] = ..., created: bool = ...) -> None: ...
