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

class DeploymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATUS_UNSPECIFIED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_DEPLOYING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_RUNNING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_UNHEALTHY: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_DELETING: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_DELETED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_FAILED: _ClassVar[DeploymentStatus]

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_STARTING: _ClassVar[ReplicaState]
    REPLICA_STATE_RUNNING: _ClassVar[ReplicaState]
    REPLICA_STATE_UPDATING: _ClassVar[ReplicaState]
    REPLICA_STATE_RECOVERING: _ClassVar[ReplicaState]
    REPLICA_STATE_STOPPING: _ClassVar[ReplicaState]
DEPLOYMENT_STATUS_UNSPECIFIED: DeploymentStatus
DEPLOYMENT_STATUS_DEPLOYING: DeploymentStatus
DEPLOYMENT_STATUS_RUNNING: DeploymentStatus
DEPLOYMENT_STATUS_UNHEALTHY: DeploymentStatus
DEPLOYMENT_STATUS_DELETING: DeploymentStatus
DEPLOYMENT_STATUS_DELETED: DeploymentStatus
DEPLOYMENT_STATUS_FAILED: DeploymentStatus
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_STARTING: ReplicaState
REPLICA_STATE_RUNNING: ReplicaState
REPLICA_STATE_UPDATING: ReplicaState
REPLICA_STATE_RECOVERING: ReplicaState
REPLICA_STATE_STOPPING: ReplicaState

class Replica(_message.Message):
    __slots__ = ("replica_id", "state", "loaded_model_ids", "loaded_models_known")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    state: ReplicaState
    loaded_model_ids: _containers.RepeatedScalarFieldContainer[int]
    loaded_models_known: bool
    def __init__(self, replica_id: _Optional[str] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., loaded_model_ids: _Optional[_Iterable[int]] = ..., loaded_models_known: bool = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("id", "name", "plugin", "action", "job_id", "status", "status_message", "route_prefix", "replicas", "model_ids", "ray_actor_options", "create_time", "update_time", "endpoint_action")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    RAY_ACTOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ACTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    plugin: str
    action: str
    job_id: str
    status: DeploymentStatus
    status_message: str
    route_prefix: str
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    model_ids: _containers.RepeatedScalarFieldContainer[int]
    ray_actor_options: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    endpoint_action: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., plugin: _Optional[str] = ..., action: _Optional[str] = ..., job_id: _Optional[str] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., status_message: _Optional[str] = ..., route_prefix: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., model_ids: _Optional[_Iterable[int]] = ..., ray_actor_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., endpoint_action: _Optional[str] = ...) -> None: ...
