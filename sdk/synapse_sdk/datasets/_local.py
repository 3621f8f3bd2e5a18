"""``LocalBatchRunner``: streams a dataset through a predictor in one process with pyarrow."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synapse_sdk.datasets._pipeline import ROW_GROUP_ROWS, ReadAhead, RowGroupWriter
from synapse_sdk.datasets._types import BatchFormat, BatchResult, BatchSpec, DatasetSource
from synapse_sdk.errors import ActionCancelledError

__all__ = [
    "DatasetReadError",
    "LocalBatchRunner",
    "PredictorOutputError",
    "iter_batches",
    "warm_up",
]


class DatasetReadError(ValueError):
    """The dataset file cannot be read as its declared format."""


class PredictorOutputError(ValueError):
    """The predictor returned something that is not one column per name, one value per row."""


def _iter_jsonl(path: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    # Read line by line so only one batch of rows is ever held, whatever the file size.
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetReadError(f"{path}: line {lineno} is not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetReadError(f"{path}: line {lineno} is not a JSON object")
            rows.append(row)
            if len(rows) == batch_size:
                yield pa.RecordBatch.from_pylist(rows)
                rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows)


def _iter_npy(path: str, batch_size: int) -> Iterator[pa.RecordBatch]:
    # mmap: slices are paged in on demand, so a file larger than memory is fine.
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim == 0:
        raise DatasetReadError(f"{path}: a 0-d array has no rows")
    for start in range(0, arr.shape[0], batch_size):
        chunk = np.ascontiguousarray(arr[start : start + batch_size])
        if chunk.ndim == 1:
            col = pa.array(chunk)
        else:
            flat = chunk.reshape(chunk.shape[0], -1)
            col = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        yield pa.RecordBatch.from_arrays([col], names=["data"])


def iter_batches(
    source: DatasetSource, batch_size: int, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Yield the source's rows in order as record batches of at most ``batch_size`` rows."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if source.format == "parquet":
        try:
            pf = pq.ParquetFile(source.path, memory_map=True)
        except pa.ArrowInvalid as exc:
            raise DatasetReadError(f"{source.path}: not a Parquet file ({exc})") from None
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
        return
    if source.format == "jsonl":
        it = _iter_jsonl(source.path, batch_size)
    elif source.format == "npy":
        it = _iter_npy(source.path, batch_size)
    else:
        raise DatasetReadError(f"unsupported dataset format {source.format!r}")
    for batch in it:
        yield batch.select(columns) if columns is not None else batch


def _column_to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        rows = len(col)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(rows, -1) if rows else flat.reshape(0, 0)
    return col.to_numpy(zero_copy_only=False)


def convert_batch(batch: pa.RecordBatch, fmt: BatchFormat) -> Any:
    """Convert a record batch to what a predictor of batch format ``fmt`` receives."""
    if fmt == "pyarrow":
        return batch
    if fmt == "dicts":
        return batch.to_pylist()
    arrays = {name: _column_to_numpy(batch.column(i)) for i, name in enumerate(batch.schema.names)}
    if fmt == "numpy":
        return arrays
    if fmt == "torch":
        import torch  # lazy: torch is optional and slow to import

        # Arrow buffers are read-only; torch warns on (and must not write into) them.
        return {
            k: v if v.dtype == object else torch.as_tensor(v if v.flags.writeable else v.copy())
            for k, v in arrays.items()
        }
    raise ValueError(f"unknown batch_format {fmt!r}; expected numpy, torch, pyarrow or dicts")


def _output_to_arrow(value: Any, name: str, rows: int) -> pa.Array:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if not isinstance(value, pa.Array):
        arr = np.asarray(value)
        if arr.ndim == 0:
            raise PredictorOutputError(f"output column {name!r} is a scalar, not one value per row")
        if arr.ndim > 1:
            flat = arr.reshape(arr.shape[0], -1)
            value = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        else:
            value = pa.array(arr)
    if len(value) != rows:
        raise PredictorOutputError(
            f"output column {name!r} has {len(value)} rows for an input batch of {rows}; "
            "the predictor must return one value per input row"
        )
    return value


def build_output_batch(batch: pa.RecordBatch, carry: tuple[str, ...], out: Any) -> pa.RecordBatch:
    """The output rows of one batch: ``carry`` columns of the input, then the predictor's."""
    if not isinstance(out, Mapping):
        raise PredictorOutputError(
            "the predictor must return a mapping of column name to values, "
            f"got {type(out).__name__}"
        )
    names: list[str] = []
    arrays: list[pa.Array] = []
    for c in carry:
        names.append(c)
        arrays.append(batch.column(c))
    for key, value in out.items():
        key = str(key)
        if key in names:
            raise PredictorOutputError(f"output column {key!r} clashes with a carried column")
        names.append(key)
        arrays.append(_output_to_arrow(value, key, batch.num_rows))
    return pa.RecordBatch.from_arrays(arrays, names=names)


