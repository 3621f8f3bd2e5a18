"""The model store protocol: where model metadata lives (archives are the ArtifactStore's).

Implemented by ``synapse_server.stores`` (SQLite in the embedded server).
"""

from __future__ import annotations

from typing import Protocol

from synapse_server.core.models._records import ModelPage, ModelRecord

__all__ = ["ModelStore"]


class ModelStore(Protocol):
    """Where model metadata lives; a server database can replace the SQLite one."""

    async def open(self) -> None:
        """Open the store (creating or migrating its schema if needed)."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def insert(self, record: ModelRecord) -> ModelRecord:
        """Store a new model; returns it with its assigned id (``record.id`` is ignored).

        Ids increase: a later model has a higher id than every earlier one.
        """

    async def get(self, tenant: str, model_id: int) -> ModelRecord | None:
        """The tenant's model with this id, or ``None``."""

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> ModelPage:
        """The tenant's models (optionally of one name), newest first, ``page_size`` at most;
        ``page_token`` continues a listing (a token that is not one raises
        ``InvalidArgumentError``)."""

    async def delete(self, tenant: str, model_id: int) -> ModelRecord | None:
        """Remove the tenant's model row; returns what was removed, or ``None`` (also for
        another tenant's model, which stays)."""

    async def references(self, sha256: str) -> int:
        """How many models (of any tenant) use the artifact with this checksum."""

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some model references."""
