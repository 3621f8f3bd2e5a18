"""Serve applications (deployments): their records and the service that lists, gets, deletes.

Transport-neutral: the gRPC servicer converts to and from these types, and Ray is reached
through the :class:`ServeBackend` protocol (implemented by ``synapse_server.ray``). Records
live in a :class:`DeploymentStore` (implemented by ``synapse_server.stores``), so a restart
keeps them. The records are in ``_records``, the store protocol in ``_store``, the service in
``_service``.

Ownership: Ray Serve has one namespace of application names for the whole cluster, so a
name has at most one owner: the tenant of the one record that holds it (any record not
DELETED). Another tenant can neither register that name nor learn that it is taken (it is
answered like an application Ray Serve does not have). Ray Serve itself does not know who
deployed an application; the replicas a deployment action started do (``deploy()`` gives
them their tenant), so registration checks what the replicas say, and a record whose
application another tenant's deployment has since replaced is marked DELETED instead of
showing, deleting or routing to the other tenant's application.
"""

from synapse_server.core.deployments._records import (
    MAX_APPLICATION_NAME_LENGTH,
    AppObservation,
    DeploymentNameHeldError,
    DeploymentNotFoundError,
    DeploymentPage,
    DeploymentRecord,
    DeploymentStatus,
    ReplicaRecord,
    ReplicaState,
)
from synapse_server.core.deployments._service import DeploymentService, ServeBackend
from synapse_server.core.deployments._store import DeploymentStore

__all__ = [
    "MAX_APPLICATION_NAME_LENGTH",
    "AppObservation",
    "DeploymentNameHeldError",
    "DeploymentNotFoundError",
    "DeploymentPage",
    "DeploymentRecord",
    "DeploymentService",
    "DeploymentStatus",
    "DeploymentStore",
    "ReplicaRecord",
    "ReplicaState",
    "ServeBackend",
]
