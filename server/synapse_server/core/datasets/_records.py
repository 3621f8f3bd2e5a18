"""Domain records of the dataset registry: uploaded datasets and job outputs."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "DATASET_ID_PREFIX",
    "DatasetColumn",
    "DatasetFormat",
    "DatasetPage",
    "DatasetRecord",
    "DatasetUploadSpec",
    "new_dataset_id",
]

#: Every dataset id starts with this (names may not, so a reference is never ambiguous).
DATASET_ID_PREFIX = "ds-"


def new_dataset_id() -> str:
    """A fresh dataset id: ``ds-`` and 24 random hex digits."""
    return DATASET_ID_PREFIX + secrets.token_hex(12)


class DatasetFormat(StrEnum):
    """The file formats a dataset may have (the SDK's ``DatasetFormat`` values)."""

    PARQUET = "parquet"
    JSONL = "jsonl"
    NPY = "npy"


@dataclass(frozen=True, slots=True)
class DatasetColumn:
    """One column of a dataset's schema; ``type`` in Arrow notation."""

    name: str
    type: str


@dataclass(frozen=True)
class DatasetUploadSpec:
    """What a caller says about a file it is about to upload."""

    name: str
    format: DatasetFormat = DatasetFormat.PARQUET
    expected_sha256: str = ""


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset of one tenant: its schema and the artifact it points to.

    ``job_id`` is set for a job output; ``committed`` is False while such an output is
    staged (its job has not succeeded yet): only committed datasets are visible.
    """

    id: str
    tenant: str
    name: str
    format: DatasetFormat
    sha256: str
    size_bytes: int
    num_rows: int
    columns: tuple[DatasetColumn, ...]
    created_at: float = field(default_factory=time.time)
    job_id: str = ""
    committed: bool = True


@dataclass(frozen=True)
class DatasetPage:
    """One page of a dataset listing, newest first."""

    datasets: list[DatasetRecord]
    next_page_token: str = ""
