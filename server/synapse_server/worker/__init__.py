"""The worker that runs one job's action and reports to the server (local or remote)."""

from synapse_server.worker._runner import WorkerError, run_worker

__all__ = ["WorkerError", "run_worker"]
