"""RayDataRunner on a real multi-node Ray cluster, checked against LocalBatchRunner's output.

Every run maps the probe plugin's predictor (loaded from its directory, as a worker loads a
plugin) over a real file; the reference is LocalBatchRunner on the same file and spec.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray_data_support import CPUS, PROBE, DataCluster, alive, free_cpus, wait_for
from synapse_sdk.datasets import BatchSpec, LocalBatchRunner, LocalDatasets
from synapse_sdk.errors import ActionCancelledError
from synapse_sdk.plugins import load_plugin
from synapse_server.ray._data_runner import RayDataRunner

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def probe() -> Any:
    """The probe plugin's predictor module, imported from the plugin's synthetic package."""
    return load_plugin(PROBE).import_module("data_probe.predictor")


def _table(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": np.arange(rows, dtype=np.int64),
            "a": rng.normal(size=rows),
            "b": rng.normal(size=rows),
            "c": rng.normal(size=rows),
            "name": [f"row-{i}" for i in range(rows)],
        }
    )


def _parquet(path: Path, rows: int) -> Path:
    # Row groups that do not line up with the batches (700 vs 100 rows).
    pq.write_table(_table(rows), path, row_group_size=700)
    return path


def _spec(
    tmp_path: Path,
    source_file: Path,
    predictor: type,
    *,
    label: str,
    kwargs: dict[str, Any] | None = None,
    columns: tuple[str, ...] | None = ("id", "a", "b", "c"),
    carry: tuple[str, ...] = ("id", "name"),
    batch_size: int = 100,
    concurrency: int = 2,
) -> tuple[BatchSpec, Any]:
    datasets = LocalDatasets({"input": source_file}, output_dir=tmp_path / label)
    sink = datasets.open_sink("predictions")
    spec = BatchSpec(
        source=datasets.resolve("input"),
        sink=sink,
        predictor=predictor,
        predictor_kwargs=kwargs or {},
        batch_size=batch_size,
        columns=columns,
        carry_columns=carry,
        concurrency=concurrency,
        num_cpus=1.0,
    )
    return spec, sink


def _run(runner: Any, spec: BatchSpec) -> tuple[Any, list[int]]:
    progress: list[int] = []
    result = runner.run(spec, progress.append, lambda: False)
    return result, progress


def _assert_same_output(local_path: str, ray_path: str) -> None:
    local, ray_table = pq.read_table(local_path), pq.read_table(ray_path)
    assert ray_table.schema == local.schema
    assert ray_table.num_rows == local.num_rows
    assert ray_table.equals(local)
    # Written the same way, batch by batch: the same file, byte for byte.
    assert Path(ray_path).read_bytes() == Path(local_path).read_bytes()


def test_parquet_batches_run_on_several_nodes_and_match_the_local_output(
    idle: DataCluster, probe: Any, tmp_path: Path
) -> None:
    source = _parquet(tmp_path / "input.parquet", 3050)
    record = tmp_path / "record"
    record.mkdir()
    kwargs = {"record_dir": str(record), "delay": 0.1, "barrier": 3}
    spec, sink = _spec(
        tmp_path, source, probe.RowPredictor, label="ray", kwargs=kwargs, concurrency=3
    )
    calls: list[tuple[int, int]] = []

    def on_batch(done: int) -> None:
        calls.append((done, threading.get_ident()))

    result = RayDataRunner().run(spec, on_batch, lambda: False)
    local_spec, local_sink = _spec(
        tmp_path, source, probe.RowPredictor, label="local", concurrency=3
    )
    local_result, _ = _run(LocalBatchRunner(), local_spec)

    assert (result.output, result.rows, result.batches) == ("predictions", 3050, 31)
    assert (local_result.rows, local_result.batches) == (3050, 31)
    assert sink.committed == 3050
    # Progress after each written batch, in order, from the caller's thread.
    assert [done for done, _ in calls] == [*range(100, 3001, 100), 3050]
    assert {thread for _, thread in calls} == {threading.get_ident()}
    batch_nodes = {path.name.split("-")[1]: path.read_text() for path in record.glob("batch-*")}
    # Every batch was computed once, with the local runner's batch boundaries ...
    assert sorted(map(int, batch_nodes)) == list(range(0, 3050, 100))
    # ... by actors on more than one node of the cluster.
    assert len(set(batch_nodes.values())) >= 2, batch_nodes
    assert set(batch_nodes.values()) <= set(idle.node_ids.values())
    output = pq.read_table(sink.path)
    assert output.column_names == ["id", "name", "y", "double_id"]
    assert output.column("id").to_pylist() == list(range(3050))
    _assert_same_output(local_sink.path, sink.path)


def test_jsonl_input_matches_the_local_output(
    idle: DataCluster, probe: Any, tmp_path: Path
) -> None:
    source = tmp_path / "input.jsonl"
    rows = _table(1050).to_pylist()
    with source.open("w", encoding="utf-8") as handle:
        for index, row in enumerate(rows):
            # A text that a JSON reader could take for a timestamp: it stays text, as locally.
            row["when"] = f"2026-12-05 10:{index % 60:02d}:00"
            handle.write(json.dumps(row) + "\n")
            if index in (5, 799):
                handle.write("\n")  # blank lines are skipped, also at a read task's edge
    carry = ("id", "name", "when")
    spec, sink = _spec(tmp_path, source, probe.RowPredictor, label="ray", carry=carry)
    result, progress = _run(RayDataRunner(), spec)
    local_spec, local_sink = _spec(tmp_path, source, probe.RowPredictor, label="local", carry=carry)
    _run(LocalBatchRunner(), local_spec)
    assert result.rows == 1050 and progress[-1] == 1050
    assert pq.read_schema(sink.path).field("when").type == pa.string()
    _assert_same_output(local_sink.path, sink.path)


def test_npy_input_matches_the_local_output(idle: DataCluster, probe: Any, tmp_path: Path) -> None:
    source = tmp_path / "input.npy"
    np.save(source, np.random.default_rng(3).normal(size=(1030, 3)))
    spec, sink = _spec(
        tmp_path, source, probe.MatrixPredictor, label="ray", columns=None, carry=("data",)
    )
    result, _ = _run(RayDataRunner(), spec)
    local_spec, local_sink = _spec(
        tmp_path, source, probe.MatrixPredictor, label="local", columns=None, carry=("data",)
    )
    _run(LocalBatchRunner(), local_spec)
    assert (result.rows, result.batches) == (1030, 11)
    assert pq.read_table(sink.path).column_names == ["data", "y", "total"]
    _assert_same_output(local_sink.path, sink.path)


def test_a_failing_batch_raises_the_predictors_exception_with_its_traceback(
    idle: DataCluster, probe: Any, tmp_path: Path
) -> None:
    source = _parquet(tmp_path / "input.parquet", 3000)
    spec, sink = _spec(tmp_path, source, probe.RowPredictor, label="ray", kwargs={"fail_at": 1234})
    with pytest.raises(ValueError, match="cannot predict row 1234") as caught:
        _run(RayDataRunner(), spec)
    # The plugin's own exception type, with the actor's traceback chained as its cause.
    assert type(caught.value) is ValueError
    remote = str(caught.value.__cause__)
    assert "check_row" in remote and "predictor.py" in remote, remote
    assert sink.committed is None
    # The failed pipeline's actors end (their CPUs are free again) without further ado.
    wait_for(lambda: free_cpus() == CPUS, 10, "the actors' CPUs to be released")


def test_cancel_stops_the_pipeline_promptly_and_ends_its_actors(
    idle: DataCluster, probe: Any, tmp_path: Path
) -> None:
    source = _parquet(tmp_path / "input.parquet", 6000)
    record = tmp_path / "record"
    record.mkdir()
    # 60 batches of 0.5 s on two actors: 15 s uncancelled.
    kwargs = {"record_dir": str(record), "delay": 0.5}
    spec, sink = _spec(tmp_path, source, probe.RowPredictor, label="ray", kwargs=kwargs)
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def on_batch(done: int) -> None:
        if done >= 200 and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    with pytest.raises(ActionCancelledError):
        RayDataRunner().run(spec, on_batch, cancel.is_set)
    stopped = time.monotonic() - cancelled_at[0]
    assert stopped < 5.0, f"the runner took {stopped:.1f} s to stop after the cancel"
    assert sink.committed is None
    actors = [int(path.name.split("-")[1]) for path in record.glob("actor-*")]
    assert len(actors) == 2
    # The pool's actor processes end and their CPUs are free again ...
    wait_for(lambda: not any(alive(pid) for pid in actors), 10, "the actors to end")
    wait_for(lambda: free_cpus() == CPUS, 10, "the actors' CPUs to be released")
    # ... and no batch is computed after that.
    computed = len(list(record.glob("batch-*")))
    time.sleep(1.0)
    assert len(list(record.glob("batch-*"))) == computed < 60
