"""Several servers on one PostgreSQL database (in-process servers): any server answers for
any job, follows it live, cancels it; a restart recovers only the server's own jobs; the
artifacts directory is shared.

The failover of a server that dies is tested with real processes (test_server_failover.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synapse_client import Client, JobState, LogEvent, NotFoundError, TerminalEvent

from tests._postgres import PostgresCluster
from tests.conftest import RunningServer, make_settings
from tests.models._archives import make_tar

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def shared_url(postgres_cluster: PostgresCluster) -> str:
    return postgres_cluster.database("shared")


def _pair(
    server_factory: Callable[..., RunningServer], url: str, tmp_path: Path, **overrides: object
) -> tuple[RunningServer, RunningServer]:
    common = {
        "database_url": url,
        "artifacts_dir": tmp_path / "artifacts",
        "job_lease_seconds": 3.0,
        "server_secret": "shared-secret-of-the-servers",
        **overrides,
    }
    return server_factory(**common), server_factory(**common)


def test_any_server_answers_for_a_job_another_runs_and_follows_it_live(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        job = on_a.run_action("toy", "chatty", {"events": 200})
        # B streams the job A runs: every event, in order, no gap, ending with its outcome.
        events = list(on_b.job(job.id).events())
        seqs = [event.seq for event in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len([e for e in events if isinstance(e.payload, LogEvent)]) == 20
        assert isinstance(events[-1].payload, TerminalEvent)
        assert on_b.job(job.id).result(timeout=60) == on_a.job(job.id).result(timeout=60)
        seen_b = on_b.get_job(job.id)
        assert seen_b.state is JobState.SUCCEEDED and seen_b.last_seq == seqs[-1]
        assert job.id in {j.id for j in on_b.list_jobs()}
        # Replaying on either server gives the same history.
        assert [e.seq for e in on_a.job(job.id).events()] == seqs


def test_params_warnings_recorded_by_one_server_are_read_by_the_other(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    warning = "unknown params key 'batchsize' (ignored)"
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        handle = on_a.run_action("toy", "quick", {"count": 1, "label": "w", "batchsize": 4})
        assert handle.job is not None and handle.job.warnings == (warning,)
        handle.result(timeout=60)
        assert on_b.get_job(handle.id).warnings == (warning,)
        listed = next(j for j in on_b.list_jobs(plugin="toy") if j.id == handle.id)
        assert listed.warnings == (warning,)


def test_a_cancel_asked_on_another_server_reaches_the_job(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        job = on_a.run_action("toy", "nap", {"seconds": 60})
        events = on_b.job(job.id).events()
        for event in events:  # until the action runs
            if isinstance(event.payload, LogEvent):
                break
        started = time.monotonic()
        cancelled = on_b.cancel_job(job.id, "stopped from b")
        assert cancelled.cancel_requested
        terminal = [e for e in events if isinstance(e.payload, TerminalEvent)]
        assert terminal and terminal[0].payload.state is JobState.CANCELLED
        assert time.monotonic() - started < 30  # not the 60 s nap
        assert on_a.get_job(job.id).state is JobState.CANCELLED


def test_jobs_submitted_to_both_servers_all_run_once(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        handles = [
            (on_a if i % 2 else on_b).run_action("toy", "quick", {"count": 2, "label": str(i)})
            for i in range(16)
        ]
        for handle in handles:
            handle.result(timeout=120)
        for handle in handles:
            events = list(on_a.job(handle.id).events())
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            states = [e.payload.state for e in events if isinstance(e.payload, TerminalEvent)]
            assert states == [JobState.SUCCEEDED]
            running = [e for e in events if "RUNNING" in repr(e.payload)]
            assert len(running) == 1


def test_a_subscriber_on_another_server_gets_every_event_when_notifications_are_lost(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path, remote_poll_seconds=0.2)
    # B hears nothing from the database: only its bounded poll brings A's events.
    b.call(b.server._cluster._notifications.stop())  # type: ignore[union-attr]
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        job = on_a.run_action("toy", "chatty", {"events": 100})
        events: list[object] = []
        reader = threading.Thread(target=lambda: events.extend(on_b.job(job.id).events()))
        reader.start()
        reader.join(120)
        seqs = [e.seq for e in events]  # type: ignore[attr-defined]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len([e for e in events if isinstance(e.payload, LogEvent)]) == 10  # type: ignore[attr-defined]
        assert isinstance(events[-1].payload, TerminalEvent)  # type: ignore[attr-defined]


def test_models_live_in_the_shared_artifacts_directory(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    archive = make_tar(tmp_path / "m.tar.gz", [("model.pt", b"w" * 100_000)], gz=True)
    shared = tmp_path / "artifacts" / "models" / "sha256"
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        model = on_a.register_model(archive, "mlp")
        out = tmp_path / "from-b.tar.gz"
        on_b.download_model(model.id, out)
        assert out.read_bytes() == archive.read_bytes()
        # An artifact just committed by a server whose row is not in yet (here: none ever
        # will be) is not an orphan to a server starting meanwhile.
        young = shared / "ab" / ("ab" * 32)
        young.parent.mkdir(parents=True, exist_ok=True)
        young.write_bytes(b"in flight")
        server_factory(
            database_url=shared_url,
            artifacts_dir=tmp_path / "artifacts",
            server_secret="shared-secret-of-the-servers",
        )
        assert young.exists()
        on_b.delete_model(model.id)
        with pytest.raises(NotFoundError):
            on_a.get_model(model.id)


def test_a_server_that_lost_its_lease_cannot_write_into_the_job_any_more(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    a, b = _pair(server_factory, shared_url, tmp_path)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        job = on_a.run_action("toy", "nap", {"seconds": 60})
        events = on_b.job(job.id).events()
        for event in events:  # until the action runs
            if isinstance(event.payload, LogEvent):
                break
        # A stops renewing its lease (as if cut off from the database); B takes the job over.
        cluster = a.server._cluster
        assert cluster is not None and cluster._task is not None
        a.call(_cancel(cluster._task))
        terminal = [e for e in events if isinstance(e.payload, TerminalEvent)]
        a_id = cluster.server_id
        assert terminal[0].payload.state is JobState.FAILED
        assert terminal[0].payload.error.message == (
            f"server {a_id} stopped while the job was running"
        )
        # A still runs the worker and writes for it (the cancel makes the worker finish):
        # refused, and A stops the worker and forgets the job.
        on_a.cancel_job(job.id)
        deadline = time.monotonic() + 60
        while a.server.jobs.active_jobs:
            assert time.monotonic() < deadline, "server a still holds the job"
            time.sleep(0.1)
        history = list(on_b.job(job.id).events())
        assert [e.seq for e in history] == list(range(1, len(history) + 1))
        finals = [e for e in history if isinstance(e.payload, TerminalEvent)]
        assert len(finals) == 1 and finals[0].payload.state is JobState.FAILED
        assert on_a.get_job(job.id).state is JobState.FAILED


async def _cancel(task: Any) -> None:
    task.cancel()


def test_a_server_that_stops_cleanly_hands_its_pending_jobs_over_at_once(
    server_factory: Callable[..., RunningServer], shared_url: str, tmp_path: Path
) -> None:
    common: dict[str, Any] = {
        "database_url": shared_url,
        "artifacts_dir": tmp_path / "artifacts",
        # Long: the hand-over must not wait for the lease to expire.
        "job_lease_seconds": 120.0,
        "server_secret": "shared-secret-of-the-servers",
    }
    a = RunningServer(make_settings(tmp_path / "a", max_concurrent_jobs=1, **common))
    b = server_factory(**common)
    with Client(a.address, timeout=60) as on_a, Client(b.address, timeout=60) as on_b:
        busy = on_a.run_action("toy", "nap", {"seconds": 60})
        waiting = [on_a.run_action("toy", "quick", {"count": 1, "label": str(i)}) for i in range(2)]
        deadline = time.monotonic() + 60
        while on_a.get_job(busy.id).state is not JobState.RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        a.stop(grace=0.5)
        for handle in waiting:
            assert on_b.job(handle.id).result(timeout=60) is not None
        assert on_b.get_job(busy.id).state is JobState.FAILED
