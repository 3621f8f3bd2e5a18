"""Serve applications (deployments) as the platform records them, and their errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from synapse_server.core._errors import FailedPreconditionError, ServerError

__all__ = [
    "MAX_APPLICATION_NAME_LENGTH",
    "NOT_REGISTRABLE",
    "AppObservation",
    "DeploymentNameHeldError",
    "DeploymentNotFoundError",
    "DeploymentPage",
    "DeploymentRecord",
    "DeploymentStatus",
    "ReplicaRecord",
    "ReplicaState",
]

logger = logging.getLogger(__name__)

#: Longest serve application name a deployment registers (the platform's own names are far
#: shorter); keeps refusals, which quote the name, short.
MAX_APPLICATION_NAME_LENGTH = 256
#: The answer to a name that cannot be registered, whatever the reason (Ray Serve has no such
#: application, another tenant's deployment holds the name, or the replicas were deployed for
#: another tenant): one text, so the answer never tells that another tenant uses the name.
NOT_REGISTRABLE = (
    "Ray Serve has no application named {name!r} deployed for this tenant: "
    "deploy() it before registering"
)


class DeploymentNotFoundError(ServerError, LookupError):
    """No deployment with this id or name visible to the caller."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"deployment {what} not found")


class DeploymentNameHeldError(FailedPreconditionError):
    """Another tenant's record holds this application name (raised by the store)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(NOT_REGISTRABLE.format(name=name))


class DeploymentStatus(StrEnum):
    """Lifecycle of a serve application, as the platform reports it."""

    DEPLOYING = "deploying"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class ReplicaState(StrEnum):
    """State of one replica, as the platform reports it: always one of these, never unknown."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    UPDATING = "UPDATING"
    RECOVERING = "RECOVERING"
    STOPPING = "STOPPING"

    @classmethod
    def parse(cls, value: object) -> ReplicaState:
        """The state a reported or stored value names.

        Accepts a member's name (``"RUNNING"``), an enum whose ``value`` is one, and the
        ``"ReplicaState.RUNNING"`` form that ``str()`` of Ray's enum gives (which older servers
        stored). Ray Serve's ``PENDING_MIGRATION`` and ``STOPPED`` are replicas on their way
        out (STOPPING). Anything else is STARTING: a replica in a state the platform does not
        know is not one it counts as serving.
        """
        text = str(getattr(value, "value", value)).strip().upper()
        text = text.rpartition(".")[2]
        if text in cls.__members__:
            return cls[text]
        if text in ("PENDING_MIGRATION", "STOPPED"):
            return cls.STOPPING
        logger.warning("unknown replica state %r reported as STARTING", str(value)[:64])
        return cls.STARTING


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica as last observed: Ray Serve's id, state and the models it has loaded.

    ``loaded_models_known`` is False when the replica was not asked or did not answer in
    time: ``loaded_model_ids`` is then empty because it is unknown, not because none is.
    """

    replica_id: str
    state: ReplicaState
    loaded_model_ids: tuple[str, ...] = ()
    loaded_models_known: bool = False


@dataclass(frozen=True)
class DeploymentRecord:
    """A serve application registered by a deployment action."""

    id: int
    tenant: str
    name: str
    plugin: str
    action: str
    job_id: str = ""
    status: DeploymentStatus = DeploymentStatus.RUNNING
    status_message: str = ""
    route_prefix: str = ""
    model_ids: tuple[int, ...] = ()
    ray_actor_options: dict[str, Any] = field(default_factory=dict)
    endpoint_action: str = ""
    create_time: float = 0.0
    update_time: float = 0.0
    replicas: tuple[ReplicaRecord, ...] = ()


@dataclass(frozen=True)
class DeploymentPage:
    """One page of a listing; ``next_page_token`` is empty on the last page."""

    deployments: list[DeploymentRecord]
    next_page_token: str = ""


@dataclass(frozen=True)
class AppObservation:
    """What Ray Serve says about an application right now.

    ``deployed_for``: the (tenant, application name) pairs the replicas that answered in time
    were deployed for (what ``deploy()`` gave them); empty when none answered.
    """

    status: DeploymentStatus
    message: str = ""
    replicas: tuple[ReplicaRecord, ...] = ()
    deployed_for: frozenset[tuple[str, str]] = frozenset()

    def deployed_for_other_than(self, tenant: str, name: str) -> bool:
        """True when a replica says it serves another tenant or another application name."""
        return any(owner != (tenant, name) for owner in self.deployed_for)
