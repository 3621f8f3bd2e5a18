"""The dataset store protocol: where dataset metadata lives (files are the ArtifactStore's).

Implemented by ``synapse_server.stores`` (SQLite embedded, PostgreSQL shared).
"""

from __future__ import annotations

import builtins
from typing import Protocol

from synapse_server.core.datasets._records import DatasetPage, DatasetRecord

__all__ = ["DatasetStore"]


class DatasetStore(Protocol):
    """Dataset rows: uploaded datasets and job outputs (staged until their job succeeds)."""

    async def open(self) -> None:
        """Open the store (creating or migrating its schema if needed)."""

    async def close(self) -> None:
        """Release connections and threads."""

    async def insert(self, record: DatasetRecord) -> DatasetRecord:
        """Store a new dataset row as it is (its id is the caller's, and unique)."""

    async def get(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """The tenant's committed dataset with this id, or ``None``."""

    async def list(self, tenant: str, name: str, page_size: int, page_token: str) -> DatasetPage:
        """The tenant's committed datasets (optionally of one name), newest first, at most
        ``page_size``; ``page_token`` continues a listing (a token that is not one raises
        ``InvalidArgumentError``)."""

    async def delete(self, tenant: str, dataset_id: str) -> DatasetRecord | None:
        """Remove the tenant's committed dataset row; what was removed, or ``None``."""

    async def stage_output(self, record: DatasetRecord) -> DatasetRecord | None:
        """Store ``record`` (a job output, ``committed`` False), replacing the staged output
        of the same job and name; returns the replaced row, or ``None``."""

    async def commit_outputs(self, job_id: str) -> int:
        """Make the job's staged outputs visible; how many there were."""

    async def discard_outputs(self, job_id: str) -> builtins.list[DatasetRecord]:
        """Remove the job's staged outputs; the removed rows."""

    async def job_outputs(self, tenant: str, job_id: str) -> builtins.list[DatasetRecord]:
        """The job's committed outputs, by name."""

    async def staged_jobs(self) -> set[str]:
        """The jobs that have staged outputs."""

    async def references(self, sha256: str) -> int:
        """How many rows (of any tenant, staged or not) use the artifact with this checksum."""

    async def all_checksums(self) -> set[str]:
        """Every artifact checksum some row references."""
