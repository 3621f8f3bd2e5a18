"""The local batch runner's read-ahead and write-behind threads: order, bounds, row groups,
and every way a run can end (an error on either side, a cancel) ends both threads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synapse_sdk.datasets import (
    BatchSpec,
    DatasetReadError,
    DatasetSource,
    LocalBatchRunner,
    LocalDatasets,
    LocalOutputSink,
)
from synapse_sdk.datasets._pipeline import ReadAhead, RowGroupWriter, dictionary_columns
from synapse_sdk.errors import ActionCancelledError

pytestmark = pytest.mark.timeout(60)


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("synapse-")]


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while _pipeline_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _pipeline_threads() == []


class Doubler:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"y": batch["x"] * 2}


class FailsAt:
    """Raises at its ``at``-th batch."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError(f"predictor failed at batch {self.at}")
        return {"y": batch["x"] * 2}


class TypeFlip:
    """A float column for the first batches, then strings: the file's schema breaks."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        self.calls += 1
        if self.calls < 3:
            return {"y": batch["x"] * 2.0}
        return {"y": [str(v) for v in batch["x"]]}


def _spec(tmp_path: Path, source: Path, predictor: Any, **kw: Any) -> tuple[BatchSpec, Any]:
    datasets = LocalDatasets({"d": source}, output_dir=tmp_path / "out")
    sink = datasets.open_sink("predictions")
    spec = BatchSpec(
        source=datasets.resolve("d"),
        sink=sink,
        predictor=predictor,
        predictor_kwargs=kw.pop("predictor_kwargs", {}),
        carry_columns=("id",),
        columns=("x",),
        **kw,
    )
    return spec, sink


def _parquet(path: Path, n: int) -> Path:
    pq.write_table(pa.table({"id": np.arange(n), "x": np.arange(n) * 1.5}), path)
    return path


def test_rows_keep_their_order_in_row_groups_of_the_set_size(tmp_path: Path) -> None:
    spec, sink = _spec(tmp_path, _parquet(tmp_path / "in.parquet", 1000), Doubler, batch_size=7)
    done: list[int] = []
    result = LocalBatchRunner(row_group_rows=100).run(spec, done.append, lambda: False)
    assert (result.rows, result.batches) == (1000, 143)
    assert done[-1] == 1000 and done == sorted(done)
    table = pq.read_table(sink.path)
    assert table.column("id").to_pylist() == list(range(1000))
    assert table.column("y").to_pylist() == [i * 3.0 for i in range(1000)]
    # 15 batches of 7 reach the 100 rows of a row group: 9 groups of 105, then 55.
    metadata = pq.ParquetFile(sink.path).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [105] * 9 + [55]
    assert sink.committed == 1000


def test_a_predictor_error_stops_both_threads_and_commits_nothing(tmp_path: Path) -> None:
    spec, sink = _spec(
        tmp_path,
        _parquet(tmp_path / "in.parquet", 500),
        FailsAt,
        predictor_kwargs={"at": 5},
        batch_size=10,
    )
    with pytest.raises(RuntimeError, match="predictor failed at batch 5"):
        LocalBatchRunner().run(spec, lambda done: None, lambda: False)
    assert sink.committed is None


def test_a_read_error_reaches_the_caller_as_itself(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [f'{{"id": {i}, "x": {i}.0}}' for i in range(40)] + ["{not json"]
    source.write_text("\n".join(lines) + "\n")
    # Described by hand: resolving it would read (and refuse) the whole file first.
    sink = LocalOutputSink("predictions", str(tmp_path / "out.parquet"))
    described = DatasetSource("d", str(source), "jsonl", 41, ("id", "x"))
    spec = BatchSpec(source=described, sink=sink, predictor=Doubler, batch_size=8, columns=("x",))
    done: list[int] = []
    with pytest.raises(DatasetReadError, match="line 41 is not JSON"):
        LocalBatchRunner().run(spec, done.append, lambda: False)
    assert done == [8, 16, 24, 32, 40] and sink.committed is None


@pytest.mark.parametrize("row_group_rows", [10, 65_536], ids=["mid-run", "at-the-last-flush"])
def test_a_write_error_reaches_the_caller_and_the_run_ends(
    tmp_path: Path, row_group_rows: int
) -> None:
    spec, sink = _spec(tmp_path, _parquet(tmp_path / "in.parquet", 2000), TypeFlip, batch_size=10)
    # Row groups of 10 rows: the schema break is written (and refused) while the run goes on;
    # of 65,536: only the last flush, after the last batch, meets it.
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError), match=r"(?i)schema"):
        LocalBatchRunner(row_group_rows=row_group_rows).run(spec, lambda done: None, lambda: False)
    assert sink.committed is None


def test_a_cancel_stops_the_run_at_the_next_batch(tmp_path: Path) -> None:
    spec, sink = _spec(tmp_path, _parquet(tmp_path / "in.parquet", 5000), Doubler, batch_size=10)
    done: list[int] = []
    with pytest.raises(ActionCancelledError):
        LocalBatchRunner().run(spec, done.append, lambda: len(done) >= 3)
    assert done == [10, 20, 30] and sink.committed is None


def test_an_empty_dataset_gives_an_empty_readable_output(tmp_path: Path) -> None:
    spec, sink = _spec(tmp_path, _parquet(tmp_path / "in.parquet", 0), Doubler, batch_size=10)
    result = LocalBatchRunner().run(spec, lambda done: None, lambda: False)
    assert result.rows == 0 and pq.read_table(sink.path).num_rows == 0


def test_the_read_ahead_stays_within_its_depth() -> None:
    produced: list[int] = []

    def produce() -> Iterator[int]:
        for i in range(50):
            produced.append(i)
            yield i

    consumed = 0
    with ReadAhead(produce, depth=2) as items:
        for _ in items:
            consumed += 1
            time.sleep(0.005)
            # The queue holds 2, and the producer may hold one more it cannot put yet.
            assert len(produced) - consumed <= 3
    assert consumed == 50


def test_leaving_a_read_ahead_early_stops_its_producer() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    with ReadAhead(endless, depth=2) as items:
        for item in items:
            if item == 3:
                break


def test_row_groups_also_end_at_their_byte_bound(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    writer = RowGroupWriter(str(path), row_group_rows=1_000_000, row_group_bytes=64 << 10)
    # 32 KiB a batch: every second batch closes a row group.
    for start in range(0, 80, 8):
        block = np.full((8, 1024), start, dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), 1024)
        writer.write(pa.RecordBatch.from_arrays([column], names=["v"]))
    writer.close(pa.schema([]))
    metadata = pq.ParquetFile(path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [16] * 5


def test_warm_up_imports_what_a_first_conversion_would_and_starts_no_thread() -> None:
    code = (
        "import os, sys\n"
        "from synapse_sdk.datasets import _local\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "_local.warm_up()\n"
        "assert len(os.listdir('/proc/self/task')) == before, 'a thread started'\n"
        "import pyarrow as pa\n"
        "loaded = set(sys.modules)\n"
        "_local.convert_batch(pa.RecordBatch.from_pydict({'x': [1.0, 2.0]}), 'numpy')\n"
        "print(sorted(set(sys.modules) - loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_floating_point_columns_are_written_without_a_dictionary(tmp_path: Path) -> None:
    n = 1000
    batch = pa.RecordBatch.from_pydict(
        {
            "id": pa.array(np.arange(n)),
            "label": pa.array(["cat", "dog"] * (n // 2)),
            "score": pa.array(np.linspace(0, 1, n), pa.float64()),
            "half": pa.array(np.ones(n, dtype=np.float16)),
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(np.zeros(2 * n, dtype=np.float32)), 2
            ),
            "tags": pa.array([["a", "b"]] * n, pa.list_(pa.string())),
            "pair": pa.array([{"x": 1.5, "name": "p"}] * n),
            "attrs": pa.array([[("k", 0.5)]] * n, pa.map_(pa.string(), pa.float32())),
            "counts": pa.array([[1, 2]] * n, pa.large_list(pa.int64())),
            "boxes": pa.array(
                [[{"x": 1, "y": 0.5}]] * n,
                pa.list_(pa.struct([("x", pa.int32()), ("y", pa.float64())])),
            ),
            "kind": pa.array(["a", "b"] * (n // 2)).dictionary_encode(),
            "uuid": pa.ExtensionArray.from_storage(
                pa.uuid(), pa.array([b"0123456789abcdef"] * n, pa.binary(16))
            ),
            "tensor": pa.ExtensionArray.from_storage(
                pa.fixed_shape_tensor(pa.float32(), [2]),
                pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * n, np.float32)), 2),
            ),
            "view": pa.array([[1, 2]] * n, pa.list_view(pa.int32())),
        }
    )
    assert dictionary_columns(batch.schema) == [
        "id",
        "label",
        "tags.list.element",
        "pair.name",
        "attrs.key_value.key",
        "counts.list.element",
        "boxes.list.element.x",
        "kind",
        "uuid",
        "view.list.element",
    ]
    writer = RowGroupWriter(str(tmp_path / "out.parquet"))
    writer.write(batch)
    writer.close(batch.schema)
    file = pq.ParquetFile(tmp_path / "out.parquet")
    group = file.metadata.row_group(0)
    encodings = {
        group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)
    }
    # The paths named are the file's own (a wrong one would silently lose its dictionary).
    assert set(dictionary_columns(batch.schema)) < set(encodings)
    for path, used in encodings.items():
        dictionary = "RLE_DICTIONARY" in used or "PLAIN_DICTIONARY" in used
        assert dictionary == (path in dictionary_columns(batch.schema)), path
    assert file.read().equals(pa.Table.from_batches([batch]))
