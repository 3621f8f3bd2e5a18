"""Protobuf ↔ domain conversion for the DeploymentService."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import timestamp_pb2
from synapse.plugin.v1 import deployment_pb2

from synapse_server.core._limits import is_ascii_digits
from synapse_server.core.deployments import DeploymentRecord, DeploymentStatus, ReplicaState

__all__ = ["deployment_to_pb", "statuses_from_pb"]

_STATUS_TO_PB = {
    DeploymentStatus.DEPLOYING: deployment_pb2.DEPLOYMENT_STATUS_DEPLOYING,
    DeploymentStatus.RUNNING: deployment_pb2.DEPLOYMENT_STATUS_RUNNING,
    DeploymentStatus.UNHEALTHY: deployment_pb2.DEPLOYMENT_STATUS_UNHEALTHY,
    DeploymentStatus.DELETING: deployment_pb2.DEPLOYMENT_STATUS_DELETING,
    DeploymentStatus.DELETED: deployment_pb2.DEPLOYMENT_STATUS_DELETED,
    DeploymentStatus.FAILED: deployment_pb2.DEPLOYMENT_STATUS_FAILED,
}
_STATUS_FROM_PB = {value: key for key, value in _STATUS_TO_PB.items()}
_REPLICA_STATES = {
    ReplicaState.STARTING: deployment_pb2.REPLICA_STATE_STARTING,
    ReplicaState.RUNNING: deployment_pb2.REPLICA_STATE_RUNNING,
    ReplicaState.UPDATING: deployment_pb2.REPLICA_STATE_UPDATING,
    ReplicaState.RECOVERING: deployment_pb2.REPLICA_STATE_RECOVERING,
    ReplicaState.STOPPING: deployment_pb2.REPLICA_STATE_STOPPING,
}


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _is_model_id(text: str) -> bool:
    # A replica's loaded ids come from its signed model ids; anything else is left out.
    return len(text) <= 19 and is_ascii_digits(text) and int(text) < 1 << 63


def deployment_to_pb(record: DeploymentRecord) -> deployment_pb2.Deployment:
    """The wire form of a deployment record."""
    message = deployment_pb2.Deployment(
        id=record.id,
        name=record.name,
        plugin=record.plugin,
        action=record.action,
        job_id=record.job_id,
        status=_STATUS_TO_PB[record.status],
        status_message=record.status_message,
        route_prefix=record.route_prefix,
        model_ids=list(record.model_ids),
        endpoint_action=record.endpoint_action,
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
    )
    if record.ray_actor_options:
        message.ray_actor_options.update(record.ray_actor_options)
    for replica in record.replicas:
        message.replicas.add(
            replica_id=replica.replica_id,
            state=_REPLICA_STATES[replica.state],
            loaded_model_ids=[int(m) for m in replica.loaded_model_ids if _is_model_id(m)],
            loaded_models_known=replica.loaded_models_known,
        )
    return message


def statuses_from_pb(values: Iterable[Any]) -> list[DeploymentStatus]:
    """A ListDeployments status filter; unspecified and unknown numbers are left out."""
    return [_STATUS_FROM_PB[s] for s in values if s in _STATUS_FROM_PB]
