"""How the run context resolves datasets and opens output sinks, plus a local implementation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from synapse_sdk.datasets._types import DatasetFormat, DatasetSource, OutputSink

__all__ = [
    "DatasetNotFoundError",
    "DatasetResolver",
    "DatasetsUnavailableError",
    "LocalDatasets",
    "LocalOutputSink",
]


class DatasetNotFoundError(LookupError):
    """A dataset reference names no dataset the run may read (none of that id or name in the
    job's tenant; another tenant's dataset is reported the same)."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        shown = ref if len(ref) <= 64 else ref[:64] + "..."
        super().__init__(f"dataset {shown!r} not found")


# A job that fails with it names it by its public path (synapse_sdk.datasets.DatasetNotFoundError).
DatasetNotFoundError.__module__ = "synapse_sdk.datasets"


class DatasetsUnavailableError(RuntimeError):
    """``map_batches`` ran where no dataset resolver is installed in the run context."""

    def __init__(self) -> None:
        super().__init__(
            "map_batches needs a dataset resolver in the run context: run the action as a "
            "platform job (synapse jobs submit) or install one, e.g. "
            "RunContext(datasets=LocalDatasets({...}, output_dir=...))"
        )


class DatasetResolver(Protocol):
    """Installed in :class:`~synapse_sdk.runtime.RunContext` by whoever runs the action."""

    def resolve(self, ref: str) -> DatasetSource:
        """The source of dataset ``ref`` (an id or a name in the caller's tenant)."""
        ...

    def open_sink(self, name: str) -> OutputSink:
        """A fresh sink for job output ``name``."""
        ...


_FORMATS: dict[str, DatasetFormat] = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".npy": "npy",
}


def _describe(path: str, fmt: DatasetFormat) -> tuple[int, tuple[str, ...]]:
    # Imported here: pyarrow is only needed once a dataset is actually used.
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return meta.metadata.num_rows, tuple(meta.schema_arrow.names)
    if fmt == "npy":
        import numpy as np

        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return int(arr.shape[0]), ("data",)
    rows = 0
    names: dict[str, None] = {}
    import json

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows += 1
                obj = json.loads(line)
                if isinstance(obj, dict):
                    names.update(dict.fromkeys(obj))
    return rows, tuple(names)


@dataclass
class LocalOutputSink:
    """An output written to a local directory; ``committed`` holds the row count once done."""

    name: str
    path: str
    committed: int | None = None

    def commit(self, num_rows: int) -> None:
        """Mark the file at ``path`` finished."""
        self.committed = num_rows


@dataclass
class LocalDatasets:
    """A :class:`DatasetResolver` over local files, for local runs and tests.

    ``files`` maps a dataset reference to a path; the format comes from the extension.
    Outputs go to ``output_dir/<name>.parquet``.
    """

    files: Mapping[str, str | os.PathLike[str]]
    output_dir: str | os.PathLike[str]
    sinks: dict[str, LocalOutputSink] = field(default_factory=dict)

    def resolve(self, ref: str) -> DatasetSource:
        """The local file registered under ``ref``."""
        if ref not in self.files:
            raise DatasetNotFoundError(ref)
        path = str(self.files[ref])
        fmt = _FORMATS.get(Path(path).suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: unsupported dataset file type (parquet, jsonl, npy)")
        rows, columns = _describe(path, fmt)
        return DatasetSource(dataset_id=ref, path=path, format=fmt, num_rows=rows, columns=columns)

    def open_sink(self, name: str) -> LocalOutputSink:
        """A sink writing ``output_dir/<name>.parquet``."""
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        sink = LocalOutputSink(name=name, path=str(Path(self.output_dir) / f"{name}.parquet"))
        self.sinks[name] = sink
        return sink
