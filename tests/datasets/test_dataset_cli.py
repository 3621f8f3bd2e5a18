"""``synapse dataset upload|list|get|download|delete`` and ``synapse jobs output``: the
console script as a subprocess against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synapse_client import Client

from tests.conftest import RunningServer, make_settings

pytestmark = pytest.mark.timeout(180)

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
TOY_PLUGINS = Path(__file__).resolve().parent / "plugins"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(
        make_settings(tmp_path_factory.mktemp("dataset-cli"), plugin_dirs=[TOY_PLUGINS])
    )
    yield running
    running.stop()


def synapse(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    env["SYNAPSE_SERVER"] = server.address
    return subprocess.run([SYNAPSE, *args], capture_output=True, text=True, timeout=90, env=env)


def test_upload_list_get_download_delete(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "points.jsonl"
    source.write_text("".join(json.dumps({"id": i, "x": i / 4}) + "\n" for i in range(9)))
    done = synapse(server, "dataset", "upload", str(source), "--name", "points")
    assert done.returncode == 0, done.stderr
    dataset = json.loads(done.stdout)
    assert dataset["format"] == "jsonl" and dataset["num_rows"] == 9
    assert dataset["columns"] == [{"name": "id", "type": "int64"}, {"name": "x", "type": "double"}]

    listed = synapse(server, "dataset", "list", "--name", "points")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "FORMAT", "ROWS", "BYTES", "JOB", "CREATED"]
    assert row.split()[:4] == [dataset["id"], "points", "jsonl", "9"]
    as_json = synapse(server, "dataset", "list", "--json")
    assert dataset["id"] in [json.loads(line)["id"] for line in as_json.stdout.splitlines()]

    got = synapse(server, "dataset", "get", dataset["id"])
    assert got.returncode == 0 and json.loads(got.stdout) == dataset

    out = tmp_path / "copy.jsonl"
    dl = synapse(server, "dataset", "download", dataset["id"], "-o", str(out))
    assert dl.returncode == 0, dl.stderr
    assert out.read_bytes() == source.read_bytes() and str(out) in dl.stdout

    rm = synapse(server, "dataset", "delete", dataset["id"])
    assert rm.returncode == 0 and f"deleted dataset {dataset['id']}" in rm.stdout
    gone = synapse(server, "dataset", "get", dataset["id"])
    assert gone.returncode == 2 and "not found" in gone.stderr


def test_upload_refusals_are_one_line_errors(server: RunningServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"definitely not parquet")
    done = synapse(server, "dataset", "upload", str(bad), "--name", "bad")
    assert done.returncode == 2
    assert "not a valid Parquet file" in done.stderr and "Traceback" not in done.stderr
    wrong = synapse(server, "dataset", "upload", str(bad), "--name", "b", "--format", "npy")
    assert wrong.returncode == 2 and ".npy" in wrong.stderr
    missing = synapse(server, "dataset", "upload", str(tmp_path / "nope"), "--name", "n")
    assert missing.returncode == 2 and "not a file" in missing.stderr
    unnamed = synapse(server, "dataset", "upload", str(bad))
    assert unnamed.returncode == 2 and "--name" in unnamed.stderr


def test_jobs_output(server: RunningServer, tmp_path: Path) -> None:
    source = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": np.arange(20), "x": np.arange(20, dtype=float)}), source)
    with Client(server.address, timeout=60) as client:
        dataset = client.upload_dataset(source, "xs")
        job = client.run_action("dataset-toy", "copy_then", {"dataset": dataset.id})
        job.result(timeout=120)
        failed = client.run_action(
            "dataset-toy", "copy_then", {"dataset": dataset.id, "then": "fail"}
        )
        with pytest.raises(Exception, match="failing"):
            failed.result(timeout=120)
    out = tmp_path / "doubled.parquet"
    done = synapse(server, "jobs", "output", job.id, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).column("doubled").to_pylist() == [2.0 * i for i in range(20)]
    named = synapse(server, "jobs", "output", job.id, "doubled", "-o", str(tmp_path / "n.pq"))
    assert named.returncode == 0, named.stderr
    listed = synapse(server, "jobs", "output", job.id, "--list")
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["doubled"]

    other = synapse(server, "jobs", "output", job.id, "other", "-o", str(tmp_path / "o.pq"))
    assert other.returncode == 2 and "no output 'other'" in other.stderr
    assert not (tmp_path / "o.pq").exists()
    nothing = synapse(server, "jobs", "output", failed.id, "-o", str(tmp_path / "f.pq"))
    assert nothing.returncode == 2 and "has no outputs" in nothing.stderr
    unknown = synapse(server, "jobs", "output", "no-such-job", "-o", str(tmp_path / "u.pq"))
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    no_file = synapse(server, "jobs", "output", job.id)
    assert no_file.returncode == 2 and "-o/--output FILE is required" in no_file.stderr
