"""DeploymentService over the core :class:`DeploymentService`: convert, await, convert back.

Errors go through the gRPC layer's single mapping (``map_errors``); the tenant comes from
the auth interceptor. ``RegisterDeployment`` is answered for the caller's own job, looked up
from its worker credential.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import grpc
from synapse.plugin.v1 import deployment_service_pb2, deployment_service_pb2_grpc

from synapse_server.core._models import Job
from synapse_server.core.deployments import DeploymentService
from synapse_server.grpc._auth import current_principal
from synapse_server.grpc._converters import struct_to_python
from synapse_server.grpc._deployment_converters import deployment_to_pb, statuses_from_pb
from synapse_server.grpc._errors import map_errors

__all__ = ["DeploymentServicer"]

logger = logging.getLogger(__name__)


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
        page = await self._service.list(
            current_principal().tenant,
            statuses=statuses_from_pb(request.statuses),
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
