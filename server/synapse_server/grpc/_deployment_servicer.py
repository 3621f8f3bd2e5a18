"""DeploymentService over the core :class:`DeploymentService`: convert, await, convert back.

Errors go through the gRPC layer's single mapping (``map_errors``); the tenant comes from
the auth interceptor. ``RegisterDeployment`` is answered for the caller's own job, looked up
from its worker credential.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf import timestamp_pb2
from synapse.plugin.v1 import deployment_pb2, deployment_service_pb2, deployment_service_pb2_grpc

from synapse_server.core._limits import is_ascii_digits
from synapse_server.core._models import Job
from synapse_server.core.deployments import (
    DeploymentRecord,
    DeploymentService,
    DeploymentStatus,
    ReplicaState,
)
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._converters import struct_to_python
from synapse_server.grpc._errors import map_errors

__all__ = ["DeploymentServicer", "deployment_to_pb"]

logger = logging.getLogger(__name__)

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


class DeploymentServicer(deployment_service_pb2_grpc.DeploymentServiceServicer):
    """Thin gRPC face of the core :class:`DeploymentService`."""

    def __init__(
        self, service: DeploymentService, job_lookup: Callable[[str, str], Awaitable[Job]]
    ) -> None:
        """``job_lookup``: ``async (tenant, job_id) -> Job`` (``JobService.get``), for the job
        a worker credential names."""
        self._service = service
        self._job_lookup = job_lookup

    @map_errors
    async def ListDeployments(  # type: ignore[override]  # noqa: N802
        self,
        request: deployment_service_pb2.ListDeploymentsRequest,
        context: grpc.aio.ServicerContext,
    ) -> deployment_service_pb2.ListDeploymentsResponse:
        """List the caller's deployments."""
        statuses = [_STATUS_FROM_PB[s] for s in request.statuses if s in _STATUS_FROM_PB]
        page = await self._service.list(
            current_principal().tenant,
            statuses=statuses,
            plugin=request.plugin,
            name=request.name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return deployment_service_pb2.ListDeploymentsResponse(
            deployments=[deployment_to_pb(r) for r in page.deployments],
            next_page_token=page.next_page_token,
        )

    @map_errors
    async def GetDeployment(  # type: ignore[override]  # noqa: N802
        self,
        request: deployment_service_pb2.GetDeploymentRequest,
        context: grpc.aio.ServicerContext,
    ) -> deployment_service_pb2.GetDeploymentResponse:
        """One deployment, refreshed from Ray Serve."""
        record = await self._service.get(current_principal().tenant, request.deployment_id)
        return deployment_service_pb2.GetDeploymentResponse(deployment=deployment_to_pb(record))

    @map_errors
    async def DeleteDeployment(  # type: ignore[override]  # noqa: N802
        self,
        request: deployment_service_pb2.DeleteDeploymentRequest,
        context: grpc.aio.ServicerContext,
    ) -> deployment_service_pb2.DeleteDeploymentResponse:
        """Undeploy."""
        record = await self._service.delete(current_principal().tenant, request.deployment_id)
        return deployment_service_pb2.DeleteDeploymentResponse(deployment=deployment_to_pb(record))

    @map_errors
    async def RegisterDeployment(  # type: ignore[override]  # noqa: N802
        self,
        request: deployment_service_pb2.RegisterDeploymentRequest,
        context: grpc.aio.ServicerContext,
    ) -> deployment_service_pb2.RegisterDeploymentResponse:
        """Record the application the caller's deployment job deployed."""
        principal = current_principal()
        job = None
        if principal.worker is not None:
            # The credential names the job; its tenant, plugin and action are the record's.
            job = await self._job_lookup(principal.tenant, principal.worker.job_id)
        record, created = await self._service.register_for_job(
            job,
            name=request.name,
            plugin=request.plugin,
            action=request.action,
            route_prefix=request.route_prefix,
            model_ids=list(request.model_ids),
            ray_actor_options=struct_to_python(request.ray_actor_options, "ray_actor_options"),
            endpoint_action=request.endpoint_action,
        )
        return deployment_service_pb2.RegisterDeploymentResponse(
            deployment=deployment_to_pb(record), created=created
        )
