"""What the SQLite stores do on disk, beyond the contract: WAL, where texts are written, and
the threads and connections the stores of one file share."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.models import ArchiveFormat
from synapse_server.core import EventKind, Job, JobEvent, JobFilter, JobState
from synapse_server.core.deployments import DeploymentRecord
from synapse_server.core.models import ModelRecord
from synapse_server.stores import (
    SqliteDatabase,
    SqliteDeploymentStore,
    SqliteJobStore,
    SqliteModelStore,
    open_stores,
    sqlite_url,
)

pytestmark = pytest.mark.timeout(60)


def _job(job_id: str, params_json: str = '{"x": 1}', request_id: str | None = None) -> Job:
    return Job(
        id=job_id,
        tenant="t1",
        plugin="p",
        action="a",
        params_json=params_json,
        request_id=request_id,
    )


def _model() -> ModelRecord:
    return ModelRecord(0, "t1", "m", "", "", {}, "a" * 64, 1, ArchiveFormat.ZIP, 1.0)


def _sqlite_threads() -> dict[int | None, str]:
    """The live SQLite I/O threads by ident: names repeat across pools (``sqlite-reader_0``),
    and stores of earlier tests in the same process may still be alive."""
    return {t.ident: t.name for t in threading.enumerate() if t.name.startswith("sqlite-")}


async def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    await store.open()
    try:
        assert await store.journal_mode() == "wal"
    finally:
        await store.close()


async def test_the_stores_of_one_file_share_one_writer_and_read_on_their_own(
    tmp_path: Path,
) -> None:
    before = _sqlite_threads()
    stores = await open_stores(sqlite_url(tmp_path / "synapse.db"))
    try:
        await stores.jobs.create_job(_job("j1"))
        await stores.jobs.get_job("j1")
        await stores.models.insert(_model())
        await stores.models.all_checksums()
        await stores.deployments.upsert(DeploymentRecord(0, "t1", "app", "p", "a"))
        await stores.deployments.holder("app")
        started = [n.rsplit("_", 1)[0] for i, n in _sqlite_threads().items() if i not in before]
        # One writer for the file; a reader per store (a replay never delays a look-up).
        assert sorted(started) == ["sqlite-reader"] * 3 + ["sqlite-writer"]
    finally:
        await stores.close()
    assert _sqlite_threads() == before
    # A store given a path has the file to itself, and closes its threads with it.
    alone = SqliteModelStore(tmp_path / "synapse.db")
    await alone.open()
    await alone.all_checksums()
    assert len(_sqlite_threads()) == len(before) + 2
    await alone.close()
    await alone.close()  # closing twice is harmless
    assert _sqlite_threads() == before


async def test_a_database_shared_by_stores_stays_open_until_its_last_store_closes(
    tmp_path: Path,
) -> None:
    database = SqliteDatabase(tmp_path / "synapse.db")
    jobs, deployments = SqliteJobStore(database), SqliteDeploymentStore(database)
    await jobs.open()
    await deployments.open()
    await jobs.create_job(_job("j1"))
    await jobs.close()
    assert await deployments.holder("app") is None  # still open for this one
    await deployments.close()
    with pytest.raises(RuntimeError, match="not open"):
        await jobs.get_job("j1")
    # Opened again, it works again.
    await jobs.open()
    try:
        assert await jobs.get_job("j1") is not None
    finally:
        await jobs.close()


async def test_params_stay_out_of_the_row_that_events_update(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    big = {"inputs": [{"data": [0.5, 1, -2]}] * 2000}
    job, _ = await store.create_job(_job("j1", json.dumps(big), request_id="r1"))
    await store.append_events([JobEvent("j1", 1, EventKind.STATE, {})], job.evolve(last_seq=1))
    with sqlite3.connect(path) as conn:
        # Only the small row is rewritten by event batches; the params sit in job_params.
        assert conn.execute("SELECT params FROM jobs WHERE id='j1'").fetchone() == ("",)
        # A row written before job_params existed keeps its params in jobs.params.
        conn.execute(
            "INSERT INTO jobs (id, tenant, plugin, action, mode, params, state, created_at) "
            """VALUES ('old', 't1', 'p', 'a', 'local', '{"x": 2}', 'SUCCEEDED', 1.0)"""
        )
    conn.close()
    try:
        loaded = await store.get_job("j1", with_params=True)
        assert loaded is not None and loaded.params == big and loaded.last_seq == 1
        old = await store.get_job("old", with_params=True)
        assert old is not None and old.params == {"x": 2}
        listed = await store.list_jobs(JobFilter(tenant="t1"), 10, "")
        assert [(j.id, j.params_json) for j in listed.jobs] == [("old", ""), ("j1", "")]
        again, created = await store.create_job(
            _job("j2", json.dumps(big, separators=(",", ":")), request_id="r1")
        )
        assert not created and again.id == "j1"
    finally:
        await store.close()


async def test_an_inline_result_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path)
    await store.open()
    try:
        job, _ = await store.create_job(_job("j1"))
        text = '{"z": [1, 2.50], "marker": "inline-result-text"}'
        data = {"state": "SUCCEEDED", "result_json": text, "result_inline": True}
        done = job.evolve(state=JobState.SUCCEEDED, result_json=text, last_seq=1)
        await store.append_events([JobEvent("j1", 1, EventKind.TERMINAL, data)], done)
        other, _ = await store.create_job(_job("j2"))
        await store.append_events(
            [JobEvent("j2", 1, EventKind.TERMINAL, {**data, "result_json": "[1]"})],
            other.evolve(state=JobState.SUCCEEDED, result_json="[2]"),
        )
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        stored = [r[0] for r in conn.execute("SELECT data FROM job_events ORDER BY job_id")]
    conn.close()
    # Only in the job row; an event whose text differs from its row's keeps its own copy.
    assert "inline-result-text" not in stored[0] and "[1]" in stored[1]


class _RollbackFails(sqlite3.Connection):
    """A connection whose ROLLBACK fails, as one can on a failing device."""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_a_connection_stuck_in_a_transaction_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "synapse.db"
    stores = await open_stores(sqlite_url(path))
    try:
        job, _ = await stores.jobs.create_job(_job("j1"))
        await stores.jobs.append_events([JobEvent("j1", 1, EventKind.STATE, {})])
        real_connect = sqlite3.connect
        monkeypatch.setattr(
            sqlite3,
            "connect",
            lambda *a, **kw: real_connect(*a, **{**kw, "factory": _RollbackFails}),
        )
        # A fresh writer connection whose rollbacks fail, then a batch that fails inside its
        # transaction (a seq stored already).
        await stores.close()
        stores = await open_stores(sqlite_url(path))
        with pytest.raises(sqlite3.IntegrityError):
            await stores.jobs.append_events([JobEvent("j1", 1, EventKind.LOG, {})])
        monkeypatch.undo()
        # The stuck connection was closed, not reused: the next write works.
        await stores.jobs.append_events(
            [JobEvent("j1", 2, EventKind.LOG, {})], job.evolve(last_seq=2)
        )
        assert [e.seq for e in await stores.jobs.list_events("j1", 0, 10)] == [1, 2]
        await stores.deployments.upsert(DeploymentRecord(0, "t1", "app", "p", "a"))
    finally:
        await stores.close()


async def test_a_database_that_failed_to_open_can_be_opened_once_fixed(tmp_path: Path) -> None:
    before = _sqlite_threads()
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    store = SqliteJobStore(blocker / "synapse.db")
    with pytest.raises(OSError):
        await store.open()
    assert _sqlite_threads() == before
    blocker.unlink()
    await store.open()
    try:
        assert (await store.create_job(_job("j1")))[1]
    finally:
        await store.close()
    assert _sqlite_threads() == before