class LocalBatchRunner:
    """A :class:`~synapse_sdk.datasets.BatchRunner` in this process, pyarrow only.

    Reads the source in ``batch_size`` slices (Parquet ``iter_batches``, JSON Lines line by
    line, ``.npy`` through a memory map) and converts them to the predictor's format in a
    thread ahead of the predictor, and writes the finished batches to the sink in a thread
    behind it, in row groups of up to ``row_group_rows`` rows (see ``_pipeline``). Memory
    stays bounded by a few batches and one row group; the output keeps the input's order.
    """

    def __init__(self, *, read_ahead: int = 1, row_group_rows: int = ROW_GROUP_ROWS) -> None:
        self.read_ahead = read_ahead
        self.row_group_rows = row_group_rows

    def run(
        self,
        spec: BatchSpec,
        on_batch: Callable[[int], None],
        is_cancelled: Callable[[], bool],
    ) -> BatchResult:
        """Run ``spec``; raise ``ActionCancelledError`` once ``is_cancelled()`` is true."""
        if spec.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {spec.batch_size!r}")
        missing = [
            c for c in (*(spec.columns or ()), *spec.carry_columns) if c not in spec.source.columns
        ]
        if missing:
            raise ValueError(
                f"columns {missing[:10]} are not in dataset {spec.source.dataset_id} "
                f"(columns: {list(spec.source.columns)[:50]})"
            )
        wanted: list[str] | None = None
        if spec.columns is not None:
            wanted = list(dict.fromkeys((*spec.columns, *spec.carry_columns)))
        predictor = spec.predictor(**dict(spec.predictor_kwargs))

        def read() -> Iterator[tuple[pa.RecordBatch, Any]]:
            for batch in iter_batches(spec.source, spec.batch_size, wanted):
                feed = batch.select(list(spec.columns)) if spec.columns is not None else batch
                yield batch, convert_batch(feed, spec.batch_format)

        rows = batches = 0
        writer = RowGroupWriter(spec.sink.path, row_group_rows=self.row_group_rows)
        try:
            with ReadAhead(read, depth=self.read_ahead) as inputs:
                for batch, feed in inputs:
                    if is_cancelled():
                        raise ActionCancelledError("batch run cancelled")
                    writer.write(build_output_batch(batch, spec.carry_columns, predictor(feed)))
                    rows += batch.num_rows
                    batches += 1
                    on_batch(rows)
        except BaseException:
            writer.abort()
            raise
        # An empty dataset still yields a readable (empty) output file.
        writer.close(pa.schema([(c, pa.null()) for c in spec.carry_columns]))
        spec.sink.commit(rows)
        return BatchResult(output=spec.sink.name, rows=rows, batches=batches)


def warm_up() -> None:
    """Run the batch conversions once on a tiny batch.

    pyarrow imports pandas at its first ``to_numpy`` (0.4 to 0.7 s); a process that forks
    jobs (the fork server) calls this once so that no job pays it. Starts no thread.
    """
    ids = pa.array(np.arange(2, dtype=np.int64))
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4, dtype=np.float32)), 2)
    batch = pa.RecordBatch.from_arrays([ids, vectors], names=["id", "x"])
    for fmt in ("numpy", "dicts", "pyarrow"):
        convert_batch(batch, fmt)  # type: ignore[arg-type]
    build_output_batch(batch, ("id",), {"y": np.zeros((2, 2), dtype=np.float32)})
