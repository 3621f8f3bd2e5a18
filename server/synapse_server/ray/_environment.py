"""Per-job worker environment for deployment actions: the server's Ray and the serve key.

A deployment action's worker deploys to the server's Ray (``RAY_ADDRESS``) and signs the
replicas' model ids with its tenant's serve key (``SYNAPSE_SERVE_SIGNING_KEY``, derived from
the server secret, which never leaves the server). Other jobs get nothing from here: an
action that only calls ``Infer`` reaches the platform over gRPC with its worker credential,
and starting Ray for it would only cost time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from synapse_sdk.plugins.actions.inference import BaseDeploymentAction
from synapse_sdk.serving import (
    RELEASE_CODE_ENV,
    REPLICA_MESSAGE_BYTES_ENV,
    REPLICA_PLATFORM_ADDRESS_ENV,
    SERVE_SIGNING_KEY_ENV,
    SERVE_TENANT_ENV,
)

from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._models import Job
from synapse_server.core.deployments import DeploymentService
from synapse_server.core.inference import ServeKeyring
from synapse_server.ray._runtime import RayRuntime

__all__ = ["ServeJobEnvironment", "serve_application_name"]

logger = logging.getLogger(__name__)


def serve_application_name(tenant: str, plugin: str, action: str) -> str:
    """The Serve application a tenant's deployment action deploys.

    Ray Serve has one namespace of application names for the whole cluster; the tenant in the
    name keeps two tenants deploying the same plugin from replacing each other's application.
    (Tenant, plugin and action names may contain ``-``, so two triples can still meet in one
    name: :meth:`ServeJobEnvironment.environment` refuses a name another tenant holds.)
    """
    return f"{tenant}-{plugin}-{action}"


class ServeJobEnvironment:
    """The executor's per-job environment hook (``JobEnvironment``) for deployment actions.

    ``replica_address``: the server address the deployed replicas download their models from
    (they run on any node of the cluster, where a local worker's Unix socket does not exist);
    None or "" leaves them the worker's own address, right for a local Ray. ``deployments``:
    where the application names tenants hold are looked up (None: nothing is held).
    ``replica_message_bytes``: the gRPC message limit deploy() gives the replicas (the
    router's, so an Infer message the server accepts also reaches the replica).
    """

    def __init__(
        self,
        catalog: PluginCatalog,
        runtime: RayRuntime,
        keyring: ServeKeyring,
        replica_address: Callable[[], str] | None = None,
        deployments: DeploymentService | None = None,
        replica_message_bytes: int | None = None,
    ) -> None:
        self._catalog = catalog
        self._runtime = runtime
        self._keyring = keyring
        self._replica_address = replica_address
        self._deployments = deployments
        self._replica_message_bytes = replica_message_bytes

    def needs_ray(self, job: Job) -> bool:
        """True when the job's action deploys to Ray Serve (a ``BaseDeploymentAction``)."""
        try:
            action_cls = self._catalog.plugin(job.plugin).get_action_class(job.action)
        except Exception:
            # The job service already checked plugin and action; a plugin that disappeared
            # since then fails in its worker with a proper error.
            logger.debug("job %s: action class not loadable", job.id, exc_info=True)
            return False
        return isinstance(action_cls, type) and issubclass(action_cls, BaseDeploymentAction)

    async def environment(self, job: Job) -> Mapping[str, str]:
        """Extra variables for the job's worker; starts Ray on the first deployment job.

        Raises ``DeploymentNameHeldError`` (before Ray is started) when another tenant's
        deployment holds the job's application name: its ``deploy()`` would replace that
        application. Raises ``ServiceUnavailableError`` when Ray cannot be started or reached.
        """
        if not self.needs_ray(job):
            return {}
        app_name = serve_application_name(job.tenant, job.plugin, job.action)
        if self._deployments is not None:
            await self._deployments.check_name_available(job.tenant, app_name)
        await self._runtime.ensure_started()
        env = dict(self._runtime.worker_environment())
        env[SERVE_SIGNING_KEY_ENV] = self._keyring.tenant_key(job.tenant).hex()
        env[SERVE_TENANT_ENV] = job.tenant
        env[RELEASE_CODE_ENV] = app_name
        address = self._replica_address() if self._replica_address is not None else ""
        if address:
            env[REPLICA_PLATFORM_ADDRESS_ENV] = address
        if self._replica_message_bytes is not None:
            env[REPLICA_MESSAGE_BYTES_ENV] = str(self._replica_message_bytes)
        return env
