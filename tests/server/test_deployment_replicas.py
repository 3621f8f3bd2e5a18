"""Replicas as stored and sent: loaded models known or unknown, and a state that is never
UNSPECIFIED, whatever form Ray or an older server gave it in (no Ray cluster here)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from synapse.plugin.v1 import deployment_pb2
from synapse_server.core.deployments import (
    DeploymentRecord,
    DeploymentStatus,
    ReplicaRecord,
    ReplicaState,
)
from synapse_server.grpc._deployment_converters import deployment_to_pb
from synapse_server.stores import SqliteDeploymentStore


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
        answered = ReplicaRecord("r1", ReplicaState.RUNNING, ("3",), loaded_models_known=True)
        silent = ReplicaRecord("r2", ReplicaState.RUNNING)
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


def test_every_state_of_ray_serve_has_a_replica_state() -> None:
    ray_common = pytest.importorskip("ray.serve._private.common")
    expected = {
        "STARTING": ReplicaState.STARTING,
        "UPDATING": ReplicaState.UPDATING,
        "RECOVERING": ReplicaState.RECOVERING,
        "RUNNING": ReplicaState.RUNNING,
        "STOPPING": ReplicaState.STOPPING,
        "STOPPED": ReplicaState.STOPPING,
        "PENDING_MIGRATION": ReplicaState.STOPPING,
    }
    for ray_state in ray_common.ReplicaState:
        # Ray's enum itself, and what str() of it gives ("ReplicaState.RUNNING").
        assert ReplicaState.parse(ray_state) is expected[ray_state.value], ray_state
        assert ReplicaState.parse(str(ray_state)) is expected[ray_state.value], str(ray_state)


def test_a_state_nobody_knows_is_starting_not_unspecified() -> None:
    assert ReplicaState.parse("WARMING_UP") is ReplicaState.STARTING
    assert ReplicaState.parse("") is ReplicaState.STARTING
    wire = deployment_to_pb(
        _record(*(ReplicaRecord(f"r{i}", state) for i, state in enumerate(ReplicaState)))
    )
    assert deployment_pb2.REPLICA_STATE_UNSPECIFIED not in [r.state for r in wire.replicas]


async def test_states_stored_by_older_servers_are_read_as_states(tmp_path: Path) -> None:
    path = tmp_path / "synapse.db"
    store = SqliteDeploymentStore(path)
    await store.open()
    try:
        record, _ = await store.upsert(_record())
        # What a server that stored str() of Ray's enum wrote.
        old_replicas = [
            {"replica_id": "r1", "state": "ReplicaState.RUNNING", "loaded_model_ids": []},
            {"replica_id": "r2", "state": "ReplicaState.PENDING_MIGRATION"},
        ]
        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE serve_applications SET replicas = ? WHERE id = ?",
                (json.dumps(old_replicas), record.id),
            )
        stored = await store.get(record.id)
        assert stored is not None
    finally:
        await store.close()
    assert [r.state for r in stored.replicas] == [ReplicaState.RUNNING, ReplicaState.STOPPING]
    assert [r.state for r in deployment_to_pb(stored).replicas] == [
        deployment_pb2.REPLICA_STATE_RUNNING,
        deployment_pb2.REPLICA_STATE_STOPPING,
    ]
