"""Dataset jobs on Ray: a real ``synapse serve`` process in task and job mode on the cluster.

The job's worker (the child its Ray task or actor supervises) runs the probe's ``map`` action,
whose ``map_batches`` must run as a Ray Data pipeline on the cluster: its batches are computed
by actors on the cluster's nodes (a local run records the node ``local``), its progress
arrives in the job's one ordered event stream, a failing batch fails the job with the
plugin's traceback, and a cancel ends the pipeline and its actors. The dataset reference is
resolved over a local file (the probe installs ``LocalDatasets``), so this checks the worker's
wiring independently of the platform's dataset store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_data_support import CPUS, PLUGINS, PROBE, DataCluster, alive, free_cpus, wait_for
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_event_pb2, job_pb2
from synapse_sdk.datasets import BatchSpec, LocalBatchRunner, LocalDatasets
from synapse_sdk.plugins import load_plugin

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.timeout(180)]

MODES = {"task": job_pb2.RUN_MODE_TASK, "job": job_pb2.RUN_MODE_JOB}
EXAMPLE_PLUGINS = Path(__file__).resolve().parents[2] / "examples" / "plugins"
ROWS = 2000


@dataclass
class Served:
    process: subprocess.Popen[str]
    address: str
    stub: action_service_pb2_grpc.ActionServiceStub
    log: Path


@pytest.fixture(scope="module")
def served(data_cluster: DataCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real server process (its own composition root) driving the test cluster."""
    base = tmp_path_factory.mktemp("data-jobs-server")
    log = base / "server.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(base / "data"), "--plugin-dir", str(PLUGINS),
                "--plugin-dir", str(EXAMPLE_PLUGINS),
                "--ray-address", data_cluster.address, "--shutdown-grace", "5",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("synapse server listening on "):
        process.kill()
        process.wait(10)
        raise AssertionError(f"server did not start: {log.read_text()[-4000:]}")
    address = line.rsplit(" ", 1)[1].strip()
    channel = grpc.insecure_channel(address)
    try:
        yield Served(process, address, action_service_pb2_grpc.ActionServiceStub(channel), log)
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _input(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    path = tmp_path / "input.parquet"
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "a": rng.normal(size=ROWS),
            "b": rng.normal(size=ROWS),
            "c": rng.normal(size=ROWS),
            "name": [f"row-{i}" for i in range(ROWS)],
        }
    )
    pq.write_table(table, path, row_group_size=700)
    return path


def _params(tmp_path: Path, source: Path, **extra: Any) -> dict[str, Any]:
    record = tmp_path / "record"
    record.mkdir(exist_ok=True)
    return {
        "dataset": "input",
        "local_files": {"input": str(source)},
        "output_dir": str(tmp_path / "out"),
        "batch_size": 100,
        "concurrency": 2,
        "record_dir": str(record),
        **extra,
    }


def _submit(served: Served, mode: str, params: dict[str, Any]) -> str:
    request = pb.RunActionRequest(
        plugin="ray-data-probe",
        action="map",
        params_json=json.dumps(params).encode(),
        mode=MODES[mode],
    )
    return str(served.stub.RunAction(request, timeout=60).job.id)


def _events(served: Served, job_id: str) -> list[job_event_pb2.JobEvent]:
    stream = served.stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=150)
    return [r.event for r in stream if r.WhichOneof("kind") == "event"]


def _nodes(record: Path) -> set[str]:
    return {path.read_text() for path in record.glob("batch-*")}


