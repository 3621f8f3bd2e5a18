"""Unknown params keys: the job records a warning per key (bounded), clients and the CLI show it.

Real server, real clients, the console script as a subprocess; a restart reads the warnings
back from the real SQLite store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from synapse_client import AsyncClient, Client, InvalidArgumentError

from tests.conftest import RunningServer, make_settings

SYNAPSE = str(Path(sys.executable).with_name("synapse"))
TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy"
WARNING = "unknown params key 'batchsize' (ignored)"


def _synapse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_")}
    return subprocess.run(
        [SYNAPSE, *args], capture_output=True, text=True, timeout=90, env={**base, **(env or {})}
    )


def test_the_job_records_a_warning_per_unknown_key(platform_server: RunningServer) -> None:
    with Client(platform_server.address, timeout=30) as client:
        handle = client.run_action("toy", "quick", {"count": 1, "label": "w", "batchsize": 4})
        assert handle.job is not None and handle.job.warnings == (WARNING,)
        # The action ran with what it knows.
        assert handle.result(timeout=60) == {"label": "w", "count": 1}
        assert client.get_job(handle.id).warnings == (WARNING,)
        assert client.get_job(handle.id, with_params=False).warnings == (WARNING,)
        listed = next(j for j in client.list_jobs(plugin="toy") if j.id == handle.id)
        assert listed.warnings == (WARNING,)
        clean = client.run_action("toy", "quick", {"count": 0, "label": "ok"})
        assert clean.job is not None and clean.job.warnings == ()


def test_warnings_are_bounded(platform_server: RunningServer) -> None:
    params: dict[str, Any] = {"count": 0, "label": "many"}
    params.update({f"unknown_{i}": i for i in range(30)})
    params["k" * 10_000] = 1
    with Client(platform_server.address, timeout=30) as client:
        job = client.run_action("toy", "quick", params).job
    assert job is not None
    assert len(job.warnings) == 11
    assert job.warnings[0] == "unknown params key 'unknown_0' (ignored)"
    assert job.warnings[-1] == "21 more unknown params keys (ignored)"
    assert all(len(w) < 200 for w in job.warnings)


async def test_the_async_client_sees_them_too(platform_server: RunningServer) -> None:
    async with AsyncClient(platform_server.address, timeout=30) as client:
        handle = await client.run_action("toy", "quick", {"count": 0, "label": "a", "batchsize": 1})
        assert handle.job is not None and handle.job.warnings == (WARNING,)
        assert (await client.get_job(handle.id)).warnings == (WARNING,)


def test_a_model_that_forbids_unknown_keys_rejects_them(platform_server: RunningServer) -> None:
    with Client(platform_server.address, timeout=30) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.run_action("toy", "strict", {"count": 2, "batchsize": 4})
        fields = [v.field for v in info.value.field_violations]
        assert fields == ["params.batchsize"], fields
        assert "batchsize" in str(info.value)
        assert client.run_action("toy", "strict", {"count": 2}).result(timeout=60) == {"count": 2}


def test_warnings_survive_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    first = RunningServer(settings)
    try:
        with Client(first.address, timeout=30) as client:
            handle = client.run_action("toy", "quick", {"count": 0, "label": "r", "batchsize": 2})
            handle.result(timeout=60)
    finally:
        first.stop()
    second = RunningServer(settings)
    try:
        with Client(second.address, timeout=30) as client:
            assert client.get_job(handle.id).warnings == (WARNING,)
    finally:
        second.stop()


def test_the_cli_prints_the_warning(platform_server: RunningServer) -> None:
    params = json.dumps({"count": 1, "label": "cli", "batchsize": 4})
    remote = _synapse(
        "plugin", "run", "quick", "--plugin", "toy", "--params", params, "--no-progress",
        env={"SYNAPSE_SERVER": platform_server.address},
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert f"warning: {WARNING}" in remote.stderr.splitlines()
    assert json.loads(remote.stdout) == {"label": "cli", "count": 1}
    job_id = remote.stderr.split("job ", 1)[1].split()[0]
    shown = _synapse("jobs", "get", job_id, "--server", platform_server.address)
    assert json.loads(shown.stdout)["warnings"] == [WARNING]
    # In-process runs say the same.
    local = _synapse(
        "plugin", "run", "quick", "--plugin", str(TOY), "--params", params, "--no-progress"
    )
    assert local.returncode == 0, local.stderr
    assert local.stderr.splitlines() == [f"warning: {WARNING}"]
    strict = _synapse(
        "plugin", "run", "strict", "--plugin", str(TOY), "--params", '{"batchsize": 1}'
    )
    assert strict.returncode == 2
    assert strict.stderr.startswith("error: invalid params for action 'strict': batchsize: ")
