"""The deployment store protocol: where deployment records live.

Implemented by ``synapse_server.stores`` (SQLite in the embedded server); the service only
ever talks to this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from synapse_server.core.deployments._records import (
    DeploymentPage,
    DeploymentRecord,
    DeploymentStatus,
)

__all__ = ["DeploymentStore"]


class DeploymentStore(Protocol):
    """Where deployment records live; one owner per application name.

    A name is held by the tenant of its record that is not DELETED (the earliest, should
    there be several); the store keeps any other tenant from taking it (:meth:`upsert`).
    Records are never removed, only marked DELETED.
    """

    async def open(self) -> None:
        """Open the store (creating or migrating its schema if needed)."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def upsert(self, record: DeploymentRecord) -> tuple[DeploymentRecord, bool]:
        """Insert ``record``, or update the tenant's record of the same name; ``(stored,
        created)``.

        The store assigns the id (``record.id`` is ignored) and the times: ``create_time``
        when inserted, ``update_time`` now. Raises :class:`DeploymentNameHeldError` when
        ``record`` is not DELETED and another tenant holds the name, checked atomically with
        the write (two tenants can never both get a name).
        """

    async def get(self, deployment_id: int) -> DeploymentRecord | None:
        """The record with this id (of any tenant: callers check the tenant), or ``None``."""

    async def find_by_name(self, tenant: str, name: str) -> DeploymentRecord | None:
        """The tenant's record of the application called ``name``, or ``None``."""

    async def holder(self, name: str) -> str | None:
        """The tenant holding the application name (its earliest record not DELETED), or
        ``None`` when no such record exists."""

    async def find_by_endpoint(
        self, tenant: str, plugin: str, endpoint_action: str
    ) -> list[DeploymentRecord]:
        """The tenant's records of a plugin's serve entrypoint, newest first (any status)."""

    async def list(
        self,
        tenant: str,
        statuses: Sequence[DeploymentStatus],
        plugin: str,
        name: str,
        page_size: int,
        page_token: str,
    ) -> DeploymentPage:
        """The tenant's records, newest first, of ``statuses`` (all when empty), of ``plugin``
        and ``name`` when given; ``page_token`` continues an earlier page (a token that is not
        one raises ``InvalidArgumentError``)."""

    async def update(self, record: DeploymentRecord) -> None:
        """Store a record's status, status message, replicas and update time (nothing else)."""

    async def mark_all_live_deleted(self, message: str) -> int:
        """Mark every record not DELETED or FAILED as DELETED with ``message`` and no
        replicas; how many were."""
