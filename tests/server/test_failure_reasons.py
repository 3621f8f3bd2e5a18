"""Every FAILED job says why: the terminal event's reason and the job's reason, on every path.

The job service is built from its real parts (SQLite store, event hub, plugin catalog,
credentials); only the executors are stand-ins, so that each way a worker can end (a signal,
an exit code, an executor that raises, a mode gone after a restart) is reached directly.
Real workers ending the same ways are covered end to end in test_server_actions and, on a
Ray cluster, in tests/ray_modes.
"""

from __future__ import annotations

import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
from synapse_server.core import EventHub, EventKind, Job, JobState
from synapse_server.core._catalog import PluginCatalog
from synapse_server.core._credentials import WorkerCredentialIssuer
from synapse_server.core._executor import WorkerExit
from synapse_server.core._jobs import JobService
from synapse_server.core._plugin_code import PluginCodeStore
from synapse_server.stores import SqliteJobStore

TOY = Path(__file__).parent.parent / "plugins"

pytestmark = pytest.mark.timeout(60)


class _EndingExecutor:
    """Ends every worker the same way without running anything."""

    def __init__(self, outcome: WorkerExit | Exception) -> None:
        self._outcome = outcome

    async def run(self, job: Job, credential: str, trace_context: Any = None) -> WorkerExit:
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome

    async def kill(self, job_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def _service(tmp_path: Path, executors: dict[str, Any]) -> tuple[JobService, Any]:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    catalog = PluginCatalog(
        [TOY], ("local", "task"), code_store=PluginCodeStore(tmp_path / "plugins")
    )
    catalog.reload()
    issuer = WorkerCredentialIssuer(secrets.token_bytes(32))
    return JobService(store, EventHub(store), catalog, executors, issuer), store


async def _terminal(service: JobService, job_id: str) -> tuple[dict[str, Any], Job]:
    events = [e async for e in await service.subscribe(None, job_id)]
    last = events[-1]
    assert last.kind is EventKind.TERMINAL
    return last.data, await service.get(None, job_id)


@pytest.mark.parametrize(
    ("outcome", "needle"),
    [
        (WorkerExit(signal=signal.SIGSEGV), "SIGSEGV"),
        (WorkerExit(signal=signal.SIGKILL), "SIGKILL"),
        (WorkerExit(exit_code=3), "code 3"),
        (WorkerExit(detail="the Ray node running the worker died"), "node"),
        (RuntimeError("boom"), "could not run the job"),
    ],
    ids=["segfault", "killed", "exit-code", "detail", "executor-raises"],
)
async def test_a_worker_that_ends_without_a_result_fails_with_a_reason(
    tmp_path: Path, outcome: WorkerExit | Exception, needle: str
) -> None:
    service, store = await _service(tmp_path, {"local": _EndingExecutor(outcome)})
    try:
        job, _ = await service.submit("t", "toy", "quick", '{"count": 1, "label": "x"}')
        data, stored = await _terminal(service, job.id)
        assert data["state"] == "FAILED"
        assert needle in data["error"]["message"], data
        # The reason is the failure's message, in the event and in the job record alike.
        assert data["reason"] == data["error"]["message"]
        assert stored.state is JobState.FAILED and stored.reason == data["reason"]
    finally:
        await service.close()
        await store.close()


async def test_a_pending_job_whose_mode_is_gone_after_a_restart_fails_with_a_reason(
    tmp_path: Path,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    await store.create_job(Job(id="j1", tenant="t", plugin="toy", action="quick", mode="task"))
    await store.close()
    service, store = await _service(tmp_path, {"local": _EndingExecutor(WorkerExit(0))})
    try:
        await service.recover()
        data, stored = await _terminal(service, "j1")
        assert data["error"]["type"] == "ExecutorUnavailable"
        assert "task" in data["reason"] and data["reason"] == data["error"]["message"]
        assert stored.reason == data["reason"]
    finally:
        await service.close()
        await store.close()
