"""Which stores a server opens: the ``database_url`` setting (default: the data directory's
synapse.db), and the settings errors for URLs the stores do not know."""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from synapse_client import Client
from synapse_server._serve_args import add_arguments, settings_from_args
from synapse_server.settings import ServerSettings, SettingsError
from synapse_server.stores import open_stores, sqlite_database_path, sqlite_url

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(90)


def test_the_default_database_is_synapse_db_in_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNAPSE_DATABASE_URL", raising=False)
    settings = ServerSettings(data_dir=tmp_path / "data")
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path}/data/synapse.db"
    assert sqlite_database_path(settings.resolved_database_url()) == tmp_path / "data/synapse.db"
    # A relative data directory stays relative (to the working directory), as --data-dir is.
    relative = ServerSettings(data_dir=Path("rel"))
    assert relative.resolved_database_url() == "sqlite:///rel/synapse.db"
    assert sqlite_database_path(relative.resolved_database_url()) == Path("rel/synapse.db")


def test_the_url_comes_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    monkeypatch.setenv("SYNAPSE_DATABASE_URL", "sqlite:////srv/env.db")
    assert settings_from_args(parser.parse_args([])).resolved_database_url() == (
        "sqlite:////srv/env.db"
    )
    flagged = settings_from_args(parser.parse_args(["--database-url", "sqlite:///flag.db"]))
    assert flagged.resolved_database_url() == "sqlite:///flag.db"
    # --database is the same flag.
    short = settings_from_args(parser.parse_args(["--database", "postgresql://h/db"]))
    assert short.resolved_database_url() == "postgresql://h/db"
    assert sqlite_database_path("sqlite:////srv/env.db") == Path("/srv/env.db")
    # The URL may carry a password one day: it is not shown with the settings.
    assert "env.db" not in repr(settings_from_args(parser.parse_args([])))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://synapse:hunter2@db.example/synapse", "unsupported scheme 'mysql'"),
        ("MYSQL://root:hunter2@localhost/x", "unsupported scheme 'mysql'"),
        ("postgresql://synapse:hunter2@[db.example/x", "not a valid PostgreSQL URL"),
        ("postgres://synapse:hunter2@db/x?hunter3=1", "not a valid PostgreSQL URL"),
        ("hunter2@db.example/synapse", "must be a URL"),
        ("synapse.db", "must be a URL"),
        ("sqlite://hunter2.db", "three slashes"),
        ("sqlite:///", "three slashes"),
        ("sqlite:///:memory:", "plain file path"),
        ("sqlite:///x.db?mode=ro&hunter2", "plain file path"),
    ],
)
def test_a_url_the_stores_do_not_know_is_a_settings_error(
    tmp_path: Path, url: str, expected: str
) -> None:
    settings = ServerSettings(data_dir=tmp_path, database_url=url)
    with pytest.raises(SettingsError, match="database_url") as refused:
        settings.check()
    message = str(refused.value)
    assert expected in message and "hunter2" not in message


async def test_open_stores_refuses_such_a_url_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unsupported scheme"):
        await open_stores(f"mysql:///{tmp_path}/x")
    assert os.listdir(tmp_path) == []


def test_synapse_serve_names_the_bad_url_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "data"),
            "--database-url", "mysql://synapse:hunter2@db.example/synapse",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsupported scheme 'mysql'" in lines[0], done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "data" / "synapse.db").exists()


def test_a_server_keeps_its_stores_where_the_url_says(
    tmp_path: Path, server_factory: Callable[..., RunningServer]
) -> None:
    elsewhere = tmp_path / "db" / "platform.db"
    data_dir = tmp_path / "data"
    server = server_factory(data_dir=data_dir, database_url=sqlite_url(elsewhere))
    with Client(server.address, timeout=60) as client:
        job = client.run_action("toy", "quick", {"count": 1, "label": "x"})
        job.result(timeout=60)
    with sqlite3.connect(elsewhere) as conn:
        assert conn.execute("SELECT state FROM jobs WHERE id = ?", (job.id,)).fetchone() == (
            "SUCCEEDED",
        )
    conn.close()
    # The data directory still holds everything else (the secret, the logs), not the database.
    assert not (data_dir / "synapse.db").exists()
    assert (data_dir / "server.secret").exists()
