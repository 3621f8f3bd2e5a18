"""synapse_sdk.datasets: the local batch runner and ``map_batches`` on real files."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from synapse_sdk.datasets import (
    BatchSpec,
    DatasetRef,
    DatasetsUnavailableError,
    LocalBatchRunner,
    LocalDatasets,
    PredictorOutputError,
)
from synapse_sdk.errors import ActionCancelledError
from synapse_sdk.events import ProgressEvent
from synapse_sdk.plugins.actions.inference import BaseInferenceAction
from synapse_sdk.runtime import RunContext, run_context
from synapse_sdk.testing import RecordingSink


class Doubler:
    """Returns 2*x for column x, checking the batch format it was given."""

    def __init__(self, expect: str = "numpy") -> None:
        self.expect = expect
        self.calls = 0

    def __call__(self, batch: Any) -> dict[str, Any]:
        if self.expect == "pyarrow":
            assert isinstance(batch, pa.RecordBatch)
            x = batch.column("x").to_numpy()
        elif self.expect == "dicts":
            assert isinstance(batch, list) and isinstance(batch[0], dict)
            x = np.array([r["x"] for r in batch])
        elif self.expect == "torch":
            import torch

            assert isinstance(batch["x"], torch.Tensor)
            return {"y": batch["x"] * 2}
        else:
            assert isinstance(batch["x"], np.ndarray)
            x = batch["x"]
        return {"y": x * 2}


def _parquet(path: Path, n: int) -> Path:
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(n)], "x": np.arange(n)}), path, row_group_size=7
    )
    return path


def _run(src_path: Path, tmp_path: Path, **kw: Any) -> tuple[pa.Table, Any]:
    ds = LocalDatasets({"d": src_path}, output_dir=tmp_path / "out")
    sink = ds.open_sink("predictions")
    spec = BatchSpec(
        source=ds.resolve("d"), sink=sink, predictor=kw.pop("predictor", Doubler), **kw
    )
    seen: list[int] = []
    result = LocalBatchRunner().run(spec, seen.append, lambda: False)
    assert sink.committed == result.rows
    return pq.read_table(sink.path), (result, seen)


@pytest.mark.parametrize("fmt", ["numpy", "torch", "pyarrow", "dicts"])
def test_parquet_row_aligned_each_format(tmp_path: Path, fmt: str) -> None:
    src = _parquet(tmp_path / "in.parquet", 53)
    table, (result, seen) = _run(
        src,
        tmp_path,
        predictor_kwargs={"expect": fmt},
        batch_size=10,
        batch_format=fmt,
        columns=("x",),
        carry_columns=("id",),
    )
    assert table.column_names == ["id", "y"]
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(53)]
    assert table.column("y").to_pylist() == [2 * i for i in range(53)]
    assert (result.rows, result.batches) == (53, 6)
    assert seen == [10, 20, 30, 40, 50, 53]


def test_jsonl_source(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(25)))
    table, (result, _) = _run(src, tmp_path, batch_size=4, carry_columns=("id",), columns=("x",))
    assert table.column("id").to_pylist() == list(range(25))
    assert table.column("y").to_pylist() == [2 * i for i in range(25)]
    assert result.batches == 7


class RowSum:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"s": batch["data"].sum(axis=1)}


def test_npy_source_2d(tmp_path: Path) -> None:
    src = tmp_path / "in.npy"
    arr = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.save(src, arr)
    table, _ = _run(src, tmp_path, predictor=RowSum, batch_size=3)
    assert table.column("s").to_pylist() == arr.sum(axis=1).tolist()


class WrongLength:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"y": batch["x"][:-1]}


def test_bad_predictor_output_length(tmp_path: Path) -> None:
    src = _parquet(tmp_path / "in.parquet", 20)
    with pytest.raises(PredictorOutputError, match="has 4 rows for an input batch of 5"):
        _run(src, tmp_path, predictor=WrongLength, batch_size=5)


class Boom:
    def __call__(self, batch: Any) -> Any:
        raise KeyError("model exploded")


def test_predictor_error_propagates(tmp_path: Path) -> None:
    src = _parquet(tmp_path / "in.parquet", 20)
    with pytest.raises(KeyError, match="model exploded"):
        _run(src, tmp_path, predictor=Boom, batch_size=5)


def test_cancellation_stops_promptly(tmp_path: Path) -> None:
    src = _parquet(tmp_path / "in.parquet", 100)
    ds = LocalDatasets({"d": src}, output_dir=tmp_path / "out")
    sink = ds.open_sink("predictions")
    cancel = threading.Event()
    seen: list[int] = []

    def on_batch(done: int) -> None:
        seen.append(done)
        if done >= 30:
            cancel.set()

    spec = BatchSpec(source=ds.resolve("d"), sink=sink, predictor=Doubler, batch_size=10)
    with pytest.raises(ActionCancelledError):
        LocalBatchRunner().run(spec, on_batch, cancel.is_set)
    assert seen == [10, 20, 30]
    assert sink.committed is None


class Mean:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"m": batch["v"].mean(axis=1)}


def test_bounded_memory_on_large_file(tmp_path: Path) -> None:
    # ~64 MB of float64 input read in 1000-row (~4 MB) batches: the Arrow memory held while
    # running (sampled after every batch) is a few batches whatever the file's size (the one
    # being run, the one read ahead, the Parquet reader's own), and Python's peak stays well
    # below the file size.
    rows, width = 16_000, 512
    batch_bytes = 1000 * width * 8
    src = tmp_path / "big.parquet"
    with pq.ParquetWriter(src, pa.schema([("v", pa.list_(pa.float64(), width))])) as w:
        for start in range(0, rows, 1000):
            flat = pa.array(np.random.default_rng(start).random(1000 * width))
            w.write_table(pa.table({"v": pa.FixedSizeListArray.from_arrays(flat, width)}))
    size = src.stat().st_size
    assert size > 60_000_000
    ds = LocalDatasets({"d": src}, output_dir=tmp_path / "out")
    sink = ds.open_sink("predictions")
    base = pa.total_allocated_bytes()
    held: list[int] = []
    spec = BatchSpec(source=ds.resolve("d"), sink=sink, predictor=Mean, batch_size=1000)
    tracemalloc.start()
    result = LocalBatchRunner().run(
        spec, lambda _: held.append(pa.total_allocated_bytes() - base), lambda: False
    )
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.rows == rows and result.batches == 16
    assert pq.read_metadata(sink.path).num_rows == rows
    assert max(held) < size / 3, (held, size)
    assert max(held) <= 4 * batch_bytes, (held, batch_bytes)
    assert py_peak < size / 3


class Params(BaseModel):
    dataset: DatasetRef
    batch_size: int = 8


class DatasetAction(BaseInferenceAction[Params]):
    action_name = "batch_ds"

    def execute(self) -> Any:
        result = self.map_batches(
            dataset=self.params.dataset,
            predictor=Doubler,
            batch_size=self.params.batch_size,
            columns=["x"],
            carry_columns=["id"],
            output="predictions",
        )
        return {"rows": result.rows, "batches": result.batches}


def test_map_batches_through_run_context(tmp_path: Path) -> None:
    src = _parquet(tmp_path / "in.parquet", 20)
    ds = LocalDatasets({"mine": src}, output_dir=tmp_path / "out")
    with run_context(RunContext(datasets=ds)):
        out = DatasetAction({"dataset": "mine"}).execute()
    assert out == {"rows": 20, "batches": 3}
    table = pq.read_table(ds.sinks["predictions"].path)
    assert table.column("y").to_pylist() == [2 * i for i in range(20)]
    assert ds.sinks["predictions"].committed == 20


def _batch_progress(sink: RecordingSink) -> list[tuple[int, int]]:
    return [
        (e.current, e.total)
        for e in sink.events
        if isinstance(e, ProgressEvent) and e.category == "batch"
    ]


def test_map_batches_reports_the_first_batch_then_at_most_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2,000 one-row batches, far more than ten a second: the first is reported at once (a
    # progress bar moves, a canceller sees the run under way), the run's end always, and in
    # between no two reports closer than the interval.
    src = _parquet(tmp_path / "in.parquet", 2000)
    ds = LocalDatasets({"mine": src}, output_dir=tmp_path / "out")
    sink = RecordingSink()
    times: list[float] = []
    real_emit = sink.emit

    def emit(event: Any) -> None:
        if isinstance(event, ProgressEvent) and event.category == "batch":
            times.append(time.monotonic())
        real_emit(event)

    monkeypatch.setattr(sink, "emit", emit)
    with run_context(RunContext(datasets=ds, sink=sink)):
        out = DatasetAction({"dataset": "mine", "batch_size": 1}).execute()
    assert out == {"rows": 2000, "batches": 2000}
    reports = _batch_progress(sink)
    assert reports[0] == (1, 2000) and reports[-1] == (2000, 2000)
    assert len(reports) < 2000 and [c for c, _ in reports] == sorted({c for c, _ in reports})
    # Every gap but the last (the run's end is reported whatever the interval). Timed at the
    # sink, a little after the throttle's own clock: a thread switch may shave a few ms.
    gaps = [b - a for a, b in itertools.pairwise(times[:-1])]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_map_batches_reports_every_batch_of_a_slow_run(tmp_path: Path) -> None:
    # Batches slower than the interval are each reported, in order, ending at every row.
    src = _parquet(tmp_path / "in.parquet", 20)
    ds = LocalDatasets({"mine": src}, output_dir=tmp_path / "out")
    sink = RecordingSink()

    class Slow(Doubler):
        def __call__(self, batch: Any) -> dict[str, Any]:
            time.sleep(0.12)
            return super().__call__(batch)

    class SlowAction(DatasetAction):
        def execute(self) -> Any:
            result = self.map_batches(
                dataset=self.params.dataset, predictor=Slow, batch_size=8, columns=["x"]
            )
            return {"rows": result.rows}

    with run_context(RunContext(datasets=ds, sink=sink)):
        assert SlowAction({"dataset": "mine"}).execute() == {"rows": 20}
    assert _batch_progress(sink) == [(8, 20), (16, 20), (20, 20)]


def test_map_batches_reports_a_total_once_when_the_dataset_said_too_few_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dataset's stored row count is lower than the rows the file holds: progress stops
    # at that total, reported once, not once per remaining batch.
    src = _parquet(tmp_path / "in.parquet", 500)
    ds = LocalDatasets({"mine": src}, output_dir=tmp_path / "out")
    real = ds.resolve

    def resolve(ref: str) -> Any:
        return dataclasses.replace(real(ref), num_rows=100)

    monkeypatch.setattr(ds, "resolve", resolve)
    sink = RecordingSink()
    with run_context(RunContext(datasets=ds, sink=sink)):
        out = DatasetAction({"dataset": "mine", "batch_size": 1}).execute()
    assert out == {"rows": 500, "batches": 500}
    reports = _batch_progress(sink)
    assert reports[-1] == (100, 100) and reports.count((100, 100)) == 1, reports


def test_map_batches_without_resolver_is_a_clear_error() -> None:
    with run_context(RunContext()), pytest.raises(DatasetsUnavailableError, match="resolver"):
        DatasetAction({"dataset": "x"}).execute()


def test_dataset_ref_json_schema_hint() -> None:
    schema = Params.model_json_schema()
    assert schema["properties"]["dataset"]["format"] == "synapse-dataset"
