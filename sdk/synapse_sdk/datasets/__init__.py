"""Batch inference over datasets: types, the local runner and the run-context hook.

Actions call ``self.map_batches(...)`` (on ``BaseInferenceAction``); the platform resolves the
``DatasetRef`` param to a :class:`DatasetSource`, opens :class:`OutputSink` s for job outputs
and picks the :class:`BatchRunner` (:class:`LocalBatchRunner` unless the worker installs one).
"""

from typing import TYPE_CHECKING

from synapse_sdk.datasets._resolver import (
    DatasetNotFoundError,
    DatasetResolver,
    DatasetsUnavailableError,
    LocalDatasets,
    LocalOutputSink,
)
from synapse_sdk.datasets._types import (
    BatchFormat,
    BatchResult,
    BatchRunner,
    BatchSpec,
    DatasetFormat,
    DatasetRef,
    DatasetSource,
    OutputSink,
)

if TYPE_CHECKING:
    from synapse_sdk.datasets._local import (
        DatasetReadError,
        LocalBatchRunner,
        PredictorOutputError,
        build_output_batch,
        convert_batch,
    )
    from synapse_sdk.datasets._pipeline import RowGroupWriter


def __getattr__(name: str) -> object:
    # LocalBatchRunner needs pyarrow; import it on first use so the types stay import-light.
    # convert_batch, build_output_batch and RowGroupWriter: for other runners (Ray Data)
    # whose output must be identical to the local runner's.
    if name in (
        "LocalBatchRunner",
        "PredictorOutputError",
        "DatasetReadError",
        "build_output_batch",
        "convert_batch",
    ):
        from synapse_sdk.datasets import _local

        return getattr(_local, name)
    if name == "RowGroupWriter":
        from synapse_sdk.datasets import _pipeline

        return _pipeline.RowGroupWriter
    raise AttributeError(f"module 'synapse_sdk.datasets' has no attribute {name!r}")


__all__ = [
    "BatchFormat",
    "BatchResult",
    "BatchRunner",
    "BatchSpec",
    "DatasetFormat",
    "DatasetNotFoundError",
    "DatasetReadError",
    "DatasetRef",
    "DatasetResolver",
    "DatasetSource",
    "DatasetsUnavailableError",
    "LocalBatchRunner",
    "LocalDatasets",
    "LocalOutputSink",
    "OutputSink",
    "PredictorOutputError",
    "RowGroupWriter",
    "build_output_batch",
    "convert_batch",
]
