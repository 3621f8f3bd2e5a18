"""The batch runner of a job's ``map_batches``: Ray Data on Ray (task and job modes), else local.

On Ray the job's worker (the child its Ray task or actor supervises) is a driver of the
cluster, so the same action code maps its dataset as a Ray Data pipeline over the cluster
(``synapse_server.ray._data_runner``); in local mode the SDK's ``LocalBatchRunner`` runs it
in the worker itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["RayBatchRunner", "batch_runner_for"]

#: The run modes whose workers run on Ray (``RunContext.mode``).
RAY_MODES = frozenset({"task", "job"})


class RayBatchRunner:
    """A ``BatchRunner`` that runs each ``map_batches`` as a Ray Data pipeline.

    ``plugin_environment`` (job mode): the pool's actors get the plugin's own runtime
    environment, as the job's actor did.
    """

    def __init__(self, *, plugin_environment: bool = False) -> None:
        self.plugin_environment = plugin_environment

    def run(
        self, spec: Any, on_batch: Callable[[int], None], is_cancelled: Callable[[], bool]
    ) -> Any:
        """Run ``spec`` (a ``synapse_sdk.datasets.BatchSpec``) on the cluster."""
        # Imported on first use: the Ray adapters and pyarrow take most of a second to import,
        # and most jobs map no dataset.
        from synapse_server.ray._data_runner import RayDataRunner

        runner = RayDataRunner(plugin_environment=self.plugin_environment)
        return runner.run(spec, on_batch, is_cancelled)


def batch_runner_for(mode: str) -> RayBatchRunner | None:
    """The runner for a job in ``mode`` (``RunContext.mode``); None: the SDK's local one."""
    if mode not in RAY_MODES:
        return None
    return RayBatchRunner(plugin_environment=mode == "job")
