"""Dataset files for the tests: valid ones of each format and broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(path: Path, rows: int = 100, *, row_group_size: int | None = None) -> Path:
    """``id`` (int64), ``x`` (double), ``label`` (string) and a 3-wide float ``vec``."""
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "x": ids.astype(np.float64) / 10,
            "label": [f"r{i}" for i in range(rows)],
            "vec": pa.FixedSizeListArray.from_arrays(
                pa.array(np.arange(rows * 3, dtype=np.float32)), 3
            ),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: int = 10) -> Path:
    """``{"id": i, "text": "...", "score": i / 2}`` per line."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": i, "text": f"t{i}", "score": i / 2}) + "\n")
    return path


def write_npy(path: Path, shape: tuple[int, ...] = (20, 3), dtype: str = "float32") -> Path:
    """An array of ``shape`` and ``dtype``."""
    np.save(path, np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape))
    return path


def corrupt_middle(path: Path, out: Path) -> Path:
    """``path`` with its middle third overwritten (footer and magic left intact)."""
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = bytes((b ^ 0x5A) for b in data[third : 2 * third])
    out.write_bytes(bytes(data))
    return out
