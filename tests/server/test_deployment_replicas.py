"""Replicas' loaded models: known, or unknown when a replica did not answer (no Ray here)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from synapse.plugin.v1 import deployment_pb2
from synapse_server.core.deployments import (
    DeploymentRecord,
    DeploymentStatus,
    ReplicaRecord,
    SqliteDeploymentStore,
)
from synapse_server.grpc._deployment_servicer import deployment_to_pb


def _record(*replicas: ReplicaRecord) -> DeploymentRecord:
    return DeploymentRecord(
        id=0,
        tenant="t",
        name="app",
        plugin="p",
        action="a",
        status=DeploymentStatus.RUNNING,
        replicas=replicas,
    )


async def test_the_known_flag_is_stored_and_sent(tmp_path: Path) -> None:
    store = SqliteDeploymentStore(tmp_path / "synapse.db")
    await store.open()
    try:
        answered = ReplicaRecord("r1", "RUNNING", ("3",), loaded_models_known=True)
        silent = ReplicaRecord("r2", "RUNNING")
        record, _ = await store.upsert(_record(answered, silent))
        stored = await store.get(record.id)
        assert stored is not None and stored.replicas == (answered, silent)
    finally:
        await store.close()
    wire = deployment_to_pb(stored)
    assert [
        (r.replica_id, list(r.loaded_model_ids), r.loaded_models_known) for r in wire.replicas
    ] == [
        ("r1", [3], True),
        ("r2", [], False),
    ]
    assert wire.replicas[1].state == deployment_pb2.REPLICA_STATE_RUNNING


async def test_rows_from_before_the_flag_count_a_reported_list_as_known(tmp_path: Path) -> None:
    path = tmp_path / "synapse.db"
    store = SqliteDeploymentStore(path)
    await store.open()
    try:
        record, _ = await store.upsert(_record())
        old_replicas = [
            {"replica_id": "r1", "state": "RUNNING", "loaded_model_ids": ["4"]},
            {"replica_id": "r2", "state": "RUNNING", "loaded_model_ids": []},
        ]
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE serve_applications SET replicas = ? WHERE id = ?",
                (json.dumps(old_replicas), record.id),
            )
        stored = await store.get(record.id)
        assert stored is not None
        assert [r.loaded_models_known for r in stored.replicas] == [True, False]
    finally:
        await store.close()
