"""The dataset types shared by the SDK, the local runner and the platform's runners."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import Field

__all__ = [
    "BatchFormat",
    "BatchResult",
    "BatchRunner",
    "BatchSpec",
    "DatasetFormat",
    "DatasetRef",
    "DatasetSource",
    "OutputSink",
]

#: A dataset id ("ds-...") or a dataset name in the caller's tenant (newest version wins).
DatasetRef = Annotated[
    str,
    Field(min_length=1, max_length=256, json_schema_extra={"format": "synapse-dataset"}),
]

BatchFormat = Literal["numpy", "torch", "pyarrow", "dicts"]
DatasetFormat = Literal["parquet", "jsonl", "npy"]


@dataclass(frozen=True)
class DatasetSource:
    """A dataset as a runner reads it: resolved by the platform, never by plugin code."""

    dataset_id: str
    path: str
    format: DatasetFormat
    num_rows: int
    columns: tuple[str, ...]


class OutputSink(Protocol):
    """Where one job output goes: a Parquet file written incrementally, then committed."""

    name: str
    path: str

    def commit(self, num_rows: int) -> None:
        """Hand the finished file at ``path`` to the store."""
        ...


@dataclass(frozen=True)
class BatchSpec:
    """Everything a :class:`BatchRunner` needs to map a predictor over a dataset."""

    source: DatasetSource
    sink: OutputSink
    predictor: type
    predictor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 1024
    batch_format: BatchFormat = "numpy"
    columns: tuple[str, ...] | None = None
    carry_columns: tuple[str, ...] = ()
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class BatchResult:
    """What a finished batch run wrote."""

    output: str
    rows: int
    batches: int


class BatchRunner(Protocol):
    """Runs a :class:`BatchSpec`: row-aligned output in input order, prompt cancellation."""

    def run(
        self,
        spec: BatchSpec,
        on_batch: Callable[[int], None],
        is_cancelled: Callable[[], bool],
    ) -> BatchResult:
        """Map the predictor over the source and write the sink; return what was written."""
        ...
