"""The SQLite schema: numbered migrations, and databases written before them.

tests/stores/legacy/*.sql hold the schemas earlier releases created (copied from their
stores at the commits named in each file). A database of each is filled with rows as those
releases wrote them, then opened by today's stores: it must read back whole and end with
exactly the schema a fresh database gets.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from synapse_sdk.models import ArchiveFormat
from synapse_server.app import ServerStartError, SynapseServer
from synapse_server.core import Job, JobFilter, JobState
from synapse_server.core.deployments import DeploymentStatus
from synapse_server.core.models import ModelRecord
from synapse_server.stores import (
    SqliteDatabase,
    StoreSchemaError,
    _sqlite_schema,
    open_stores,
    sqlite_url,
)
from synapse_server.stores._migrations import Migration
from synapse_server.stores._sqlite_schema import MIGRATIONS, SUPERSEDED, applied_versions

from tests.conftest import make_settings

pytestmark = pytest.mark.timeout(60)

LEGACY = Path(__file__).parent / "legacy"
LATEST = len(MIGRATIONS)


def _legacy_database(path: Path, fixture: str) -> Path:
    with sqlite3.connect(path) as conn:
        conn.executescript((LEGACY / f"{fixture}.sql").read_text())
    conn.close()
    return path


def _schema(path: Path) -> dict[str, Any]:
    """Every table's columns and every index, as SQLite describes them."""
    with sqlite3.connect(path) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' "
                "AND name NOT IN ('sqlite_sequence', 'schema_migrations') ORDER BY name"
            )
        ]
        described: dict[str, Any] = {}
        for table in tables:
            indexes = {
                name: (
                    unique,
                    origin,
                    partial,
                    conn.execute(f"PRAGMA index_info({name})").fetchall(),
                )
                for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})")
            }
            described[table] = (conn.execute(f"PRAGMA table_info({table})").fetchall(), indexes)
    conn.close()
    return described


def _versions(path: Path) -> list[tuple[int, str, float]]:
    with sqlite3.connect(path) as conn:
        found = applied_versions(conn)
    conn.close()
    return found


async def _open_and_close(path: Path) -> None:
    stores = await open_stores(sqlite_url(path))
    await stores.close()


async def test_a_fresh_database_runs_every_migration_and_gets_todays_schema(
    tmp_path: Path,
) -> None:
    path = tmp_path / "synapse.db"
    before = time.time()
    await _open_and_close(path)
    versions = _versions(path)
    assert [(v, n) for v, n, _ in versions] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(before <= applied <= time.time() for _, _, applied in versions)
    # The tables the release before migrations created fresh (its CREATE statements), with
    # the columns later migrations added, column for column.
    main = _legacy_database(tmp_path / "main.db", "v3_before_migrations")
    await _open_and_close(main)
    assert _schema(path) == _schema(main)
    # Opening again applies nothing.
    await _open_and_close(path)
    assert _versions(path) == versions


def _fill(path: Path, fixture: str) -> None:
    """Rows as the release of ``fixture`` wrote them."""
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
        has_params_table = "job_params" in tables
        error = json.dumps({"type": "E", "message": "m", "origin": "plugin"})
        jobs = [
            # id, state, params, result, error, request_id
            ("done", "SUCCEEDED", '{"x": 1}', '"é"', None, "r1"),
            ("failed", "FAILED", '{"y" : [1, 2]}', None, error, None),
            ("waiting", "PENDING", '{"z": 3}', None, None, "r2"),
        ]
        for ord_, (job_id, state, params, result, failure, request_id) in enumerate(jobs, 1):
            values: dict[str, Any] = {
                "id": job_id, "tenant": "t1", "plugin": "p", "action": "a", "mode": "local",
                "params": "" if has_params_table else params, "state": state,
                "request_id": request_id, "created_at": float(ord_), "result": result,
                "error": failure, "last_seq": 2 if job_id == "done" else 0,
            }  # fmt: skip
            if "result_size" in columns:
                values["result_size"] = len(result.encode()) if result else 0
            if "plugin_sha256" in columns:
                values["plugin_sha256"] = "" if job_id == "done" else "c" * 64
            conn.execute(
                f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                tuple(values.values()),
            )
            if has_params_table:
                conn.execute("INSERT INTO job_params VALUES (?, ?)", (job_id, params))
        conn.executemany(
            "INSERT INTO job_events VALUES (?, ?, ?, ?, ?)",
            [
                ("done", 1, "state", 1.5, '{"state": "PENDING"}'),
                ("done", 2, "terminal", 2.5, '{"state": "SUCCEEDED", "result": "é"}'),
            ],
        )
        if "models" in tables:
            conn.execute(
                "INSERT INTO models (tenant, name, metadata, sha256, size_bytes, "
                "archive_format, created_at) VALUES ('t1', 'm', '{\"k\": 1}', ?, 10, 'zip', 3.0)",
                ("a" * 64,),
            )
        if "serve_applications" in tables:
            # Two tenants' live records of one name, as releases before single owners allowed.
            for tenant, name in (("team-a", "app"), ("team-b", "app"), ("team-c", "other")):
                conn.execute(
                    "INSERT INTO serve_applications (tenant, name, plugin, action, status, "
                    "create_time, update_time) VALUES (?, ?, 'p', 'a', 'running', 1.0, 1.0)",
                    (tenant, name),
                )
    conn.close()


