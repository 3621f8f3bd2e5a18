"""Every mode runs the plugin code the server loaded; only a reload switches it, for all modes.

A real `synapse serve` process drives the three-node test cluster (``--ray-address``). Its
plugin is edited on disk: without SIGHUP the local, task and job modes all keep running the
loaded code (Ray modes used to pack the directory at each launch and ran the edit); a broken
edit with SIGHUP fails the reload and every mode keeps the loaded code (Ray modes used to fail
with SyntaxError); a good edit with SIGHUP switches every mode. Each job records the digest of
the code it ran, and the file its code was imported from is in the snapshot of that digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from ray_modes_support import MODES, RayCluster, wait_for
from synapse.plugin.v1 import action_service_pb2 as pb
from synapse.plugin.v1 import action_service_pb2_grpc, job_pb2

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

CONFIG = """\
code: hot-ray
name: Hot plugin on Ray
version: "1.0.0"
category: custom
actions:
  where:
    entrypoint: actions:WhereAction
    method: task
    num_cpus: 0
    # One node that every test of the suite leaves alive (another adds and kills a node).
    resources:
      node_a: 0.1
"""

CODE = """\
from pydantic import BaseModel
from synapse_sdk.plugins import BaseAction

VERSION = {version}


class Params(BaseModel):
    name: str = ""


class WhereAction(BaseAction[Params]):
    action_name = "where"

    def execute(self):
        return {{"version": VERSION, "file": __file__}}
"""

BROKEN = "this is not python (\n"


@dataclass
class Served:
    process: subprocess.Popen[str]
    stub: action_service_pb2_grpc.ActionServiceStub
    plugin: Path
    data: Path
    log: Path


@contextlib.contextmanager
def _serve(base: Path, ray_address: str) -> Iterator[Served]:
    plugin = base / "plugins" / "hot"
    plugin.mkdir(parents=True)
    (plugin / "config.yaml").write_text(CONFIG)
    (plugin / "actions.py").write_text(CODE.format(version=1))
    data, log = base / "data", base / "server.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "synapse_server", "--listen", "127.0.0.1:0",
                "--data-dir", str(data), "--plugin-dir", str(plugin.parent),
                "--ray-address", ray_address, "--shutdown-grace", "5", "--log-level", "INFO",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("synapse server listening on "):
        process.kill()
        process.wait(10)
        raise AssertionError(f"server did not start: {log.read_text()[-4000:]}")
    channel = grpc.insecure_channel(line.rsplit(" ", 1)[1].strip())
    try:
        yield Served(process, action_service_pb2_grpc.ActionServiceStub(channel), plugin, data, log)
    finally:
        channel.close()
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _run(served: Served, mode: str) -> tuple[dict[str, Any], job_pb2.Job]:
    """Run `where` in ``mode``: its result and the finished job."""
    request = pb.RunActionRequest(
        plugin="hot-ray", action="where", params_json=b"{}", mode=MODES[mode]
    )
    job_id = served.stub.RunAction(request, timeout=60).job.id
    stream = served.stub.StreamProgress(pb.StreamProgressRequest(job_id=job_id), timeout=180)
    terminal = [r.event.terminal for r in stream if r.event.HasField("terminal")][-1]
    job = served.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10).job
    assert terminal.state == job_pb2.JOB_STATE_SUCCEEDED, (mode, terminal)
    assert job.mode == MODES[mode]
    return json.loads(terminal.result_json), job


def _versions(served: Served, cluster: RayCluster) -> dict[str, tuple[int, str]]:
    """Per mode: the version that ran and the digest its job recorded.

    Checks that the code was imported from the snapshot of that digest: on the server's
    disk in local mode, unpacked into node_a's own plugin cache in task and job modes.
    """
    seen = {}
    for mode in ("local", "task", "job"):
        result, job = _run(served, mode)
        ran_from = Path(result["file"]).parent
        assert ran_from.name == job.plugin_sha256, (mode, result["file"], job.plugin_sha256)
        if mode == "local":
            assert ran_from.parent == served.data / "plugins", result["file"]
        else:
            assert ran_from.parent == cluster.cache_dirs["node_a"], result["file"]
        seen[mode] = (result["version"], job.plugin_sha256)
    return seen


def _logged(served: Served, text: str, count: int) -> None:
    wait_for(lambda: served.log.read_text().count(text) >= count, 60, repr(text))


def test_only_a_reload_switches_the_code_of_every_mode(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    with _serve(tmp_path, ray_cluster.address) as served:
        loaded = _versions(served, ray_cluster)
        (digest,) = {sha for _, sha in loaded.values()}
        assert loaded == dict.fromkeys(("local", "task", "job"), (1, digest))

        # Edited on disk, not reloaded: every mode still runs the loaded code.
        (served.plugin / "actions.py").write_text(CODE.format(version=2))
        assert _versions(served, ray_cluster) == loaded

        # A broken edit fails the reload and changes nothing anywhere.
        (served.plugin / "actions.py").write_text(BROKEN)
        served.process.send_signal(signal.SIGHUP)
        _logged(served, "plugin reload failed", 1)
        assert _versions(served, ray_cluster) == loaded

        # A good edit and a reload switch every mode to it at once.
        (served.plugin / "actions.py").write_text(CODE.format(version=2))
        served.process.send_signal(signal.SIGHUP)
        _logged(served, "plugins reloaded", 1)
        switched = _versions(served, ray_cluster)
        (new_digest,) = {sha for _, sha in switched.values()}
        assert new_digest != digest
        assert switched == dict.fromkeys(("local", "task", "job"), (2, new_digest))
