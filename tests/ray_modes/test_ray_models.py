"""Model downloads from Ray workers (task and job modes) through the platform's ModelService.

Each Ray node has its own model cache and no filesystem is shared with the server's model
registry, so a worker can only get the model's bytes by downloading them from the platform
(over the worker's own connection, with its job credential).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_modes_support import PlatformServer, RayCluster, events, result_of, run_action
from synapse.plugin.v1 import job_pb2
from synapse_client import Client
from synapse_sdk.models import pack_path

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@dataclass(frozen=True)
class RegisteredModel:
    """A model registered with the test server, and what its files hash to."""

    id: int
    archive_sha256: str
    weights_sha256: str
    labels_sha256: str


@pytest.fixture(scope="module")
def registered_model(
    platform: PlatformServer, tmp_path_factory: pytest.TempPathFactory
) -> RegisteredModel:
    """A two-file model directory packed and registered with the server's ModelService."""
    work = tmp_path_factory.mktemp("model")
    source = work / "probe-model"
    (source / "labels").mkdir(parents=True)
    weights = os.urandom(256 * 1024)
    labels = b"cat\ndog\n"
    (source / "weights.bin").write_bytes(weights)
    (source / "labels" / "classes.txt").write_bytes(labels)
    archive, _ = pack_path(source, work)
    with Client(f"127.0.0.1:{platform.port}") as client:
        info = client.register_model(archive, "ray-probe-model", framework="none")
    assert info.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    return RegisteredModel(
        id=info.id,
        archive_sha256=info.sha256,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        labels_sha256=hashlib.sha256(labels).hexdigest(),
    )


#: (mode, node, helper, file): every helper in both Ray modes, on two different nodes.
CASES = [
    ("task", "node_a", "load", "weights.bin"),
    ("job", "node_b", "load", "labels/classes.txt"),
    ("task", "node_b", "download", "weights.bin"),
    ("job", "node_a", "download", "labels/classes.txt"),
]


def test_workers_fetch_models_through_the_platform_in_task_and_job_modes(
    platform: PlatformServer, ray_cluster: RayCluster, registered_model: RegisteredModel
) -> None:
    model = registered_model
    expected = {"weights.bin": model.weights_sha256, "labels/classes.txt": model.labels_sha256}
    jobs = [
        run_action(
            platform,
            "model_digest",
            {"model_id": model.id, "how": how, "file": file, "resources": {node: 0.1}},
            mode=mode,
        )
        for mode, node, how, file in CASES
    ]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        streams = list(pool.map(lambda j: events(platform, j.id, timeout=150), jobs))
    for (mode, node, how, file), job, evs in zip(CASES, jobs, streams, strict=True):
        case = f"{how} in {mode} mode on {node}"
        assert job.mode == {"task": job_pb2.RUN_MODE_TASK, "job": job_pb2.RUN_MODE_JOB}[mode]
        result = result_of(evs[-1])
        assert result["mode"] == mode, case
        assert result["node_id"] == ray_cluster.node_ids[node], case
        assert result["name"] == "ray-probe-model", case
        assert result["sha256"] == expected[file], case
        assert result["files"] == ["labels", "labels/classes.txt", "weights.bin"], case
        path = Path(result["path"])
        if how == "load":
            # Extracted once into that node's own cache, keyed by the archive's digest.
            assert path == ray_cluster.model_cache_dirs[node] / model.archive_sha256, case
        else:
            assert not path.is_relative_to(ray_cluster.model_cache_dirs[node]), case
    # load_model filled the caches of exactly the nodes that ran a load.
    for node in ("node_a", "node_b"):
        assert (ray_cluster.model_cache_dirs[node] / model.archive_sha256 / "weights.bin").is_file()
    assert not (ray_cluster.model_cache_dirs["head"] / model.archive_sha256).exists()


@pytest.mark.parametrize("mode", ["task", "job"])
def test_an_unknown_model_fails_the_job_with_model_not_found(
    platform: PlatformServer, registered_model: RegisteredModel, mode: str
) -> None:
    missing = registered_model.id + 1000
    job = run_action(
        platform,
        "model_digest",
        {"model_id": missing, "resources": {"node_a": 0.1}},
        mode=mode,
    )
    terminal = events(platform, job.id)[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED
    assert terminal.error.type == "synapse_sdk.errors.ModelNotFoundError", terminal.error
    assert str(missing) in terminal.error.message, terminal.error.message
