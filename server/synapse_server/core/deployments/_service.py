"""The deployment service: lists, gets, registers, refreshes and deletes serve applications.

Ray Serve is reached through the :class:`ServeBackend` protocol (implemented by
``synapse_server.ray``), records through a :class:`DeploymentStore`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from synapse_server.core._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from synapse_server.core._models import Job
from synapse_server.core._paging import checked_page_size
from synapse_server.core.deployments._records import (
    MAX_APPLICATION_NAME_LENGTH,
    NOT_REGISTRABLE,
    AppObservation,
    DeploymentNameHeldError,
    DeploymentNotFoundError,
    DeploymentPage,
    DeploymentRecord,
    DeploymentStatus,
)
from synapse_server.core.deployments._store import DeploymentStore

__all__ = ["DeploymentService", "ServeBackend"]

logger = logging.getLogger(__name__)

#: How long a resolved Infer target is reused without asking the store again. Writes made
#: through this service drop the cache at once; the bound only matters for writers that
#: bypass it (another server on the same database).
_RESOLVE_TTL_S = 2.0
_MAX_RESOLVED = 4096
#: How long registration waits for the replicas to say which tenant they were deployed for.
#: The application has just become RUNNING, so its replicas are idle and answer at once; the
#: bound only matters on a loaded machine, and keeps the call well inside the SDK client's
#: default 30 s deadline.
_REGISTER_REPLICA_TIMEOUT_S = 10.0


class ServeBackend(Protocol):
    """The Ray Serve operations the deployment service needs."""

    async def observe(
        self, app_name: str, *, start: bool = True, replica_timeout_s: float = 5.0
    ) -> AppObservation | None:
        """The application's status and replicas; None when Serve has no such application.

        ``start=False``: answer None instead of starting (or connecting to) Ray when this
        server has not yet. ``replica_timeout_s``: how long the replicas have to answer.
        """
        ...

    async def delete(self, app_name: str) -> None:
        """Delete the application (a missing one is not an error)."""
        ...


class DeploymentService:
    """Lists, inspects, registers and deletes the serve applications of a tenant."""

    def __init__(self, store: DeploymentStore, backend: ServeBackend) -> None:
        self._store = store
        self._backend = backend
        # Infer resolves its target on every call; a store round trip (an I/O thread hop and a
        # query) per call was a visible share of its latency. Only found records are cached.
        self._resolved: dict[tuple[str, str, str, str], tuple[DeploymentRecord, float]] = {}
        self._generation = 0

    def _forget_resolved(self) -> None:
        """Drop cached Infer targets: a record was written."""
        self._generation += 1
        self._resolved.clear()

    async def register_for_job(
        self,
        job: Job | None,
        *,
        name: str,
        plugin: str = "",
        action: str = "",
        route_prefix: str = "",
        model_ids: Iterable[int] = (),
        ray_actor_options: Mapping[str, Any] | None = None,
        endpoint_action: str = "",
    ) -> tuple[DeploymentRecord, bool]:
        """Record the application a running deployment job deployed (``RegisterDeployment``).

        ``job`` is the caller's own job (from its worker credential); None for any other
        caller, who is refused: an application is registered by the job that deployed it,
        never by a client naming one. The record takes the job's tenant, plugin, action and id;
        a request naming another plugin or action is refused. Then as :meth:`register`.
        """
        if job is None:
            raise PermissionDeniedError(
                "RegisterDeployment is for the worker of a deployment job (the SDK's "
                "register_serve_application); run the deployment action with RunAction"
            )
        # PENDING too: the worker runs the action before its event stream is open.
        if job.state.is_terminal:
            raise FailedPreconditionError(
                f"job {job.id!r} is {job.state.value}: only a running job registers"
            )
        if (plugin and plugin != job.plugin) or (action and action != job.action):
            raise PermissionDeniedError(
                "a worker registers the deployment of its own job only "
                f"(plugin {job.plugin!r}, action {job.action!r})"
            )
        return await self.register(
            job.tenant,
            name=name,
            plugin=job.plugin,
            action=job.action,
            job_id=job.id,
            route_prefix=route_prefix,
            model_ids=model_ids,
            ray_actor_options=ray_actor_options,
            endpoint_action=endpoint_action,
        )

    async def register(
        self,
        tenant: str,
        *,
        name: str,
        plugin: str,
        action: str,
        job_id: str = "",
        route_prefix: str = "",
        model_ids: Iterable[int] = (),
        ray_actor_options: Mapping[str, Any] | None = None,
        endpoint_action: str = "",
    ) -> tuple[DeploymentRecord, bool]:
        """Record an application deployed for ``tenant`` (updates the tenant's same-name one).

        Refused with one answer (FAILED_PRECONDITION) when another tenant's record holds the
        name, when Ray Serve has no such application (Ray is never started for this), or when
        its replicas say they were deployed for another tenant or application. A replica that
        does not answer in time (or an application without replicas) is not held against it.
        """
        missing = [
            label
            for label, value in (("name", name), ("plugin", plugin), ("action", action))
            if not value
        ]
        if missing:
            raise InvalidArgumentError(f"RegisterDeployment needs {', '.join(missing)}")
        if len(name) > MAX_APPLICATION_NAME_LENGTH:
            raise InvalidArgumentError(
                f"name is longer than {MAX_APPLICATION_NAME_LENGTH} characters", field="name"
            )
        ids = tuple(int(m) for m in model_ids)
        if any(m <= 0 for m in ids):
            raise InvalidArgumentError("model_ids must be positive")
        refused = FailedPreconditionError(NOT_REGISTRABLE.format(name=name))
        holder = await self._store.holder(name)
        if holder is not None and holder != tenant:
            raise refused
        observation = await self._backend.observe(
            name, start=False, replica_timeout_s=_REGISTER_REPLICA_TIMEOUT_S
        )
        if observation is None or observation.deployed_for_other_than(tenant, name):
            raise refused
        if not observation.deployed_for:
            logger.info("registering %s: no replica said whom it was deployed for", name)
        record = DeploymentRecord(
            id=0,
            tenant=tenant,
            name=name,
            plugin=plugin,
            action=action,
            job_id=job_id,
            status=observation.status,
            status_message=observation.message,
            route_prefix=route_prefix,
            model_ids=ids,
            ray_actor_options=dict(ray_actor_options or {}),
            endpoint_action=endpoint_action,
            replicas=observation.replicas,
        )
        try:
            stored, created = await self._store.upsert(record)
        except DeploymentNameHeldError:
            # Another tenant registered the name since it was checked above.
            raise refused from None
        self._forget_resolved()
        logger.info(
            "%s deployment %d (%s) for tenant %r",
            "registered" if created else "updated",
            stored.id,
            name,
            tenant,
        )
        return stored, created

    async def check_name_available(self, tenant: str, name: str) -> None:
        """Raise FailedPreconditionError if another tenant's record holds ``name``.

        Checked before a deployment job starts (and before Ray is started for it), so its
        ``deploy()`` never replaces an application another tenant owns.
        """
        holder = await self._store.holder(name)
        if holder is not None and holder != tenant:
            raise FailedPreconditionError(
                f"the serve application name {name!r} is not available to this tenant; "
                "the deployment was not started"
            )

    async def list(
        self,
        tenant: str,
        statuses: Sequence[DeploymentStatus] = (),
        plugin: str = "",
        name: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> DeploymentPage:
        """The tenant's deployments, newest first, as last observed."""
        return await self._store.list(
            tenant, statuses, plugin, name, checked_page_size(page_size), page_token
        )

    async def get(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        """One deployment, refreshed from Ray Serve (status, replicas, loaded models)."""
        record = await self._visible(tenant, deployment_id)
        return await self.refresh(record)

    async def refresh(self, record: DeploymentRecord) -> DeploymentRecord:
        """Update a record's status and replicas from Ray Serve and store them.

        A record whose application is gone, or whose application's replicas say they serve
        another tenant or name (another deployment replaced it), becomes DELETED: it no longer
        shows, deletes or routes to what now runs under that name, and gives the name up.
        """
        if record.status == DeploymentStatus.DELETED:
            return record
        observation = await self._backend.observe(record.name)
        if observation is None or observation.deployed_for_other_than(record.tenant, record.name):
            message = (
                "the application no longer exists in Ray Serve"
                if observation is None
                else "the application was replaced by another deployment; "
                "run the deployment action again"
            )
            updated = replace(
                record,
                status=DeploymentStatus.DELETED,
                status_message=message,
                replicas=(),
                update_time=time.time(),
            )
        else:
            updated = replace(
                record,
                status=observation.status,
                status_message=observation.message,
                replicas=observation.replicas,
                update_time=time.time(),
            )
        if updated != record:
            await self._store.update(updated)
            self._forget_resolved()
        return updated

    async def forget_embedded_ray_applications(self) -> int:
        """At start-up with an embedded Ray: the previous server's Ray, and with it every
        application it served, stopped with that server. Without this, listings would show
        them RUNNING until something refreshed each one."""
        count = await self._store.mark_all_live_deleted(
            "the server's embedded Ray stopped with the previous server process; "
            "run the deployment action again"
        )
        self._forget_resolved()
        if count:
            logger.info("%d deployment(s) of the previous server process marked deleted", count)
        return count

    async def delete(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        """Undeploy: delete the Ray Serve application and mark the record DELETED.

        The application is looked at first: one that is gone, or that another deployment has
        replaced (its replicas serve another tenant), is left alone and only the record is
        marked DELETED.
        """
        record = await self.refresh(await self._visible(tenant, deployment_id))
        if record.status == DeploymentStatus.DELETED:
            return record
        await self._backend.delete(record.name)
        deleted = replace(
            record,
            status=DeploymentStatus.DELETED,
            status_message="deleted",
            replicas=(),
            update_time=time.time(),
        )
        await self._store.update(deleted)
        self._forget_resolved()
        logger.info("deleted deployment %d (%s)", record.id, record.name)
        return deleted

    async def resolve(
        self, tenant: str, application: str | None, plugin: str | None, action: str | None
    ) -> DeploymentRecord:
        """The deployment an Infer call targets: by application name, or by plugin + action.

        Found targets are cached until this service writes a record (or ``_RESOLVE_TTL_S``);
        failures are never cached, so a new deployment is found on the next call.
        """
        key = (tenant, application or "", "" if application else plugin or "", action or "")
        now = time.monotonic()
        cached = self._resolved.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._generation
        record = await self._resolve_uncached(tenant, application, plugin, action)
        # A write that happened while the store was asked may have changed the answer.
        if generation == self._generation:
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[key] = (record, now + _RESOLVE_TTL_S)
        return record

    async def _resolve_uncached(
        self, tenant: str, application: str | None, plugin: str | None, action: str | None
    ) -> DeploymentRecord:
        if application:
            record = await self._store.find_by_name(tenant, application)
            if record is None:
                raise DeploymentNotFoundError(f"named {application!r}")
        elif plugin and action:
            candidates = [
                r
                for r in await self._store.find_by_endpoint(tenant, plugin, action)
                if r.status not in (DeploymentStatus.DELETED, DeploymentStatus.DELETING)
            ]
            if not candidates:
                raise DeploymentNotFoundError(f"of plugin {plugin!r} with endpoint {action!r}")
            if len(candidates) > 1:
                names = ", ".join(sorted(r.name for r in candidates))
                raise FailedPreconditionError(
                    f"plugin {plugin!r} has several deployments of {action!r} ({names}); "
                    "name the application"
                )
            record = candidates[0]
        else:
            raise InvalidArgumentError("Infer needs an application, or a plugin and an action")
        if record.status in (DeploymentStatus.DELETED, DeploymentStatus.DELETING):
            raise FailedPreconditionError(f"deployment {record.name!r} is {record.status.value}")
        return record

    async def _visible(self, tenant: str, deployment_id: int) -> DeploymentRecord:
        if deployment_id <= 0:
            raise InvalidArgumentError("deployment_id must be positive")
        record = await self._store.get(deployment_id)
        if record is None or record.tenant != tenant:
            # Another tenant's deployment is reported exactly like a missing one.
            raise DeploymentNotFoundError(f"#{deployment_id}")
        return record