@pytest.mark.parametrize(
    ("fixture", "found"),
    [
        ("v1_first_release", 1),
        ("v1_all_tables", 1),
        ("v2_result_sizes", 2),
        ("v3_before_migrations", 3),
    ],
)
async def test_a_database_of_an_earlier_release_upgrades_and_keeps_everything(
    tmp_path: Path, fixture: str, found: int
) -> None:
    path = _legacy_database(tmp_path / "synapse.db", fixture)
    _fill(path, fixture)
    before = time.time()
    stores = await open_stores(sqlite_url(path))
    try:
        done = await stores.jobs.get_job("done", with_params=True)
        assert done is not None and done.params == {"x": 1} and done.state is JobState.SUCCEEDED
        assert done.result_size == len('"é"'.encode())  # bytes, filled in when it was missing
        assert await stores.jobs.get_result("done") == ("t1", JobState.SUCCEEDED, '"é"')
        failed = await stores.jobs.get_job("failed", with_params=True)
        assert failed is not None and failed.params_json == '{"y" : [1, 2]}'
        assert failed.error is not None and failed.error.message == "m"
        events = await stores.jobs.list_events("done", 0, 10)
        assert [(e.seq, e.data["state"]) for e in events] == [(1, "PENDING"), (2, "SUCCEEDED")]
        assert events[1].data["result"] == "é"  # stored by earlier releases with the value
        pending = await stores.jobs.jobs_in_states([JobState.PENDING])
        assert [(j.id, j.params) for j in pending] == [("waiting", {"z": 3})]
        digests = {"c" * 64} if found >= 3 else set()
        assert await stores.jobs.plugin_code_in_use() == digests
        # New rows go in beside the old ones; request ids still hold.
        retry = Job(id="new", tenant="t1", plugin="p", action="a", params_json='{"z": 3}')
        again, created = await stores.jobs.create_job(retry.evolve(request_id="r2"))
        assert not created and again.id == "waiting"
        await stores.jobs.create_job(Job(id="new", tenant="t1", plugin="p", action="a"))
        listed = await stores.jobs.list_jobs(JobFilter(tenant="t1"), 10, "")
        assert [j.id for j in listed.jobs] == ["new", "waiting", "failed", "done"]
        if fixture != "v1_first_release":
            page = await stores.models.list("t1", "", 10, "")
            assert [(m.name, m.metadata, m.archive_format) for m in page.models] == [
                ("m", {"k": 1}, ArchiveFormat.ZIP)
            ]
            # The earliest registration keeps a name two tenants held.
            assert await stores.deployments.holder("app") == "team-a"
            squatter = await stores.deployments.find_by_name("team-b", "app")
            assert squatter is not None and squatter.status is DeploymentStatus.DELETED
            assert squatter.status_message == SUPERSEDED and squatter.update_time >= before
            for tenant, name in (("team-a", "app"), ("team-c", "other")):
                kept = await stores.deployments.find_by_name(tenant, name)
                assert kept is not None and kept.status is DeploymentStatus.RUNNING
        model = await stores.models.insert(_model())
        assert model.id > 0
    finally:
        await stores.close()
    versions = _versions(path)
    assert [v for v, _, _ in versions] == list(range(1, LATEST + 1))
    assert [n for _, n, _ in versions] == [m.name for m in MIGRATIONS]
    fresh = tmp_path / "fresh.db"
    await _open_and_close(fresh)
    assert _schema(path) == _schema(fresh)
    await _open_and_close(path)
    assert _versions(path) == versions


def _model() -> ModelRecord:
    return ModelRecord(0, "t2", "n", "", "", {}, "b" * 64, 1, ArchiveFormat.TAR, 4.0)


async def test_a_database_of_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "synapse.db"
    await _open_and_close(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_migrations VALUES (?, 'from the future', 0)", (LATEST + 1,)
        )
    conn.close()
    schema = _schema(path)
    with pytest.raises(StoreSchemaError) as refused:
        await open_stores(sqlite_url(path))
    message = str(refused.value)
    assert f"schema version {LATEST + 1}" in message and f"({LATEST})" in message
    assert "newer release" in message and str(path) in message
    assert _schema(path) == schema and len(_versions(path)) == LATEST + 1

    # The server does not start on it, and says why in one line.
    settings = make_settings(tmp_path / "data", database_url=sqlite_url(path))
    with pytest.raises(ServerStartError, match="newer release"):
        await SynapseServer(settings).start()


async def test_a_failing_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _legacy_database(tmp_path / "synapse.db", "v2_result_sizes")
    _fill(path, "v2_result_sizes")
    schema = _schema(path)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(
        _sqlite_schema, "MIGRATIONS", (*MIGRATIONS, Migration(LATEST + 1, "broken", broken))
    )
    with pytest.raises(RuntimeError, match="migration bug"):
        await open_stores(sqlite_url(path))
    # Nothing of the upgrade stayed: not migrations 3 and 4, not the table, not the record.
    assert _schema(path) == schema and _versions(path) == []
    monkeypatch.undo()
    await _open_and_close(path)
    assert len(_versions(path)) == LATEST


async def test_servers_opening_one_new_database_together_migrate_it_once(tmp_path: Path) -> None:
    # Each round a new file: whoever comes first creates it and switches it to WAL while the
    # others wait for it, then one migrates it and the others find it migrated.
    for round_ in range(40):
        path = tmp_path / f"synapse{round_}.db"
        databases = [SqliteDatabase(path) for _ in range(6)]
        await asyncio.gather(*(db.open() for db in databases))
        await asyncio.gather(*(db.close() for db in databases))
        assert [v for v, _, _ in _versions(path)] == list(range(1, LATEST + 1))