@pytest.mark.parametrize("mode", ["task", "job"])
def test_a_dataset_job_on_ray_runs_as_a_ray_data_pipeline(
    served: Served, idle: DataCluster, tmp_path: Path, mode: str
) -> None:
    source = _input(tmp_path)
    # Ray Data hands a batch to the actor on the batch's node first while it has room: the
    # batches take long enough (0.2 s) for the other node's actor to get some too.
    params = _params(tmp_path, source, delay=0.2, barrier=2)
    events = _events(served, _submit(served, mode, params))

    terminal = events[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_SUCCEEDED, (terminal, served.log.read_text()[-3000:])
    result = json.loads(terminal.result_json)
    assert result == {
        "output": "predictions",
        "rows": ROWS,
        "batches": 20,
        "runner": "RayBatchRunner",
    }
    # The batches were computed by the pool's actors on more than one node of the cluster.
    nodes = _nodes(Path(params["record_dir"]))
    assert len(nodes) >= 2 and nodes <= set(idle.node_ids.values()), nodes
    # Progress per written batch, in the job's one stream: in order, up to every row.
    progress = [e.progress for e in events if e.WhichOneof("kind") == "progress"]
    batch = [(p.current, p.total) for p in progress if p.category == "batch"]
    assert batch and batch[-1] == (ROWS, ROWS), batch
    assert [current for current, _ in batch] == sorted({current for current, _ in batch})
    assert all(current % 100 == 0 for current, _ in batch)
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    # The output is the local runner's on the same input, byte for byte.
    predictor = load_plugin(PROBE).import_module("data_probe.predictor").RowPredictor
    local = LocalDatasets({"input": source}, output_dir=tmp_path / "local")
    spec = BatchSpec(
        source=local.resolve("input"),
        sink=local.open_sink("predictions"),
        predictor=predictor,
        predictor_kwargs={},
        batch_size=100,
        columns=("id", "a", "b", "c"),
        carry_columns=("id", "name"),
    )
    LocalBatchRunner().run(spec, lambda done: None, lambda: False)
    ray_output = tmp_path / "out" / "predictions.parquet"
    assert pq.read_table(ray_output).equals(pq.read_table(spec.sink.path))
    assert ray_output.read_bytes() == Path(spec.sink.path).read_bytes()


def test_a_failing_batch_fails_the_job_with_the_plugins_traceback(
    served: Served, idle: DataCluster, tmp_path: Path
) -> None:
    params = _params(tmp_path, _input(tmp_path), fail_at=1234, concurrency=1)
    events = _events(served, _submit(served, "task", params))
    terminal = events[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_FAILED, terminal
    assert terminal.error.type == "ValueError"
    assert "cannot predict row 1234" in terminal.error.message
    # The actor's traceback, down to the plugin's own function.
    assert "check_row" in terminal.error.plugin_traceback, terminal.error.plugin_traceback
    # The failed pipeline's actors end with it.
    wait_for(lambda: free_cpus() == CPUS, 15, "the pool's CPUs to be released")


def test_cancelling_a_dataset_job_ends_its_pipeline_and_actors(
    served: Served, idle: DataCluster, tmp_path: Path
) -> None:
    # 20 batches of 1 s on one actor: 20 s uncancelled.
    params = _params(tmp_path, _input(tmp_path), delay=1.0, concurrency=1)
    job_id = _submit(served, "task", params)
    record = Path(params["record_dir"])
    stream = served.stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=150)
    for response in stream:
        event = response.event if response.WhichOneof("kind") == "event" else None
        if event is not None and event.progress.category == "batch":
            break  # the pipeline is under way: a batch is written
    served.stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=10)
    cancelled_at = time.monotonic()
    rest = [r.event for r in stream if r.WhichOneof("kind") == "event"]
    stopped = time.monotonic() - cancelled_at
    terminal = rest[-1].terminal
    assert terminal.state == job_pb2.JOB_STATE_CANCELLED, terminal
    assert stopped < 10.0, f"the job took {stopped:.1f} s to end after the cancel"
    actors = [int(path.name.split("-")[1]) for path in record.glob("actor-*")]
    assert actors
    wait_for(lambda: not any(alive(pid) for pid in actors), 15, "the pool's actors to end")
    wait_for(lambda: free_cpus() == CPUS, 10, "the pool's CPUs to be released")
    computed = len(list(record.glob("batch-*")))
    time.sleep(1.5)
    assert len(list(record.glob("batch-*"))) == computed < 20


def _pool_actors() -> int:
    """Ray Data predictor actors the cluster has had (alive or ended), from its actor table."""
    import ray

    return sum(
        "_PredictorActor" in str(actor.get("ActorClassName", ""))
        for actor in ray._private.state.actors().values()
    )


def test_the_example_dataset_action_through_the_platform_in_task_mode(
    served: Served, idle: DataCluster, tmp_path: Path
) -> None:
    """examples' batch_inference_dataset over an uploaded dataset, on Ray Data, end to end."""
    pytest.importorskip("torch")
    from synapse_client import Client, ProgressEvent, RunMode
    from synapse_sdk.models import pack_path

    from examples.models import MLPConfig, build_model_dir, reference_outputs

    model_dir = build_model_dir(tmp_path / "mlp", MLPConfig(hidden=32))
    rng = np.random.default_rng(5)
    rows = 3000
    features = rng.uniform(-2, 2, size=(rows, 3)).astype(np.float32)
    ids = rng.permutation(rows).astype(np.int64) * 7 + 3  # carried in the input's order
    table = pa.table({"id": ids, **{f"x{i}": features[:, i] for i in range(3)}})
    source = tmp_path / "rows.parquet"
    pq.write_table(table, source, row_group_size=1100)
    expected = np.asarray(reference_outputs(model_dir, features.tolist()), dtype=np.float32)
    actors_before = _pool_actors()
    with Client(served.address, timeout=60) as client:
        archive, fmt = pack_path(model_dir, tmp_path)
        model_id = client.register_model(archive, "mlp", archive_format=fmt.value).id
        dataset = client.upload_dataset(source, name="rows-on-ray")
        handle = client.run_action(
            "batch-inference",
            "batch_inference_dataset",
            {
                "model_id": model_id,
                "dataset": dataset.id,
                "batch_size": 500,
                "feature_columns": ["x0", "x1", "x2"],
                "concurrency": 2,
            },
            mode=RunMode.TASK,
        )
        events = list(handle.events())
        assert handle.result(timeout=150) == {"output": "predictions", "rows": rows, "batches": 6}
        batches = [
            e.payload
            for e in events
            if isinstance(e.payload, ProgressEvent) and e.payload.category == "batch"
        ]
        assert batches and (batches[-1].current, batches[-1].total) == (rows, rows)
        assert [b.current for b in batches] == sorted({b.current for b in batches})
        out = tmp_path / "predictions.parquet"
        handle.download_output(out)
    written = pq.read_table(out)
    assert written.column_names == ["id", "prediction"]
    assert written.column("id").to_pylist() == ids.tolist()
    got = np.asarray(written.column("prediction").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # It ran as a Ray Data pipeline: a predictor actor of the pool started on the cluster.
    assert _pool_actors() > actors_before
