"""SqliteJobStore against a real SQLite file: WAL, gap-free event history, idempotency."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from synapse_server.core import (
    ErrorOrigin,
    EventKind,
    InvalidArgumentError,
    Job,
    JobError,
    JobEvent,
    JobFilter,
    JobState,
    RequestIdConflictError,
    SqliteJobStore,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "jobs.db")
    await s.open()
    yield s
    await s.close()


def _job(job_id: str, tenant: str = "t1", plugin: str = "p", request_id: str | None = None) -> Job:
    return Job(
        id=job_id,
        tenant=tenant,
        plugin=plugin,
        action="a",
        params_json='{"x": 1}',
        request_id=request_id,
    )


async def test_wal_mode_and_round_trip(store: SqliteJobStore) -> None:
    assert await store.journal_mode() == "wal"
    job, created = await store.create_job(_job("j1"))
    assert created
    error = JobError(
        type="ValueError", message="bad", origin=ErrorOrigin.PLUGIN, traceback="tb", step="s1"
    )
    done = job.evolve(
        state=JobState.FAILED, error=error, finished_at=2.0, progress=40.0, cancel_requested=True
    )
    await store.update_job(done)
    loaded = await store.get_job("j1", with_params=True)
    assert loaded == done
    # Without with_params: the same job, less its params text.
    assert await store.get_job("j1") == done.evolve(params_json="")
    assert await store.get_job("missing") is None


async def test_result_text_is_stored_and_read_without_params(store: SqliteJobStore) -> None:
    job, _ = await store.create_job(_job("j1"))
    assert await store.get_result("j1") == ("t1", JobState.PENDING, None)
    text = '{"results":[{"prediction":[0.5,-1]}],"big":100000000000000000000000}'
    # A result known only as text (never parsed by the server) is stored as that text.
    size = len(text.encode())
    finished = job.evolve(state=JobState.SUCCEEDED, result_json=text, result_size=size)
    await store.update_job(finished)
    assert await store.get_result("j1") == ("t1", JobState.SUCCEEDED, text)
    # A job read back carries the result's size, not its text (only get_result reads that).
    loaded = await store.get_job("j1", with_params=True)
    assert loaded is not None and loaded.result_json == "" and loaded.result_size == size
    assert loaded.params == {"x": 1}
    # Writing such a job back (it has no text) keeps the stored text.
    await store.update_job(loaded.evolve(progress=100.0))
    assert await store.get_result("j1") == ("t1", JobState.SUCCEEDED, text)
    assert await store.get_result("missing") is None


async def test_events_are_ordered_and_persisted_with_job_row(
    store: SqliteJobStore, tmp_path: Path
) -> None:
    job, _ = await store.create_job(_job("j1"))
    events = [JobEvent("j1", seq, EventKind.LOG, {"event": f"e{seq}"}) for seq in range(1, 6)]
    await store.append_events(events[:3])
    await store.append_events(events[3:], job.evolve(state=JobState.RUNNING, last_seq=5))
    listed = await store.list_events("j1", 0, 100)
    assert [e.seq for e in listed] == [1, 2, 3, 4, 5]
    assert [e.data["event"] for e in await store.list_events("j1", 2, 2)] == ["e3", "e4"]
    last = await store.last_event("j1")
    assert last is not None and last.seq == 5
    assert (await store.get_job("j1")).last_seq == 5  # type: ignore[union-attr]
    # A duplicate seq is refused and the batch (with its job row change) is rolled back.
    with pytest.raises(sqlite3.IntegrityError):
        await store.append_events(
            [JobEvent("j1", 6, EventKind.LOG, {}), JobEvent("j1", 5, EventKind.LOG, {})],
            job.evolve(state=JobState.SUCCEEDED),
        )
    assert len(await store.list_events("j1", 0, 100)) == 5
    assert (await store.get_job("j1")).state is JobState.RUNNING  # type: ignore[union-attr]


async def test_inline_result_is_stored_once_and_read_back_with_its_terminal_event(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    try:
        job, _ = await store.create_job(_job("j1"))
        text = '{"z": [1, 2.50], "marker": "inline-result-text"}'
        data = {"state": "SUCCEEDED", "result_json": text, "result_inline": True}
        done = job.evolve(state=JobState.SUCCEEDED, result_json=text, last_seq=1)
        await store.append_events([JobEvent("j1", 1, EventKind.TERMINAL, data)], done)
        # An event whose text differs from its job row keeps its own copy.
        other, _ = await store.create_job(_job("j2"))
        await store.append_events(
            [JobEvent("j2", 1, EventKind.TERMINAL, {**data, "result_json": "[1]"})],
            other.evolve(state=JobState.SUCCEEDED, result_json="[2]"),
        )
        for read in (await store.list_events("j1", 0, 10))[0], await store.last_event("j1"):
            assert read is not None and read.data == data
        assert (await store.list_events("j2", 0, 10))[0].data["result_json"] == "[1]"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        stored = [r[0] for r in conn.execute("SELECT data FROM job_events ORDER BY job_id")]
    assert "inline-result-text" not in stored[0] and "[1]" in stored[1]


async def test_params_stay_out_of_the_row_that_events_update(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    big = {"inputs": [{"data": [0.5, 1, -2]}] * 2000}
    job, _ = await store.create_job(
        Job(
            id="j1",
            tenant="t1",
            plugin="p",
            action="a",
            params_json=json.dumps(big),
            request_id="r1",
        )
    )
    await store.append_events([JobEvent("j1", 1, EventKind.STATE, {})], job.evolve(last_seq=1))
    with sqlite3.connect(path) as conn:
        # Only the small row is rewritten by event batches; the params sit in job_params.
        assert conn.execute("SELECT params FROM jobs WHERE id='j1'").fetchone() == ("",)
        # A row written before job_params existed keeps its params in jobs.params.
        conn.execute(
            "INSERT INTO jobs (id, tenant, plugin, action, mode, params, state, created_at) "
            """VALUES ('old', 't1', 'p', 'a', 'local', '{"x": 2}', 'SUCCEEDED', 1.0)"""
        )
    try:
        loaded = await store.get_job("j1", with_params=True)
        assert loaded is not None and loaded.params == big and loaded.last_seq == 1
        old = await store.get_job("old", with_params=True)
        assert old is not None and old.params == {"x": 2}
        # Listings read neither params nor results.
        listed = await store.list_jobs(JobFilter(tenant="t1"), 10, "")
        assert [(j.id, j.params_json) for j in listed.jobs] == [("old", ""), ("j1", "")]
        again, created = await store.create_job(
            Job(
                id="j2",
                tenant="t1",
                plugin="p",
                action="a",
                # Same params, other spacing: the same request.
                params_json=json.dumps(big, separators=(",", ":")),
                request_id="r1",
            )
        )
        assert not created and again.id == "j1"
        assert [j.id for j in await store.jobs_in_states([JobState.PENDING])] == ["j1"]
    finally:
        await store.close()


async def test_a_database_from_before_result_sizes_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN result_size")
        conn.execute(
            "INSERT INTO jobs (id, tenant, plugin, action, mode, params, state, created_at, "
            """result) VALUES ('old', 't1', 'p', 'a', 'local', '{}', 'SUCCEEDED', 1.0, '"é"')"""
        )
    reopened = SqliteJobStore(path)
    await reopened.open()
    try:
        old = await reopened.get_job("old")
        assert old is not None and old.result_size == len('"é"'.encode())  # bytes, not chars
    finally:
        await reopened.close()


async def test_history_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    first = SqliteJobStore(path)
    await first.open()
    await first.create_job(_job("j1"))
    await first.append_events([JobEvent("j1", 1, EventKind.STATE, {"state": "PENDING"})])
    await first.close()
    second = SqliteJobStore(path)
    await second.open()
    try:
        assert (await second.get_job("j1")) is not None
        assert [e.seq for e in await second.list_events("j1", 0, 10)] == [1]
    finally:
        await second.close()


async def test_request_id_is_idempotent_per_tenant(store: SqliteJobStore) -> None:
    _first, created = await store.create_job(_job("j1", request_id="r1"))
    again, created_again = await store.create_job(_job("j2", request_id="r1"))
    assert created and not created_again
    assert again.id == "j1"
    # Same request id, another tenant: a separate job.
    other, created_other = await store.create_job(_job("j3", tenant="t2", request_id="r1"))
    assert created_other and other.id == "j3"
    # Same id, different request: refused.
    different = Job(
        id="j4", tenant="t1", plugin="p", action="a", params_json='{"x": 2}', request_id="r1"
    )
    with pytest.raises(RequestIdConflictError):
        await store.create_job(different)


async def test_list_jobs_filters_and_pages(store: SqliteJobStore) -> None:
    for i in range(7):
        job = _job(f"j{i}", tenant="t1" if i % 2 == 0 else "t2", plugin="p" if i < 5 else "q")
        await store.create_job(job)
    await store.update_job(_job("j2").evolve(state=JobState.SUCCEEDED))
    page = await store.list_jobs(JobFilter(tenant="t1"), 2, "")
    assert [j.id for j in page.jobs] == ["j6", "j4"]
    page2 = await store.list_jobs(JobFilter(tenant="t1"), 2, page.next_page_token)
    assert [j.id for j in page2.jobs] == ["j2", "j0"]
    assert page2.next_page_token == ""
    done = await store.list_jobs(JobFilter(states=frozenset({JobState.SUCCEEDED})), 10, "")
    assert [j.id for j in done.jobs] == ["j2"]
    q = await store.list_jobs(JobFilter(plugin="q"), 10, "")
    assert [j.id for j in q.jobs] == ["j6", "j5"]
    with pytest.raises(InvalidArgumentError):
        await store.list_jobs(JobFilter(), 10, "not-a-token")
    pending = await store.jobs_in_states([JobState.PENDING])
    assert [j.id for j in pending] == ["j0", "j1", "j3", "j4", "j5", "j6"]


async def test_jobs_keep_their_plugin_code_digest_and_unfinished_ones_are_in_use(
    store: SqliteJobStore,
) -> None:
    running, _ = await store.create_job(_job("run").evolve(plugin_sha256="a" * 64))
    await store.update_job(running.evolve(state=JobState.RUNNING))
    await store.create_job(_job("wait").evolve(plugin_sha256="b" * 64))
    done, _ = await store.create_job(_job("done").evolve(plugin_sha256="c" * 64))
    await store.update_job(done.evolve(state=JobState.SUCCEEDED))
    await store.create_job(_job("older"))  # no digest: nothing to keep for it
    loaded = await store.get_job("run")
    assert loaded is not None and loaded.plugin_sha256 == "a" * 64
    page = await store.list_jobs(JobFilter(), 10, "")
    assert {j.id: j.plugin_sha256 for j in page.jobs}["done"] == "c" * 64
    assert await store.plugin_code_in_use() == {"a" * 64, "b" * 64}


async def test_a_database_from_before_plugin_digests_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN plugin_sha256")
        conn.execute(
            "INSERT INTO jobs (id, tenant, plugin, action, mode, params, state, created_at) "
            "VALUES ('old', 't1', 'p', 'a', 'local', '{}', 'PENDING', 1.0)"
        )
    reopened = SqliteJobStore(path)
    await reopened.open()
    try:
        old = await reopened.get_job("old")
        assert old is not None and old.plugin_sha256 == ""
        assert await reopened.plugin_code_in_use() == set()
        new, _ = await reopened.create_job(_job("new").evolve(plugin_sha256="d" * 64))
        assert (await reopened.get_job("new")) == new.evolve(params_json="")
    finally:
        await reopened.close()
