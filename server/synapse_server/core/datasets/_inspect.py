"""Reading a dataset file's schema at upload, and refusing a file that is not what it claims.

Each reader streams the file: Parquet through its footer and then its row groups batch by
batch (a file whose pages do not decode is refused now, not in the middle of a job), JSON
Lines line by line, ``.npy`` from its header and size alone. Memory stays bounded by one
batch whatever the file's size.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from synapse_server.core._errors import InvalidArgumentError
from synapse_server.core.datasets._records import DatasetColumn, DatasetFormat

__all__ = ["DatasetFormatError", "DatasetSchema", "inspect_dataset"]

#: The longest JSON Lines line read (a longer one is refused rather than held whole).
MAX_JSONL_LINE_BYTES = 16 * 1024 * 1024
#: JSON Lines rows converted to Arrow at a time while checking their types.
_JSONL_BATCH_ROWS = 4096
#: Parquet rows decoded at a time while checking the file.
_PARQUET_BATCH_ROWS = 65536
#: How much of a reader's own message an error quotes.
_DETAIL_CHARS = 200
#: At most this many columns are kept in the schema of a record (names beyond are cut).
MAX_COLUMNS = 10_000


class DatasetFormatError(InvalidArgumentError):
    """The file is not a valid dataset of its declared format (INVALID_ARGUMENT)."""


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _DETAIL_CHARS:
        text = text[:_DETAIL_CHARS] + "..."
    return text


DatasetSchema = tuple[int, tuple[DatasetColumn, ...]]


def inspect_dataset(path: Path, fmt: DatasetFormat) -> DatasetSchema:
    """``(num_rows, columns)`` of the file at ``path`` read as ``fmt``.

    Raises :class:`DatasetFormatError` naming the problem when the file is not a readable
    dataset of that format.
    """
    if fmt is DatasetFormat.PARQUET:
        rows, columns = _inspect_parquet(path)
    elif fmt is DatasetFormat.JSONL:
        rows, columns = _inspect_jsonl(path)
    elif fmt is DatasetFormat.NPY:
        rows, columns = _inspect_npy(path)
    else:  # pragma: no cover - DatasetFormat has no other member
        raise DatasetFormatError(f"unsupported dataset format {fmt!r}")
    if not columns:
        raise DatasetFormatError(f"the {fmt.value} file has no columns")
    if len(columns) > MAX_COLUMNS:
        raise DatasetFormatError(f"the {fmt.value} file has more than {MAX_COLUMNS} columns")
    return rows, columns


def _inspect_parquet(path: Path) -> DatasetSchema:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        rows = parquet.metadata.num_rows
        decoded = 0
        # Every page is decoded once, a batch at a time: a damaged page fails the upload.
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            decoded += batch.num_rows
    except Exception as exc:
        # Whatever the reader raises on these bytes (pyarrow's errors, and the odd
        # IndexError or OSError of a damaged footer), the file is what is wrong.
        raise DatasetFormatError(f"not a valid Parquet file: {_detail(exc)}") from None
    if decoded != rows:
        raise DatasetFormatError(
            f"not a valid Parquet file: its footer says {rows} rows, its pages hold {decoded}"
        )
    return rows, tuple(DatasetColumn(f.name, str(f.type)) for f in schema)


def _inspect_jsonl(path: Path) -> DatasetSchema:
    import pyarrow as pa

    rows = 0
    lineno = 0
    names: dict[str, None] = {}
    pending: list[dict[str, object]] = []
    schema: pa.Schema | None = None

    def flush() -> None:
        nonlocal schema, pending
        first = lineno - len(pending) + 1
        try:
            batch_schema = pa.RecordBatch.from_pylist(pending).schema
            schema = (
                batch_schema
                if schema is None
                else pa.unify_schemas([schema, batch_schema], promote_options="permissive")
            )
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise DatasetFormatError(
                f"JSON Lines rows near lines {first}-{lineno} do not convert to typed "
                f"columns: {_detail(exc)}"
            ) from None
        pending = []

    with open(path, "rb") as fh:
        while True:
            raw = fh.readline(MAX_JSONL_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            if len(raw) > MAX_JSONL_LINE_BYTES:
                raise DatasetFormatError(
                    f"JSON Lines line {lineno} is longer than {MAX_JSONL_LINE_BYTES} bytes"
                )
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise DatasetFormatError(
                    f"not a valid JSON Lines file: line {lineno} is not JSON ({msg})"
                ) from None
            except RecursionError:
                raise DatasetFormatError(
                    f"not a valid JSON Lines file: line {lineno} is nested too deeply"
                ) from None
            if not isinstance(row, dict):
                raise DatasetFormatError(
                    f"not a valid JSON Lines file: line {lineno} is a JSON "
                    f"{type(row).__name__}, not an object"
                )
            rows += 1
            names.update(dict.fromkeys(row))
            pending.append(row)
            if len(pending) == _JSONL_BATCH_ROWS:
                flush()
    if pending:
        flush()
    if rows == 0:
        raise DatasetFormatError("the JSON Lines file has no rows (only blank lines)")
    assert schema is not None
    types = {f.name: str(f.type) for f in schema}
    return rows, tuple(DatasetColumn(name, types.get(name, "null")) for name in names)


def _inspect_npy(path: Path) -> DatasetSchema:
    import numpy as np
    import pyarrow as pa

    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise DatasetFormatError(
                    f"unsupported .npy format version {version[0]}.{version[1]} (1.0 and 2.0 "
                    "are supported)"
                )
            offset = fh.tell()
    except DatasetFormatError:
        raise
    except Exception as exc:
        # numpy parses the (at most 10 kB) header as a Python literal: a damaged one fails
        # with whatever the tokenizer or literal_eval raises (TokenError, SyntaxError, ...).
        raise DatasetFormatError(f"not a valid .npy file: {_detail(exc)}") from None
    if dtype.hasobject:
        raise DatasetFormatError("the .npy array holds Python objects (pickles are refused)")
    if dtype.names is not None or dtype.subdtype is not None:
        raise DatasetFormatError("the .npy array has a structured dtype (not supported)")
    if len(shape) == 0:
        raise DatasetFormatError("the .npy array is 0-dimensional: it has no rows")
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = os.path.getsize(path)
    if actual != expected:
        raise DatasetFormatError(
            f"not a valid .npy file: its header describes {expected} bytes, the file has {actual}"
        )
    try:
        item = pa.from_numpy_dtype(dtype)
    except (pa.ArrowException, TypeError, ValueError):
        raise DatasetFormatError(f"the .npy dtype {dtype.str} has no Arrow equivalent") from None
    width = math.prod(shape[1:])
    column_type = item if len(shape) == 1 else pa.list_(item, width)
    return int(shape[0]), (DatasetColumn("data", str(column_type)),)
