"""The dataset registry: uploaded datasets and job outputs, in the shared artifact store."""

from synapse_server.core.datasets._inspect import DatasetFormatError, inspect_dataset
from synapse_server.core.datasets._records import (
    DATASET_ID_PREFIX,
    DatasetColumn,
    DatasetFormat,
    DatasetPage,
    DatasetRecord,
    DatasetUploadSpec,
    new_dataset_id,
)
from synapse_server.core.datasets._service import (
    DatasetNotFoundError,
    DatasetRegistryLimits,
    DatasetRegistryService,
    check_dataset_name,
)
from synapse_server.core.datasets._store import DatasetStore

__all__ = [
    "DATASET_ID_PREFIX",
    "DatasetColumn",
    "DatasetFormat",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetPage",
    "DatasetRecord",
    "DatasetRegistryLimits",
    "DatasetRegistryService",
    "DatasetStore",
    "DatasetUploadSpec",
    "check_dataset_name",
    "inspect_dataset",
    "new_dataset_id",
]
