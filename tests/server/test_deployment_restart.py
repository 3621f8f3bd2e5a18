"""A server restart with its embedded Ray: the previous process's serve applications are gone.

The records are seeded straight into the SQLite store (the deployments themselves need Ray,
which tests/serve covers); what is tested here is what a restarted server reports for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synapse_client import Client
from synapse_server.core.deployments import (
    DeploymentRecord,
    DeploymentStatus,
)
from synapse_server.stores import SqliteDeploymentStore

from tests.conftest import RunningServer


def _seed(data_dir: Path, statuses: dict[str, DeploymentStatus]) -> None:
    async def _write() -> None:
        store = SqliteDeploymentStore(data_dir / "synapse.db")
        await store.open()
        try:
            for name, status in statuses.items():
                record, _ = await store.upsert(
                    DeploymentRecord(
                        id=0,
                        tenant="default",  # the tenant of a server without tokens
                        name=name,
                        plugin="torch-serve",
                        action="deployment",
                        status=status,
                        status_message="as the previous server saw it",
                    )
                )
                assert record.status is status
        finally:
            await store.close()

    asyncio.run(_write())


SEEDED = {
    "live": DeploymentStatus.RUNNING,
    "starting": DeploymentStatus.DEPLOYING,
    "sick": DeploymentStatus.UNHEALTHY,
    "broken": DeploymentStatus.FAILED,
    "gone": DeploymentStatus.DELETED,
}


def _statuses(server: RunningServer) -> dict[str, tuple[str, str]]:
    with Client(server.address, timeout=30) as client:
        return {d.name: (d.status, d.status_message) for d in client.list_deployments()}


def test_embedded_ray_applications_of_the_previous_process_are_listed_deleted(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _seed(data_dir, SEEDED)
    listed = _statuses(server_factory(data_dir=data_dir))
    for name in ("live", "starting", "sick"):
        status, message = listed[name]
        assert status == "DELETED", (name, listed[name])
        assert "previous server process" in message and "deployment action again" in message
    # Terminal records keep what they said.
    assert listed["broken"] == ("FAILED", "as the previous server saw it")
    assert listed["gone"] == ("DELETED", "as the previous server saw it")


def test_applications_on_an_external_ray_are_left_as_they_were(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    _seed(data_dir, SEEDED)
    # The cluster outlives the server; Ray is not contacted until something needs it.
    server: Any = server_factory(data_dir=data_dir, ray_address="127.0.0.1:1")
    listed = _statuses(server)
    assert {name: status for name, (status, _) in listed.items()} == {
        name: status.name for name, status in SEEDED.items()
    }
