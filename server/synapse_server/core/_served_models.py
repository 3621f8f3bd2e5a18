"""Serve applications seen as *models*: the model's name is the application, its version a model id.

Model-centric inference protocols (the Open Inference Protocol v2) name a model and a version;
the platform serves applications that multiplex the tenant's registered models. This service
answers what those protocols ask besides inference itself, transport-neutrally:

* which application a model name is (tenant-scoped: another tenant's application is
  reported exactly like a missing one);
* whether the model is ready at a version: the application is RUNNING (as Ray Serve reports
  it now, not as last recorded) and the version names a model registered and visible to the
  caller (no version: the deployment's only declared model, as for an Infer without a model
  id); the replica loads that model on its first request;
* what is known of the model: its declared versions (the deployment's model ids), status,
  plugin and endpoint, and the framework the model was registered with.

Inference goes through :meth:`InferenceService.infer` with ``application`` = the name and
``model_id`` = the version, so both APIs route, sign model ids and fail the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from synapse_sdk.errors import ModelNotFoundError

from synapse_server.core._errors import InvalidArgumentError, quoted
from synapse_server.core._limits import parse_id
from synapse_server.core.deployments import (
    DeploymentNotFoundError,
    DeploymentRecord,
    DeploymentService,
    DeploymentStatus,
)
from synapse_server.core.models import ModelRecord

__all__ = ["ModelLookup", "ServedModel", "ServedModelService"]

logger = logging.getLogger(__name__)


class ModelLookup(Protocol):
    """Finds a tenant's registered model (the model registry)."""

    async def get(self, tenant: str, model_id: int) -> ModelRecord:
        """The tenant's model; ``ModelNotFoundError`` for unknown ids and other tenants'."""
        ...


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One application as a model, at one version.

    ``versions``: the model ids the deployment declared (any model of the tenant can be asked
    for; these are the ones it was deployed with). ``version``: the version asked about, or
    the deployment's default (its only declared model); empty when there is neither.
    ``framework``: the framework that version's model was registered with ("" when unknown).
    """

    name: str
    versions: tuple[str, ...]
    version: str
    status: DeploymentStatus
    ready: bool
    framework: str
    deployment_id: int
    plugin: str
    endpoint_action: str


class ServedModelService:
    """Answers readiness and metadata of served models; see the module docstring."""

    def __init__(self, deployments: DeploymentService, models: ModelLookup) -> None:
        self._deployments = deployments
        self._models = models

    async def describe(self, tenant: str, name: str, version: str = "") -> ServedModel:
        """The application ``name`` of ``tenant`` as a model at ``version``.

        Raises ``InvalidArgumentError`` for an empty name or a version that is not a model id,
        ``DeploymentNotFoundError`` for an application the tenant does not have, and
        ``ModelNotFoundError`` for a version that names no model visible to the tenant.
        """
        if not name:
            raise InvalidArgumentError("the model name (a serve application) is required")
        requested = parse_id(version, "version") if version else None
        record = await self._record(tenant, name)
        model: ModelRecord | None = None
        if requested is not None:
            model = await self._models.get(tenant, requested)
        elif len(record.model_ids) == 1:
            try:
                model = await self._models.get(tenant, record.model_ids[0])
            except ModelNotFoundError:
                # The declared default was deleted from the registry since: the application
                # runs, but a call without a version cannot be answered.
                logger.info("default model of %s is no longer registered", record.name)
                model = None
        status = record.status
        # Without a version, ready means what an Infer without a model id gets: the
        # application's only declared model (none, or several, cannot be chosen for the caller).
        ready = status == DeploymentStatus.RUNNING and model is not None
        shown = str(requested) if requested is not None else _default_version(record)
        return ServedModel(
            name=record.name,
            versions=tuple(str(m) for m in record.model_ids),
            version=shown,
            status=status,
            ready=ready,
            framework=model.framework if model is not None else "",
            deployment_id=record.id,
            plugin=record.plugin,
            endpoint_action=record.endpoint_action,
        )

    async def ready(self, tenant: str, name: str, version: str = "") -> bool:
        """Whether ``name`` at ``version`` takes requests now; errors as :meth:`describe`."""
        return (await self.describe(tenant, name, version)).ready

    async def _record(self, tenant: str, name: str) -> DeploymentRecord:
        page = await self._deployments.list(tenant, name=name, page_size=1)
        if not page.deployments:
            raise DeploymentNotFoundError(f"named {quoted(name)}")
        # Refreshed: readiness is what Ray Serve says now, not what was last recorded.
        return await self._deployments.refresh(page.deployments[0])


def _default_version(record: DeploymentRecord) -> str:
    return str(record.model_ids[0]) if len(record.model_ids) == 1 else ""
