"""The server-mode CLI (``synapse plugin run --server``, ``synapse jobs ...``) as a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SYNAPSE = str(Path(sys.executable).with_name("synapse"))


def synapse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    return subprocess.run(
        [SYNAPSE, *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**base, **(env or {})},
    )


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_plugin_run_on_server_prints_result_and_progress(platform_server: Any) -> None:
    done = synapse(
        "plugin", "run", "quick", "--plugin", "toy",
        "--params", '{"count": 3, "label": "cli"}',
        "--server", platform_server.address, "--mode", "local",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"label": "cli", "count": 3}
    assert "submitted (toy/quick, local)" in done.stderr
    assert "100.0%" in done.stderr and "work 3/3" in done.stderr  # the console progress bar
    assert "log [info] done" in done.stderr


def test_server_address_from_environment(platform_server: Any) -> None:
    done = synapse(
        "plugin", "run", "quick", "--plugin", "toy", "--params", '{"count": 1, "label": "env"}',
        "--no-progress",
        env={"SYNAPSE_SERVER": platform_server.address},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == "env"
    assert "%" not in done.stderr


def test_plugin_failure_is_one_line_and_exit_1(platform_server: Any) -> None:
    done = synapse("plugin", "run", "fail", "--plugin", "toy", "--server", platform_server.address)
    assert done.returncode == 1
    assert done.stdout == ""
    last = _last_line(done.stderr)
    assert last.startswith("error: job ") and "ValueError: toy failure" in last
    assert "synapse jobs get" in last


def test_bad_input_exits_2(platform_server: Any) -> None:
    address = platform_server.address
    bad_params = synapse(
        "plugin", "run", "quick", "--plugin", "toy", "--params", '{"count": -1, "label": "x"}',
        "--server", address,
    )  # fmt: skip
    assert bad_params.returncode == 2
    assert "count" in _last_line(bad_params.stderr)
    unknown = synapse("plugin", "run", "quick", "--plugin", "nope", "--server", address)
    assert unknown.returncode == 2 and _last_line(unknown.stderr).startswith("error: ")
    no_server = synapse("plugin", "run", "quick", "--plugin", "toy", "--mode", "task")
    assert no_server.returncode == 2 and "needs --server" in no_server.stderr


def test_unreachable_server_is_reported() -> None:
    # The port stays bound to a socket that never listens: connections are refused, and no
    # other process can start listening on it during the call.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        done = synapse("jobs", "list", "--server", f"127.0.0.1:{port}", "--timeout", "5")
    assert done.returncode == 1
    assert _last_line(done.stderr).startswith(f"error: cannot reach the server at 127.0.0.1:{port}")


def test_jobs_list_get_logs(platform_server: Any) -> None:
    address = platform_server.address
    run = synapse(
        "plugin", "run", "quick", "--plugin", "toy", "--params", '{"count": 2, "label": "jobs"}',
        "--server", address, "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    job_id = run.stderr.split("job ", 1)[1].split()[0]

    listing = synapse(
        "jobs", "list", "--plugin", "toy", "--state", "succeeded", "--server", address
    )
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:4] == ["ID", "STATE", "PLUGIN", "ACTION"]
    assert any(row.split()[:4] == [job_id, "succeeded", "toy", "quick"] for row in rows)

    as_json = synapse("jobs", "list", "--json", "--limit", "1", "--server", address)
    assert len(as_json.stdout.splitlines()) == 1 and json.loads(as_json.stdout)["id"]

    get = synapse("jobs", "get", job_id, "--server", address)
    job = json.loads(get.stdout)
    assert job["id"] == job_id and job["state"] == "succeeded"
    assert job["params"] == {"count": 2.0, "label": "jobs"}
    # Which code of the plugin ran: the snapshot the server loaded.
    assert job["plugin_sha256"] == platform_server.server.jobs.catalog.code("toy").sha256

    logs = synapse("jobs", "logs", job_id, "--server", address)
    lines = logs.stdout.splitlines()
    assert "state pending" in lines[0]
    assert any("progress work 2/2" in line for line in lines)
    assert "finished succeeded" in lines[-1]
    tail = synapse("jobs", "logs", job_id, "--after-seq", str(len(lines) - 1), "--json",
                   "--server", address)  # fmt: skip
    assert [json.loads(line)["seq"] for line in tail.stdout.splitlines()] == [len(lines)]

    missing = synapse("jobs", "get", "no-such-job", "--server", address)
    assert missing.returncode == 2 and _last_line(missing.stderr).startswith("error: NOT_FOUND")


def test_jobs_cancel_and_follow(platform_server: Any) -> None:
    from synapse_client import Client, JobCancelledError

    address = platform_server.address
    with Client(address) as client:
        handle = client.run_action("toy", "slow")
        cancel = synapse("jobs", "cancel", handle.id, "--reason", "from cli", "--server", address)
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout.startswith(f"job {handle.id}: ")
        follow = synapse("jobs", "logs", handle.id, "--follow", "--server", address)
        assert follow.returncode == 0
        assert "finished cancelled" in follow.stdout.splitlines()[-1]
        with pytest.raises(JobCancelledError):
            handle.result(timeout=60)
